"""Start-up: how long a command that trains nothing takes, process start included (issue 19, item 6).

``clbench --help`` and ``clbench runs`` against a 1,000-run SQLite database (written through the
store with made-up results: nothing is trained), each in ``--repeats`` fresh processes, alternating,
side by side with another commit (``--baseline REV``: a temporary git worktree of REV, the same
commands run with ``PYTHONPATH`` pointing there; the database is written by this tree, and REV
reads it as it would its own, so REV must read this tree's schema).

Usage: python benchmarks/startup.py [--repeats 11] [--runs 1000] [--baseline REV] [--quick]
Target: the median of each command under 0.5 s on this tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import REPO, base_parser, begin, load_line, median, say_targets, table, target, write_result

TARGET_S = 0.5
COMMANDS = {"clbench --help": ["--help"], "clbench runs": ["runs"]}


def fake_result(config):
    """A finished run's results with made-up numbers of the right shapes (5 tasks, 10 classes)."""
    from clbench.runs.results import RunResult

    t, k = 5, 10
    acc = np.tril(np.full((t, t), 50.0))
    correct = np.tril(np.full((t, t), 100, dtype=np.int64))
    return RunResult(
        config=config,
        class_il=acc,
        task_il=acc,
        class_il_correct=correct,
        task_il_correct=correct,
        test_counts=np.full(t, 200, dtype=np.int64),
        per_class_accuracy=np.full((t, k), 50.0),
        confidence=np.full((t, k, k), 0.1),
        train_loss={"total": np.ones(t)},
        train_s=np.ones(t),
        eval_s=np.ones(t),
        group_size=1,
        device="cpu",
        versions={"clbench": "benchmark"},
    )


def build_db(path: str, runs: int) -> float:
    """``runs`` finished ER runs (seeds 0..runs-1) written through the store; the seconds it took."""
    from clbench.store import open_store
    from clbench.store.ownership import Owner
    from clbench.sweep.plan import sweep_configs

    t0 = time.perf_counter()
    configs = [c.resolve() for c in sweep_configs(methods=["er"], seeds=range(runs))]
    with open_store(path) as store:
        owner = Owner.current()
        store.claim(configs, owner)
        store.save_results([fake_result(c) for c in configs], owner)
    return time.perf_counter() - t0


def worktree(rev: str, where: str) -> str:
    """A detached git worktree of ``rev`` under ``where``; exits naming a revision git does not know."""
    path = os.path.join(where, "baseline")
    proc = subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"--baseline {rev!r}: git worktree add failed: {proc.stderr.strip().splitlines()[-1:]}")
    return path


def start_s(tree: str, args: list[str], db: str, cwd: str) -> float:
    """Wall seconds of ``python -m clbench ARGS`` with ``tree`` first on the path; exits on a failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_DB", "PYTHONPATH")}
    env["PYTHONPATH"] = tree
    cmd = [sys.executable, "-m", "clbench", *args] + (["--db", db] if args != ["--help"] else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit status {proc.returncode}) in {tree}:\n{proc.stdout[-2000:]}")
    return wall


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=11)
    ap.add_argument("--runs", type=int, default=1000, help="finished runs in the database of `clbench runs`")
    ap.add_argument("--baseline", metavar="REV", help="another commit, measured side by side (a git worktree)")
    args = begin(ap)
    if args.quick:
        args.runs, args.repeats = 20, 2
    trees = {"this tree": REPO}
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="clbench-startup-") as tmp:
        db = os.path.join(tmp, "runs.db")
        print(f"database: {args.runs} finished runs written in {build_db(db, args.runs):.1f} s", flush=True)
        try:
            if args.baseline:
                trees[f"baseline {args.baseline}"] = worktree(args.baseline, tmp)
            for name in trees:
                times[name] = {c: [] for c in COMMANDS}
            for rep in range(args.repeats):  # alternating: the machine's load falls on both alike
                for name, tree in trees.items():
                    for command, argv in COMMANDS.items():
                        times[name][command].append(start_s(tree, argv, db, tmp))
                print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
        finally:
            if args.baseline and os.path.isdir(os.path.join(tmp, "baseline")):
                subprocess.run(["git", "worktree", "remove", "--force", os.path.join(tmp, "baseline")], cwd=REPO)
                shutil.rmtree(os.path.join(tmp, "baseline"), ignore_errors=True)
    print()
    print(f"median start-up over {args.repeats} fresh processes (seconds; `clbench runs`: {args.runs} runs):")
    rows = [[name] + [f"{median(times[name][c]):.2f}" for c in COMMANDS] for name in trees]
    print(table(["tree", *COMMANDS], rows))
    print()
    ours = times["this tree"]
    targets = [
        target(
            f"`{command}` starts in < {TARGET_S:g} s (median of fresh processes"
            + (f", {args.runs}-run database)" if command.endswith("runs") else ")"),
            median(ours[command]),
            "s",
            median(ours[command]) < TARGET_S,
            shown=f"{median(ours[command]):.2f} s"
            + "".join(f", {name}: {median(times[name][command]):.2f} s" for name in trees if name != "this tree"),
        )
        for command in COMMANDS
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "startup",
        targets,
        {"runs": args.runs, "repeats": args.repeats, "baseline": args.baseline, "seconds": times},
        args,
    )


if __name__ == "__main__":
    main()
