"""Benchmark 1, lockstep: 10 seeds of ER on seq-fmnist as one lockstep group, against the same 10
runs one after another through the same code with a group of one.

MLP protocol (1 epoch, batch 10, replay minibatch 10, buffer 200), evaluation after every task and
data loading included (``train_runs`` as a user calls it). The two ways alternate within each
repeat; the runs' results are compared between the two ways.

Usage: python benchmarks/lockstep.py [--repeats 3] [--seeds 10] [--method er] [--device cpu] [--quick]
Targets (2-core CPU, the speed issue's): the 10-seed group <= 4.5 s wall, loading and evaluation
included; the group >= 5x faster than its runs one after another. ``--quick``: 2 seeds on tiny
synthetic data, to check that the script runs (writes benchmarks/results/quick/lockstep.json).
"""

from __future__ import annotations

import numpy as np
from _common import base_parser, begin, load_line, median, say_targets, table, target, timed, write_result

from clbench import RunConfig, SyntheticOptions, load_benchmark, train_runs

TARGET_WALL_S = 4.5  # the 10-seed ER group, loading and evaluation included
TARGET_RATIO = 5.0  # the group against its runs one after another
QUICK = SyntheticOptions(train_per_class=40, test_per_class=10)


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--method", default="er")
    ap.add_argument("--buffer", type=int, default=200)
    args = begin(ap)
    if args.quick:
        args.seeds, args.repeats = min(args.seeds, 2), 1
    bench, syn = ("synthetic", QUICK) if args.quick else ("seq-fmnist", None)
    cfgs = [
        RunConfig(method=args.method, benchmark=bench, synthetic=syn, seed=s, buffer_size=args.buffer)
        for s in range(args.seeds)
    ]
    _, load_s = timed(lambda: load_benchmark(bench, synthetic=syn, device=args.device), args.device)

    rows, group_s, seq_s, breakdown = [], [], [], []
    for rep in range(args.repeats):
        # Alternate which way goes first, so a slow spell of the machine does not favour one.
        order = ("group", "one after another") if rep % 2 == 0 else ("one after another", "group")
        got = {}
        for way in order:
            size = None if way == "group" else 1
            got[way] = timed(lambda size=size: train_runs(cfgs, device=args.device, max_group_size=size), args.device)
        (grouped, g), (alone, a) = got["group"], got["one after another"]
        # Same runs, same results (tests/test_lockstep.py pins this on short runs).
        max_diff = max(abs(x.metrics["faa_class_il"] - y.metrics["faa_class_il"]) for x, y in zip(grouped, alone))
        group_s.append(g)
        seq_s.append(a)
        breakdown.append((grouped[0].train_s.sum(), grouped[0].eval_s.sum()))
        rows.append([rep + 1, f"{g:.2f}", f"{a:.2f}", f"{a / g:.2f}x"])
        print(f"repeat {rep + 1}: group {g:.2f} s, one after another {a:.2f} s", flush=True)

    faa = np.array([r.metrics["faa_class_il"] for r in grouped])
    gm, am = median(group_s), median(seq_s)
    train_m, eval_m = median([b[0] for b in breakdown]), median([b[1] for b in breakdown])
    print()
    print(
        f"{args.seeds} seeds of {args.method} on {bench} (MLP protocol, buffer {args.buffer}), "
        f"wall seconds of train_runs (data loading + training + evaluation after every task):"
    )
    print(table(["repeat", f"group of {args.seeds} (s)", f"{args.seeds} x group of 1 (s)", "ratio"], rows))
    print()
    ratio = am / gm
    print(
        table(
            ["", "median"],
            [
                [f"group of {args.seeds}, wall (s)", f"{gm:.2f}"],
                ["  of which data loading (s, measured apart)", f"{load_s:.2f}"],
                ["  of which training (s)", f"{train_m:.2f}"],
                ["  of which evaluation, 5 times (s)", f"{eval_m:.2f}"],
                [f"{args.seeds} runs one after another, wall (s)", f"{am:.2f}"],
                ["  per run (s)", f"{am / args.seeds:.2f}"],
                ["speed-up of the group (ratio of medians)", f"{ratio:.2f}x"],
                ["median of the per-repeat ratios", f"{median([float(r[3][:-1]) for r in rows]):.2f}x"],
                ["class-IL FAA, mean over seeds (%)", f"{faa.mean():.2f}"],
                ["largest |FAA group - FAA alone| of a run (points)", f"{max_diff:.2f}"],
            ],
        )
    )
    print()
    group = f"{args.seeds}-seed {args.method} group on {bench}"
    targets = [
        target(
            f"{group} <= {TARGET_WALL_S:g} s wall (loading + evaluation included)",
            gm,
            "s",
            gm <= TARGET_WALL_S,
            shown=f"{gm:.2f} s (median of {args.repeats})",
        ),
        target(
            f"that group >= {TARGET_RATIO:g}x faster than its {args.seeds} runs one after another",
            ratio,
            "x",
            ratio >= TARGET_RATIO,
            shown=f"{ratio:.2f}x ({am:.2f} s / {gm:.2f} s, medians of {args.repeats})",
        ),
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "lockstep",
        targets,
        {
            "seeds": args.seeds,
            "method": args.method,
            "benchmark": bench,
            "buffer": args.buffer,
            "repeats": args.repeats,
            "group_s": group_s,
            "one_after_another_s": seq_s,
            "load_s": load_s,
            "train_s": train_m,
            "eval_s": eval_m,
            "faa_class_il_mean": float(faa.mean()),
            "largest_faa_difference_points": float(max_diff),
        },
        args,
    )


if __name__ == "__main__":
    main()
