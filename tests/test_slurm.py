"""The SLURM executor on a real one-node SLURM cluster (``.ci/slurm.sh``), no mocks.

Every driver is ``clbench run --executor slurm`` in a subprocess, as a user runs it; each group is a
SLURM job that slurmd starts on this machine. The results are compared, array by array, with the
same runs computed by the local executor on one thread.

Without a running test cluster (``eval "$(bash .ci/slurm.sh)"`` exports ``SLURM_CONF``) or submitit
these tests are skipped, except under ``CI``, where they fail: CI must prove them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clbench.store import StoreError, open_store

BIN = Path(sys.executable).parent
CLBENCH = BIN / "clbench"
# 4 synthetic ER runs in 2 lockstep groups of 2: each job a few seconds, most of it Python starting.
SWEEP = ["--dataset", "synthetic", "--method", "er", "--mask", "none,-inf", "--seeds", "2", "--group-size", "2"]
# One group of 2 runs that trains long enough (~10 s) to be stopped in the middle, checkpointed every second.
LONG = [
    "--dataset",
    "synthetic",
    "--synthetic-train-per-class",
    "2500",
    "--method",
    "er",
    "--mask",
    "-inf",
    "--seeds",
    "2",
    "--checkpoint-every",
    "1s",
]


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def cluster() -> str:
    """The test cluster's node name (its SLURM_CONF is in the environment)."""
    _require(importlib.util.find_spec("submitit") is not None, "submitit is not installed (pip install -e '.[slurm]')")
    _require(bool(os.environ.get("SLURM_CONF")), 'no test SLURM cluster: start one with eval "$(bash .ci/slurm.sh)"')
    _require(shutil.which("sinfo") is not None, "SLURM's commands are not installed")
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%t"], capture_output=True, text=True, timeout=60)
    _require(done.returncode == 0 and done.stdout.strip(), f"the SLURM cluster does not answer: {done.stderr.strip()}")
    node, state = done.stdout.split()[0].split("|")
    if state != "idle":
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=60)
    return node


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DB"}
    return {**env, "PYTHONUNBUFFERED": "1", "CLBENCH_SLURM_POLL_S": "0.3", "COLUMNS": "200"}


def _slurm_run(tmp: Path, args: list[str], db: str = "r.db", **popen) -> subprocess.Popen:
    command = [CLBENCH, "run", *args, "--db", db, "--executor", "slurm", "--slurm-folder", "jobs", "--retries", "2"]
    return subprocess.Popen(
        command, cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _finish(proc: subprocess.Popen, timeout: float = 150) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """The reference: both sweeps computed by the local executor, one thread."""
    folder = tmp_path_factory.mktemp("local")
    for args in (SWEEP, LONG):
        done = subprocess.run(
            [CLBENCH, "run", *args, "--db", "local.db", "--threads", "1", "--checkpoint-every", "0"],
            cwd=folder,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return folder / "local.db"


def _results(db: Path) -> dict:
    with open_store(db, readonly=True) as store:
        ids = store.transaction(lambda c: c.exec_driver_sql("SELECT run_id FROM runs WHERE status = 'finished'").all())
        return {rid: store.load_result(rid) for (rid,) in ids}


def _same(a, b) -> bool:
    """Equal in every number the run computed (times and where it ran aside)."""
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_equal_to_local(db: Path, local: Path, n_runs: int) -> None:
    mine, reference = _results(db), _results(local)
    assert len(mine) == n_runs
    for rid, res in mine.items():
        ref = reference[rid]
        for f in dataclasses.fields(res):
            if f.name in ("train_s", "eval_s", "device", "versions", "threads"):
                continue
            assert _same(getattr(res, f.name), getattr(ref, f.name)), f"run {rid}: {f.name} differs from local"


def _jobs_submitted(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "jobs" / "jobs").iterdir() if p.name.isdigit())


def _recorded_jobs(db: Path) -> set[str]:
    """The SLURM job ids the runs in ``db`` hold; none while the driver has not created the schema
    yet (the file exists a moment before its tables: a fresh-clone CI run polled in between)."""
    try:
        with open_store(db, readonly=True) as store:
            rows = store.transaction(lambda c: c.exec_driver_sql("SELECT job_id FROM runs").all())
    except StoreError:
        return set()
    return {j for (j,) in rows if j}


def _wait(what: str, condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _job_state(job: str) -> str:
    done = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def _checkpoints(tmp: Path) -> list[Path]:
    return list(tmp.glob("r.checkpoints/*")) if (tmp / "r.checkpoints").is_dir() else []


def test_a_sweep_through_slurm_equals_the_local_one(cluster, local, tmp_path):
    out = _finish(_slurm_run(tmp_path, SWEEP))
    assert re.search(r"done: group 1/2, .* on slurm job \d+ on \S+, saved", out), out
    _assert_equal_to_local(tmp_path / "r.db", local, 4)
    assert len(_jobs_submitted(tmp_path)) == 2  # one job per group
    assert _recorded_jobs(tmp_path / "r.db") == set()  # cleared once the runs finished
    again = _finish(_slurm_run(tmp_path, SWEEP))  # everything cached: nothing submitted
    assert "0 computed" in again and len(_jobs_submitted(tmp_path)) == 2


def test_a_job_cancelled_mid_group_is_submitted_again_and_resumes(cluster, local, tmp_path):
    proc = _slurm_run(tmp_path, LONG)
    try:
        _wait("a checkpoint", lambda: _checkpoints(tmp_path))
        (first,) = _recorded_jobs(tmp_path / "r.db")
        subprocess.run(["scancel", first], check=True, timeout=60)
        out = _finish(proc)
    finally:
        proc.kill()
    assert re.search(r"retrying: group 1/1, .*attempt 2", out), out
    assert re.search(r"resumed: group 1/1, .* from its checkpoint at task", out), out
    assert len(_jobs_submitted(tmp_path)) == 2
    _assert_equal_to_local(tmp_path / "r.db", local, 2)


def test_a_killed_driver_started_again_adopts_its_jobs(cluster, local, tmp_path):
    first = _slurm_run(tmp_path, SWEEP)
    try:
        _wait(
            "both jobs recorded", lambda: (tmp_path / "r.db").exists() and len(_recorded_jobs(tmp_path / "r.db")) == 2
        )
    finally:
        first.send_signal(signal.SIGKILL)  # no cleanup: its jobs go on
        first.communicate(timeout=60)
    submitted = _jobs_submitted(tmp_path)
    assert len(submitted) == 2 and any(_job_state(j) for j in submitted)  # still queued or running
    _finish(_slurm_run(tmp_path, SWEEP))
    assert _jobs_submitted(tmp_path) == submitted  # waited for and collected, none submitted twice
    _assert_equal_to_local(tmp_path / "r.db", local, 4)


def test_two_drivers_on_one_database_compute_each_run_once(cluster, local, tmp_path):
    drivers = [_slurm_run(tmp_path, SWEEP) for _ in range(2)]
    outs = [_finish(d) for d in drivers]
    assert len(_jobs_submitted(tmp_path)) == 2, outs
    computed = [int(m.group(1)) for out in outs for m in [re.search(r"(\d+) computed", out)] if m]
    assert sum(computed) == 4, outs
    _assert_equal_to_local(tmp_path / "r.db", local, 4)


def test_a_node_set_down_mid_group_is_survived(cluster, local, tmp_path):
    proc = _slurm_run(tmp_path, LONG)
    try:
        _wait("a checkpoint", lambda: _checkpoints(tmp_path))
        subprocess.run(["scontrol", "update", f"nodename={cluster}", "state=down", "reason=clbench-test"], check=True)
        time.sleep(2)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={cluster}", "state=resume"], check=False, timeout=60)
    try:
        out = _finish(proc)
    finally:
        proc.kill()
    assert re.search(r"retrying: group 1/1, .*attempt 2", out), out
    assert re.search(r"resumed: group 1/1, .* from its checkpoint at task", out), out
    _assert_equal_to_local(tmp_path / "r.db", local, 2)
