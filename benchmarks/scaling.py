"""Benchmark 2, scaling: wall time per run as the lockstep group grows, and as the buffer grows.

Part 1: ER on seq-fmnist (MLP protocol, buffer 200), groups of 1, 2, 5, 10, 20, 40, 80 seeds.
Part 2: the same 10-seed ER group with buffers of 10 .. 5120 (every run of a group the same size),
plus the buffer's own per-step work measured apart: planning the random slots and draws,
inserting the incoming batch and gathering the replayed rows (10 runs, batch 10, minibatch 10 and
128). Training + evaluation after every task, data loaded once beforehand.

Usage: python benchmarks/scaling.py [--repeats 1] [--groups 1,2,5,10,20,40,80] [--buffers 10,...,5120]
       [--fraction 1.0] [--part groups|buffers|both] [--quick]
Target (2-core CPU): per-run time flat (within 20 %) from buffer 10 to 5120. The per-run speed-up of
each group size against the group of 1 measured here (same script, same repeats) is recorded
without a target. ``--quick``: 2 % of the data, groups of 1 and 2, buffers 10 and 20.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from _common import base_parser, begin, load_line, measurement, median, say_targets, table, target, timed, write_result

from clbench import RunConfig, load_benchmark
from clbench.engine.loop import train_group
from clbench.lockstep.buffer import ReservoirBuffer, reservoir_slots, sample_without_replacement

BUFFERS = "10,20,40,80,160,320,640,1280,2560,5120"


def subset(data, fraction: float):
    """The first ``fraction`` of every task's training samples (``--fraction``, for quick looks)."""
    if fraction >= 1:
        return data
    return dataclasses.replace(
        data, train_task_idx=tuple(i[: max(1, int(len(i) * fraction))] for i in data.train_task_idx)
    )


def time_group(cfgs, data, repeats: int, device: str) -> float:
    resolved = [c.resolve() for c in cfgs]
    return median([timed(lambda: train_group(resolved, data), device)[1] for _ in range(repeats)])


def buffer_step_us(
    size: int, minibatch: int, n_runs: int = 10, batch: int = 10, steps: int = 256, seen: int = 10**5
) -> dict[str, float]:
    """Microseconds per step of the buffer's work with a full buffer of ``size`` (after ``seen``
    samples): random plans (slots + two replay draws, amortised per step), insertion, gathering."""
    rngs = [np.random.default_rng(r) for r in range(n_runs)]
    buf = ReservoirBuffer([size] * n_runs, (1, 28, 28), 10, store_logits=True)
    buf.n_seen = seen
    t0 = time.perf_counter()
    slots = np.stack([reservoir_slots(g, seen, steps * batch, size, batch) for g in rngs])
    avail = np.full(steps, min(seen, size))
    idx = np.stack(
        [np.stack([sample_without_replacement(g, avail, minibatch) for _ in range(2)]) for g in rngs], axis=1
    )
    plan_us = (time.perf_counter() - t0) / steps * 1e6
    slots_t = torch.from_numpy(slots)
    idx_t = torch.from_numpy(idx.transpose(2, 1, 0, 3).reshape(steps, n_runs, 2 * minibatch).copy())
    x = torch.randint(0, 255, (n_runs, batch, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (n_runs, batch))
    logits = torch.randn(n_runs, batch, 10)
    t0 = time.perf_counter()
    for s in range(steps):
        buf.insert(slots_t[:, s * batch : (s + 1) * batch], x, y, y // 2, logits)
    insert_us = (time.perf_counter() - t0) / steps * 1e6
    t0 = time.perf_counter()
    for s in range(steps):
        buf.draw(idx_t[s])
    draw_us = (time.perf_counter() - t0) / steps * 1e6
    return {"plan": plan_us, "insert": insert_us, "draw": draw_us}


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--groups", default="1,2,5,10,20,40,80")
    ap.add_argument("--buffers", default=BUFFERS)
    ap.add_argument("--seeds", type=int, default=10, help="group size of the buffer part")
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of each task's training set")
    ap.add_argument("--part", choices=("groups", "buffers", "both"), default="both")
    args = begin(ap)
    if args.quick:
        args.fraction, args.groups, args.buffers, args.seeds, args.repeats = 0.02, "1,2", "10,20", 2, 1
    data = subset(load_benchmark("seq-fmnist", device=args.device), args.fraction)
    steps = sum(-(-len(i) // 10) for i in data.train_task_idx)
    print(
        f"seq-fmnist, ER, MLP protocol, {steps} steps per run, evaluation after each of the 5 tasks; "
        f"median of {args.repeats} repeat(s)\n",
        flush=True,
    )

    targets, record = [], {"fraction": args.fraction, "repeats": args.repeats, "steps_per_run": steps}
    if args.part in ("groups", "both"):
        rows, base, speedups = [], None, {}
        for r in [int(v) for v in args.groups.split(",")]:
            cfgs = [RunConfig(method="er", seed=s, buffer_size=200) for s in range(r)]
            wall = time_group(cfgs, data, args.repeats, args.device)
            base = base or wall / r
            rows.append([r, f"{wall:.2f}", f"{wall / r:.3f}", f"{r / wall * 3600:.0f}", f"{base / (wall / r):.2f}x"])
            speedups[r] = (wall, base / (wall / r))
            print(f"group of {r}: {wall:.2f} s", flush=True)
        print("\nPart 1: group size (buffer 200)")
        print(
            table(
                [
                    "runs in the group",
                    "group wall (s)",
                    "wall per run (s)",
                    "runs per hour",
                    "per-run speed-up vs group of 1",
                ],
                rows,
            )
        )
        print()
        first = min(speedups)
        targets.append(
            measurement(
                f"per-run speed-up of an ER group on seq-fmnist against a group of {first} (this script, buffer 200)",
                max(v[1] for v in speedups.values()),
                "x",
                shown=", ".join(f"{r}: {v[1]:.2f}x" for r, v in speedups.items()) + f" (median of {args.repeats})",
            )
        )
        record["group_wall_s"] = {str(r): v[0] for r, v in speedups.items()}

    if args.part in ("buffers", "both"):
        rows, per_run, micros = [], [], {}
        for size in [int(v) for v in args.buffers.split(",")]:
            cfgs = [RunConfig(method="er", seed=s, buffer_size=size) for s in range(args.seeds)]
            wall = time_group(cfgs, data, args.repeats, args.device)
            per_run.append(wall / args.seeds)
            micro = {mb: buffer_step_us(size, mb, n_runs=args.seeds) for mb in (10, 128)}
            micros[str(size)] = {"group_wall_s": wall, **{f"minibatch {mb}": micro[mb] for mb in micro}}
            rows.append(
                [
                    size,
                    f"{wall:.2f}",
                    f"{wall / args.seeds:.3f}",
                    f"{micro[10]['plan']:.0f} / {micro[10]['insert']:.0f} / {micro[10]['draw']:.0f}",
                    f"{micro[128]['plan']:.0f} / {micro[128]['insert']:.0f} / {micro[128]['draw']:.0f}",
                ]
            )
            print(f"buffer {size}: {wall:.2f} s", flush=True)
        spread = max(per_run) / min(per_run) - 1
        print(f"\nPart 2: buffer size (group of {args.seeds})")
        print(
            table(
                [
                    "buffer",
                    "group wall (s)",
                    "wall per run (s)",
                    "buffer us/step, minibatch 10: plan / insert / draw",
                    "minibatch 128 (2 draws): plan / insert / draw",
                ],
                rows,
            )
        )
        print(f"\nper-run time, slowest vs fastest buffer: +{100 * spread:.1f} %")
        sizes = [int(v) for v in args.buffers.split(",")]
        targets.append(
            target(
                f"per-run time flat within 20 % from buffer {min(sizes)} to {max(sizes)} ({args.seeds}-run ER group)",
                100 * spread,
                "%",
                spread <= 0.20,
                shown=f"+{100 * spread:.1f} % slowest vs fastest wall",
            )
        )
        record["buffers"] = micros
    say_targets(targets)
    print(load_line())
    write_result("scaling", targets, record, args)


if __name__ == "__main__":
    main()
