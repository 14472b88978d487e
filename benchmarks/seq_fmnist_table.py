"""The README's results table: seq-fmnist, MLP protocol, buffer 200, 10 seeds per method.

Usage: python benchmarks/seq_fmnist_table.py [--seeds 10] [--device cpu] [--only er:none er:-inf]
Prints a Markdown table: mean +- population std (over seeds) of class-IL and task-IL final average
accuracy, and the wall time of each 10-seed lockstep group (data loading, training and evaluation).
Writes benchmarks/results/readme/seq_fmnist_table.json; `benchmarks/tables.py --write` puts the
table into README.md (tests/test_benchmark_tables.py fails when the two disagree).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, base_parser, begin, load_line, write_result  # noqa: E402

from clbench import MaskSpec, RunConfig, train_runs  # noqa: E402

ROWS = [
    ("sgd", None),
    ("er", None),
    ("er", -math.inf),
    ("derpp", None),
    ("derpp", -math.inf),
    ("er_ace", None),
    ("joint", None),
]


def main() -> None:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=None, help="rows as METHOD:MASK, e.g. sgd:none er:-inf")
    ap.set_defaults(results_dir=None)
    args = begin(ap)
    if args.results_dir is None and not args.quick:
        args.results_dir = os.path.join(RESULTS_DIR, "readme")
    seeds = 2 if args.quick else args.seeds
    rows = []
    print("| method | mask | class-IL FAA (%) | task-IL FAA (%) | wall, group (s) |\n|---|---|---|---|---|", flush=True)
    for method, mask in ROWS:
        if args.only is not None and f"{method}:{MaskSpec(mask).label}" not in args.only:
            continue
        extra = {"epochs": 1} if args.quick else {}
        cfgs = [RunConfig(method=method, seed=s, buffer_size=200, mask=MaskSpec(mask), **extra) for s in range(seeds)]
        t0 = time.perf_counter()
        results = train_runs(cfgs, device=args.device)
        wall = time.perf_counter() - t0
        cil = np.array([r.metrics["faa_class_il"] for r in results])
        til = np.array([r.metrics["faa_task_il"] for r in results])
        row = {
            "method": method,
            "mask": cfgs[0].resolve().mask.label,
            "class_il_mean": float(cil.mean()),
            "class_il_std": float(cil.std()),
            "task_il_mean": float(til.mean()),
            "task_il_std": float(til.std()),
            "wall_s": wall,
            "class_il": cil.tolist(),
            "task_il": til.tolist(),
        }
        rows.append(row)
        print(
            f"| {method} | {row['mask']} | {row['class_il_mean']:.2f} ± {row['class_il_std']:.2f} | "
            f"{row['task_il_mean']:.2f} ± {row['task_il_std']:.2f} | {wall:.1f} |",
            flush=True,
        )
    print(f"\n{seeds} seeds; std is the population std over seeds; {load_line()}", flush=True)
    write_result("seq_fmnist_table", [], {"seeds": seeds, "rows": rows}, args)


if __name__ == "__main__":
    main()
