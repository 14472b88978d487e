"""What was loaded: a content fingerprint of the files a dataset's reader reads.

Why: a run's identity is a hash of its config, and the config names a benchmark, not its bytes. A
copy of Fashion-MNIST whose test labels were shuffled would otherwise get the run IDs of the real
one, and be served its cached numbers. So the planner fingerprints the data it found and, when the
data is not the published release, the fingerprint joins the run's identity (``ResolvedConfig.data``).

* The fingerprint is a SHA-256 over the files the reader reads, in a fixed order: each file's name
  (as the reader knows it: ``train-images-idx3-ubyte`` whether stored gzipped or not) and the
  SHA-256 of its content. For the IDX files that content is the *decompressed* bytes, which is what
  the reader parses, so a gzipped and an extracted copy of the same data agree.
* The data is *canonical* when every file the reader reads has its published MD5: torchvision's
  ``resources`` (``.gz`` files, Fashion-MNIST and MNIST), ``train_list`` / ``test_list`` / ``meta``
  (CIFAR-10/100), or the MD5 of the decompressed IDX files of those releases (Debian's
  ``dataset-fashion-mnist`` holds recompressed ``.gz`` files whose decompressed bytes are the
  release's). Canonical data leaves the identity as it always was; Tiny ImageNet has no published
  per-file list, so it is never canonical.

File hashes are kept per (absolute path, size, mtime_ns) in a dict the caller owns (``memo``), so a
sweep hashes each file once (Fashion-MNIST: about half a second).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from clbench.data import readers

__all__ = ["CANONICAL_MD5", "DataPrint", "FileMemo", "data_files", "fingerprint"]

#: (absolute path, size, mtime_ns) -> (SHA-256 of the content read, MD5s the file matches as stored or read)
FileMemo = MutableMapping[tuple[str, int, int], tuple[str, frozenset[str]]]

_IDX = tuple(readers.MNIST_FILES.values())

#: The published MD5s of each file a reader reads, by dataset and file name (any one of them matches).
CANONICAL_MD5: dict[str, dict[str, frozenset[str]]] = {
    "fmnist": {
        # torchvision FashionMNIST.resources (.gz), then the decompressed files' MD5s.
        "train-images-idx3-ubyte": frozenset({"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"}),
        "train-labels-idx1-ubyte": frozenset({"25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"}),
        "t10k-images-idx3-ubyte": frozenset({"bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"}),
        "t10k-labels-idx1-ubyte": frozenset({"bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"}),
    },
    "mnist": {
        # torchvision MNIST.resources (.gz), then the decompressed files' MD5s.
        "train-images-idx3-ubyte": frozenset({"f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"}),
        "train-labels-idx1-ubyte": frozenset({"d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"}),
        "t10k-images-idx3-ubyte": frozenset({"9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"}),
        "t10k-labels-idx1-ubyte": frozenset({"ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"}),
    },
    "cifar10": {  # torchvision CIFAR10.train_list, test_list, meta
        "data_batch_1": frozenset({"c99cafc152244af753f735de768cd75f"}),
        "data_batch_2": frozenset({"d4bba439e000b95fd0a9bffe97cbabec"}),
        "data_batch_3": frozenset({"54ebc095f3ab1f0389bbae665268c751"}),
        "data_batch_4": frozenset({"634d18415352ddfa80567beed471001a"}),
        "data_batch_5": frozenset({"482c414d41f54cd18b22e5b47cb7c3cb"}),
        "test_batch": frozenset({"40351d587109b95175f43aff81a1287e"}),
        "batches.meta": frozenset({"5ff9c542aee3614f3951f8cda6e48888"}),
    },
    "cifar100": {  # torchvision CIFAR100.train_list, test_list, meta
        "train": frozenset({"16019d7e3df5f24257cddd939b257f8d"}),
        "test": frozenset({"f0ef6b0ae62326f3e7ffdfab6717acfc"}),
        "meta": frozenset({"7973b15100ade9c7d40fb424638fde48"}),
    },
}

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataPrint:
    """A dataset's fingerprint (``sha256``) and whether every file read is the published one."""

    sha256: str
    canonical: bool

    @property
    def identity_field(self) -> str | None:
        """What joins a run's identity: nothing for the published data, else the fingerprint."""
        return None if self.canonical else self.sha256


def data_files(dataset: str, root: Path | str) -> list[tuple[str, Path]]:
    """The files the reader of ``dataset`` reads from ``root`` (as :func:`sources.locate` gives
    it), each with the name it is fingerprinted under, in a fixed order."""
    root = Path(root)
    if dataset in ("fmnist", "mnist"):
        out = []
        for base in _IDX:
            found = readers.find_mnist_file(root, base)
            if found is None:
                raise FileNotFoundError(f"{root}: missing {base} (or {base}.gz)")
            out.append((base, found))
        return out
    if dataset == "cifar10":
        names = [*readers.CIFAR10_TRAIN_BATCHES, readers.CIFAR10_TEST_BATCH]
        optional = ["batches.meta"]
    elif dataset == "cifar100":
        names, optional = ["train", "test"], ["meta"]
    elif dataset == "tinyimg":
        _, train, _, val, _ = readers._tiny_index(root)
        listed = [root / "wnids.txt", root / "val" / "val_annotations.txt", *train, *val]
        return [(p.relative_to(root).as_posix(), p) for p in listed]
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return [(n, root / n) for n in names] + [(n, root / n) for n in optional if (root / n).is_file()]


def _hash_file(path: Path, idx: bool) -> tuple[str, frozenset[str]]:
    """SHA-256 of what the reader reads (an IDX file's decompressed bytes) and the MD5s of the
    file as stored and as read."""
    sha, md5_read = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    md5_stored = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        gzipped = idx and f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if gzipped:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                md5_stored.update(chunk)
            f.seek(0)
            stream = gzip.GzipFile(fileobj=f)
        else:
            stream = f
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            sha.update(chunk)
            md5_read.update(chunk)
    md5s = {md5_read.hexdigest()} | ({md5_stored.hexdigest()} if gzipped else set())
    return sha.hexdigest(), frozenset(md5s)


def _file_hash(path: Path, idx: bool, memo: FileMemo | None) -> tuple[str, frozenset[str]]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo is not None and key in memo:
        return memo[key]
    try:
        value = _hash_file(path, idx)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot be read to fingerprint it ({exc})") from exc
    if memo is not None:
        memo[key] = value
    return value


def fingerprint(dataset: str, root: Path | str, memo: FileMemo | None = None) -> DataPrint:
    """The fingerprint of ``dataset`` as found in ``root`` (see the module docstring)."""
    published = CANONICAL_MD5.get(dataset)
    digest = hashlib.sha256(f"clbench-data:{dataset}\n".encode())
    canonical = published is not None
    for name, path in data_files(dataset, root):
        sha, md5s = _file_hash(path, dataset in ("fmnist", "mnist"), memo)
        digest.update(f"{name}\0{sha}\n".encode())
        canonical = canonical and bool(md5s & published.get(name, frozenset()))
    return DataPrint(digest.hexdigest(), canonical)
