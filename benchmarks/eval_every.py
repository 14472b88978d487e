"""Evaluation during training (issue 21): the 10-seed ER group on seq-fmnist (MLP protocol, buffer 200)
with ``--eval-every 50`` on 1,000 samples per seen task, against the same group without it; and the
group without it on this tree against the same on another commit (``--baseline REV``).

Every measurement is ``train_runs`` (data loading, training, the evaluations after each task and, when
on, those during training) in a fresh process, timed inside it (process start and imports excluded);
the variants alternate within each repeat, their order turning from one repeat to the next, so a slow
spell of the machine falls on all alike. ``--baseline REV``: a temporary git worktree of REV, run with
the same python and ``PYTHONPATH`` pointing there; REV is measured with the evaluations too (no target:
the before/after of the evaluations' cost), and the runs' results are compared between the trees
(curve counts and final matrices: the speed-up must change no stored number).

Usage: python benchmarks/eval_every.py [--repeats 3] [--baseline REV] [--quick]
Targets: with the evaluations, the group's wall <= 1.3x its wall without them (ratio of medians);
without them, this tree no slower than REV: the ratio of medians at most 1 + the tolerance, the larger
of 3 % and the repeats' own relative spread (half the range over the median, the larger of the two
trees'): on a shared machine a difference inside the repeats' spread is not a slow-down that was
measured. Measured with no target: the arithmetic floor, the ratio the evaluations' multiply-adds
alone would give at this machine's best measured fp32 matmul rate (what kernel work could reach
without computing less); and the kernel floor, the same multiply-adds at the rate the MLP's own forward
pass reaches at the evaluations' shapes (what the gap left is: the kernels' efficiency at those shapes,
or the rest of an evaluation). ``--quick``: 2 seeds on tiny synthetic data, eval every 5 steps on 10 samples (not a
measurement; writes benchmarks/results/quick/eval_every.json).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from _common import (
    REPO,
    base_parser,
    begin,
    load_line,
    matmul_peak,
    measurement,
    median,
    say_targets,
    table,
    target,
    timed,
    write_result,
)
from startup import worktree

TARGET_RATIO = 1.3  # the group with evaluations every 50 steps against the group without
MIN_TOLERANCE = 0.03  # "no slower": the least slack allowed for the machine's noise

# One group in a fresh process: its wall, the split of it (each run of a group holds the group's
# training and evaluation seconds), and the numbers that must not change.
WORKER = """
import json, sys, time
spec = json.loads(sys.argv[1])
import torch
if spec["threads"]:
    torch.set_num_threads(spec["threads"])
from clbench import RunConfig, SyntheticOptions, train_runs
syn = SyntheticOptions(**spec["synthetic"]) if spec["synthetic"] else None
every = spec["eval_every"] or None
cfgs = [
    RunConfig(method="er", benchmark=spec["benchmark"], synthetic=syn, seed=s, buffer_size=spec["buffer"],
              eval_every=every, eval_samples=spec["eval_samples"] if every else None)
    for s in range(spec["seeds"])
]
import math
from clbench.data.specs import BENCHMARKS
from clbench.lockstep.backbones import BatchedMLP
bench = syn.spec() if syn else BENCHMARKS[spec["benchmark"]]
sizes = BatchedMLP(math.prod(bench.input_shape), bench.n_classes).sizes
t0 = time.perf_counter()
res = train_runs(cfgs)
wall = time.perf_counter() - t0
print(json.dumps({
    "wall_s": wall,
    "train_s": float(sum(r.train_s.sum() for r in res)) / len(res),
    "eval_s": float(sum(r.eval_s.sum() for r in res)) / len(res),
    # multiply-adds of the evaluations during training: every sample evaluated, through every layer
    "curve_macs": sum(int(r.curve.counts.sum()) for r in res if r.curve is not None)
                  * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])),
    "class_il_correct": [r.class_il_correct.tolist() for r in res],
    "task_il_correct": [r.task_il_correct.tolist() for r in res],
    "curve": [None if r.curve is None else [r.curve.steps.tolist(), r.curve.class_il_correct.tolist(),
              r.curve.task_il_correct.tolist()] for r in res],
}))
"""


def run_group(tree: str, spec: dict, cwd: str) -> dict:
    """One group's measurement in a fresh python with ``tree`` first on the path; exits on a failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_DB", "PYTHONPATH")}
    env["PYTHONPATH"] = tree
    cmd = [sys.executable, "-c", WORKER, json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the group failed (exit status {proc.returncode}) in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(xs: list[float]) -> float:
    """Half the range of the repeats over their median: the machine's noise, relative."""
    return (max(xs) - min(xs)) / 2 / median(xs)


def variants(baseline: str | None) -> list[tuple[str, str, bool]]:
    """(name, tree key, evaluations on) of each measurement of a repeat."""
    out = [("this tree, with", "this tree", True), ("this tree, without", "this tree", False)]
    if baseline:
        out += [("baseline, without", "baseline", False), ("baseline, with", "baseline", True)]
    return out


def measure(args, trees: dict[str, str], tmp: str) -> dict[str, list[dict]]:
    quick = args.quick
    base = {
        "benchmark": "synthetic" if quick else "seq-fmnist",
        "synthetic": {"train_per_class": 40, "test_per_class": 20} if quick else None,
        "seeds": args.seeds,
        "buffer": args.buffer,
        "eval_samples": args.eval_samples,
        "threads": args.threads,
    }
    ways = variants(args.baseline)
    got: dict[str, list[dict]] = {name: [] for name, _, _ in ways}
    for rep in range(args.repeats):
        turn = rep % len(ways)  # each variant goes first in turn
        for name, tree, on in ways[turn:] + ways[:turn]:
            got[name].append(run_group(trees[tree], {**base, "eval_every": args.eval_every if on else 0}, tmp))
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{n} {got[n][-1]['wall_s']:.2f} s" for n in got))
    return got


def same_numbers(a: dict, b: dict, curve: bool) -> bool:
    keys = ("class_il_correct", "task_il_correct") + (("curve",) if curve else ())
    return all(a[k] == b[k] for k in keys)


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--baseline", metavar="REV", help="another commit, measured side by side (a git worktree)")
    args = begin(ap)
    if args.quick:
        args.seeds, args.repeats, args.eval_every, args.eval_samples = 2, 1, 5, 10
    trees = {"this tree": REPO}
    with tempfile.TemporaryDirectory(prefix="clbench-eval-every-") as tmp:
        try:
            if args.baseline:
                trees["baseline"] = worktree(args.baseline, tmp)
            got = measure(args, trees, tmp)
        finally:
            if args.baseline and os.path.isdir(os.path.join(tmp, "baseline")):
                subprocess.run(["git", "worktree", "remove", "--force", os.path.join(tmp, "baseline")], cwd=REPO)
                shutil.rmtree(os.path.join(tmp, "baseline"), ignore_errors=True)
    report(args, got)


def report(args, got: dict[str, list[dict]]) -> None:
    walls = {name: [m["wall_s"] for m in ms] for name, ms in got.items()}
    med = {name: median(w) for name, w in walls.items()}
    group = f"{args.seeds}-seed er group on {'synthetic' if args.quick else 'seq-fmnist'} (buffer {args.buffer})"
    print()
    print(f"{group}, wall seconds of train_runs in fresh processes (loading + training + evaluations):")
    rows = [
        [
            name,
            " / ".join(f"{w:.2f}" for w in walls[name]),
            f"{med[name]:.2f}",
            f"{median([m['train_s'] for m in got[name]]):.2f}",
            f"{median([m['eval_s'] for m in got[name]]):.2f}",
        ]
        for name in got
    ]
    print(table(["variant", "repeats (s)", "median (s)", "of which training (s)", "of which evaluation (s)"], rows))
    ours, without = med["this tree, with"], med["this tree, without"]
    ratio = ours / without
    every = f"--eval-every {args.eval_every} on {args.eval_samples} samples per seen task"
    # the evaluations change nothing the training computes: final matrices equal with and without them
    identical = [same_numbers(a, b, False) for a, b in zip(got["this tree, with"], got["this tree, without"])]
    targets = [
        target(
            f"the {group} with {every} <= {TARGET_RATIO:g}x the group without it",
            ratio,
            "x",
            ratio <= TARGET_RATIO,
            shown=f"{ratio:.2f}x ({ours:.2f} s / {without:.2f} s, medians of {args.repeats})",
        )
    ]
    data = {"args": {k: v for k, v in vars(args).items() if k != "results_dir"}, "seconds": walls, "ratio": ratio}
    targets.append(arithmetic_floor(got, without, data))
    targets.append(forward_floor(got, without, data, args.seeds))
    if args.baseline:
        targets += baseline_targets(args, got, med, walls, group, every, data)
    else:
        targets.append(
            target(
                f"without it, the {group} no slower than a baseline commit",
                None,
                "x",
                None,
                why="no --baseline REV given",
            )
        )
    print(f"final matrices the same with and without the evaluations: {all(identical)}")
    print()
    say_targets(targets)
    print(load_line())
    write_result("eval_every", targets, {**data, "same_matrices_with_and_without": all(identical)}, args)


def arithmetic_floor(got: dict[str, list[dict]], without: float, data: dict) -> dict:
    """The least the evaluations can cost without computing something else: their multiply-adds at the
    best fp32 matmul rate measured on this machine (``matmul_peak``: large square products, MKL and
    oneDNN, the threads of the groups), added to the group without them. No target: it says whether
    the 1.3x target is within reach of kernel work on this machine, or only of less arithmetic."""
    macs = got["this tree, with"][0]["curve_macs"]
    rates = matmul_peak()
    seconds, floor, spent = at_rate(got, without, max(rates.values()))
    print(
        f"evaluations during training: {2 * macs / 1e9:.0f} GFLOP; best measured matmul rate "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
        + f": at least {seconds:.2f} s (spent: {spent:.2f} s, {100 * seconds / spent:.0f} % of it arithmetic)"
    )
    data.update(curve_gflop=2 * macs / 1e9, matmul_gflops=rates, arithmetic_s=seconds, arithmetic_floor=floor)
    return measurement(
        "the smallest ratio reachable without computing less: the evaluations' multiply-adds at this machine's "
        "best measured matmul rate, over the group without them",
        floor,
        "x",
        shown=f"{floor:.2f}x ({without:.2f} s + {seconds:.2f} s of arithmetic at {max(rates.values()):.0f} GFLOP/s)",
    )


def at_rate(got: dict[str, list[dict]], without: float, gflops: float) -> tuple[float, float, float]:
    """The evaluations' multiply-adds at ``gflops``: their seconds, the ratio they give added to the group
    without them, and the seconds the evaluations spent (median over the repeats), for the floors."""
    seconds = 2 * got["this tree, with"][0]["curve_macs"] / (gflops * 1e9)
    spent = median([m["eval_s"] for m in got["this tree, with"]])
    return seconds, (without + seconds) / without, spent


def forward_rate(n_runs: int, rows: int, repeats: int = 7) -> float:
    """GFLOP/s of the MLP's batched forward pass (features and head, the kernels the evaluations call)
    over ``n_runs`` runs of ``rows`` own rows each: the evaluations' chunk shape, timed in this process
    with the threads the groups get."""
    import math

    from clbench.data.specs import BENCHMARKS
    from clbench.lockstep.backbones import BatchedMLP

    spec = BENCHMARKS["seq-fmnist"]
    net = BatchedMLP(math.prod(spec.input_shape), spec.n_classes)
    params, buffers = net.init([torch.Generator().manual_seed(r) for r in range(n_runs)])
    params = {k: v.detach() for k, v in params.items()}
    x = torch.randn(n_runs, rows, net.sizes[0])

    def forward() -> object:
        with torch.no_grad():
            return net.head_logits(params, net.features(params, buffers, x, train=False)[0])

    forward()
    times = [timed(forward)[1] for _ in range(repeats)]
    macs = n_runs * rows * sum(a * b for a, b in zip(net.sizes[:-1], net.sizes[1:]))
    return 2 * macs / median(times) / 1e9


def forward_floor(got: dict[str, list[dict]], without: float, data: dict, n_runs: int) -> dict:
    """The evaluations' multiply-adds at the rate the network's own forward pass reaches at the
    evaluations' shapes (``forward_rate``), added to the group without them. No target: against the
    arithmetic floor it says how much of the gap is the kernels' efficiency at these shapes, and against
    the measured ratio how much is everything else an evaluation does (gathers, argmax, bookkeeping)."""
    import inspect

    from clbench.engine.evaluation import evaluate_curve

    rows = inspect.signature(evaluate_curve).parameters["chunk_size"].default  # the rows of one chunk
    rate = forward_rate(n_runs, rows)
    seconds, floor, spent = at_rate(got, without, rate)
    print(
        f"the MLP's forward pass at the evaluations' shapes ({n_runs} runs x {rows} rows): {rate:.0f} GFLOP/s, "
        f"so {seconds:.2f} s for the evaluations' arithmetic ({100 * seconds / spent:.0f} % of the {spent:.2f} s spent)"
    )
    data.update(forward_gflops=rate, forward_s=seconds, forward_floor=floor)
    return measurement(
        "the smallest ratio at the rate the network's forward pass reaches at the evaluations' shapes: their "
        "multiply-adds at that rate, over the group without them",
        floor,
        "x",
        shown=f"{floor:.2f}x ({without:.2f} s + {seconds:.2f} s at {rate:.0f} GFLOP/s)",
    )


def baseline_targets(args, got, med, walls, group, every, data) -> list[dict]:
    """The group without the evaluations against REV's (target), REV's ratio with them (no target),
    and whether the two trees stored the same numbers."""
    slower = med["this tree, without"] / med["baseline, without"]
    tolerance = max(MIN_TOLERANCE, spread(walls["this tree, without"]), spread(walls["baseline, without"]))
    before = med["baseline, with"] / med["baseline, without"]
    same = all(
        same_numbers(a, b, True) for a, b in zip(got["this tree, with"], got["baseline, with"], strict=True)
    ) and all(same_numbers(a, b, False) for a, b in zip(got["this tree, without"], got["baseline, without"]))
    print(f"curves and final matrices the same on this tree and on {args.baseline}: {same}")
    data.update(baseline=args.baseline, tolerance=tolerance, baseline_ratio=before, same_as_baseline=same)
    return [
        target(
            f"without it, the {group} no slower than on {args.baseline} (within the repeats' spread, at least "
            f"{MIN_TOLERANCE:.0%})",
            slower,
            "x",
            slower <= 1 + tolerance,
            shown=f"{slower:.3f}x ({med['this tree, without']:.2f} s / {med['baseline, without']:.2f} s, "
            f"tolerance {tolerance:.1%})",
        ),
        target(
            f"on {args.baseline}: the group with {every} against without",
            before,
            "x",
            None,
            shown=f"{before:.2f}x ({med['baseline, with']:.2f} s / {med['baseline, without']:.2f} s)",
        ),
        target(
            f"the same curves and final matrices on this tree as on {args.baseline}",
            None,
            "",
            same,
            shown="bit-identical" if same else "DIFFERENT",
        ),
    ]


if __name__ == "__main__":
    main()
