"""Everything a lockstep group's training has done so far (``GroupState``), and its checkpoints.

The state is declared once, field by field: each field says how a checkpoint saves and restores it
(``saved(codec)``) or why it needs no saving (``transient(why)``). ``snapshot`` and ``restore``
are derived from that declaration, so a new field cannot be saved and forgotten on restore (or the
other way round); ``tests/test_checkpoint.py`` fails on a field declared neither way. Serialising a
snapshot with torch (``save_snapshot``, ``load_snapshot``) is here too; ``clbench.engine.checkpoint``
handles the files.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from clbench.engine.checkpoint import CheckpointPolicy, CheckpointSummary, checkpoint_paths, write_checkpoint
from clbench.engine.divergence import DivergenceWatch
from clbench.engine.evaluation import Evaluation
from clbench.engine.group import Group
from clbench.engine.plans import EpochDraws, ReplayPlan, RunRandomness
from clbench.engine.update import NetState, fresh
from clbench.errors import first_line
from clbench.lockstep.backbones import Params
from clbench.lockstep.buffer import ReservoirBuffer
from clbench.methods import MethodContext
from clbench.version import RESULTS_VERSION, __version__

# Bump when the layout of the saved state changes: older files are then ignored (with a warning).
# 2: one entry per field of GroupState (1 had "position", "params", "bn" and "rng").
CHECKPOINT_FORMAT = 2

log = logging.getLogger("clbench")


# -- how each kind of field is saved and restored ---------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How a field is saved (``save(value)``: tensors on the CPU and plain values) and restored
    (``load(saved, fresh, device)``, where ``fresh`` is the field's value in a newly started state)."""

    save: Callable[[Any], Any]
    load: Callable[[Any, Any, torch.device], Any]


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", copy=True)


def _dev(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _optional(codec: Codec) -> Codec:
    """``codec`` for a field that may be ``None`` (saved as ``None``)."""
    return Codec(
        lambda v: None if v is None else codec.save(v),
        lambda s, fresh, device: None if s is None else codec.load(s, fresh, device),
    )


def _to_tensors(d: dict) -> dict:
    """Numpy arrays (in nested dicts) as tensors: what a checkpoint can hold."""
    return {k: _to_tensors(v) if isinstance(v, dict) else torch.from_numpy(np.asarray(v)) for k, v in d.items()}


def _to_arrays(d: dict) -> dict:
    return {k: _to_arrays(v) if isinstance(v, dict) else v.numpy() for k, v in d.items()}


def _save_buffer(b: ReservoirBuffer) -> dict:
    return {
        "x": _cpu(b.x),
        "y": _cpu(b.y),
        "task": _cpu(b.task),
        "logits": _cpu(b.logits),
        "n_seen": b.n_seen,
        "held": None if b.held is None else torch.from_numpy(b.held.copy()),
    }


def _load_buffer(s: dict, buffer: ReservoirBuffer, device: torch.device) -> ReservoirBuffer:
    buffer.x, buffer.y, buffer.task = _dev(s["x"], device), _dev(s["y"], device), _dev(s["task"], device)
    buffer.logits, buffer.n_seen = _dev(s["logits"], device), int(s["n_seen"])
    buffer.held = None if s["held"] is None else s["held"].numpy().copy()
    return buffer


def _load_streams(s: list[dict], rand: list[RunRandomness], device: torch.device) -> list[RunRandomness]:
    for r, states in zip(rand, s):
        for name, state in states.items():
            getattr(r, name).bit_generator.state = state
    return rand


def _load_divergence(s: dict, watch: DivergenceWatch, device: torch.device) -> DivergenceWatch:
    watch.load(s)
    return watch


PLAIN_INT = Codec(int, lambda s, fresh, device: int(s))
PLAIN_BOOL = Codec(bool, lambda s, fresh, device: bool(s))
NAMES = Codec(list, lambda s, fresh, device: tuple(s))
TENSOR = Codec(_cpu, lambda s, fresh, device: _dev(s, device))
TENSORS = Codec(
    lambda d: {k: _cpu(v) for k, v in d.items()}, lambda s, fresh, device: {k: v.to(device) for k, v in s.items()}
)
ARRAY = Codec(torch.from_numpy, lambda s, fresh, device: s.numpy().copy())
NETWORK = Codec(
    lambda n: {"params": TENSORS.save(n.params), "bn": TENSORS.save(n.buffers)},
    lambda s, fresh, device: NetState(
        fresh.net,
        {k: v.to(device).requires_grad_(True) for k, v in s["params"].items()},
        TENSORS.load(s["bn"], None, device),
    ),
)
RANDOM_STREAMS = Codec(
    lambda rand: [{name: getattr(r, name).bit_generator.state for name in RunRandomness.NUMPY_STREAMS} for r in rand],
    _load_streams,
)
BUFFER = _optional(Codec(_save_buffer, _load_buffer))
DIVERGENCE = Codec(lambda watch: TENSORS.save(watch.state()), _load_divergence)
EVALUATIONS = Codec(
    lambda evals: [_to_tensors(asdict(e)) for e in evals],
    lambda s, fresh, device: [Evaluation(**_to_arrays(e)) for e in s],
)
LOSS_MEANS = Codec(lambda means: [_to_tensors(m) for m in means], lambda s, fresh, device: [_to_arrays(m) for m in s])
EPOCH_DRAWS = _optional(
    Codec(
        lambda d: {"samples": _cpu(d.samples), "aug": _cpu(d.aug), "slots": _cpu(d.slots)},
        lambda s, fresh, device: EpochDraws(
            _dev(s["samples"], device), _dev(s["aug"], device), _dev(s["slots"], device)
        ),
    )
)
REPLAY_PLAN = _optional(
    Codec(
        lambda p: {"idx": _cpu(p.idx), "padded": torch.from_numpy(p.padded), "aug": _cpu(p.aug)},
        lambda s, fresh, device: ReplayPlan(_dev(s["idx"], device), s["padded"].numpy(), _dev(s["aug"], device)),
    )
)


def saved(codec: Codec, absent_ok: bool = False) -> dict[str, Any]:
    """The metadata of a field a checkpoint saves with ``codec`` (``absent_ok``: added later; a
    checkpoint without it resumes with the fresh state's value)."""
    return {"codec": codec, "absent_ok": absent_ok}


def transient(why: str) -> dict[str, Any]:
    """The metadata of a field a checkpoint does not save, and why it need not."""
    return {"transient": why}


# -- the state --------------------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class GroupState:
    """Everything a lockstep group's training has done so far: what a checkpoint holds.

    Position: ``task`` is being trained, ``epoch`` of it, ``step`` steps of that epoch done;
    ``task_begun`` tells whether the task's start (joint's reset, the loss sums) happened.
    ``method_state``: the method's own tensors (``Method.init_state``, updated by its steps and
    end-of-task hook), the one place any method keeps what it carries between steps.
    """

    rand: list[RunRandomness] = field(metadata=saved(RANDOM_STREAMS))  # each run's generators
    init_params: Params = field(metadata=transient("drawn again from the runs' seeds when the group starts"))
    init_bn: Params = field(metadata=transient("drawn again from the runs' seeds when the group starts"))
    net: NetState = field(metadata=saved(NETWORK))  # parameters and BatchNorm statistics being trained
    buffer: ReservoirBuffer | None = field(metadata=saved(BUFFER))  # None: the method keeps no buffer
    seen_classes: torch.Tensor = field(metadata=saved(TENSOR))  # (R, K) bool
    divergence: DivergenceWatch = field(metadata=saved(DIVERGENCE))
    task: int = field(metadata=saved(PLAIN_INT))
    epoch: int = field(metadata=saved(PLAIN_INT))
    step: int = field(metadata=saved(PLAIN_INT))
    task_begun: bool = field(metadata=saved(PLAIN_BOOL))
    # The method's end-of-task passes done (Method.end_passes); -1: its end-of-task hook not run yet.
    end_pass: int = field(metadata=saved(PLAIN_INT, absent_ok=True))
    names: tuple[str, ...] = field(metadata=saved(NAMES))  # the loss terms' names, "total" last
    sums: torch.Tensor | None = field(metadata=saved(TENSOR))  # (n_terms + 1, R), summed over the task's steps
    evaluations: list[Evaluation] = field(metadata=saved(EVALUATIONS))  # one per task trained
    # On the validation split, one per task trained (empty: the group has no validation split).
    val_evaluations: list[Evaluation] = field(metadata=saved(EVALUATIONS, absent_ok=True))
    loss_means: list[dict[str, np.ndarray]] = field(metadata=saved(LOSS_MEANS))  # per task trained: term -> (R,)
    train_s: np.ndarray = field(metadata=saved(ARRAY))  # (T,) seconds
    eval_s: np.ndarray = field(metadata=saved(ARRAY))  # (T,) seconds
    draws: EpochDraws | None = field(metadata=saved(EPOCH_DRAWS))  # this epoch's, drawn when it started
    seen_at_epoch_start: int = field(metadata=saved(PLAIN_INT))  # samples the buffer had seen when the epoch began
    plan: ReplayPlan | None = field(metadata=saved(REPLAY_PLAN))  # the replay plan of the current chunk of steps
    # The method's draws for the current chunk of steps, (steps, R, ...).
    step_draws: dict[str, torch.Tensor] | None = field(metadata=saved(_optional(TENSORS)))
    method_state: dict[str, torch.Tensor] = field(metadata=saved(TENSORS))

    @classmethod
    def start(cls, group: Group) -> GroupState:
        """The state of ``group`` before it has trained anything."""
        data, device, method = group.data, group.device, group.method
        rand = [RunRandomness(c.seed) for c in group.configs]
        init_params, init_bn = group.net.init([r.init for r in rand], device)
        net = NetState(group.net, fresh(init_params, True), dict(init_bn))
        buffer = None
        if method.uses_buffer:
            buffer = ReservoirBuffer(
                group.buffer_sizes,
                data.spec.input_shape,
                data.n_classes,
                store_logits=method.stores_logits,
                device=device,
            )
        n_runs, n_tasks = group.n_runs, data.n_tasks
        state = cls(
            rand=rand,
            init_params=init_params,
            init_bn=init_bn,
            net=net,
            buffer=buffer,
            seen_classes=torch.zeros((n_runs, data.n_classes), dtype=torch.bool, device=device),
            divergence=DivergenceWatch(n_runs, device),
            task=0,
            epoch=0,
            step=0,
            task_begun=False,
            end_pass=-1,
            names=(),
            sums=None,
            evaluations=[],
            val_evaluations=[],
            loss_means=[],
            train_s=np.zeros(n_tasks),
            eval_s=np.zeros(n_tasks),
            draws=None,
            seen_at_epoch_start=0,
            plan=None,
            step_draws=None,
            method_state={},
        )
        state.method_state = method.init_state(state.context(group, 0))
        return state

    def snapshot(self) -> dict[str, Any]:
        """The saved fields as tensors (on the CPU) and plain values, for ``save_snapshot``."""
        out = {f.name: f.metadata["codec"].save(getattr(self, f.name)) for f in saved_fields()}
        # The numbers depend on the threads that split reductions: a resumed group uses these.
        out["threads"] = torch.get_num_threads()
        return out

    def restore(self, snapshot: dict[str, Any], device: torch.device) -> None:
        """Continue from ``snapshot()``'s output (taken from the same group)."""
        for f in saved_fields():
            if f.name not in snapshot and f.metadata["absent_ok"]:
                continue
            setattr(self, f.name, f.metadata["codec"].load(snapshot[f.name], getattr(self, f.name), device))

    def summary(self, group: Group, n_steps: int) -> CheckpointSummary:
        """What a checkpoint taken now says about itself."""
        return CheckpointSummary.now(
            key=group.checkpoint_key,
            run_ids=group.run_ids,
            task=self.task,
            n_tasks=group.n_tasks,
            epoch=self.epoch,
            n_epochs=group.epochs,
            step=self.step,
            n_steps=n_steps,
        )

    def context(self, group: Group, task: int) -> MethodContext:
        """What the method's task-level hooks see now."""
        return MethodContext(
            task=task,
            data=group.data,
            net=self.net.net,
            params={k: v.detach() for k, v in self.net.params.items()},
            bn=self.net.buffers,
            state=self.method_state,
            memory=self.buffer.contents() if self.buffer is not None else None,
            rngs=tuple(r.method for r in self.rand),
            buffer_sizes=tuple(c.buffer_size for c in group.configs),
            batch_size=group.batch_size,
            options=group.first.option_values,
        )


def saved_fields() -> tuple:
    """The fields of ``GroupState`` a checkpoint saves (each with its ``codec``)."""
    return tuple(f for f in fields(GroupState) if "codec" in f.metadata)


# -- checkpoint files -------------------------------------------------------------------------------


def engine_stamp() -> dict[str, Any]:
    """What must match for a checkpoint to resume bit for bit: format, engine and torch build."""
    return {
        "format": CHECKPOINT_FORMAT,
        "results_version": RESULTS_VERSION,
        "clbench": __version__,
        "torch": str(torch.__version__),
    }


def save_snapshot(policy: CheckpointPolicy, summary: CheckpointSummary, snapshot: dict[str, Any]) -> None:
    """Write ``snapshot`` (a ``GroupState.snapshot()``), stamped with this engine, and its summary."""
    buf = io.BytesIO()
    torch.save({"engine": engine_stamp(), "key": summary.key, "state": snapshot}, buf)
    write_checkpoint(policy, summary, buf.getvalue())


def load_snapshot(policy: CheckpointPolicy, key: str) -> dict[str, Any] | None:
    """The saved state of group ``key``, or ``None`` when there is none. A file that cannot be read,
    or was written by another engine, format or torch build, is ignored with one warning line
    (the group then starts over)."""
    pt, _ = checkpoint_paths(policy.directory, key)
    if not pt.exists():
        return None
    try:
        # weights_only: the file holds tensors and plain values; nothing in it can run code.
        blob = torch.load(pt, map_location="cpu", weights_only=True)
        stamp, saved_key, state = blob["engine"], blob["key"], blob["state"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same case
        log.warning(
            "ignoring the unreadable checkpoint %s (%s); the group starts over",
            pt,
            first_line(exc, with_type=True, limit=120),
        )
        return None
    if stamp != engine_stamp() or saved_key != key:
        differs = ", ".join(f"{k} {stamp.get(k)} (here {v})" for k, v in engine_stamp().items() if stamp.get(k) != v)
        log.warning(
            "ignoring the checkpoint %s from another engine (%s); the group starts over", pt, differs or "another group"
        )
        return None
    return state
