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
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clbench.version import __version__
from clbench.data.augment import draw_crop_flip
from clbench.lockstep.backbones import BatchedBackbone, BatchedMLP, Params
from clbench.lockstep.buffer import BufferDraw, ReservoirBuffer, sample_without_replacement
from clbench.engine.checkpoint import CheckpointPolicy, group_key, load_checkpoint, save_checkpoint
from clbench.runs.resolved import ResolvedConfig
from clbench.data.loading import ContinualData, prepare_inputs
from clbench.engine.environment import numeric_environment
from clbench.engine.evaluation import Evaluation, evaluate
from clbench.methods import Method, MethodContext, MethodOutput
from clbench.runs.results import Divergence, RunResult
from clbench.lockstep.step import Batch, LossLayer, Step

PLAN_CHUNK_STEPS = 256  # replay plans are drawn this many steps at a time (bounded memory)


@dataclass(frozen=True)
class Progress:
    """A progress report from a training group (passed to the ``progress`` callback)."""

    phase: str  # "resume" (from a checkpoint, at its position), "train" (during a task), "checkpoint" (one was
    # saved at this position), "evaluate", "task_done"
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

    # What a checkpoint saves (init is used once). ``method``: the method's hooks' draws.
    NUMPY_STREAMS = ("order", "reservoir", "replay", "augment", "method")

    def __init__(self, seed: int):
        # The sixth child is new: spawning six leaves the first five (and every earlier run) as they were.
        init, order, reservoir, replay, augment, method = np.random.SeedSequence(seed).spawn(6)
        self.init = torch.Generator().manual_seed(int(init.generate_state(1, np.uint64)[0] >> 1))
        self.order = np.random.default_rng(order)
        self.reservoir = np.random.default_rng(reservoir)
        self.replay = np.random.default_rng(replay)
        self.augment = np.random.default_rng(augment)
        self.method = np.random.default_rng(method)


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
        return BatchedMLP(c * h * w, data.n_classes, head=cfg.head)
    from clbench.lockstep.resnet import BatchedResNet18

    return BatchedResNet18(data.n_classes, in_channels=c, width=cfg.width or 64, head=cfg.head)


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


class _Divergence:
    """Which runs of the group diverged (loss or gradient non-finite), where, and their last finite
    loss; all on the device, so watching costs no synchronisation per step.

    A diverged run is frozen: its parameters and BatchNorm statistics stop changing (its update is
    replaced by zero), so its NaNs never reach its parameters, and the runs beside it, whose
    computations are separate slices of the same tensors, are untouched.
    """

    def __init__(self, n_runs: int, device: torch.device):
        self.diverged = torch.zeros(n_runs, dtype=torch.bool, device=device)
        self.task = torch.full((n_runs,), -1, dtype=torch.int64, device=device)
        self.step = torch.full((n_runs,), -1, dtype=torch.int64, device=device)
        # A run's last finite loss is ``last_finite`` once it diverged, else ``latest`` (the loss of
        # the last step watched): while every run is healthy a step only keeps a reference.
        self.last_finite = torch.full((n_runs,), math.nan, device=device)
        self.latest = self.last_finite
        # On the CPU a look at a value costs nothing: while every run is healthy a step costs one
        # sum per gradient, added up on the host, and the exact per-run look, the bookkeeping and
        # the masking of updates run only once something is not finite (run every step they cost
        # 8 % of a 10-run MLP step: benchmarks/README.md). On a GPU a look would synchronise every
        # step, so the exact look, the bookkeeping and the masking always run there.
        self.check_on_host = device.type == "cpu"
        self.any_diverged = False  # known on the host (CPU only)

    def watch(self, total: torch.Tensor, grads: Sequence[torch.Tensor], task: int, step: int) -> torch.Tensor | None:
        """Flag the runs whose loss ``total`` (R,) or gradients are non-finite at this step; returns
        the (R,) mask of runs that may update, or ``None`` when every run may (known on the CPU)."""
        total = total.detach()
        if self.check_on_host and not self.any_diverged:
            # The fast look: one sum per gradient, added up on the host (a NaN or inf anywhere makes
            # it so; a float32 sum that overflows only sends the step to the exact look below).
            if math.isfinite(float(total.sum()) + sum(float(g.sum()) for g in grads)):
                self.latest = total
                return None
        finite = torch.isfinite(total)
        for g in grads:
            finite = finite & torch.isfinite(g.detach()).flatten(1).all(1)
        self.last_finite = torch.where(self.diverged, self.last_finite, self.latest)
        ok = finite & ~self.diverged
        new = ~ok & ~self.diverged
        self.task = torch.where(new, task, self.task)
        self.step = torch.where(new, step, self.step)
        self.last_finite = torch.where(ok, total, self.last_finite)
        self.latest = self.last_finite
        self.diverged = self.diverged | new
        if self.check_on_host:
            self.any_diverged = bool(self.diverged.any())
            if not self.any_diverged:
                return None
        return ok

    def state(self) -> dict[str, torch.Tensor]:
        last_finite = torch.where(self.diverged, self.last_finite, self.latest)
        return {"diverged": self.diverged, "task": self.task, "step": self.step, "last_finite": last_finite}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        device = self.diverged.device
        self.diverged, self.task, self.step, self.last_finite = (
            state[k].to(device) for k in ("diverged", "task", "step", "last_finite"))
        self.latest = self.last_finite
        self.any_diverged = bool(self.diverged.any())

    def per_run(self) -> list[Divergence | None]:
        state = self.state()
        flags, tasks, steps, losses = (state[k].cpu().tolist() for k in ("diverged", "task", "step", "last_finite"))
        return [Divergence(t, s, loss) if d else None for d, t, s, loss in zip(flags, tasks, steps, losses)]


def _train_step(
    method: Method, state: _NetState, step: Step, lr: dict[str, torch.Tensor], buffer: ReservoirBuffer | None,
    slots: torch.Tensor | None, x_raw: torch.Tensor | None, divergence: _Divergence, step_in_task: int,
    phase: Callable[[str], contextlib.AbstractContextManager], post_step_logits: bool = False,
    terms_of: Callable[[Step], MethodOutput] | None = None,
) -> tuple[tuple[str, ...], torch.Tensor, dict[str, torch.Tensor] | None]:
    """One step for every run: loss terms -> one backward (a second one for the method's reference
    terms, whose gradient the method's ``edit_gradients`` combines with the loss's) -> per-run SGD
    -> buffer insertion. ``terms_of`` replaces ``method.loss_terms`` (the refit's terms).

    Runs whose loss or gradient is not finite take no step from here on (``_Divergence``). With
    ``post_step_logits`` (DER's ``der_logits = "post"``) the buffer stores the logits of a fresh
    forward of the (augmented) stream batch after the update, instead of the training forward's;
    that forward uses batch statistics and leaves the BatchNorm running statistics alone.
    Returns the loss terms' names, the terms and their total stacked ``(n_terms + 1, R)``, and the
    method's new state values (``None``: unchanged).
    """
    bn_before = state.buffers
    with phase("forward and loss"):
        out = (terms_of or method.loss_terms)(step)
        terms = torch.stack(list(out.terms.values())) if out.terms else step.alpha.new_zeros((0, len(step.alpha)))
        total = terms.sum(0)
    if out.terms:  # a method may train nothing on the stream (GDumb only fills its memory)
        with phase("backward"):
            # Summing the runs' losses gives each run's parameters exactly its own gradient.
            params = list(state.params.values())
            grads = torch.autograd.grad(total.sum(), params, retain_graph=bool(out.reference))
            if out.reference:
                reference = torch.autograd.grad(torch.stack(list(out.reference.values())).sum(), params)
                grads = method.edit_gradients(step, grads, reference)
        with phase("optimizer"), torch.no_grad():
            ok = divergence.watch(total, grads, step.task, step_in_task)
            for (name, p), g in zip(state.params.items(), grads):
                if ok is not None:  # a diverged run's update is zero (not lr * NaN)
                    g = torch.where(ok.view(-1, *([1] * (g.dim() - 1))), g, 0.0)
                p.addcmul_(g, lr[name], value=-1.0)  # plain SGD, lr per run (broadcast view), in place
            if ok is not None and state.buffers:  # nor do its BatchNorm running statistics move
                state.buffers = {k: torch.where(ok.view(-1, *([1] * (v.dim() - 1))), v, bn_before[k])
                                 for k, v in state.buffers.items()}
    if buffer is not None and slots is not None:  # after the update, like Mammoth; DER stores the pre-update logits by default
        with phase("buffer insertion"):
            logits = out.stream_logits
            if post_step_logits and logits is not None:
                with torch.no_grad():
                    logits, _ = state.net.forward(state.params, state.buffers, step.stream.x, train=True,
                                                  row_weight=step.stream.valid)
            buffer.insert(slots, x_raw, step.stream.y, step.stream.task, logits)
    return (*out.terms, "total"), torch.cat([terms, total.unsqueeze(0)]).detach(), out.state


@dataclass
class _EpochDraws:
    """What an epoch draws up front for every run: its order of the task's samples, their
    augmentation, and the buffer slots they go to."""

    samples: torch.Tensor  # (R, n) indices into the training set, in each run's order
    aug: torch.Tensor | None  # (R, n, 3)
    slots: torch.Tensor | None  # (R, n), -1 = not stored


def _to_tensors(d: dict) -> dict:
    """Numpy arrays (in nested dicts) as tensors: what a checkpoint can hold."""
    return {k: _to_tensors(v) if isinstance(v, dict) else torch.from_numpy(np.asarray(v)) for k, v in d.items()}


def _to_arrays(d: dict) -> dict:
    return {k: _to_arrays(v) if isinstance(v, dict) else v.numpy() for k, v in d.items()}


class _GroupState:
    """Everything a lockstep group's training has done so far: what a checkpoint holds.

    Position: ``task`` is being trained, ``epoch`` of it, ``step`` steps of that epoch done;
    ``task_begun`` tells whether the task's start (joint's reset, the loss sums) happened.
    ``method_state``: the method's own tensors (``Method.init_state``, updated by its steps and
    end-of-task hook), the one place any method keeps what it carries between steps.
    """

    def __init__(self, cfgs: Sequence[ResolvedConfig], net: BatchedBackbone, data: ContinualData, buffer_sizes,
                 method: Method):
        device = data.device
        self.rand = [RunRandomness(c.seed) for c in cfgs]
        self.init_params, self.init_buffers = net.init([r.init for r in self.rand], device)
        self.net = _NetState(net, _fresh(self.init_params, True), dict(self.init_buffers))
        self.buffer = None
        if method.uses_buffer:
            self.buffer = ReservoirBuffer(buffer_sizes, data.spec.input_shape, data.n_classes,
                                          store_logits=method.stores_logits, device=device)
        n_runs, n_tasks = len(cfgs), data.n_tasks
        self.seen_classes = torch.zeros((n_runs, data.n_classes), dtype=torch.bool, device=device)
        self.divergence = _Divergence(n_runs, device)
        self.task, self.epoch, self.step, self.task_begun = 0, 0, 0, False
        self.names: tuple[str, ...] = ()
        self.sums: torch.Tensor | None = None  # (n_terms + 1, R), summed over the task's steps
        self.evaluations: list[Evaluation] = []
        self.loss_means: list[dict[str, np.ndarray]] = []
        self.train_s, self.eval_s = np.zeros(n_tasks), np.zeros(n_tasks)
        self.draws: _EpochDraws | None = None
        self.seen_at_epoch_start = 0
        self.plan: _ReplayPlan | None = None  # the replay plan of the current chunk of steps
        self.step_draws: dict[str, torch.Tensor] | None = None  # the method's draws for this chunk, (steps, R, ...)
        self.method_state: dict[str, torch.Tensor] = {}

    # -- checkpoints ------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The state as tensors (on the CPU) and plain values, for ``clbench.checkpoint``."""
        cpu = lambda t: None if t is None else t.detach().to("cpu", copy=True)  # noqa: E731
        tensors = lambda d: {k: cpu(v) for k, v in d.items()}  # noqa: E731
        buf = self.buffer
        return {
            "position": [self.task, self.epoch, self.step, self.task_begun],
            "params": tensors(self.net.params), "bn": tensors(self.net.buffers),
            "buffer": None if buf is None else {"x": cpu(buf.x), "y": cpu(buf.y), "task": cpu(buf.task),
                                                "logits": cpu(buf.logits), "n_seen": buf.n_seen,
                                                "held": None if buf.held is None else torch.from_numpy(buf.held.copy())},
            "rng": [{name: getattr(r, name).bit_generator.state for name in RunRandomness.NUMPY_STREAMS}
                    for r in self.rand],
            "seen_classes": cpu(self.seen_classes), "divergence": tensors(self.divergence.state()),
            "names": list(self.names), "sums": cpu(self.sums),
            "evaluations": [_to_tensors(asdict(e)) for e in self.evaluations],
            "loss_means": [_to_tensors(m) for m in self.loss_means],
            "train_s": torch.from_numpy(self.train_s), "eval_s": torch.from_numpy(self.eval_s),
            "draws": None if self.draws is None else {k: cpu(v) for k, v in asdict(self.draws).items()},
            "seen_at_epoch_start": self.seen_at_epoch_start,
            "plan": None if self.plan is None else {"idx": cpu(self.plan.idx), "padded": torch.from_numpy(self.plan.padded),
                                                    "aug": cpu(self.plan.aug)},
            "step_draws": None if self.step_draws is None else tensors(self.step_draws),
            "method_state": tensors(self.method_state),
            # The numbers depend on the threads that split reductions: a resumed group uses these.
            "threads": torch.get_num_threads(),
        }

    def restore(self, saved: dict, device: torch.device) -> None:
        """Continue from ``snapshot()``'s output (taken from the same group)."""
        dev = lambda t: None if t is None else t.to(device)  # noqa: E731
        self.task, self.epoch, self.step, self.task_begun = saved["position"]
        self.net = _NetState(self.net.net, {k: v.to(device).requires_grad_(True) for k, v in saved["params"].items()},
                             {k: v.to(device) for k, v in saved["bn"].items()})
        if self.buffer is not None:
            b = saved["buffer"]
            self.buffer.x, self.buffer.y, self.buffer.task = dev(b["x"]), dev(b["y"]), dev(b["task"])
            self.buffer.logits, self.buffer.n_seen = dev(b["logits"]), int(b["n_seen"])
            self.buffer.held = None if b.get("held") is None else b["held"].numpy().copy()
        for r, states in zip(self.rand, saved["rng"]):
            for name, state in states.items():
                getattr(r, name).bit_generator.state = state
        self.seen_classes = dev(saved["seen_classes"])
        self.divergence.load(saved["divergence"])
        self.names, self.sums = tuple(saved["names"]), dev(saved["sums"])
        self.evaluations = [Evaluation(**_to_arrays(e)) for e in saved["evaluations"]]
        self.loss_means = [_to_arrays(m) for m in saved["loss_means"]]
        self.train_s, self.eval_s = saved["train_s"].numpy().copy(), saved["eval_s"].numpy().copy()
        d = saved["draws"]
        self.draws = None if d is None else _EpochDraws(dev(d["samples"]), dev(d["aug"]), dev(d["slots"]))
        self.seen_at_epoch_start = int(saved["seen_at_epoch_start"])
        p = saved["plan"]
        self.plan = None if p is None else _ReplayPlan(dev(p["idx"]), p["padded"].numpy(), dev(p["aug"]))
        sd = saved.get("step_draws")
        self.step_draws = None if sd is None else {k: v.to(device) for k, v in sd.items()}
        self.method_state = {k: v.to(device) for k, v in saved.get("method_state", {}).items()}

    def summary(self, run_ids: Sequence[str], n_tasks: int, n_epochs: int, n_steps: int) -> dict:
        return {"run_ids": list(run_ids), "task": self.task, "n_tasks": n_tasks, "epoch": self.epoch,
                "n_epochs": n_epochs, "step": self.step, "n_steps": n_steps,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def context(self, task: int, data: ContinualData, cfgs: Sequence[ResolvedConfig]) -> MethodContext:
        """What the method's task-level hooks see now."""
        c0 = cfgs[0]
        return MethodContext(
            task=task, data=data, net=self.net.net, params={k: v.detach() for k, v in self.net.params.items()},
            bn=self.net.buffers, state=self.method_state,
            memory=self.buffer.contents() if self.buffer is not None else None,
            rngs=tuple(r.method for r in self.rand), buffer_sizes=tuple(c.buffer_size for c in cfgs),
            batch_size=c0.batch_size, options=c0.option_values,
        )


def train_group(
    configs: Sequence[ResolvedConfig],
    data: ContinualData,
    *,
    progress: ProgressCallback | None = None,
    phases: PhaseTimes | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> list[RunResult]:
    """Train a lockstep group (configs with one ``group_key``) on ``data``; one result per config.

    The device is the data's device (``load_benchmark(..., device=...)``). ``phases``, when given,
    accumulates the wall time of each phase of training (a profile; see ``PhaseTimes``).
    ``checkpoint``, when given, saves the group's state at the end of every task and every
    ``checkpoint.every_s`` seconds within a task, and resumes from the group's checkpoint if one
    exists: the results are then exactly those of an uninterrupted run (bit for bit on the CPU).
    The caller deletes the checkpoint once it has stored the results
    (``clbench.checkpoint.discard_checkpoint``). A task's end (the method's end-of-task hook, a
    refit, the evaluation) runs between two checkpoints, so an interruption there redoes it.
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
    method = c0.method_instance()
    net = make_backbone(c0, data)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    base_lr, alpha, beta = as_tensor([c.lr for c in cfgs]), as_tensor([c.alpha for c in cfgs]), as_tensor([c.beta for c in cfgs])
    loss_layer = LossLayer([c.mask for c in cfgs], data.class_task)
    sizes = np.array([c.buffer_size for c in cfgs], dtype=np.int64)
    st = _GroupState(cfgs, net, data, sizes, method)
    st.method_state = method.init_state(st.context(0, data, cfgs))
    options = c0.option_values
    run_ids = [c.identity() for c in cfgs]
    ckpt_key = group_key(run_ids)
    batch_size, minibatch = c0.batch_size, c0.minibatch_size
    phase = phases or _untimed
    started = time.perf_counter()
    last_saved = time.monotonic()

    def report(phase: str, task: int, epoch: int, step: int, n_steps: int) -> None:
        if progress is not None:
            progress(Progress(phase, n_runs, task, n_tasks, epoch, c0.epochs, step, n_steps, time.perf_counter() - started))

    def task_pool(task: int) -> torch.Tensor:
        """The rows task ``task`` trains on: (n,), or (R, n) where the method's differ per run."""
        # joint: from the initial weights on tasks 0..task
        pool = torch.cat(data.train_task_idx[: task + 1]) if method.trains_on_seen_tasks else data.train_task_idx[task]
        rows = method.task_rows(st.context(task, data, cfgs), pool)
        return pool if rows is None else rows

    threads_before = torch.get_num_threads()
    if checkpoint is not None and (saved := load_checkpoint(checkpoint, ckpt_key)) is not None:
        st.restore(saved, device)
        if device.type == "cpu" and saved.get("threads"):
            # Train on with the thread count the checkpoint was computed with (whatever this process
            # or its executor chose), so the resumed results are those of an uninterrupted group.
            torch.set_num_threads(int(saved["threads"]))
        task_now = min(st.task, n_tasks - 1)
        report("resume", st.task, st.epoch, st.step, math.ceil(task_pool(task_now).shape[-1] / batch_size))

    def save(n_steps: int) -> None:
        nonlocal last_saved
        save_checkpoint(checkpoint, ckpt_key, st.snapshot(), st.summary(run_ids, n_tasks, c0.epochs, n_steps))
        last_saved = time.monotonic()
        report("checkpoint", st.task, st.epoch, st.step, n_steps)

    try:
        while st.task < n_tasks:
            task = st.task
            pool = task_pool(task)
            n = pool.shape[-1]
            n_steps = math.ceil(n / batch_size)
            n_draws = method.replay_draws if task >= method.replay_from_task else 0
            if not st.task_begun:
                if method.trains_on_seen_tasks:
                    st.net = _NetState(net, _fresh(st.init_params, True), dict(st.init_buffers))
                st.sums, st.task_begun = None, True
            t0 = time.perf_counter()
            while st.epoch < c0.epochs:
                epoch = st.epoch
                lr_runs = base_lr * 0.1 ** sum(epoch >= m for m in c0.lr_milestones)
                lr = {k: lr_runs.view(-1, *([1] * (p.dim() - 1))) for k, p in st.net.params.items()}
                if st.draws is None:
                    with phase("random plans (order, augmentation, buffer)"):
                        st.seen_at_epoch_start = st.buffer.n_seen if st.buffer is not None else 0
                        st.draws = _draw_epoch(st.rand, pool, n, spec.augment, st.buffer, sizes, batch_size, device, method,
                                               data.train_y)
                draws = st.draws
                report_every = max(1, n_steps // 50)
                for s in range(st.step, n_steps):
                    if s % PLAN_CHUNK_STEPS == 0:
                        with phase("random plans (order, augmentation, buffer)"):
                            chunk = min(PLAN_CHUNK_STEPS, n_steps - s)
                            if n_draws:
                                avail = _replay_avail(st.buffer, sizes, st.seen_at_epoch_start, s, chunk, batch_size, n, method)
                                st.plan = _replay_plan(st.rand, avail, minibatch, n_draws, spec.augment, device)
                            st.step_draws = _stacked_draws([method.train_draws(r.method, chunk, n_draws * minibatch, options)
                                                            for r in st.rand], device)
                    with phase("buffer sampling"):
                        planned = st.plan.draw(st.buffer, s % PLAN_CHUNK_STEPS) if n_draws and st.buffer.holds_any() else None
                    with phase("batch assembly and augmentation"):
                        cols = slice(s * batch_size, min((s + 1) * batch_size, n))
                        rows = draws.samples[:, cols]
                        x_raw, y = data.train_x[rows], data.train_y[rows]
                        x, stream, replay = _step_batches(data, x_raw, y, draws.aug[:, cols] if draws.aug is not None else None, planned, n_draws)
                        if method.tracks_seen_classes:
                            st.seen_classes = st.seen_classes | F.one_hot(y, n_classes).amax(dim=1).bool()
                    forward = _StepForward(st.net, x, (stream, *replay))
                    step = Step(task, stream, replay, alpha, beta, st.seen_classes, forward, loss_layer, st.method_state,
                                _replay_slots(planned, n_draws), _step_slice(st.step_draws, s % PLAN_CHUNK_STEPS), options,
                                net, st.net.params)
                    names, terms, new_state = _train_step(
                        method, st.net, step, lr, st.buffer, draws.slots[:, cols] if draws.slots is not None else None,
                        x_raw, st.divergence, epoch * n_steps + s, phase, c0.der_logits == "post")
                    if new_state:
                        st.method_state = {**st.method_state, **new_state}
                    st.names, st.sums = names, terms if st.sums is None else st.sums + terms
                    st.step = s + 1
                    if (s + 1) % report_every == 0 or s + 1 == n_steps:
                        report("train", task, epoch, s + 1, n_steps)
                    if checkpoint is not None and s + 1 < n_steps and time.monotonic() - last_saved >= checkpoint.every_s:
                        st.train_s[task] += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        save(n_steps)
                st.epoch, st.step, st.draws, st.plan, st.step_draws = epoch + 1, 0, None, None, None
            st.loss_means.append(dict(zip(st.names, (st.sums / (n_steps * c0.epochs)).cpu().numpy())))
            with phase("end of task"):
                ended = method.end_task(st.context(task, data, cfgs))
                if ended is not None:
                    st.method_state = dict(ended.state)
                    if ended.memory is not None:
                        st.buffer.replace(ended.memory)
            if method.refits:
                with phase("refit"):
                    st.loss_means[-1] = _refit(method, st, data, cfgs, loss_layer, base_lr, alpha, beta, task,
                                               c0.epochs * n_steps, phase)
            st.train_s[task] += time.perf_counter() - t0
            report("evaluate", task, c0.epochs - 1, n_steps, n_steps)
            t1 = time.perf_counter()
            with phase("evaluation"):
                classifier = method.classifier(st.context(task, data, cfgs))
                st.evaluations.append(evaluate(net, st.net.params, st.net.buffers, data, n_runs, after_task=task,
                                               classifier=classifier))
            st.eval_s[task] = time.perf_counter() - t1
            st.task, st.epoch, st.step, st.task_begun = task + 1, 0, 0, False
            if checkpoint is not None:
                save(n_steps)
            report("task_done", task, c0.epochs - 1, n_steps, n_steps)
        return _results(cfgs, data, st, str(device))
    finally:  # a resumed group's thread count was its own
        torch.set_num_threads(threads_before)


def _stacked_draws(per_run: list[dict[str, np.ndarray]], device) -> dict[str, torch.Tensor] | None:
    """The runs' draws side by side: name -> (steps, R, ...); None when the method draws nothing."""
    if not per_run or not per_run[0]:
        return None
    return {k: torch.from_numpy(np.stack([d[k] for d in per_run], axis=1)).to(device) for k in per_run[0]}


def _step_slice(draws: dict[str, torch.Tensor] | None, step: int) -> dict[str, torch.Tensor]:
    return {} if draws is None else {k: v[step] for k, v in draws.items()}


def _replay_slots(planned: _PlannedDraw | None, n_draws: int) -> tuple[torch.Tensor, ...]:
    """Per replay draw, the buffer slot of each row (R, M), -1 = padding."""
    if planned is None:
        return ()
    m = planned.idx.shape[1] // n_draws
    return tuple(planned.idx[:, i * m : (i + 1) * m] for i in range(n_draws))


def _refit(method: Method, st: _GroupState, data: ContinualData, cfgs: Sequence[ResolvedConfig], loss_layer: LossLayer,
           base_lr: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, task: int, first_step: int, phase,
           ) -> dict[str, np.ndarray]:
    """Train a freshly initialised network on the buffer's rows (``Method.refits``: GDumb) and make it
    the group's network. Each epoch: every run's rows in a fresh order from its own generator, in
    batches of the batch size (a run holding fewer rows than another gets padding rows), augmented
    like replayed rows; lr from ``method.refit_lr``. Returns the mean of each loss term over the
    refit's steps (the task's ``train_loss``)."""
    spec, device, c0 = data.spec, data.device, cfgs[0]
    options, batch_size = c0.option_values, c0.batch_size
    # New initial weights, drawn from each run's own method stream.
    generators = [torch.Generator().manual_seed(int(r.method.integers(0, 2**63 - 1))) for r in st.rand]
    params, bn = st.net.net.init(generators, device)
    state = _NetState(st.net.net, params, bn)
    held = st.buffer.available()
    width = int(held.max())
    n_steps = math.ceil(width / batch_size)
    rows_per_step = [min(batch_size, width - s * batch_size) for s in range(n_steps)]
    names, sums, count = ("total",), None, 0
    for epoch in range(method.refit_epochs(options)):
        order = np.full((len(st.rand), width), -1, dtype=np.int64)
        for i, (r, h) in enumerate(zip(st.rand, held)):
            order[i, :h] = r.method.permutation(h)
        order_t = torch.from_numpy(order).to(device)
        aug = None
        if spec.augment:
            aug = torch.from_numpy(np.stack([draw_crop_flip(r.method, (width,)) for r in st.rand])).to(device)
        step_draws = _stacked_draws([method.refit_draws(r.method, rows_per_step, spec.input_shape, options)
                                     for r in st.rand], device)
        lr_runs = method.refit_lr(epoch, base_lr, options)
        lr = {k: lr_runs.view(-1, *([1] * (p.dim() - 1))) for k, p in state.params.items()}
        for s in range(n_steps):
            idx = order_t[:, s * batch_size : (s + 1) * batch_size]
            rows = st.buffer.draw(idx)
            x = prepare_inputs(rows.x, spec, aug[:, s * batch_size : (s + 1) * batch_size] if aug is not None else None)
            padded = bool((idx < 0).any())
            batch = Batch(x, rows.y, rows.task, torch.ones(idx.shape[1], dtype=torch.bool, device=device),
                          valid=rows.valid if padded else None)
            step = Step(task, batch, (), alpha, beta, st.seen_classes, state.forward, loss_layer, st.method_state, (),
                        _step_slice(step_draws, s), options, st.net.net, state.params)
            names, terms, _ = _train_step(method, state, step, lr, None, None, None, st.divergence, first_step + count,
                                          phase, terms_of=method.refit_terms)
            sums = terms if sums is None else sums + terms
            count += 1
    st.net = state
    if sums is None:
        return {}
    return dict(zip(names, (sums / count).cpu().numpy()))


def _draw_epoch(rand, pool, n, augment, buffer, sizes, batch_size, device, method: Method, train_y) -> _EpochDraws:
    """Each run's order of the ``n`` samples of ``pool`` ((n,), or (R, n) per run), their
    augmentation and buffer slots (``method.plan_insertions``), for one epoch, from that run's own
    generators."""
    order = torch.from_numpy(np.stack([r.order.permutation(n) for r in rand])).to(device)
    samples = pool[order] if pool.dim() == 1 else pool.gather(1, order)
    aug = None
    if augment:
        aug = torch.from_numpy(np.stack([draw_crop_flip(r.augment, (n,)) for r in rand])).to(device)
    slots = None
    if buffer is not None and method.inserts_stream:
        labels, memory = train_y[samples].cpu().numpy(), buffer.y.cpu().numpy()
        slots = torch.from_numpy(np.stack([
            method.plan_insertions(r.reservoir, labels[i], memory[i, :s], buffer.n_seen, int(s), batch_size)
            for i, (r, s) in enumerate(zip(rand, sizes))
        ])).to(device)
    return _EpochDraws(samples, aug, slots)


@dataclass(frozen=True)
class _PlannedDraw:
    """One step's replay rows, all draws side by side (draw d is columns ``d*M .. (d+1)*M``)."""

    rows: BufferDraw  # (R, draws*M, ...)
    aug: torch.Tensor | None  # (R, draws*M, 3)
    padded: bool  # some run has fewer than M samples to draw from: ``rows.valid`` matters
    idx: torch.Tensor  # (R, draws*M) the buffer slot of each row, -1 = padding


@dataclass(frozen=True)
class _ReplayPlan:
    """Which buffer rows each run replays in a chunk of steps, and how they are augmented."""

    idx: torch.Tensor  # (steps, R, draws*M), -1 = padding
    padded: np.ndarray  # (steps,) bool: some run has fewer than M samples to draw from
    aug: torch.Tensor | None  # (steps, R, draws*M, 3)

    def draw(self, buffer: ReservoirBuffer, step: int) -> _PlannedDraw:
        aug = self.aug[step] if self.aug is not None else None
        return _PlannedDraw(buffer.draw(self.idx[step]), aug, bool(self.padded[step]), self.idx[step])


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


def _replay_avail(buffer: ReservoirBuffer, sizes, n_seen, first_step, n_plan_steps, batch_size, n, method: Method) -> np.ndarray:
    """How many rows each run's buffer holds before each step of a chunk: (R, steps)."""
    if not method.inserts_stream:  # written by the method at task ends: constant during a task
        return np.repeat(buffer.available()[:, None], n_plan_steps, axis=1)
    # ``n_seen``: samples the buffer had seen when this epoch started (not when this chunk starts).
    # Before step s of this epoch the buffer has seen n_seen + s * batch_size samples.
    seen = n_seen + np.arange(first_step, first_step + n_plan_steps, dtype=np.int64) * batch_size
    seen = np.minimum(seen, n_seen + n)
    return np.minimum(seen[None, :], sizes[:, None])


def _replay_plan(rand, avail, minibatch, n_draws, augment, device) -> _ReplayPlan:
    """Each run's replay rows (``avail`` (R, steps): rows its buffer holds) and their augmentation."""
    n_plan_steps = avail.shape[1]
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


def _results(cfgs, data, st: _GroupState, device) -> list[RunResult]:
    versions = {**software_versions(), **numeric_environment(device)}  # what the numbers depend on
    evaluations = st.evaluations
    out = []
    for r, (cfg, diverged) in enumerate(zip(cfgs, st.divergence.per_run())):
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
                train_loss={k: np.array([m[k][r] for m in st.loss_means]) for k in st.loss_means[0]},
                train_s=st.train_s.copy(),
                eval_s=st.eval_s.copy(),
                group_size=len(cfgs),
                device=device,
                versions=versions,
                class_names=data.class_names,
                class_il_seen=np.stack([e.class_il_seen[r] for e in evaluations]),
                class_il_seen_correct=np.stack([e.class_il_seen_correct[r] for e in evaluations]),
                divergence=diverged,
                histograms={k: np.stack([e.histograms[k][r] for e in evaluations]) for k in evaluations[0].histograms},
            )
        )
    return out






__all__ = ["PhaseTimes", "Progress", "train_group"]
