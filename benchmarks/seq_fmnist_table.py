"""The README's results table: seq-fmnist, MLP protocol, buffer 200, 10 seeds per method.

Usage: python benchmarks/seq_fmnist_table.py [--seeds 10] [--device cpu]
Prints a Markdown table: mean +- std (over seeds) of class-IL and task-IL final average accuracy,
and the wall time of each 10-seed lockstep group (data loading, training and evaluation).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from clbench import MaskSpec, RunConfig, train_runs

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
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="rows as METHOD:MASK, e.g. sgd:none er:-inf")
    args = ap.parse_args()
    lines = [
        "| method | mask | class-IL FAA (%) | task-IL FAA (%) | wall, 10-seed group (s) |",
        "|---|---|---|---|---|",
    ]
    for method, mask in ROWS:
        if args.only is not None and f"{method}:{MaskSpec(mask).label}" not in args.only:
            continue
        cfgs = [RunConfig(method=method, seed=s, buffer_size=200, mask=MaskSpec(mask)) for s in range(args.seeds)]
        t0 = time.perf_counter()
        results = train_runs(cfgs, device=args.device)
        wall = time.perf_counter() - t0
        cil = np.array([r.metrics["faa_class_il"] for r in results])
        til = np.array([r.metrics["faa_task_il"] for r in results])
        label = cfgs[0].resolve().mask.label
        lines.append(
            f"| {method} | {label} | {cil.mean():.2f} ± {cil.std():.2f} | {til.mean():.2f} ± {til.std():.2f} | "
            f"{wall:.1f} |"
        )
        print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    print(
        f"\n{args.seeds} seeds; std is the population std over seeds; machine: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}"
    )


if __name__ == "__main__":
    main()
