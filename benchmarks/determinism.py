"""Determinism, measured: how far one run's numbers move when only what they should not depend on
changes (the README's "What holds" quotes this script's output).

Run seed 0 of ER on seq-fmnist (MLP protocol, buffer 200) as: (a) alone with 1 thread, twice;
(b) inside a lockstep group of ``--group`` seeds, 1 thread; (c) alone with 2 threads; (d) inside
the group with 2 threads. Against a reference ((a); for (d): (c)), each prints whether every stored
number is bit-identical, the difference in final average accuracy (class-IL and task-IL, points),
the largest difference over both accuracy matrices (points), and how much the final class-IL
correct counts differ (summed over tasks, of 10,000 test samples). OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE, unless set): that changes no number, only how two threads behave on a
busy shared machine (spinning ones slowed the 2-thread run 50x there).

Usage: python benchmarks/determinism.py [--group 10] [--seed 0] [--method er] [--quick]
Targets: the run again, and the run in the group, with 1 thread: bit-identical to the run alone (the
2-thread rows are recorded without a target: they are expected to differ at rounding level).
``--quick``: small synthetic data, a group of 3.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (by _common)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import begin, load_line, measurement, output_options, say_targets, table, target, write_result  # noqa: E402

from clbench import RunConfig, SyntheticOptions, load_benchmark  # noqa: E402

QUICK = SyntheticOptions(train_per_class=100, test_per_class=20)
from clbench.engine.loop import train_group  # noqa: E402


def bitwise(a, b) -> bool:
    pairs = [
        (a.class_il_correct, b.class_il_correct),
        (a.task_il_correct, b.task_il_correct),
        (a.confidence, b.confidence),
    ] + [(a.train_loss[k], b.train_loss[k]) for k in a.train_loss]
    return all(np.array_equal(x, y, equal_nan=True) for x, y in pairs)


def compare(name: str, ref, other) -> list[str]:
    faa_c = other.metrics["faa_class_il"] - ref.metrics["faa_class_il"]
    faa_t = other.metrics["faa_task_il"] - ref.metrics["faa_task_il"]
    max_diff = max(np.abs(other.class_il - ref.class_il).max(), np.abs(other.task_il - ref.task_il).max())
    flips = int(np.abs(other.class_il_correct[-1] - ref.class_il_correct[-1]).sum())
    return [
        name,
        "yes" if bitwise(ref, other) else "no",
        f"{faa_c:+.3f}",
        f"{faa_t:+.3f}",
        f"{max_diff:.3f}",
        str(flips),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", type=int, default=10, help="size of the lockstep group of (b)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="er")
    output_options(ap)
    torch.set_num_threads(1)
    args = begin(ap)
    if args.quick:
        args.group = 3
    bench, syn = ("synthetic", QUICK) if args.quick else ("seq-fmnist", None)
    data = load_benchmark(bench, synthetic=syn)
    cfg = RunConfig(method=args.method, benchmark=bench, synthetic=syn, seed=args.seed, buffer_size=200).resolve()
    others = [
        RunConfig(method=args.method, benchmark=bench, synthetic=syn, seed=s, buffer_size=200).resolve()
        for s in range(args.seed + 1, args.seed + args.group)
    ]

    def alone(threads: int):
        torch.set_num_threads(threads)
        return train_group([cfg], data)[0]

    def grouped(threads: int):
        torch.set_num_threads(threads)
        return train_group([cfg, *others], data)[0]

    ref = alone(1)
    rows = [
        compare("alone, 1 thread, again (vs alone, 1 thread)", ref, alone(1)),
        compare(f"in a group of {args.group}, 1 thread (vs alone, 1 thread)", ref, grouped(1)),
    ]
    two = alone(2)
    rows += [
        compare("alone, 2 threads (vs alone, 1 thread)", ref, two),
        compare(f"in a group of {args.group}, 2 threads (vs alone, 2 threads)", two, grouped(2)),
    ]
    print(
        f"reference: seed {args.seed} of {args.method} on {bench} alone, 1 thread: FAA class-IL "
        f"{ref.metrics['faa_class_il']:.2f}, task-IL {ref.metrics['faa_task_il']:.2f}; recorded environment "
        f"{ {k: v for k, v in ref.versions.items() if k not in ('platform', 'python', 'numpy', 'clbench')} }"
    )
    head = [
        "variant of the same run",
        "bit-identical",
        "FAA class-IL diff",
        "FAA task-IL diff",
        "max matrix diff (points)",
        "final class-IL row: correct counts, sum of |diff|",
    ]
    print(table(head, rows))
    print()
    run = f"seed {args.seed} of {args.method} on {bench}"
    targets = [
        target(
            f"{run} with 1 thread, {again}: bit-identical to the run alone",
            None,
            "",
            rows[i][1] == "yes",
            shown=f"bit-identical: {rows[i][1]}; FAA class-IL {rows[i][2]} points",
        )
        for i, again in ((0, "computed again"), (1, f"in a group of {args.group}"))
    ]
    targets += [
        measurement(
            f"{run}: {rows[i][0]}",
            float(rows[i][2]),
            "points",
            shown=f"bit-identical: {rows[i][1]}; FAA class-IL {rows[i][2]}, task-IL {rows[i][3]} "
            f"points; largest matrix difference {rows[i][4]} points",
        )
        for i in (2, 3)
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "determinism",
        targets,
        {
            "group": args.group,
            "seed": args.seed,
            "method": args.method,
            "benchmark": bench,
            "rows": [dict(zip(head, r)) for r in rows],
            "environment": ref.versions,
        },
        args,
    )


if __name__ == "__main__":
    main()
