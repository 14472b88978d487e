"""Planning: how long the largest sweep clbench accepts (``MAX_SWEEP_RUNS``, 100,000 runs) takes to
plan, end to end and by step.

- End to end, as a user sees it: ``clbench run --method er --seeds N --dry-run`` in a fresh process
  (Python and clbench starting, the sweep built and checked, resolved, grouped to fit the memory,
  looked up, estimated and printed: the first 200 runs and 50 groups), once with no registry yet
  and once against an existing empty registry (each run looked up in it).
- In one process, the steps of that: ``sweep_configs`` (build and check), ``plan_sweep`` without a
  store (resolve, group, fit the memory budget), ``plan_sweep`` against the registry, the plan's
  time estimate.

Usage: python benchmarks/planning.py [--runs 100000] [--repeats 3] [--quick]
Target: a 100,000-run sweep plans in under 10 s end to end (``clbench run --dry-run``, process start
included), median of the repeats. ``--quick``: 1,000 runs, one repeat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from _common import REPO, base_parser, begin, load_line, measurement, median, say_targets, table, target, write_result

TARGET_S = 10.0


def clbench_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "clbench")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "clbench"]


def dry_run(runs: int, db: str) -> float:
    """Wall seconds of ``clbench run --seeds RUNS --dry-run`` against ``db``; exits on a failure."""
    cmd = clbench_command() + ["run", "--method", "er", "--seeds", str(runs), "--dry-run", "--db", db]
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_DB",)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or f"{runs} to compute" not in proc.stdout:
        sys.exit(f"clbench run --dry-run failed (exit status {proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall


def in_process(runs: int, db: str) -> dict[str, float]:
    """Seconds of each planning step in this process (imports done before the clock starts)."""
    from clbench.store import open_store
    from clbench.sweep.plan import plan_sweep, sweep_configs
    from clbench.sweep.ram import budget_bytes

    budget = budget_bytes("cpu")
    out = {}
    t0 = time.perf_counter()
    configs = sweep_configs(methods=["er"], seeds=range(runs))
    out["sweep_configs: build and check"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_sweep(configs, None, memory_budget=budget)
    out["plan_sweep, no registry: resolve, group, fit memory"] = time.perf_counter() - t0
    with open_store(db, readonly=True) as store:
        t0 = time.perf_counter()
        plan = plan_sweep(configs, store, memory_budget=budget)
        out["plan_sweep against the registry"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _ = plan.estimate_s
    out["the plan's time estimate"] = time.perf_counter() - t0
    assert len(plan.to_run) == runs, (len(plan.to_run), runs)
    return out


def as_a_sweep_does(steps: dict[str, float]) -> float:
    """Build, plan against the registry, estimate: what one sweep's planning does (the plan without
    a registry is measured apart)."""
    return sum(v for k, v in steps.items() if "no registry" not in k)


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--runs", type=int, default=100_000, help="runs in the sweep (seeds 0..N-1 of ER)")
    args = begin(ap)
    if args.quick:
        args.runs, args.repeats = 1000, 1
    from clbench.store import open_store

    fresh_s, existing_s, steps = [], [], []
    with tempfile.TemporaryDirectory(prefix="clbench-plan-bench-") as tmp:
        registry = os.path.join(tmp, "registry.db")
        open_store(registry).close()  # an existing, empty registry: every run is looked up in it
        for rep in range(args.repeats):
            fresh_s.append(dry_run(args.runs, os.path.join(tmp, f"none-{rep}.db")))
            existing_s.append(dry_run(args.runs, registry))
            steps.append(in_process(args.runs, registry))
            print(
                f"repeat {rep + 1}: --dry-run {fresh_s[-1]:.2f} s without a registry, {existing_s[-1]:.2f} s "
                f"against an empty one; in one process {as_a_sweep_does(steps[-1]):.2f} s",
                flush=True,
            )
    print()
    print(f"planning {args.runs} runs (ER on seq-fmnist, seeds 0..{args.runs - 1}), median of {args.repeats}:")
    rows = [
        ["`clbench run --dry-run`, no registry yet (process start included)", f"{median(fresh_s):.2f}"],
        ["`clbench run --dry-run` against an empty registry", f"{median(existing_s):.2f}"],
    ]
    rows += [[f"  in one process: {name}", f"{median([s[name] for s in steps]):.2f}"] for name in steps[0]]
    print(table(["step", "seconds"], rows))
    print()
    wall = max(median(fresh_s), median(existing_s))
    targets = [
        target(
            f"a {args.runs:,}-run sweep plans in < {TARGET_S:g} s (`clbench run --dry-run`, process start included)",
            wall,
            "s",
            wall < TARGET_S,
            shown=f"{median(fresh_s):.2f} s without a registry, {median(existing_s):.2f} s against one "
            f"(median of {args.repeats})",
        ),
        measurement(
            f"planning {args.runs:,} runs in one process (sweep_configs + plan_sweep against a registry)",
            median([as_a_sweep_does(s) for s in steps]),
            "s",
            shown=f"{median([as_a_sweep_does(s) for s in steps]):.2f} s (median of {args.repeats})",
        ),
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "planning",
        targets,
        {
            "runs": args.runs,
            "repeats": args.repeats,
            "dry_run_fresh_s": fresh_s,
            "dry_run_registry_s": existing_s,
            "in_process_s": steps,
        },
        args,
    )


if __name__ == "__main__":
    main()
