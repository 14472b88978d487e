"""Benchmark 7, checkpoints: what checkpointing costs a lockstep group.

A 10-run DER++ group on seq-fmnist (MLP protocol, buffer 200: the fig4 workload's groups) trains
three ways in one invocation, alternating within each repeat: without checkpoints, with a
checkpoint at the end of every task only, and with one at the end of every task and every
``--every`` seconds within a task (what ``clbench run --checkpoint-every 30s`` does). Each
checkpoint is the whole group state (parameters, buffer, generators, evaluations) written
atomically (temporary file, fsync, rename); the size and the time of one write are printed too.
The three ways give the same results (checked).

Usage: python benchmarks/checkpoint.py [--repeats 3] [--seeds 10] [--every 30]
Target: checkpoints every task and every 30 s cost under 3 % of the group's wall time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import base_parser, load_line, machine_line, median, setup, table, timed, verdict

from clbench import RunConfig, load_benchmark
from clbench.engine.checkpoint import CheckpointPolicy, CheckpointSummary, checkpoint_key, discard_checkpoint
from clbench.engine.group_state import save_snapshot
from clbench.engine.loop import train_group


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--method", default="derpp")
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between checkpoints within a task")
    args = ap.parse_args()
    setup(args)
    print(machine_line(args.device), flush=True)
    cfgs = [RunConfig(method=args.method, benchmark="seq-fmnist", seed=s, buffer_size=args.buffer).resolve()
            for s in range(args.seeds)]
    data = load_benchmark("seq-fmnist", device=args.device)
    key = checkpoint_key([c.identity() for c in cfgs])
    ways = {"no checkpoints": None, "every task": 1e12, f"every task and every {args.every:g} s": args.every}
    walls: dict[str, list[float]] = {w: [] for w in ways}
    saves: dict[str, list[int]] = {w: [] for w in ways}
    results = {}
    with tempfile.TemporaryDirectory(prefix="clbench-ckpt-bench-") as tmp:
        folder = Path(tmp)
        for rep in range(args.repeats):
            for way in (list(ways) if rep % 2 == 0 else list(reversed(ways))):
                every = ways[way]
                policy = None if every is None else CheckpointPolicy(folder, every)
                reports = []
                out, wall = timed(lambda: train_group(cfgs, data, checkpoint=policy, progress=reports.append),
                                  args.device)
                walls[way].append(wall)
                saves[way].append(sum(p.phase == "checkpoint" for p in reports))
                results[way] = out
                print(f"repeat {rep + 1}: {way}: {wall:.2f} s, {saves[way][-1]} checkpoints", flush=True)
                discard_checkpoint(folder, key)
        size, write_s = _one_write(cfgs, data, folder)

    base = median(walls["no checkpoints"])
    rows = []
    for way in ways:
        m = median(walls[way])
        rows.append([way, f"{m:.2f}", f"{100 * (m - base) / base:+.2f} %", str(int(np.median(saves[way])))])
    print()
    print(f"{args.seeds}-run {args.method} group on seq-fmnist (buffer {args.buffer}), wall seconds of train_group, "
          f"median of {args.repeats}:")
    print(table(["checkpoints", "wall (s)", "cost against none", "checkpoints written"], rows))
    print(f"one checkpoint of this group: {size / 1e6:.1f} MB, written (serialise, fsync, rename) in "
          f"{write_s * 1000:.0f} ms")
    same = all(_same(results["no checkpoints"], results[w]) for w in ways)
    print(f"results identical with and without checkpoints: {same}")
    worst = max(100 * (median(walls[w]) - base) / base for w in ways if ways[w] is not None)
    print(f"target: checkpoints every task and every {args.every:g} s cost under 3 % of the group's wall: "
          f"{worst:+.2f} %, {verdict(worst < 3)}")
    print(load_line())


def _one_write(cfgs, data, folder: Path) -> tuple[int, float]:
    """Size and time (median of 5) of one checkpoint of the group's full state, buffer full."""
    policy = CheckpointPolicy(folder, 1e12)
    reports = []
    train_group(cfgs, data, checkpoint=policy, progress=lambda p: reports.append(time.perf_counter()))
    state = torch.load(folder / f"{checkpoint_key([c.identity() for c in cfgs])}.pt", weights_only=True)["state"]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        summary = CheckpointSummary(key="write-timing", run_ids=(), task=0, n_tasks=0, epoch=0, n_epochs=0, step=0,
                                    n_steps=0, saved_at="")
        save_snapshot(policy, summary, state)
        times.append(time.perf_counter() - t0)
    size = (folder / "write-timing.pt").stat().st_size
    discard_checkpoint(folder, "write-timing")
    return size, median(times)


def _same(a, b) -> bool:
    return all(np.array_equal(x.class_il_correct, y.class_il_correct) and np.array_equal(x.confidence, y.confidence)
               for x, y in zip(a, b))


if __name__ == "__main__":
    main()
