"""Benchmark 12, versus: this tree's trainer against an earlier commit's, side by side in one
invocation, on the workloads of the speed targets: the 10-seed ER group and one ER run (benchmark
1's), and one fig4-shaped DER++ group (10 runs, masks none..2, buffer 200: a ninth of benchmark
3's sweep). Each measurement is a fresh process that imports clbench from its tree (``train_group``
timed inside, after loading the data, evaluation included); the trees alternate within every
repeat, so a slow spell of a shared machine does not favour one. Every workload's per-run results
are compared between the trees (class-IL FAA, largest difference in points).

Usage: python benchmarks/versus.py [--base 8190bbb] [--repeats 3] [--workloads er10,er1,derpp10] [--quick]
Target: results unchanged (every run's class-IL FAA equal in both trees); the speed-ups are recorded
without a target. ``--quick``: one ER run, one repeat.
``--base``: a commit (checked out with ``git worktree`` into a temporary directory) or a directory
holding another clbench tree. 8190bbb is the code the speed issue (round two) was measured on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from _common import (
    REPO,
    base_parser,
    begin,
    chosen,
    load_line,
    measurement,
    median,
    say_targets,
    table,
    target,
    write_result,
)

WORKLOADS = {
    "er10": "ER, 10 seeds as one group",
    "er1": "ER, one run",
    "derpp10": "DER++ buffer 200, 10 runs (fig4's masks) as one group",
}

CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
import torch
from clbench import RunConfig, load_benchmark, train_group  # the public API: both layouts have it
workload = sys.argv[2]
if workload.startswith("derpp"):
    masks = ["none", "-inf", "-10", "-5", "-2", "-1", "0", "1", "2", "none"]
    cfgs = [RunConfig(method="derpp", seed=s, buffer_size=200, mask=m) for s, m in enumerate(masks)]
else:
    cfgs = [RunConfig(method="er", seed=s, buffer_size=200) for s in range(10 if workload == "er10" else 1)]
try:
    resolved = [c.resolve() for c in cfgs]
except Exception:  # an older tree takes the mask as a MaskSpec
    from clbench import MaskSpec
    value = lambda m: None if m == "none" else float(m)
    resolved = [RunConfig(**{**c.__dict__, "mask": MaskSpec(value(c.mask))}).resolve()
                if isinstance(c.mask, str) else c.resolve() for c in cfgs]
data = load_benchmark("seq-fmnist")
t0 = time.perf_counter()
results = train_group(resolved, data)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "faa": [float(r.class_il[-1].mean()) for r in results],
                  "threads": torch.get_num_threads()}))
"""


def measure(tree: str, workload: str) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, tree, workload], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"{workload} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkout(base: str, tmp: str) -> str:
    if os.path.isdir(base):
        return os.path.abspath(base)
    path = os.path.join(tmp, "base")
    subprocess.run(
        ["git", "-C", REPO, "worktree", "add", "--detach", "-f", path, base], check=True, capture_output=True
    )
    return path


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--base", default="8190bbb")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = begin(ap)
    if args.quick:
        args.workloads, args.repeats = "er1", 1
    names = chosen(args.workloads, WORKLOADS, "workload")
    with tempfile.TemporaryDirectory() as tmp:
        base = checkout(args.base, tmp)
        try:
            trees = {"base": base, "this": REPO}
            walls = {(w, t): [] for w in names for t in trees}
            faas = {}
            for rep in range(args.repeats):
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                for w in names:
                    for t in order:
                        got = measure(trees[t], w)
                        walls[(w, t)].append(got["wall"])
                        faas[(w, t)] = got["faa"]
                        print(f"repeat {rep + 1}: {w} {t} {got['wall']:.2f} s ({got['threads']} threads)", flush=True)
        finally:
            if base != os.path.abspath(args.base):
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", base], capture_output=True)
    print()
    print(
        f"train_group wall seconds (evaluation after every task included, data loading not), median of "
        f"{args.repeats}; base = {args.base}, this = the working tree:"
    )
    rows, diffs, targets = [], {}, []
    for w in names:
        b, t = median(walls[(w, "base")]), median(walls[(w, "this")])
        diffs[w] = max(abs(x - y) for x, y in zip(faas[(w, "base")], faas[(w, "this")]))
        rows.append([WORKLOADS[w], f"{b:.2f}", f"{t:.2f}", f"{b / t:.2f}x", f"{diffs[w]:.2f}"])
        targets.append(
            measurement(
                f"{WORKLOADS[w]}: this tree against {args.base}",
                b / t,
                "x",
                shown=f"{b / t:.2f}x ({b:.2f} s / {t:.2f} s, medians of {args.repeats})",
            )
        )
    print(table(["workload", "base (s)", "this (s)", "speed-up", "largest |FAA this - base| (points)"], rows))
    print()
    worst = max(diffs.values())
    targets.insert(
        0,
        target(
            f"results unchanged against {args.base} ({', '.join(names)}): every run's class-IL FAA equal",
            worst,
            "points",
            worst == 0,
            shown=f"largest |FAA this - base| {worst:.4f} points",
        ),
    )
    say_targets(targets)
    print(load_line())
    write_result(
        "versus",
        targets,
        {
            "base": args.base,
            "repeats": args.repeats,
            "walls_s": {f"{w} {t}": v for (w, t), v in walls.items()},
            "faa": {f"{w} {t}": v for (w, t), v in faas.items()},
        },
        args,
    )


if __name__ == "__main__":
    main()
