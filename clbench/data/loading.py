"""A continual benchmark loaded into memory: its tensors relabelled and split by task.

Data lives in memory as uint8 tensors on the training device; a batch is an index tensor into
them. Normalisation (and augmentation, see ``clbench.data.augment``) happens per batch, after
indexing, so the replay buffer can store the raw, non-augmented uint8 inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from clbench.data import readers, sources
from clbench.data.augment import crop_flip
from clbench.data.specs import BenchmarkSpec, SyntheticOptions, check_validation_split, get_benchmark, validation_count


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
    # Per task, indices into train_x: (n,), or (R, n) per run where a lockstep group's runs hold out
    # validation splits of their own seeds (``hold_out_validation``).
    train_task_idx: tuple[torch.Tensor, ...] = field(repr=False)
    test_task_idx: tuple[torch.Tensor, ...] = field(repr=False)
    class_task: torch.Tensor = field(repr=False)  # int64 (K,): the task of each class
    # Per task, (R, n) indices into train_x held out for validation, one row per run of the group
    # (``hold_out_validation``); None: no split.
    val_task_idx: tuple[torch.Tensor, ...] | None = field(default=None, repr=False)

    @property
    def n_tasks(self) -> int:
        return self.spec.n_tasks

    @property
    def n_classes(self) -> int:
        return self.spec.n_classes

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> ContinualData:
        """The same data on ``device`` (itself when it is there already; this one is never changed).
        A remote worker gets the data on the CPU, from the driver, and trains on its own device."""
        device = torch.device(device)
        if self.device == device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return replace(
            self,
            train_x=move(self.train_x),
            train_y=move(self.train_y),
            test_x=move(self.test_x),
            test_y=move(self.test_y),
            train_task_idx=tuple(map(move, self.train_task_idx)),
            test_task_idx=tuple(map(move, self.test_task_idx)),
            class_task=move(self.class_task),
            val_task_idx=None if self.val_task_idx is None else tuple(map(move, self.val_task_idx)),
        )


def prepare_inputs(
    x_raw: torch.Tensor, spec: BenchmarkSpec, augment_params: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 network inputs: scale to [0, 1], optionally crop
    and flip (``augment_params`` from ``augment.draw_crop_flip``), then standardise per channel."""
    x = x_raw / 255.0  # uint8 -> float32 in one pass, into a new tensor (the later steps work in place)
    if augment_params is not None:
        x = crop_flip(x, augment_params)
    if spec.mean is not None:
        shape = (-1, 1, 1)
        x = x.sub_(torch.tensor(spec.mean, device=x.device).view(shape)).div_(
            torch.tensor(spec.std, device=x.device).view(shape)
        )
    return x


def hold_out_validation(data: ContinualData, fraction: float, seeds: list[int]) -> ContinualData:
    """``data`` with each run's validation split (``validation_rows`` of its seed) held out: per task,
    ``val_task_idx`` is ``(R, v)`` and ``train_task_idx`` the rows each run keeps, ``(n,)`` where every
    run has one seed (one split) and ``(R, n)`` where they differ. Equal counts per class (the split is
    class-balanced with one count per class size) give every run's rows one length: a lockstep group
    over seeds trains each run on its own split, drawn exactly as that run alone would."""
    splits = {seed: validation_rows(data, fraction, seed) for seed in dict.fromkeys(seeds)}
    per_task = range(data.n_tasks)
    val = tuple(torch.stack([splits[s][1][t] for s in seeds]) for t in per_task)
    if len(splits) == 1:
        train = splits[seeds[0]][0]
    else:
        train = tuple(torch.stack([splits[s][0][t] for s in seeds]) for t in per_task)
    return replace(data, train_task_idx=train, val_task_idx=val)


def validation_rows(
    data: ContinualData, fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Per task (the rows kept for training, the rows held out): ``fraction`` of each class's training
    samples, class-balanced, drawn from a generator of ``seed`` alone (the same split for every
    method and mask of a seed), both in their order."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A11D]))
    train_y = data.train_y.cpu().numpy()
    train_idx, val_idx = [], []
    for rows in data.train_task_idx:
        rows_np = rows.cpu().numpy()
        labels = train_y[rows_np]
        classes = np.unique(labels)
        check_validation_split({int(c): int((labels == c).sum()) for c in classes}, fraction)
        held = np.concatenate(
            [
                (members := rows_np[labels == c])[
                    rng.permutation(len(members))[: validation_count(len(members), fraction)]
                ]
                for c in classes
            ]
        )
        held.sort()
        train_idx.append(torch.from_numpy(rows_np[~np.isin(rows_np, held)]).to(rows.device))
        val_idx.append(torch.from_numpy(held).to(rows.device))
    return tuple(train_idx), tuple(val_idx)


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
