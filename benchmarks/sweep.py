"""Benchmark 3, sweep: the paper's accuracy-vs-mask figure (fig4) on seq-fmnist, end to end
through the command line: DER++, baseline + 8 mask values, 10 seeds, buffer 200 (90 runs),
``clbench run`` into a fresh SQLite registry (so nothing is cached), data loading, training,
evaluation after every task and the registry writes included.

Usage: python benchmarks/sweep.py [--seeds 10] [--masks none,-inf,-10,-5,-2,-1,0,1,2] [--repeats 1]
       [--group-size N] [--threads N] [--quick]
Target (2-core CPU, the speed issue's): the 90-run sweep <= 240 s wall. ``--quick``: 2 runs on tiny
synthetic data, to check that the script runs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from _common import REPO, base_parser, begin, load_line, median, say_targets, table, target, write_result

MASKS = "none,-inf,-10,-5,-2,-1,0,1,2"
TARGET_S = 240.0
QUICK_DATA = ["--dataset", "synthetic", "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "4"]


def clbench_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "clbench")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "clbench"]


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--masks", default=MASKS)
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--method", default="derpp")
    ap.add_argument(
        "--group-size", type=int, default=None, help="passed to clbench run (default: one group of all runs)"
    )
    args = begin(ap)
    if args.quick:
        args.seeds, args.masks, args.repeats = 1, "none,0", 1
    data_options = QUICK_DATA if args.quick else ["--dataset", "seq-fmnist"]
    n_runs = args.seeds * len(args.masks.split(","))
    walls, rows = [], []
    for rep in range(args.repeats):
        tmp = tempfile.mkdtemp(prefix="clbench-sweep-")
        try:
            cmd = clbench_command() + [
                "run",
                "--method",
                args.method,
                *data_options,
                "--buffer",
                str(args.buffer),
                "--mask",
                args.masks,
                "--seeds",
                str(args.seeds),
                "--device",
                args.device,
                "--db",
                os.path.join(tmp, "results.db"),
                "--experiment",
                "benchmark-fig4",
            ]
            if args.group_size:
                cmd += ["--group-size", str(args.group_size)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if rep == 0:
                print("command: clbench " + " ".join(cmd[len(clbench_command()) :]).replace(tmp, "$TMP"), flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stdout[-4000:])
                raise SystemExit(f"clbench run failed with exit status {proc.returncode}")
            with sqlite3.connect(os.path.join(tmp, "results.db")) as conn:
                finished = conn.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone()[0]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        walls.append(wall)
        rows.append([rep + 1, f"{wall:.1f}", f"{wall / n_runs:.2f}", f"{n_runs / wall * 3600:.0f}", finished])
        print(f"repeat {rep + 1}: {wall:.1f} s", flush=True)
    wall = median(walls)
    print()
    bench = data_options[1]
    print(
        f"fig4 sweep: {args.method} on {bench}, buffer {args.buffer}, masks {args.masks}, {args.seeds} seeds = "
        f"{n_runs} runs"
    )
    print(table(["repeat", "wall (s)", "per run (s)", "runs per hour", "runs finished in the registry"], rows))
    print()
    all_finished = all(row[-1] == n_runs for row in rows)
    targets = [
        target(
            f"fig4 sweep ({n_runs} {args.method} runs on {bench}) <= {TARGET_S:g} s through `clbench run`",
            wall,
            "s",
            wall <= TARGET_S and all_finished,
            shown=f"{wall:.1f} s (median of {args.repeats})",
            why="" if all_finished else "not every run finished",
        )
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "sweep",
        targets,
        {
            "runs": n_runs,
            "method": args.method,
            "benchmark": bench,
            "masks": args.masks,
            "seeds": args.seeds,
            "walls_s": walls,
            "finished": [row[-1] for row in rows],
        },
        args,
    )


if __name__ == "__main__":
    main()
