"""Benchmark 3, sweep: the paper's accuracy-vs-mask figure (fig4) on seq-fmnist, end to end
through the command line: DER++, baseline + 8 mask values, 10 seeds, buffer 200 (90 runs),
``clbench run`` into a fresh SQLite registry (so nothing is cached), data loading, training,
evaluation after every task and the registry writes included.

Usage: python benchmarks/sweep.py [--seeds 10] [--masks none,-inf,-10,-5,-2,-1,0,1,2] [--repeats 1]
       [--group-size N] [--threads N]
Target (2-core CPU): under 3 minutes wall.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from _common import REPO, base_parser, load_line, machine_line, median, table, verdict

MASKS = "none,-inf,-10,-5,-2,-1,0,1,2"


def clbench_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "clbench")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "clbench"]


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--masks", default=MASKS)
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--method", default="derpp")
    ap.add_argument("--group-size", type=int, default=None, help="passed to clbench run (default: one group of all runs)")
    args = ap.parse_args()
    print(machine_line(args.device), flush=True)
    n_runs = args.seeds * len(args.masks.split(","))
    walls, rows = [], []
    for rep in range(args.repeats):
        tmp = tempfile.mkdtemp(prefix="clbench-sweep-")
        try:
            cmd = clbench_command() + [
                "run", "--method", args.method, "--dataset", "seq-fmnist", "--buffer", str(args.buffer),
                "--mask", args.masks, "--seeds", str(args.seeds), "--device", args.device,
                "--db", os.path.join(tmp, "results.db"), "--experiment", "benchmark-fig4",
            ]
            if args.group_size:
                cmd += ["--group-size", str(args.group_size)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if rep == 0:
                print("command: clbench " + " ".join(cmd[len(clbench_command()):]).replace(tmp, "$TMP"), flush=True)
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
    print(f"fig4 sweep: {args.method} on seq-fmnist, buffer {args.buffer}, masks {args.masks}, {args.seeds} seeds = {n_runs} runs")
    print(table(["repeat", "wall (s)", "per run (s)", "runs per hour", "runs finished in the registry"], rows))
    print(f"\ntarget: the fig4 sweep under 3 minutes wall: {wall:.1f} s (median), {verdict(wall < 180)}")
    print(load_line())


if __name__ == "__main__":
    main()
