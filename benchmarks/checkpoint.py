"""Benchmark 7, checkpoints: what checkpointing costs a lockstep group.

A 10-run DER++ group on seq-fmnist (MLP protocol, buffer 200: the fig4 workload's groups) trains
two ways in one invocation, alternating which goes first from one repeat to the next: without
checkpoints, and with a checkpoint at the end of every task and every ``--every`` seconds within a
task (what ``clbench run --checkpoint-every`` does). The interval is short enough that the timer
fires several times inside every task (a task of this group trains for about 8 s on a 2-core CPU):
the script counts the checkpoints written within tasks, and a run whose timer never fired there
does not count as a measurement of the target. Each checkpoint is the whole group state
(parameters, buffer, generators, evaluations) written atomically (temporary file, fsync,
rename); the size and the time of one write are printed too. Both ways give the same results
(checked).

The cost is judged per repeat (the two ways measured back to back, so a slow spell of a shared
machine hits both) and summarised by the median of those per-repeat costs; the ratio of the
medians is printed beside it.

Usage: python benchmarks/checkpoint.py [--repeats 5] [--seeds 10] [--every 2] [--quick]
Target: checkpoints at every task end and every ``--every`` s within a task cost under 3 % of the
group's wall time. ``--quick``: 2 runs on small synthetic data, a checkpoint every 0.2 s.
"""

from __future__ import annotations

import io
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import base_parser, begin, load_line, measurement, median, say_targets, table, target, timed, write_result

from clbench import RunConfig, SyntheticOptions, load_benchmark, train_group
from clbench.engine.checkpoint import (
    CheckpointPolicy,
    CheckpointSummary,
    checkpoint_key,
    discard_checkpoint,
    read_checkpoint,
)
from clbench.engine.group_state import save_snapshot

TARGET_PCT = 3.0
QUICK = SyntheticOptions(train_per_class=60, test_per_class=10)
NONE, WITH = "no checkpoints", "checkpoints"


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=5)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--method", default="derpp")
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between checkpoints within a task")
    args = begin(ap)
    if args.quick:
        args.seeds, args.repeats, args.every = 2, 1, 0.2
    bench, syn = ("synthetic", QUICK) if args.quick else ("seq-fmnist", None)
    cfgs = [
        RunConfig(method=args.method, benchmark=bench, synthetic=syn, seed=s, buffer_size=args.buffer).resolve()
        for s in range(args.seeds)
    ]
    data = load_benchmark(bench, synthetic=syn, device=args.device)
    key = checkpoint_key([c.identity() for c in cfgs])
    walls: dict[str, list[float]] = {NONE: [], WITH: []}
    at_task_end, within_task, costs = [], [], []
    results, size, write_s = {}, None, None
    with tempfile.TemporaryDirectory(prefix="clbench-ckpt-bench-") as tmp:
        folder = Path(tmp)
        policy = CheckpointPolicy(folder, args.every)
        for rep in range(args.repeats):
            for way in (NONE, WITH) if rep % 2 == 0 else (WITH, NONE):
                reports = []
                out, wall = timed(
                    partial(
                        train_group,
                        cfgs,
                        data,
                        checkpoint=policy if way == WITH else None,
                        progress=reports.append,
                    ),
                    args.device,
                )
                walls[way].append(wall)
                results[way] = out
                saved = [p for p in reports if p.phase == "checkpoint"]
                if way == WITH:
                    # A task's end saves at step 0 of the next task; the timer saves inside a task.
                    within_task.append(sum(p.step > 0 for p in saved))
                    at_task_end.append(len(saved) - within_task[-1])
                    if size is None:  # the group's last checkpoint, buffer full: size and one write's time
                        size, write_s = _one_write(folder, key)
                    discard_checkpoint(folder, key)
                print(
                    f"repeat {rep + 1}: {way}: {wall:.2f} s"
                    + (
                        f", {at_task_end[-1]} checkpoints at task ends, {within_task[-1]} within tasks"
                        if way == WITH
                        else ""
                    ),
                    flush=True,
                )
            costs.append(100 * (walls[WITH][-1] - walls[NONE][-1]) / walls[NONE][-1])

    base, with_m = median(walls[NONE]), median(walls[WITH])
    cost = median(costs)
    n_end, n_within = int(np.median(at_task_end)), int(np.median(within_task))
    print()
    print(
        f"{args.seeds}-run {args.method} group on {bench} (buffer {args.buffer}), wall seconds of train_group, "
        f"{args.repeats} repeat(s), the two ways alternating:"
    )
    rows = [
        [
            rep + 1,
            f"{walls[NONE][rep]:.2f}",
            f"{walls[WITH][rep]:.2f}",
            f"{costs[rep]:+.2f} %",
            f"{at_task_end[rep]} + {within_task[rep]}",
        ]
        for rep in range(args.repeats)
    ]
    rows.append(
        [
            "median",
            f"{base:.2f}",
            f"{with_m:.2f}",
            f"{cost:+.2f} % (ratio of medians: {100 * (with_m - base) / base:+.2f} %)",
            f"{n_end} + {n_within}",
        ]
    )
    print(
        table(
            [
                "repeat",
                f"{NONE} (s)",
                f"every task end and every {args.every:g} s (s)",
                "cost",
                "checkpoints: at task ends + within tasks",
            ],
            rows,
        )
    )
    print(
        f"one checkpoint of this group: {size / 1e6:.1f} MB, written (serialise, fsync, rename) in "
        f"{write_s * 1000:.0f} ms"
    )
    same = _same(results[NONE], results[WITH])
    print(f"results identical with and without checkpoints: {same}")
    print()
    fired = min(within_task) > 0
    why = "" if fired else f"the {args.every:g} s timer never fired within a task: not a measurement of the target"
    if not same:
        why = "the results differ with checkpoints"
    targets = [
        target(
            f"checkpoints at every task end and every {args.every:g} s within a task cost < {TARGET_PCT:g} % "
            f"({args.seeds}-run {args.method} group on {bench})",
            cost,
            "%",
            cost < TARGET_PCT and fired and same,
            shown=f"{cost:+.2f} % (median of {args.repeats} paired repeats; {n_end} checkpoints at task ends + "
            f"{n_within} within tasks per group)",
            why=why,
        ),
        measurement(
            f"one checkpoint of a {args.seeds}-run {args.method} group on {bench}",
            write_s * 1000,
            "ms",
            shown=f"{size / 1e6:.1f} MB written in {write_s * 1000:.0f} ms",
        ),
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "checkpoint",
        targets,
        {
            "seeds": args.seeds,
            "method": args.method,
            "benchmark": bench,
            "buffer": args.buffer,
            "every_s": args.every,
            "repeats": args.repeats,
            "walls_s": walls,
            "costs_pct": costs,
            "checkpoints_at_task_end": at_task_end,
            "checkpoints_within_task": within_task,
            "checkpoint_bytes": size,
            "write_s": write_s,
            "results_identical": same,
        },
        args,
    )


def _one_write(folder: Path, key: str) -> tuple[int, float]:
    """Size and time (median of 5) of one write of the group's last checkpoint (its full state)."""
    state = torch.load(io.BytesIO(read_checkpoint(folder, key)), weights_only=True)["state"]  # sealed file
    policy = CheckpointPolicy(folder, 1e12)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        summary = CheckpointSummary.now(
            key="write-timing", run_ids=(), task=0, n_tasks=0, epoch=0, n_epochs=0, step=0, n_steps=0
        )
        save_snapshot(policy, summary, state)
        times.append(time.perf_counter() - t0)
    size = (folder / "write-timing.pt").stat().st_size
    discard_checkpoint(folder, "write-timing")
    return size, median(times)


def _same(a, b) -> bool:
    return all(
        np.array_equal(x.class_il_correct, y.class_il_correct) and np.array_equal(x.confidence, y.confidence)
        for x, y in zip(a, b)
    )


if __name__ == "__main__":
    main()
