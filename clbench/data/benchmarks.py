"""Continual benchmarks: specs (the DER/Mammoth protocol) and in-memory task splits.

Data lives in memory as uint8 tensors on the training device; a batch is an index tensor into
them. Normalisation (and augmentation, see ``clbench.augment``) happens per batch, after
indexing, so the replay buffer can store the raw, non-augmented uint8 inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..augment import crop_flip
from . import readers, sources


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    dataset: str  # the source dataset ("fmnist", "cifar10", ..., "synthetic")
    n_tasks: int
    classes_per_task: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    backbone: str  # "mlp" or "resnet18"
    epochs: int
    batch_size: int
    minibatch_size: int
    augment: bool  # random crop (padding 4) + horizontal flip
    mean: tuple[float, ...] | None = None  # per-channel normalisation after scaling to [0, 1]
    std: tuple[float, ...] | None = None
    lr_milestones: tuple[int, ...] = ()  # epochs (within each task) at which lr is multiplied by 0.1

    @property
    def n_classes(self) -> int:
        return self.n_tasks * self.classes_per_task


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("seq-fmnist", "fmnist", 5, 2, (1, 28, 28), "mlp", 1, 10, 10, False),
        BenchmarkSpec("seq-mnist", "mnist", 5, 2, (1, 28, 28), "mlp", 1, 10, 10, False),
        BenchmarkSpec(
            "seq-cifar10", "cifar10", 5, 2, (3, 32, 32), "resnet18", 50, 32, 32, True,
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615),
        ),
        BenchmarkSpec(
            "seq-cifar100", "cifar100", 10, 10, (3, 32, 32), "resnet18", 50, 32, 32, True,
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (35, 45),
        ),
        BenchmarkSpec(
            "seq-tinyimg", "tinyimg", 10, 20, (3, 64, 64), "resnet18", 100, 32, 32, True,
            (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821),
        ),
        # Generated data for tests and smoke runs; sizes come from SyntheticOptions.
        BenchmarkSpec("synthetic", "synthetic", 5, 2, (1, 8, 8), "mlp", 1, 10, 10, False),
    )
}


# Training and test set sizes of each dataset (the whole dataset; the tasks split it).
DATASET_SIZES = {"fmnist": (60000, 10000), "mnist": (60000, 10000), "cifar10": (50000, 10000),
                 "cifar100": (50000, 10000), "tinyimg": (100000, 10000)}


def dataset_sizes(benchmark: str, synthetic: "SyntheticOptions | None" = None) -> tuple[int, int]:
    """(training samples, test samples) of a benchmark: its whole stream and its test sets, known
    without loading the data."""
    if benchmark == "synthetic":
        opts = synthetic or SyntheticOptions()
        k = opts.n_tasks * opts.classes_per_task
        return opts.train_per_class * k, opts.test_per_class * k
    return DATASET_SIZES[get_benchmark(benchmark).dataset]


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}: valid benchmarks are {', '.join(BENCHMARKS)}") from None


@dataclass(frozen=True)
class SyntheticOptions:
    """Sizes of the generated benchmark: separable class prototypes plus noise, as uint8 images."""

    n_tasks: int = 5
    classes_per_task: int = 2
    train_per_class: int = 100
    test_per_class: int = 50
    input_shape: tuple[int, int, int] = (1, 8, 8)
    noise: float = 60.0  # std of the per-pixel noise, in uint8 units
    data_seed: int = 0
    augment: bool = False
    backbone: str = "mlp"

    def spec(self) -> BenchmarkSpec:
        base = BENCHMARKS["synthetic"]
        return BenchmarkSpec(
            base.name, base.dataset, self.n_tasks, self.classes_per_task, tuple(self.input_shape),
            self.backbone, base.epochs, base.batch_size, base.minibatch_size, self.augment,
        )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ContinualData:
    """A benchmark's tensors, relabelled so that task t holds classes [t*c, (t+1)*c)."""

    spec: BenchmarkSpec
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,), relabelled
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]  # indexed by the relabelled class
    class_order: tuple[int, ...]  # class_order[new_label] = original label
    train_task_idx: tuple[torch.Tensor, ...] = field(repr=False)  # per task, indices into train_x
    test_task_idx: tuple[torch.Tensor, ...] = field(repr=False)
    class_task: torch.Tensor = field(repr=False)  # int64 (K,): the task of each class

    @property
    def n_tasks(self) -> int:
        return self.spec.n_tasks

    @property
    def n_classes(self) -> int:
        return self.spec.n_classes

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> "ContinualData":
        """The same data on ``device`` (itself when it is there already; this one is never changed).
        A remote worker gets the data on the CPU, from the driver, and trains on its own device."""
        device = torch.device(device)
        if self.device == device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return replace(
            self, train_x=move(self.train_x), train_y=move(self.train_y), test_x=move(self.test_x),
            test_y=move(self.test_y), train_task_idx=tuple(map(move, self.train_task_idx)),
            test_task_idx=tuple(map(move, self.test_task_idx)), class_task=move(self.class_task),
        )


def prepare_inputs(x_raw: torch.Tensor, spec: BenchmarkSpec, augment_params: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 network inputs: scale to [0, 1], optionally crop
    and flip (``augment_params`` from ``augment.draw_crop_flip``), then standardise per channel."""
    x = x_raw / 255.0  # uint8 -> float32 in one pass, into a new tensor (the later steps work in place)
    if augment_params is not None:
        x = crop_flip(x, augment_params)
    if spec.mean is not None:
        shape = (-1, 1, 1)
        x = x.sub_(torch.tensor(spec.mean, device=x.device).view(shape)).div_(torch.tensor(spec.std, device=x.device).view(shape))
    return x


def class_permutation(n_classes: int, seed: int | None) -> tuple[int, ...]:
    """``None``: label order (the standard protocol); an int: a seeded permutation of the labels."""
    if seed is None:
        return tuple(range(n_classes))
    return tuple(int(c) for c in np.random.default_rng(np.random.SeedSequence([seed, 0xC1A55])).permutation(n_classes))


def build_continual_data(
    spec: BenchmarkSpec,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: tuple[str, ...],
    class_order_seed: int | None = None,
    device: torch.device | str = "cpu",
) -> ContinualData:
    """Relabel by the class order, keep the classes of the benchmark's tasks, split by task."""
    k = spec.n_classes
    order = class_permutation(k, class_order_seed)
    # new_label_of[original] = new label; originals beyond K (none in the standard protocol) dropped.
    new_label_of = np.full(max(int(train_y.max()), int(test_y.max()), k - 1) + 1, -1, dtype=np.int64)
    new_label_of[list(order)] = np.arange(k)

    def relabel(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        y_new = new_label_of[y]
        keep = y_new >= 0
        return (
            torch.from_numpy(np.ascontiguousarray(x[keep])).to(device),
            torch.from_numpy(y_new[keep]).to(device),
        )

    trx, tr_y = relabel(train_x, train_y)
    tex, te_y = relabel(test_x, test_y)
    class_task = torch.arange(k, device=device) // spec.classes_per_task
    train_idx = tuple(torch.nonzero(class_task[tr_y] == t).flatten() for t in range(spec.n_tasks))
    test_idx = tuple(torch.nonzero(class_task[te_y] == t).flatten() for t in range(spec.n_tasks))
    names = tuple(class_names[o] if o < len(class_names) else str(o) for o in order)
    return ContinualData(spec, trx, tr_y, tex, te_y, names, order, train_idx, test_idx, class_task)


def make_synthetic(options: SyntheticOptions) -> tuple[np.ndarray, ...]:
    """Class prototypes (random uint8 patterns) plus Gaussian noise: learnable, seeded, tiny."""
    rng = np.random.default_rng(options.data_seed)
    k = options.n_tasks * options.classes_per_task
    protos = rng.uniform(0, 255, size=(k, *options.input_shape))

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), per_class)
        x = protos[y] + rng.normal(0, options.noise, size=(len(y), *options.input_shape))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    trx, try_ = split(options.train_per_class)
    tex, tey = split(options.test_per_class)
    return trx, try_, tex, tey


def load_benchmark(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    class_order_seed: int | None = None,
    synthetic: SyntheticOptions | None = None,
    device: torch.device | str = "cpu",
    env: dict | None = None,
) -> ContinualData:
    """Load a benchmark into memory on ``device``.

    Raises ``sources.DataNotFoundError`` (one clear message naming the ways to provide the data)
    when the dataset cannot be found.
    """
    if name == "synthetic":
        opts = synthetic or SyntheticOptions()
        spec = opts.spec()
        trx, try_, tex, tey = make_synthetic(opts)
        names = tuple(f"class_{i}" for i in range(spec.n_classes))
        return build_continual_data(spec, trx, try_, tex, tey, names, class_order_seed, device)
    spec = get_benchmark(name)
    root = sources.locate(spec.dataset, data_dir, download=download, env=env)
    if spec.dataset in ("fmnist", "mnist"):
        # The IDX files do not say which dataset they hold: the benchmark names the classes.
        names = readers.FASHION_MNIST_CLASSES if spec.dataset == "fmnist" else readers.MNIST_CLASSES
        raw = readers.load_mnist_like(root, class_names=names)
    elif spec.dataset == "cifar10":
        raw = readers.load_cifar10(root)
    elif spec.dataset == "cifar100":
        raw = readers.load_cifar100(root)
    else:
        raw = readers.load_tinyimagenet(root, cache_dir=sources.default_cache_dir(env))
    return build_continual_data(
        spec, raw.train_x, raw.train_y, raw.test_x, raw.test_y, raw.class_names, class_order_seed, device
    )
