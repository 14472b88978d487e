"""Where each dataset's files come from: data directories, system packages, cache, download.

Why a separate module: benchmark machines are often offline, and the data may
already sit in a shared folder, in a Debian package, or in a previous download.
:func:`locate` searches those places in a fixed, documented order and returns
the folder that :mod:`clbench.data.readers` should read; only if nothing is
found and the user asked for it does it download (through torchvision, imported
lazily so that clbench itself never depends on it). When everything fails the
user gets one :class:`DataNotFoundError` paragraph that says exactly how to fix it.

Search order (the first hit wins):

1. ``data_dir`` if given -- it is the user's explicit choice, so a ``data_dir``
   without the dataset is an error rather than a silent fall-back elsewhere;
2. ``$CLBENCH_DATA`` -- a standing default that may hold only some datasets,
   so a miss there moves on to the next places;
3. system directories (Debian's ``dataset-fashion-mnist`` for Fashion-MNIST);
4. the cache directory, where ``download=True`` puts its downloads;
5. with ``download=True``: a download into the cache directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clbench.data.readers import (
    MNIST_FILES,
    RawSplits,
    has_cifar10,
    has_cifar100,
    has_mnist_like,
    has_tinyimagenet,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
    load_tinyimagenet,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DataNotFoundError",
    "default_cache_dir",
    "load_raw",
    "locate",
]

DATASETS: tuple[str, ...] = ("fmnist", "mnist", "cifar10", "cifar100", "tinyimg")

#: Installed by Debian/Ubuntu's ``dataset-fashion-mnist`` package (the four .gz IDX files).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

ENV_DATA = "CLBENCH_DATA"
ENV_CACHE = "CLBENCH_CACHE"

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

_MNIST_FILE_LIST = ", ".join(MNIST_FILES.values())


@dataclass(frozen=True)
class _Spec:
    """How to recognise, describe and download one dataset."""

    title: str
    #: Sub-folders of a data directory to try, most specific first; "" is the directory itself.
    subdirs: tuple[str, ...]
    present: Callable[[Path], bool]
    expected: str  # what the user must put in a data directory, for error messages
    torchvision_class: str | None  # torchvision.datasets class that downloads it, if any
    system_dirs: tuple[Path, ...] = ()


_SPECS: dict[str, _Spec] = {
    "fmnist": _Spec(
        title="Fashion-MNIST",
        subdirs=("fashion-mnist", "FashionMNIST/raw", ""),
        present=has_mnist_like,
        expected=(
            f"the four IDX files {_MNIST_FILE_LIST} (each optionally .gz), either directly "
            "or in a sub-folder fashion-mnist/ or FashionMNIST/raw/"
        ),
        torchvision_class="FashionMNIST",
        system_dirs=(DEBIAN_FASHION_MNIST_DIR,),
    ),
    "mnist": _Spec(
        title="MNIST",
        subdirs=("mnist", "MNIST/raw", ""),
        present=has_mnist_like,
        expected=(
            f"the four IDX files {_MNIST_FILE_LIST} (each optionally .gz), either directly "
            "or in a sub-folder mnist/ or MNIST/raw/"
        ),
        torchvision_class="MNIST",
    ),
    "cifar10": _Spec(
        title="CIFAR-10",
        subdirs=("cifar-10-batches-py", ""),
        present=has_cifar10,
        expected=(
            "the folder cifar-10-batches-py/ (data_batch_1 ... data_batch_5, test_batch, "
            "batches.meta) extracted from the official cifar-10-python.tar.gz"
        ),
        torchvision_class="CIFAR10",
    ),
    "cifar100": _Spec(
        title="CIFAR-100",
        subdirs=("cifar-100-python", ""),
        present=has_cifar100,
        expected=(
            "the folder cifar-100-python/ (train, test, meta) extracted from the official cifar-100-python.tar.gz"
        ),
        torchvision_class="CIFAR100",
    ),
    "tinyimg": _Spec(
        title="Tiny ImageNet",
        subdirs=("tiny-imagenet-200", ""),
        present=has_tinyimagenet,
        expected=(
            "the folder tiny-imagenet-200/ (wnids.txt, train/, val/val_annotations.txt) "
            f"extracted from {TINY_IMAGENET_URL}"
        ),
        torchvision_class=None,
    ),
}


class DataNotFoundError(Exception):
    """A dataset is in none of the searched places and could not be downloaded.

    The message is written for the person running the benchmark: one paragraph
    naming every way to provide the data, so the CLI can print it as is.
    Build it with :meth:`for_dataset`.
    """

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        searched: Sequence[Path],
        cache_dir: Path,
        reason: str | None = None,
    ) -> DataNotFoundError:
        spec = _SPECS[dataset]
        where = ", ".join(str(p) for p in searched) if searched else "no directories"
        lead = f"{reason} " if reason else ""
        return cls(
            f"{lead}{spec.title} ({dataset}) was not found; searched: {where}. "
            "Provide it in one of three ways: "
            f"(1) give a data directory with the data_dir argument / --data-dir option or the "
            f"{ENV_DATA} environment variable; for {spec.title} it must contain {spec.expected}; "
            "(2) for Fashion-MNIST only, install Debian's package with "
            "`apt-get install dataset-fashion-mnist`, which puts the files in "
            f"{DEBIAN_FASHION_MNIST_DIR}; "
            f"(3) download it into the cache directory {cache_dir} with download=True / "
            "--download, which needs internet access and torchvision "
            "(`pip install torchvision`)."
        )


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$CLBENCH_CACHE``, else ``$XDG_CACHE_HOME/clbench``, else ``~/.cache/clbench``.

    Empty variables count as unset, as the XDG specification asks.
    """
    env = os.environ if env is None else env
    if value := env.get(ENV_CACHE):
        return Path(value).expanduser()
    if value := env.get("XDG_CACHE_HOME"):
        return Path(value).expanduser() / "clbench"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".cache" / "clbench"


def _find_in(root: Path, spec: _Spec) -> Path | None:
    """The folder under ``root`` (or ``root`` itself) that holds the dataset, if any."""
    for sub in spec.subdirs:
        candidate = root / sub if sub else root
        if spec.present(candidate):
            return candidate
    return None


def _spec(dataset: str) -> _Spec:
    try:
        return _SPECS[dataset]
    except KeyError:
        known = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {known}") from None


def locate(
    dataset: str,
    data_dir: Path | str | None = None,
    *,
    download: bool = False,
    cache_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    system_dirs: Sequence[Path | str] | None = None,
) -> Path:
    """Return the folder that the reader for ``dataset`` should read.

    See the module docstring for the search order. ``env`` defaults to
    ``os.environ`` and is only read. ``system_dirs`` overrides the system
    locations searched for this dataset (default: Debian's
    :data:`DEBIAN_FASHION_MNIST_DIR` for ``fmnist``, none for the others), so
    tests and unusual installs can point elsewhere. Raises
    :class:`DataNotFoundError` when the data cannot be found or downloaded and
    :class:`ValueError` for an unknown dataset name.
    """
    spec = _spec(dataset)
    env = os.environ if env is None else env
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(env)

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        found = _find_in(root, spec)
        if found is None:
            raise DataNotFoundError.for_dataset(
                dataset,
                [root],
                cache,
                reason=f"The data directory {root} that was given explicitly does not hold it.",
            )
        return found

    searched: list[Path] = []
    roots: list[Path] = []
    if env_dir := env.get(ENV_DATA):
        roots.append(Path(env_dir).expanduser())
    roots += [Path(d) for d in (spec.system_dirs if system_dirs is None else system_dirs)]
    roots.append(cache)
    for root in roots:
        searched.append(root)
        if (found := _find_in(root, spec)) is not None:
            return found

    if not download:
        raise DataNotFoundError.for_dataset(dataset, searched, cache)
    _download(dataset, spec, cache, searched)
    found = _find_in(cache, spec)
    if found is None:
        raise DataNotFoundError.for_dataset(
            dataset,
            searched,
            cache,
            reason=f"The download finished but {cache} still lacks the files.",
        )
    return found


def _download(dataset: str, spec: _Spec, cache: Path, searched: Sequence[Path]) -> None:
    """Download ``dataset`` into ``cache`` with torchvision, imported only here."""
    try:
        import torchvision.datasets  # noqa: PLC0415 - optional dependency, only for downloading
        from torchvision.datasets.utils import download_and_extract_archive  # noqa: PLC0415
    except ImportError as exc:
        raise DataNotFoundError.for_dataset(
            dataset,
            searched,
            cache,
            reason="Downloading was requested but torchvision is not installed.",
        ) from exc

    cache.mkdir(parents=True, exist_ok=True)
    try:
        if spec.torchvision_class is not None:
            getattr(torchvision.datasets, spec.torchvision_class)(root=str(cache), download=True)
        else:
            download_and_extract_archive(
                TINY_IMAGENET_URL,
                download_root=str(cache),
                md5=TINY_IMAGENET_MD5,
                remove_finished=True,
            )
    except Exception as exc:  # network, checksum and extraction errors all mean "not available"
        raise DataNotFoundError.for_dataset(
            dataset, searched, cache, reason=f"Downloading {spec.title} failed ({exc})."
        ) from exc


def load_raw(
    dataset: str,
    data_dir: Path | str | None = None,
    *,
    download: bool = False,
    cache_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    system_dirs: Sequence[Path | str] | None = None,
) -> RawSplits:
    """:func:`locate` ``dataset`` and read it with the matching reader.

    Tiny ImageNet's decoded-array cache goes to ``<cache dir>/decoded``.
    """
    root = locate(dataset, data_dir, download=download, cache_dir=cache_dir, env=env, system_dirs=system_dirs)
    if dataset == "fmnist":
        return load_fashion_mnist(root)
    if dataset == "mnist":
        return load_mnist(root)
    if dataset == "cifar10":
        return load_cifar10(root)
    if dataset == "cifar100":
        return load_cifar100(root)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(env)
    return load_tinyimagenet(root, cache_dir=cache / "decoded")
