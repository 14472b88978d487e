"""benchmarks/gpu.py, the GPU check in one command, run at its toy size on the CPU: every part runs
and judges what it can there (kill -9 and resume, a deterministic re-run, seq-cifar10 through the
real CIFAR format, a Ray sweep), so that the script cannot rot while no GPU is lent; the GPU targets
are recorded unchecked, never as met."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_part_at_toy_size_on_the_cpu(tmp_path):
    parts = "groups,methods,resume,determinism,cifar" + (",ray" if importlib.util.find_spec("ray") else "")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("CLBENCH_DB", "CLBENCH_CHECKPOINTS", "RAY_ADDRESS"):
        env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu.py"),
            "--device",
            "cpu",
            "--parts",
            parts,
            "--results-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rec = json.loads((tmp_path / "gpu.json").read_text())
    assert rec["quick"] and rec["data"]["toy"]  # a toy-size file: never a measurement
    assert set(rec["data"]["seconds"]) == {*parts.split(","), "total"}
    by_what = {t["target"]: t for t in rec["targets"]}

    def one(words: str) -> dict:
        (hit,) = [t for what, t in by_what.items() if words in what]
        return hit

    # What the CPU can judge is judged, and holds.
    assert one("kill -9 inside a task after the first, and resume")["met"] is True, one("kill -9")
    assert rec["data"]["resume"]["resumed_at"][0] >= 1  # it resumed inside task 2 or later, not from the start
    assert one("deterministic algorithms")["met"] is True
    assert one("real CIFAR-10 format")["met"] is True
    if "ray" in parts:
        assert one("a Ray sweep of 2 groups")["met"] is True
        assert one("a Ray group on a fractional GPU")["met"] is None
    # The GPU targets are not judged on the CPU.
    assert one("a group of 10 >= 5x")["met"] is None
    assert one("peak device memory")["met"] is None
    methods = one("each method's group against ER's")["shown"]
    assert all(f"{m} " in methods for m in ("derpp", "xder", "icarl", "agem", "gdumb")), methods
    assert "== summary" in rec["output"] and "wrote" not in rec["output"]
