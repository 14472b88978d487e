"""The lockstep trainer: the runs of a group take every step together, as one computation.

Runs are independent (own seed for initial weights, data order, buffer and augmentation; own
buffer size, mask, lr, alpha, beta): every tensor carries a leading run axis, the loss is the sum
of the runs' losses (so each run's gradient is its own), and each run's randomness is drawn from
its own generators, so a run's results do not depend on which runs share its group.

The whole training step is ``_train_step``; the rest is bookkeeping around it.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .augment import draw_crop_flip
from .backbones import BatchedBackbone, BatchedMLP, Params
from .buffer import ReservoirBuffer, reservoir_slots, sample_without_replacement
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


class RunRandomness:
    """A run's independent random streams, all derived from its seed alone."""

    def __init__(self, seed: int):
        init, order, reservoir, replay, augment = np.random.SeedSequence(seed).spawn(5)
        self.init = torch.Generator().manual_seed(int(init.generate_state(1, np.uint64)[0] >> 1))
        self.order = np.random.default_rng(order)
        self.reservoir = np.random.default_rng(reservoir)
        self.replay = np.random.default_rng(replay)
        self.augment = np.random.default_rng(augment)


def make_backbone(cfg: ResolvedConfig, data: ContinualData) -> BatchedBackbone:
    c, h, w = data.spec.input_shape
    if cfg.backbone == "mlp":
        return BatchedMLP(c * h * w, data.n_classes)
    from .resnet import BatchedResNet18

    return BatchedResNet18(data.n_classes, in_channels=c, width=cfg.width or 64)


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
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


def _fresh(params: Params, grad: bool) -> Params:
    return {k: v.detach().clone().requires_grad_(grad) for k, v in params.items()}


def _train_step(
    method: Method, state: _NetState, step: Step, lr: torch.Tensor, buffer: ReservoirBuffer | None, slots: torch.Tensor | None, x_raw: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One step for every run: loss terms -> one backward -> per-run SGD -> buffer insertion."""
    out = method.loss_terms(step)
    total = torch.stack(list(out.terms.values())).sum(0)  # (R,)
    # Summing the runs' losses gives each run's parameters exactly its own gradient.
    names = list(state.params)
    grads = torch.autograd.grad(total.sum(), [state.params[n] for n in names])
    with torch.no_grad():
        for n, g in zip(names, grads):
            p = state.params[n]
            p.sub_(g * lr.view(-1, *([1] * (p.dim() - 1))))  # plain SGD, lr per run
    if buffer is not None:  # after the update, like Mammoth; DER stores the pre-update logits
        buffer.insert(slots, x_raw, step.stream.y, step.stream.task, out.stream_logits)
    return {**{k: v.detach() for k, v in out.terms.items()}, "total": total.detach()}


def train_group(
    configs: Sequence[ResolvedConfig],
    data: ContinualData,
    *,
    progress: ProgressCallback | None = None,
) -> list[RunResult]:
    """Train a lockstep group (configs with one ``group_key``) on ``data``; one result per config.

    The device is the data's device (``load_benchmark(..., device=...)``).
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
        sums: dict[str, torch.Tensor] = {}
        for epoch in range(c0.epochs):
            lr = base_lr * 0.1 ** sum(epoch >= m for m in c0.lr_milestones)
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
                    plan = _replay_plan(rand, sizes, buffer.n_seen, s, min(PLAN_CHUNK_STEPS, n_steps - s), batch_size, n, minibatch, n_draws, spec.augment, device)
                cols = slice(s * batch_size, min((s + 1) * batch_size, n))
                rows = samples[:, cols]
                x_raw, y = data.train_x[rows], data.train_y[rows]
                stream = Batch(
                    x=prepare_inputs(x_raw, spec, aug[:, cols] if aug is not None else None),
                    y=y,
                    task=data.class_task[y],
                    from_buffer=torch.zeros(y.shape[1], dtype=torch.bool, device=device),
                )
                if method.tracks_seen_classes:
                    seen_classes = seen_classes | F.one_hot(y, n_classes).amax(dim=1).bool()
                replay: tuple[Batch, ...] = ()
                if n_draws and buffer.n_seen > 0:
                    replay = tuple(plan.batch(buffer, d, s % PLAN_CHUNK_STEPS, spec) for d in range(n_draws))
                step = Step(task, stream, replay, alpha, beta, seen_classes, state.forward, loss_layer)
                terms = _train_step(method, state, step, lr, buffer, slots[:, cols] if slots is not None else None, x_raw)
                for name, value in terms.items():
                    sums[name] = sums[name] + value if name in sums else value.clone()
                if (s + 1) % report_every == 0 or s + 1 == n_steps:
                    report("train", task, epoch, s + 1, n_steps)
        train_s[task] = time.perf_counter() - t0
        loss_means.append({k: (v / (n_steps * c0.epochs)).cpu().numpy() for k, v in sums.items()})
        report("evaluate", task, c0.epochs - 1, n_steps, n_steps)
        t1 = time.perf_counter()
        evaluations.append(evaluate(net, state.params, state.buffers, data, n_runs))
        eval_s[task] = time.perf_counter() - t1
        report("task_done", task, c0.epochs - 1, n_steps, n_steps)
    return _results(cfgs, data, evaluations, loss_means, train_s, eval_s, str(device))


@dataclass(frozen=True)
class _ReplayPlan:
    """Which buffer rows each run replays in a chunk of steps, and how they are augmented."""

    idx: torch.Tensor  # (draws, R, steps, M), -1 = padding
    padded: np.ndarray  # (steps,) bool: some run has fewer than M samples to draw from
    aug: torch.Tensor | None  # (draws, R, steps, M, 3)

    def batch(self, buffer: ReservoirBuffer, draw: int, step: int, spec) -> Batch:
        d = buffer.draw(self.idx[draw, :, step])
        aug = self.aug[draw, :, step] if self.aug is not None else None
        return Batch(
            x=prepare_inputs(d.x, spec, aug),
            y=d.y,
            task=d.task,
            from_buffer=torch.ones(d.y.shape[1], dtype=torch.bool, device=d.y.device),
            valid=d.valid if self.padded[step] else None,
            logits=d.logits,
        )


def _replay_plan(rand, sizes, n_seen, first_step, n_plan_steps, batch_size, n, minibatch, n_draws, augment, device) -> _ReplayPlan:
    # Before step s of this epoch the buffer has seen n_seen + s * batch_size samples.
    seen = n_seen + np.arange(first_step, first_step + n_plan_steps, dtype=np.int64) * batch_size
    seen = np.minimum(seen, n_seen + n)
    avail = np.minimum(seen[None, :], sizes[:, None])  # (R, steps)
    idx = np.stack([
        np.stack([sample_without_replacement(r.replay, avail[i], minibatch) for _ in range(n_draws)])
        for i, r in enumerate(rand)
    ], axis=1)  # (draws, R, steps, M)
    aug = None
    if augment:
        aug = np.stack([draw_crop_flip(r.augment, (n_draws, n_plan_steps, minibatch)) for r in rand], axis=1)
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


__all__ = ["Progress", "plan_groups", "train_group", "train_runs", "SyntheticOptions"]
