"""Benchmark 8, distributed: one seq-fmnist sweep (ER, buffer 200, 10 seeds x masks none, -inf,
-2, 0 = 40 runs in 4 lockstep groups of 10) through the local executor and through the Ray
executor with two single-threaded workers (a local Ray cluster on this machine, one CPU per
group), side by side in one invocation; then Ray's overhead per group.

- Sweep: ``clbench.sweep.execute`` into a fresh SQLite registry per variant, each variant in a
  fresh process (data loading and registry writes included; for Ray, connecting to the cluster
  is timed apart). The local executor runs with torch's default threads and with one thread
  (``--local-threads``); the target compares Ray with the faster of them.
- Overhead per group, submit to result without the training: ``--probes`` sweeps of one tiny
  synthetic group (1 SGD run, 4 samples per class) one after another; per sweep, the driver's
  wall time of ``execute`` minus the group's own training and evaluation time measured on the
  worker. What is left: claiming the runs, shipping the configs, scheduling, starting the task,
  returning and saving the results. Plus what the sweep's real data adds: a task that receives
  the seq-fmnist data from the object store (as every group task does) and returns at once.

Usage: python benchmarks/distributed.py [--seeds 10] [--masks none,-inf,-2,0] [--group-size 10] [--probes 10]
       [--local-threads N] [--quick]
Targets (2-core CPU): Ray >= 1.3x the local executor's speed; Ray's overhead per group < 1 s.
``--quick``: 4 runs in 2 groups on small synthetic data, 2 probes, the local executor with torch's
default threads only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import REPO, begin, load_line, median, output_options, say_targets, table, target, write_result

MASKS = "none,-inf,-2,0"
TARGET_SPEEDUP = 1.3
TARGET_OVERHEAD_S = 1.0
QUICK_SYNTHETIC = {"train_per_class": 100, "test_per_class": 10}

CHILD = r"""
import json, os, sys, tempfile, time
args = json.loads(sys.argv[1])
import torch
if args["threads"]:
    torch.set_num_threads(args["threads"])
from clbench.data.specs import SyntheticOptions
from clbench.sweep.executors import make_executor
bench_syn = SyntheticOptions(**args["synthetic"]) if args["synthetic"] else None
bench = "synthetic" if bench_syn else "seq-fmnist"
from clbench.store import open_store
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs

t0 = time.perf_counter()
executor = make_executor(args["executor"], **args["options"])
executor.start()
start_s = time.perf_counter() - t0
out = {"start_s": start_s, "describe": executor.describe(), "threads": torch.get_num_threads(), "slots": 1}
if args["executor"] == "ray":
    import ray
    out["slots"] = int(ray.cluster_resources().get("CPU", 1)) // args["options"]["cpus_per_group"]
with tempfile.TemporaryDirectory() as tmp:
    # The sweep.
    configs = sweep_configs(methods=["er"], masks=args["masks"], seeds=range(args["seeds"]), buffers=[200],
                            benchmark=bench, **({"synthetic": bench_syn} if bench_syn else {}))
    group_s = []
    with open_store(os.path.join(tmp, "sweep.db")) as store:
        plan = plan_sweep(configs, store, max_group_size=args["group_size"])
        t0 = time.perf_counter()
        done = execute(plan, store, executor=executor,
                       on_group_done=lambda rs: group_s.append(float(rs[0].train_s.sum() + rs[0].eval_s.sum())))
        out["sweep_s"] = time.perf_counter() - t0
    out.update(n_runs=len(done.computed), n_groups=len(plan.groups), group_compute_s=group_s)
    # The overhead probes: one tiny group per sweep, one sweep after another.
    tiny = SyntheticOptions(train_per_class=4, test_per_class=2)
    probes = []
    for i in range(args["probes"]):
        with open_store(os.path.join(tmp, f"probe{i}.db")) as store:
            plan = plan_sweep(sweep_configs(methods=["sgd"], seeds=[i], benchmark="synthetic", synthetic=tiny), store)
            compute = []
            t0 = time.perf_counter()
            execute(plan, store, executor=executor,
                    on_group_done=lambda rs: compute.append(float(rs[0].train_s.sum() + rs[0].eval_s.sum())))
            probes.append({"wall_s": time.perf_counter() - t0, "compute_s": compute[0]})
    out["probes"] = probes
    out["shipping_s"] = []
    if args["executor"] == "ray":
        # What a group of this sweep adds to a probe's overhead: its data. The executor puts the
        # benchmark in the object store once; every group task receives it as an argument.
        import ray
        from clbench.sweep.executors import DataSource, GroupTask
        data_ref = ray.put(DataSource().load(GroupTask(0, (configs[0].resolve(),))))

        @ray.remote(num_cpus=1)
        def receive(data):
            return int(data.train_x.shape[0])

        ray.get(receive.remote(data_ref))  # a warm worker, as in the sweep
        for _ in range(args["probes"]):
            t0 = time.perf_counter()
            ray.get(receive.remote(data_ref))
            out["shipping_s"].append(time.perf_counter() - t0)
executor.close()
print("RESULT " + json.dumps(out))
"""


def run_variant(name: str, executor: str, options: dict, threads: int | None, args) -> dict:
    spec = {
        "executor": executor,
        "options": options,
        "threads": threads,
        "seeds": args.seeds,
        "masks": args.masks.split(","),
        "group_size": args.group_size,
        "probes": args.probes,
        "synthetic": QUICK_SYNTHETIC if args.quick else None,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RAY_ADDRESS")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} failed (exit status {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_s"] = wall
    print(
        f"{name} ({result['threads'] if executor == 'local' else 'one per group'} torch threads): sweep "
        f"{result['sweep_s']:.1f} s ({result['describe']})",
        flush=True,
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--masks", default=MASKS)
    ap.add_argument("--group-size", type=int, default=10, help="runs per lockstep group")
    ap.add_argument(
        "--local-threads",
        default="default,1",
        help="torch threads of the local executor, one variant each (default: torch's choice)",
    )
    ap.add_argument("--probes", type=int, default=10, help="tiny one-group sweeps for the overhead")
    output_options(ap)
    args = begin(ap)
    if args.quick:
        args.seeds, args.masks, args.group_size, args.local_threads, args.probes = 2, "none,0", 2, "default", 2
    local_threads = [None if t == "default" else int(t) for t in args.local_threads.split(",")]
    print(
        f"command: python benchmarks/distributed.py --seeds {args.seeds} --masks {args.masks} "
        f"--group-size {args.group_size} --local-threads {args.local_threads} --probes {args.probes}",
        flush=True,
    )
    variants = [
        (
            f"local, {'default' if t is None else t} thread{'s' if t != 1 else ''}",
            run_variant("local", "local", {}, t, args),
        )
        for t in local_threads
    ]
    ray = run_variant("ray", "ray", {"cpus_per_group": 1, "retries": 3}, None, args)
    variants.append(("ray", ray))

    rows = []
    for name, r in variants:
        probe_over = [p["wall_s"] - p["compute_s"] for p in r["probes"]]
        shipping = f"{median(r['shipping_s']):.3f}" if r["shipping_s"] else "- (none)"
        rows.append(
            [
                name,
                r["threads"] if name != "ray" else "1 per group",
                f"{r['start_s']:.2f}",
                f"{r['sweep_s']:.1f}",
                f"{sum(r['group_compute_s']):.1f}",
                " ".join(f"{s:.1f}" for s in r["group_compute_s"]),
                f"{median(probe_over):.3f} / {max(probe_over):.3f}",
                shipping,
            ]
        )
    n_runs, n_groups = ray["n_runs"], ray["n_groups"]
    print()
    where = "small synthetic data" if args.quick else "seq-fmnist"
    print(
        f"sweep: er on {where}, buffer 200, masks {args.masks}, {args.seeds} seeds = {n_runs} runs in "
        f"{n_groups} groups of {args.group_size}"
    )
    print(
        table(
            [
                "executor",
                "torch threads",
                "start (s)",
                "sweep wall (s)",
                "sum of group compute (s)",
                "each group's compute (s)",
                "tiny group's overhead, median / max (s)",
                "the sweep's data to a task, median (s)",
            ],
            rows,
        )
    )
    print()
    for name, r in variants[:-1]:
        print(
            f"Ray executor vs {name} (sweep wall, start excluded): {r['sweep_s'] / ray['sweep_s']:.2f}x "
            f"({r['sweep_s']:.1f} s / {ray['sweep_s']:.1f} s); with Ray's start included: "
            f"{r['sweep_s'] / (ray['sweep_s'] + ray['start_s']):.2f}x"
        )
    best_name, best = min(variants[:-1], key=lambda v: v[1]["sweep_s"])
    speedup = best["sweep_s"] / ray["sweep_s"]
    ray_over = median([p["wall_s"] - p["compute_s"] for p in ray["probes"]]) + median(ray["shipping_s"])
    print(
        f"Ray ran {ray['slots']} groups at once (a local cluster of this machine's {ray['slots']} CPUs, one per "
        f"group); "
        f"their use: {sum(ray['group_compute_s']) / (ray['slots'] * ray['sweep_s']):.0%} "
        f"(sum of group compute / ({ray['slots']} x sweep wall))"
    )
    targets = [
        target(
            f"Ray executor >= {TARGET_SPEEDUP:g}x the local one ({n_runs}-run sweep in {n_groups} groups, "
            f"{ray['slots']} groups at once)",
            speedup,
            "x",
            speedup >= TARGET_SPEEDUP,
            shown=f"{speedup:.2f}x against the local executor's fastest variant ({best_name}: "
            f"{best['sweep_s']:.1f} s / {ray['sweep_s']:.1f} s)",
        ),
        target(
            f"Ray overhead per group < {TARGET_OVERHEAD_S:g} s",
            ray_over,
            "s",
            ray_over < TARGET_OVERHEAD_S,
            shown=f"{ray_over:.3f} s (a tiny group's overhead + the sweep's data to its task, medians of "
            f"{args.probes})",
        ),
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "distributed",
        targets,
        {"seeds": args.seeds, "masks": args.masks, "group_size": args.group_size, "variants": dict(variants)},
        args,
    )


if __name__ == "__main__":
    main()
