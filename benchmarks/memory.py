"""Memory: clbench.memory's estimate of a lockstep group against the peak resident memory of real
groups (the README's "What holds" quotes this script's output).

For each configuration, two fresh processes train a group of R1 and of R2 runs on synthetic data
of the real shapes; each measures its peak resident memory (VmHWM, reset after the data is
loaded) minus its memory before training. What one run adds is (growth(R2) - growth(R1)) /
(R2 - R1), set against ``clbench.memory.run_bytes``; the whole group's growth against
``group_bytes`` (which includes the dataset, loaded before the measurement starts, and torch's own
working memory), and against its budget, ``SAFETY`` x ``group_bytes``. Linux only (/proc).

Usage: python benchmarks/memory.py [--quick]
Target: every group's growth within its budget (``SAFETY`` x the group estimate). ``--quick``: the
MLP ER case only.
"""

from __future__ import annotations

import argparse

from _common import begin, load_line, measurement, output_options, say_targets, table, target, write_result

FMNIST = dict(train_per_class=6000, test_per_class=1000, input_shape=[1, 28, 28])
CASES = [
    ("MLP, ER, seq-fmnist shapes", dict(method="er", buffer_size=200), FMNIST, (2, 34)),
    ("MLP, DER++ (minibatch 128, 2 draws)", dict(method="derpp", buffer_size=200), FMNIST, (2, 34)),
    ("MLP, joint", dict(method="joint", buffer_size=0), {**FMNIST, "train_per_class": 3000}, (2, 18)),
    (
        "ResNet-18 w16 32x32, ER, training peak",
        dict(method="er", buffer_size=50, width=16, batch_size=32, minibatch_size=32),
        dict(train_per_class=40, test_per_class=100, input_shape=[3, 32, 32], backbone="resnet18", augment=True),
        (1, 3),
    ),
    (
        "ResNet-18 w8 16x16, DER++, evaluation peak",
        dict(method="derpp", buffer_size=50, width=8, batch_size=16, minibatch_size=16),
        dict(train_per_class=40, test_per_class=200, input_shape=[3, 16, 16], backbone="resnet18", augment=True),
        (1, 5),
    ),
    (
        "ResNet-18 w16 32x32, ER, evaluation peak (1000 images)",
        dict(method="er", buffer_size=20, width=16, batch_size=8, minibatch_size=8),
        dict(train_per_class=8, test_per_class=500, input_shape=[3, 32, 32], backbone="resnet18", augment=True),
        (1, 2),
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    output_options(ap)
    args = begin(ap)
    from clbench.sweep.ram import SAFETY, measure_group

    head = [
        "configuration",
        "R1, R2",
        "per run: measured (MiB)",
        "estimated (MiB)",
        "estimate / measured",
        "group R2: growth (MiB)",
        "estimate (MiB)",
        "within budget",
    ]
    rows, record = [], []
    for name, kw, syn, (r1, r2) in CASES[:1] if args.quick else CASES:
        small, large = measure_group(kw, syn, r1), measure_group(kw, syn, r2)
        per_run = (large["growth"] - small["growth"]) / (r2 - r1)
        rows.append(
            [
                name,
                f"{r1}, {r2}",
                f"{per_run / 2**20:.2f}",
                f"{large['run'] / 2**20:.2f}",
                f"{large['run'] / per_run:.2f}",
                f"{large['growth'] / 2**20:.0f}",
                f"{large['group'] / 2**20:.0f}",
                "yes" if large["growth"] <= SAFETY * large["group"] else "NO",
            ]
        )
        record.append({"case": name, "runs": [r1, r2], "small": small, "large": large, "per_run_bytes": per_run})
        print(f"measured: {name}", flush=True)
    print(table(head, rows))
    print()
    within = [r for r in rows if r[-1] == "yes"]
    ratios = [float(r[4]) for r in rows]
    targets = [
        target(
            f"every measured group's peak memory within clbench's budget ({SAFETY:g} x its estimate)",
            len(within),
            "groups",
            len(within) == len(rows),
            shown=f"{len(within)} of {len(rows)} groups within budget",
        ),
        measurement(
            "a run's memory: clbench's estimate / measured",
            min(ratios),
            "",
            shown=f"{min(ratios):.2f} .. {max(ratios):.2f} over {len(rows)} configurations",
        ),
    ]
    say_targets(targets)
    print(load_line())
    write_result("memory", targets, {"cases": record, "safety": SAFETY}, args)


if __name__ == "__main__":
    main()
