"""Continual benchmarks as specs (the DER/Mammoth protocol): tasks, classes, shapes, schedules and
dataset sizes, known without loading any data (``clbench.data.loading`` loads them)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BenchmarkSpec:
    """A continual benchmark's protocol (keywords only: it is wide)."""

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
        BenchmarkSpec(
            name="seq-fmnist",
            dataset="fmnist",
            n_tasks=5,
            classes_per_task=2,
            input_shape=(1, 28, 28),
            backbone="mlp",
            epochs=1,
            batch_size=10,
            minibatch_size=10,
            augment=False,
        ),
        BenchmarkSpec(
            name="seq-mnist",
            dataset="mnist",
            n_tasks=5,
            classes_per_task=2,
            input_shape=(1, 28, 28),
            backbone="mlp",
            epochs=1,
            batch_size=10,
            minibatch_size=10,
            augment=False,
        ),
        BenchmarkSpec(
            name="seq-cifar10",
            dataset="cifar10",
            n_tasks=5,
            classes_per_task=2,
            input_shape=(3, 32, 32),
            backbone="resnet18",
            epochs=50,
            batch_size=32,
            minibatch_size=32,
            augment=True,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2615),
        ),
        BenchmarkSpec(
            name="seq-cifar100",
            dataset="cifar100",
            n_tasks=10,
            classes_per_task=10,
            input_shape=(3, 32, 32),
            backbone="resnet18",
            epochs=50,
            batch_size=32,
            minibatch_size=32,
            augment=True,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            lr_milestones=(35, 45),
        ),
        BenchmarkSpec(
            name="seq-tinyimg",
            dataset="tinyimg",
            n_tasks=10,
            classes_per_task=20,
            input_shape=(3, 64, 64),
            backbone="resnet18",
            epochs=100,
            batch_size=32,
            minibatch_size=32,
            augment=True,
            mean=(0.4802, 0.4480, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
        ),
        # Generated data for tests and smoke runs; sizes come from SyntheticOptions.
        BenchmarkSpec(
            name="synthetic",
            dataset="synthetic",
            n_tasks=5,
            classes_per_task=2,
            input_shape=(1, 8, 8),
            backbone="mlp",
            epochs=1,
            batch_size=10,
            minibatch_size=10,
            augment=False,
        ),
    )
}


# Training and test set sizes of each dataset (the whole dataset; the tasks split it).
DATASET_SIZES = {
    "fmnist": (60000, 10000),
    "mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "tinyimg": (100000, 10000),
}


def dataset_sizes(benchmark: str, synthetic: SyntheticOptions | None = None) -> tuple[int, int]:
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
            name=base.name,
            dataset=base.dataset,
            n_tasks=self.n_tasks,
            classes_per_task=self.classes_per_task,
            input_shape=tuple(self.input_shape),
            backbone=self.backbone,
            epochs=base.epochs,
            batch_size=base.batch_size,
            minibatch_size=base.minibatch_size,
            augment=self.augment,
        )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def benchmark_name(name: str) -> str:
    """A benchmark by its name (``seq-fmnist``) or its dataset's (``fmnist``)."""
    if name in BENCHMARKS:
        return name
    by_dataset = {spec.dataset: spec.name for spec in BENCHMARKS.values()}
    if name in by_dataset:
        return by_dataset[name]
    get_benchmark(name)  # raises the one-line error naming the valid benchmarks
    raise AssertionError("unreachable")


# Validation fractions a run takes (0: no validation split); a split must leave every class samples.
MAX_VALIDATION = 0.5


def validation_count(n: int, fraction: float) -> int:
    """Samples of a class of ``n`` training samples held out for validation: ``fraction`` of them,
    rounded half up."""
    return int(math.floor(fraction * n + 0.5))


def check_validation_split(class_sizes: dict[int, int], fraction: float) -> None:
    """Raise ``ValueError`` (one line) when holding out ``fraction`` leaves a class without
    validation or without training samples (``class_sizes``: class -> training samples)."""
    for c, n in sorted(class_sizes.items()):
        k = validation_count(n, fraction)
        if k < 1 or k >= n:
            raise ValueError(
                f"invalid validation {fraction:g}: class {c} has {n} training samples, so the split leaves "
                f"{'its validation' if k < 1 else 'its training'} set empty; give a fraction with "
                f"1 <= round(fraction x {n}) < {n}"
            )
