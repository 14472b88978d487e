"""The lockstep trainer: the runs of a group take every step together, as one computation.

Runs are independent (own seed for initial weights, data order, buffer and augmentation; own
buffer size, mask, lr, alpha, beta): every tensor carries a leading run axis, the loss is the sum
of the runs' losses (so each run's gradient is its own), and each run's randomness is drawn from
its own generators, so a run's results do not depend on which runs share its group.

The whole training step is ``_train_step``; the rest is bookkeeping around it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .augment import draw_crop_flip
from .backbones import BatchedBackbone, BatchedMLP, Params
from .buffer import BufferDraw, ReservoirBuffer, reservoir_slots, sample_without_replacement
from .config import ResolvedConfig, RunConfig
from .data.benchmarks import ContinualData, SyntheticOptions, load_benchmark, prepare_inputs
from .evaluation import Evaluation, evaluate
from .methods import Method, get_method
from .results import RunResult
from .step import Batch, LossLayer, Step

PLAN_CHUNK_STEPS = 256  # replay plans are drawn this many steps at a time (bounded memory)


@dataclass(frozen=True)
class Progress:
    """A progress report from a training group (passed to the ``progress`` callback)."""

    phase: str  # "train" (during a task), "evaluate", "task_done"
    group_size: int
    task: int
    n_tasks: int
    epoch: int
    n_epochs: int
    step: int  # steps done in this epoch
    n_steps: int  # steps per epoch of this task
    elapsed_s: float  # since the group started


ProgressCallback = Callable[[Progress], None]


class PhaseTimes:
    """Opt-in wall-clock split of ``train_group`` by phase (``train_group(..., phases=PhaseTimes())``),
    for ``benchmarks/efficiency.py``. Each phase synchronises a CUDA device at its edges, so this
    perturbs GPU timing a little; without it the trainer times nothing but whole tasks."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] += time.perf_counter() - t0


_UNTIMED = contextlib.nullcontext()


def _untimed(name: str) -> contextlib.AbstractContextManager:
    return _UNTIMED


class RunRandomness:
    """A run's independent random streams, all derived from its seed alone."""

    def __init__(self, seed: int):
        init, order, reservoir, replay, augment = np.random.SeedSequence(seed).spawn(5)
        self.init = torch.Generator().manual_seed(int(init.generate_state(1, np.uint64)[0] >> 1))
        self.order = np.random.default_rng(order)
        self.reservoir = np.random.default_rng(reservoir)
        self.replay = np.random.default_rng(replay)
        self.augment = np.random.default_rng(augment)


@functools.cache
def _keep_freed_memory() -> None:
    """Stop glibc from handing the memory of freed tensors back to the OS between steps.

    Every step allocates and frees the same large tensors (a 90-run DER++ step: ~170 MB). glibc
    serves blocks above its mmap threshold (at most 32 MB) with fresh mappings and trims the heap's
    free top, so each step page-faults fresh zeroed pages again: 42k faults per step, 40 % of the
    time of a 90-run DER++ group on the 2-core dev machine. With mmap and trimming off, freed blocks
    are reused; the process keeps its peak memory. Once per process; Linux with glibc only.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def make_backbone(cfg: ResolvedConfig, data: ContinualData) -> BatchedBackbone:
    c, h, w = data.spec.input_shape
    if cfg.backbone == "mlp":
        return BatchedMLP(c * h * w, data.n_classes)
    from .resnet import BatchedResNet18

    return BatchedResNet18(data.n_classes, in_channels=c, width=cfg.width or 64)


def usable_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unsupported device {str(device)!r}: valid devices are cpu, cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available: valid devices here are cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}: valid devices are cpu, cuda")
    return dev


def software_versions() -> dict[str, str]:
    return {
        "clbench": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class _NetState:
    """The group's trainable state; ``forward`` advances BatchNorm running statistics."""

    def __init__(self, net: BatchedBackbone, params: Params, buffers: Params):
        self.net, self.params, self.buffers = net, params, buffers

    def forward(self, batch: Batch) -> torch.Tensor:
        logits, self.buffers = self.net.forward(self.params, self.buffers, batch.x, train=True, row_weight=batch.valid)
        return logits


class _StepForward:
    """``Step.forward`` for one step.

    With a row-independent backbone (no batch statistics: the MLP), the first call forwards all
    the step's batches (stream and replay draws, whose inputs are consecutive slices of ``x``) as
    one batch and every call returns its batch's rows: one large GEMM per layer instead of one per
    batch (DER++: 3), the same logits. Any other batch (ER's concatenation) is forwarded alone.
    """

    def __init__(self, state: _NetState, x: torch.Tensor, batches: Sequence[Batch]):
        self.state, self.x, self.batches = state, x, batches
        self.joint = getattr(state.net, "row_independent", False) and len(batches) > 1
        self.logits: tuple[torch.Tensor, ...] | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.joint:
            for i, b in enumerate(self.batches):
                if b is batch:
                    if self.logits is None:
                        logits, _ = self.state.net.forward(self.state.params, self.state.buffers, self.x, train=True)
                        self.logits = logits.split([len(b) for b in self.batches], dim=1)
                    return self.logits[i]
        return self.state.forward(batch)


def _fresh(params: Params, grad: bool) -> Params:
    return {k: v.detach().clone().requires_grad_(grad) for k, v in params.items()}


def _train_step(
    method: Method, state: _NetState, step: Step, lr: dict[str, torch.Tensor], buffer: ReservoirBuffer | None,
    slots: torch.Tensor | None, x_raw: torch.Tensor, phase: Callable[[str], contextlib.AbstractContextManager],
) -> tuple[tuple[str, ...], torch.Tensor]:
    """One step for every run: loss terms -> one backward -> per-run SGD -> buffer insertion.

    Returns the loss terms' names and the terms and their total, stacked ``(n_terms + 1, R)``.
    """
    with phase("forward and loss"):
        out = method.loss_terms(step)
        terms = torch.stack(list(out.terms.values()))  # (n_terms, R)
        total = terms.sum(0)
    with phase("backward"):
        # Summing the runs' losses gives each run's parameters exactly its own gradient.
        grads = torch.autograd.grad(total.sum(), list(state.params.values()))
    with phase("optimizer"), torch.no_grad():
        for (name, p), g in zip(state.params.items(), grads):
            p.addcmul_(g, lr[name], value=-1.0)  # plain SGD, lr per run (broadcast view), in place
    if buffer is not None:  # after the update, like Mammoth; DER stores the pre-update logits
        with phase("buffer insertion"):
            buffer.insert(slots, x_raw, step.stream.y, step.stream.task, out.stream_logits)
    return (*out.terms, "total"), torch.cat([terms, total.unsqueeze(0)]).detach()


def train_group(
    configs: Sequence[ResolvedConfig],
    data: ContinualData,
    *,
    progress: ProgressCallback | None = None,
    phases: PhaseTimes | None = None,
) -> list[RunResult]:
    """Train a lockstep group (configs with one ``group_key``) on ``data``; one result per config.

    The device is the data's device (``load_benchmark(..., device=...)``). ``phases``, when given,
    accumulates the wall time of each phase of training (a profile; see ``PhaseTimes``).
    """
    cfgs = list(configs)
    if not cfgs:
        return []
    key = cfgs[0].group_key()
    if any(c.group_key() != key for c in cfgs):
        raise ValueError("configs of one group must agree on benchmark, backbone, method, epochs and batch sizes")
    c0, spec, device = cfgs[0], data.spec, data.device
    if c0.benchmark != spec.name or spec.n_classes != data.n_classes:
        raise ValueError(f"data is {spec.name}, configs are for {c0.benchmark}")
    n_runs, n_tasks, n_classes = len(cfgs), data.n_tasks, data.n_classes
    _keep_freed_memory()
    method = get_method(c0.method)
    rand = [RunRandomness(c.seed) for c in cfgs]
    net = make_backbone(c0, data)
    init_params, init_buffers = net.init([r.init for r in rand], device)
    state = _NetState(net, _fresh(init_params, True), dict(init_buffers))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    base_lr, alpha, beta = as_tensor([c.lr for c in cfgs]), as_tensor([c.alpha for c in cfgs]), as_tensor([c.beta for c in cfgs])
    loss_layer = LossLayer([c.mask for c in cfgs], data.class_task)
    sizes = np.array([c.buffer_size for c in cfgs], dtype=np.int64)
    buffer = None
    if method.uses_buffer:
        buffer = ReservoirBuffer(sizes, spec.input_shape, n_classes, store_logits=method.stores_logits, device=device)
    seen_classes = torch.zeros((n_runs, n_classes), dtype=torch.bool, device=device)
    batch_size, minibatch = c0.batch_size, c0.minibatch_size
    evaluations: list[Evaluation] = []
    loss_means: list[dict[str, np.ndarray]] = []
    train_s, eval_s = np.zeros(n_tasks), np.zeros(n_tasks)
    phase = phases or _untimed
    started = time.perf_counter()

    def report(phase: str, task: int, epoch: int, step: int, n_steps: int) -> None:
        if progress is not None:
            progress(Progress(phase, n_runs, task, n_tasks, epoch, c0.epochs, step, n_steps, time.perf_counter() - started))

    for task in range(n_tasks):
        t0 = time.perf_counter()
        if method.trains_on_seen_tasks:  # joint: from the initial weights on tasks 0..task
            pool = torch.cat(data.train_task_idx[: task + 1])
            state = _NetState(net, _fresh(init_params, True), dict(init_buffers))
        else:
            pool = data.train_task_idx[task]
        n = len(pool)
        n_steps = math.ceil(n / batch_size)
        n_draws = method.replay_draws if task >= method.replay_from_task else 0
        sums: torch.Tensor | int = 0  # (n_terms + 1, R), summed over the task's steps
        for epoch in range(c0.epochs):
            lr_runs = base_lr * 0.1 ** sum(epoch >= m for m in c0.lr_milestones)
            lr = {k: lr_runs.view(-1, *([1] * (p.dim() - 1))) for k, p in state.params.items()}
            with phase("random plans (order, augmentation, buffer)"):
                order = torch.from_numpy(np.stack([r.order.permutation(n) for r in rand])).to(device)
                samples = pool[order]  # (R, n): each run's own order of the task's training set
                aug = None
                if spec.augment:
                    aug = torch.from_numpy(np.stack([draw_crop_flip(r.augment, (n,)) for r in rand])).to(device)
                slots = None
                if buffer is not None:
                    slots = torch.from_numpy(
                        np.stack([reservoir_slots(r.reservoir, buffer.n_seen, n, int(s), batch_size) for r, s in zip(rand, sizes)])
                    ).to(device)
            plan = None
            report_every = max(1, n_steps // 50)
            for s in range(n_steps):
                if n_draws and s % PLAN_CHUNK_STEPS == 0:
                    with phase("random plans (order, augmentation, buffer)"):
                        plan = _replay_plan(rand, sizes, buffer.n_seen, s, min(PLAN_CHUNK_STEPS, n_steps - s), batch_size, n, minibatch, n_draws, spec.augment, device)
                with phase("buffer sampling"):
                    planned = plan.draw(buffer, s % PLAN_CHUNK_STEPS) if n_draws and buffer.n_seen > 0 else None
                with phase("batch assembly and augmentation"):
                    cols = slice(s * batch_size, min((s + 1) * batch_size, n))
                    rows = samples[:, cols]
                    x_raw, y = data.train_x[rows], data.train_y[rows]
                    x, stream, replay = _step_batches(data, x_raw, y, aug[:, cols] if aug is not None else None, planned, n_draws)
                    if method.tracks_seen_classes:
                        seen_classes = seen_classes | F.one_hot(y, n_classes).amax(dim=1).bool()
                forward = _StepForward(state, x, (stream, *replay))
                step = Step(task, stream, replay, alpha, beta, seen_classes, forward, loss_layer)
                names, terms = _train_step(method, state, step, lr, buffer, slots[:, cols] if slots is not None else None, x_raw, phase)
                sums = sums + terms
                if (s + 1) % report_every == 0 or s + 1 == n_steps:
                    report("train", task, epoch, s + 1, n_steps)
        train_s[task] = time.perf_counter() - t0
        means = (sums / (n_steps * c0.epochs)).cpu().numpy()
        loss_means.append(dict(zip(names, means)))
        report("evaluate", task, c0.epochs - 1, n_steps, n_steps)
        t1 = time.perf_counter()
        with phase("evaluation"):
            evaluations.append(evaluate(net, state.params, state.buffers, data, n_runs))
        eval_s[task] = time.perf_counter() - t1
        report("task_done", task, c0.epochs - 1, n_steps, n_steps)
    return _results(cfgs, data, evaluations, loss_means, train_s, eval_s, str(device))


@dataclass(frozen=True)
class _PlannedDraw:
    """One step's replay rows, all draws side by side (draw d is columns ``d*M .. (d+1)*M``)."""

    rows: BufferDraw  # (R, draws*M, ...)
    aug: torch.Tensor | None  # (R, draws*M, 3)
    padded: bool  # some run has fewer than M samples to draw from: ``rows.valid`` matters


@dataclass(frozen=True)
class _ReplayPlan:
    """Which buffer rows each run replays in a chunk of steps, and how they are augmented."""

    idx: torch.Tensor  # (steps, R, draws*M), -1 = padding
    padded: np.ndarray  # (steps,) bool: some run has fewer than M samples to draw from
    aug: torch.Tensor | None  # (steps, R, draws*M, 3)

    def draw(self, buffer: ReservoirBuffer, step: int) -> _PlannedDraw:
        aug = self.aug[step] if self.aug is not None else None
        return _PlannedDraw(buffer.draw(self.idx[step]), aug, bool(self.padded[step]))


def _step_batches(
    data: ContinualData, x_raw: torch.Tensor, y: torch.Tensor, aug: torch.Tensor | None, planned: _PlannedDraw | None, n_draws: int
) -> tuple[torch.Tensor, Batch, tuple[Batch, ...]]:
    """A step's network inputs ``x`` (stream rows, then every replay draw's rows), prepared in one
    pass, and its batches, whose inputs are slices of ``x`` (see ``_StepForward``)."""
    device, b = y.device, y.shape[1]
    if planned is not None:
        x_raw = torch.cat([x_raw, planned.rows.x], dim=1)
        aug = torch.cat([aug, planned.aug], dim=1) if aug is not None else None
    x = prepare_inputs(x_raw, data.spec, aug)
    stream = Batch(x[:, :b], y, data.class_task[y], torch.zeros(b, dtype=torch.bool, device=device))
    if planned is None:
        return x, stream, ()
    d, m = planned.rows, planned.rows.y.shape[1] // n_draws
    replay = tuple(
        Batch(
            x=x[:, b + i * m : b + (i + 1) * m],
            y=d.y[:, i * m : (i + 1) * m],
            task=d.task[:, i * m : (i + 1) * m],
            from_buffer=torch.ones(m, dtype=torch.bool, device=device),
            valid=d.valid[:, i * m : (i + 1) * m] if planned.padded else None,
            logits=d.logits[:, i * m : (i + 1) * m] if d.logits is not None else None,
        )
        for i in range(n_draws)
    )
    return x, stream, replay


def _replay_plan(rand, sizes, n_seen, first_step, n_plan_steps, batch_size, n, minibatch, n_draws, augment, device) -> _ReplayPlan:
    # Before step s of this epoch the buffer has seen n_seen + s * batch_size samples.
    seen = n_seen + np.arange(first_step, first_step + n_plan_steps, dtype=np.int64) * batch_size
    seen = np.minimum(seen, n_seen + n)
    avail = np.minimum(seen[None, :], sizes[:, None])  # (R, steps)
    idx = np.stack([
        np.stack([sample_without_replacement(r.replay, avail[i], minibatch) for _ in range(n_draws)])
        for i, r in enumerate(rand)
    ], axis=1)  # (draws, R, steps, M)
    n_runs = len(rand)
    idx = idx.transpose(2, 1, 0, 3).reshape(n_plan_steps, n_runs, n_draws * minibatch)
    aug = None
    if augment:
        aug = np.stack([draw_crop_flip(r.augment, (n_draws, n_plan_steps, minibatch)) for r in rand], axis=1)
        aug = aug.transpose(2, 1, 0, 3, 4).reshape(n_plan_steps, n_runs, n_draws * minibatch, 3)
        aug = torch.from_numpy(aug).to(device)
    return _ReplayPlan(torch.from_numpy(idx).to(device), (avail < minibatch).any(axis=0), aug)


def _results(cfgs, data, evaluations, loss_means, train_s, eval_s, device) -> list[RunResult]:
    versions = software_versions()
    out = []
    for r, cfg in enumerate(cfgs):
        out.append(
            RunResult(
                config=cfg,
                class_il=np.stack([e.class_il[r] for e in evaluations]),
                task_il=np.stack([e.task_il[r] for e in evaluations]),
                class_il_correct=np.stack([e.class_il_correct[r] for e in evaluations]),
                task_il_correct=np.stack([e.task_il_correct[r] for e in evaluations]),
                test_counts=evaluations[0].test_counts,
                per_class_accuracy=np.stack([e.per_class_accuracy[r] for e in evaluations]),
                confidence=np.stack([e.confidence[r] for e in evaluations]),
                train_loss={k: np.array([m[k][r] for m in loss_means]) for k in loss_means[0]},
                train_s=train_s.copy(),
                eval_s=eval_s.copy(),
                group_size=len(cfgs),
                device=device,
                versions=versions,
                class_names=data.class_names,
                histograms={k: np.stack([e.histograms[k][r] for e in evaluations]) for k in evaluations[0].histograms},
            )
        )
    return out


def plan_groups(configs: Iterable[ResolvedConfig], max_group_size: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` packed into lockstep groups (first-seen order), each at most
    ``max_group_size`` runs."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg.group_key(), []).append(i)
    out = []
    for members in groups.values():
        size = max_group_size or len(members)
        out.extend(members[i : i + size] for i in range(0, len(members), size))
    return out


def train_runs(
    configs: Sequence[RunConfig | ResolvedConfig],
    *,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    download: bool = False,
    max_group_size: int | None = None,
    progress: ProgressCallback | None = None,
    on_group_done: Callable[[list[RunResult]], None] | None = None,
) -> list[RunResult]:
    """Resolve, group and train runs; results in the order of ``configs``.

    ``on_group_done`` receives each group's results as soon as the group finishes, so a caller can
    persist them before the next group starts (an interruption then loses only the running group).
    """
    resolved = [c.resolve() if isinstance(c, RunConfig) else c for c in configs]
    dev = resolve_device(device)
    results: list[RunResult | None] = [None] * len(resolved)
    loaded: dict[tuple, ContinualData] = {}
    for members in plan_groups(resolved, max_group_size):
        c0 = resolved[members[0]]
        data_key = (c0.benchmark, c0.synthetic, c0.class_order_seed)
        if data_key not in loaded:
            loaded[data_key] = load_benchmark(
                c0.benchmark, data_dir=data_dir, download=download, class_order_seed=c0.class_order_seed,
                synthetic=c0.synthetic, device=dev,
            )
        group_results = train_group([resolved[i] for i in members], loaded[data_key], progress=progress)
        for i, res in zip(members, group_results):
            results[i] = res
        if on_group_done is not None:
            on_group_done(group_results)
    return [r for r in results if r is not None]


__all__ = ["PhaseTimes", "Progress", "plan_groups", "train_group", "train_runs", "SyntheticOptions"]
