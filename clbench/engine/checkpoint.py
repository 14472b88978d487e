"""Checkpoint files of a lockstep group, so hours of training survive an interruption.

A checkpoint is the group's whole training state at a step (``clbench.engine.group_state``:
parameters, BatchNorm statistics, the reservoir buffer, every run's random generators, seen
classes, loss sums, evaluations so far, position), written atomically (temporary file, fsync,
rename) as ``<key>.pt`` with a small ``<key>.json`` summary beside it (which runs, how far) that
listings read without loading tensors. The ``.pt`` file opens with the SHA-256 of the state it holds
(``seal``); a file whose bytes no longer match it (a flipped bit on disk) is refused before resuming
(``unseal``), as a truncated or unreadable one is. The key is a hash of the group's run ids
(``checkpoint_key``), so the same group planned again finds it; runs carry the engine's results
version in their ids, so a checkpoint never resumes a run of another version.

This module knows files, not training, and does not import torch: ``group_state`` serialises the
state and reads it back; ``sweep`` deletes a group's checkpoint once its results are committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_EVERY_S = 600.0  # within a task; every task's end is checkpointed too
ENV_CHECKPOINTS = "CLBENCH_CHECKPOINTS"


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


@dataclass(frozen=True, kw_only=True)
class CheckpointSummary:
    """What a checkpoint file says about itself (its ``.json`` summary)."""

    key: str
    run_ids: tuple[str, ...]
    task: int  # the task being trained (0-based), or n_tasks when all are done
    n_tasks: int
    epoch: int
    n_epochs: int
    step: int  # steps done in this epoch
    n_steps: int
    saved_at: str

    @classmethod
    def now(cls, **fields) -> CheckpointSummary:
        """The summary of a checkpoint saved now (``saved_at`` filled in)."""
        return cls(**fields, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def describe(self) -> str:
        if self.task >= self.n_tasks:
            return f"all {self.n_tasks} tasks trained"
        return (
            f"task {self.task + 1}/{self.n_tasks}, epoch {self.epoch + 1}/{self.n_epochs}, "
            f"step {self.step}/{self.n_steps}"
        )


def parse_duration(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"1.5h"``, ``"45"`` (seconds) -> seconds; ``"0"`` -> 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*", str(text).lower())
    if m is None:
        raise ValueError(f"invalid duration {text!r}: give a number of seconds or e.g. 90s, 10m, 1h (0 turns it off)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def checkpoint_key(run_ids: Sequence[str]) -> str:
    """The checkpoint key of a group: independent of the order its runs were planned in."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:24]


def checkpoint_paths(directory: Path | str, key: str) -> tuple[Path, Path]:
    """The files of checkpoint ``key``: its state (``.pt``) and its summary (``.json``)."""
    directory = Path(directory)
    return directory / f"{key}.pt", directory / f"{key}.json"


SEAL = b"clbench checkpoint, sha256 of the rest:\n"  # then 32 bytes of digest, then the state


class DamagedCheckpoint(ValueError):
    """A checkpoint file whose bytes are not the ones that were written."""


def seal(state: bytes) -> tuple[bytes, ...]:
    """The pieces of a ``.pt`` file holding ``state``: a header with its SHA-256, then the state."""
    return SEAL, hashlib.sha256(state).digest(), state


def unseal(data: bytes) -> memoryview:
    """The state in the bytes of a ``.pt`` file, after checking it against the file's SHA-256;
    ``DamagedCheckpoint`` when they differ. A file written before checksums (no header) is returned
    as it is, unchecked, as it always was."""
    view = memoryview(data)
    if not data.startswith(SEAL):
        return view
    digest, state = view[len(SEAL) : len(SEAL) + 32], view[len(SEAL) + 32 :]
    if hashlib.sha256(state).digest() != digest:
        raise DamagedCheckpoint("its SHA-256 does not match its contents: the file was damaged after it was written")
    return state


def read_checkpoint(directory: Path | str, key: str) -> memoryview | None:
    """The checked state of checkpoint ``key`` (``unseal``), or ``None`` when there is none."""
    pt, _ = checkpoint_paths(directory, key)
    try:
        data = pt.read_bytes()
    except FileNotFoundError:
        return None
    return unseal(data)


def _atomic_write(path: Path, *pieces: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            for data in pieces:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (full disk, an interruption) leaves no temporary file
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def write_checkpoint(policy: CheckpointPolicy, summary: CheckpointSummary, state: bytes) -> None:
    """Write a serialised state and its summary atomically, the state first (a summary always
    describes a state that is there)."""
    policy.directory.mkdir(parents=True, exist_ok=True)
    pt, js = checkpoint_paths(policy.directory, summary.key)
    _atomic_write(pt, *seal(state))
    _atomic_write(js, json.dumps(asdict(summary)).encode())


def discard_checkpoint(directory: Path | str, key: str) -> None:
    """Delete group ``key``'s checkpoint (its results are committed: it is not needed any more)."""
    for path in checkpoint_paths(directory, key):
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
            out.append(
                CheckpointSummary(
                    key=s["key"],
                    run_ids=tuple(s["run_ids"]),
                    task=int(s["task"]),
                    n_tasks=int(s["n_tasks"]),
                    epoch=int(s["epoch"]),
                    n_epochs=int(s["n_epochs"]),
                    step=int(s["step"]),
                    n_steps=int(s["n_steps"]),
                    saved_at=str(s["saved_at"]),
                )
            )
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


def checkpoint_directory(
    registry_file: Path | None, checkpoint_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> Path:
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
