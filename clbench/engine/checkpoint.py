"""Checkpoints of a lockstep group, so hours of training survive an interruption.

A checkpoint is the group's whole training state at a step (see ``clbench.trainer``: parameters,
BatchNorm statistics, the reservoir buffer, every run's random generators, seen classes, loss sums,
evaluations so far, position and learning-rate schedule position), written atomically (temporary
file, fsync, rename) as ``<key>.pt`` with a small ``<key>.json`` summary beside it (which runs, how
far) that listings read without loading tensors. The key is a hash of the group's run ids, so the
same group planned again finds it; runs carry the engine's results version in their ids, so a
checkpoint never resumes a run of another version.

This module knows files, not training: the trainer builds and restores the state; ``sweep``
deletes a group's checkpoint once the group's results are committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clbench.errors import first_line
from clbench.version import __version__
from clbench.version import RESULTS_VERSION

# Bump when the layout of the saved state changes: older files are then ignored (with a warning).
CHECKPOINT_FORMAT = 1
DEFAULT_EVERY_S = 600.0  # within a task; every task's end is checkpointed too
ENV_CHECKPOINTS = "CLBENCH_CHECKPOINTS"

log = logging.getLogger("clbench")


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where a group's checkpoints go and how often: at the end of every task, and within a task
    whenever ``every_s`` seconds of training have passed since the last one."""

    directory: Path
    every_s: float = DEFAULT_EVERY_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if not self.every_s > 0:
            raise ValueError(f"the checkpoint interval must be > 0 seconds, got {self.every_s}")


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint file says about itself (read from its ``.json`` summary)."""

    key: str
    run_ids: tuple[str, ...]
    task: int  # the task being trained (0-based), or n_tasks when all are done
    n_tasks: int
    epoch: int
    n_epochs: int
    step: int  # steps done in this epoch
    n_steps: int
    saved_at: str

    def describe(self) -> str:
        if self.task >= self.n_tasks:
            return f"all {self.n_tasks} tasks trained"
        return (f"task {self.task + 1}/{self.n_tasks}, epoch {self.epoch + 1}/{self.n_epochs}, "
                f"step {self.step}/{self.n_steps}")


def parse_duration(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"1.5h"``, ``"45"`` (seconds) -> seconds; ``"0"`` -> 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*", str(text).lower())
    if m is None:
        raise ValueError(f"invalid duration {text!r}: give a number of seconds or e.g. 90s, 10m, 1h (0 turns it off)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def group_key(run_ids: Sequence[str]) -> str:
    """The checkpoint key of a group: independent of the order its runs were planned in."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:24]


def engine_stamp() -> dict[str, Any]:
    """What must match for a checkpoint to resume bit for bit: format, engine and torch build."""
    return {"format": CHECKPOINT_FORMAT, "results_version": RESULTS_VERSION, "clbench": __version__,
            "torch": str(torch.__version__)}


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.pt", directory / f"{key}.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def save_checkpoint(policy: CheckpointPolicy, key: str, state: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain Python values only) and its summary atomically."""
    policy.directory.mkdir(parents=True, exist_ok=True)
    pt, js = _paths(policy.directory, key)
    buf = io.BytesIO()
    torch.save({"engine": engine_stamp(), "key": key, "state": state}, buf)
    _atomic_write(pt, buf.getvalue())
    _atomic_write(js, json.dumps({"key": key, **summary}).encode())


def load_checkpoint(policy: CheckpointPolicy, key: str) -> dict[str, Any] | None:
    """The saved state of group ``key``, or ``None`` when there is none. A file that cannot be read,
    or was written by another engine, format or torch build, is ignored with one warning line
    (the group then starts over)."""
    pt, _ = _paths(policy.directory, key)
    if not pt.exists():
        return None
    try:
        # weights_only: the file holds tensors and plain values; nothing in it can run code.
        blob = torch.load(pt, map_location="cpu", weights_only=True)
        stamp, saved_key, state = blob["engine"], blob["key"], blob["state"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same case
        log.warning("ignoring the unreadable checkpoint %s (%s); the group starts over", pt, first_line(exc, with_type=True, limit=120))
        return None
    if stamp != engine_stamp() or saved_key != key:
        differs = ", ".join(f"{k} {stamp.get(k)} (here {v})" for k, v in engine_stamp().items() if stamp.get(k) != v)
        log.warning("ignoring the checkpoint %s from another engine (%s); the group starts over", pt,
                    differs or "another group")
        return None
    return state


def discard_checkpoint(directory: Path | str, key: str) -> None:
    """Delete group ``key``'s checkpoint (its results are committed: it is not needed any more)."""
    for path in _paths(Path(directory), key):
        path.unlink(missing_ok=True)


def list_checkpoints(directory: Path | str) -> list[CheckpointSummary]:
    """The checkpoints in ``directory`` (unreadable summaries are skipped)."""
    out = []
    d = Path(directory)
    if not d.is_dir():
        return out
    for js in sorted(d.glob("*.json")):
        try:
            s = json.loads(js.read_text())
            out.append(CheckpointSummary(s["key"], tuple(s["run_ids"]), int(s["task"]), int(s["n_tasks"]),
                                         int(s["epoch"]), int(s["n_epochs"]), int(s["step"]), int(s["n_steps"]),
                                         str(s["saved_at"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def checkpoints_by_run(directory: Path | str) -> dict[str, CheckpointSummary]:
    """Run id -> the checkpoint holding that run's progress (the most advanced one, if several)."""
    out: dict[str, CheckpointSummary] = {}
    for summary in list_checkpoints(directory):
        for rid in summary.run_ids:
            here = out.get(rid)
            if here is None or (summary.task, summary.epoch, summary.step) > (here.task, here.epoch, here.step):
                out[rid] = summary
    return out


def checkpoint_directory(registry_file: Path | None, checkpoint_dir: str | os.PathLike | None = None,
                         env: Mapping[str, str] | None = None) -> Path:
    """Where a sweep keeps its groups' checkpoints: ``checkpoint_dir`` if given, else
    ``$CLBENCH_CHECKPOINTS``, else beside the SQLite file ``registry_file`` of its registry
    (``results.db`` -> ``results.checkpoints/``), else (``None``: a database server)
    ``clbench.checkpoints/`` in the working directory. Every node of a cluster that may resume a
    group must see the same folder."""
    env = os.environ if env is None else env
    if checkpoint_dir is not None:
        return Path(checkpoint_dir).expanduser().absolute()
    if env.get(ENV_CHECKPOINTS):
        return Path(env[ENV_CHECKPOINTS]).expanduser().absolute()
    if registry_file is not None:
        return registry_file.with_name(registry_file.stem + ".checkpoints")
    return Path("clbench.checkpoints").absolute()
