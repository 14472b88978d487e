"""Benchmark 6, threads: the 10-seed ER group on seq-fmnist (the lockstep benchmark's group) under
torch's OpenMP thread settings, alone, as two processes at once on the same cores, and beside a
busy single-threaded process at nice 19.

torch's OpenMP threads spin for a while before they sleep when they run out of work. Alone that
is the fastest; when another busy process shares the cores, the spinning threads take CPU time
from it, and both slow down. The fixed settings are environment variables read when torch starts,
so every measurement is a fresh process (``train_runs`` timed inside it, data loading included).
``auto`` is ``clbench run``'s default: the local executor chooses the threads before the group
from what other processes did on the cores (``clbench.threads``; timed through ``execute``, data
loading and the registry included).

Usage: python benchmarks/threads.py [--settings default,passive,threads1,auto] [--seeds 10] [--timeout 600]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import chosen, REPO, base_parser, load_line, machine_line, table

# name -> (environment, what it means)
SETTINGS = {
    "default": ({}, "torch's default: waiting threads spin (libgomp: ~3 ms), then sleep"),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once"),
    "threads1": ({"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS=1 (clbench run --threads 1): one thread"),
    "auto": ({"CLBENCH_BENCH_AUTO": "1"}, "clbench run's default: threads chosen before the group from the load"),
}

CHILD = """
import os, sys, tempfile, time
from clbench import RunConfig, train_runs
cfgs = [RunConfig(method="er", benchmark="seq-fmnist", seed=s, buffer_size=200) for s in range(int(sys.argv[1]))]
if os.environ.get("CLBENCH_BENCH_AUTO"):
    from clbench.sweep.executors import LocalExecutor
    from clbench.store import open_store
    from clbench.sweep.driver import execute
    from clbench.sweep.plan import plan_sweep
    with tempfile.TemporaryDirectory() as tmp, open_store(os.path.join(tmp, "results.db")) as store:
        t0 = time.perf_counter()
        execute(plan_sweep([c.resolve() for c in cfgs], store), store, executor=LocalExecutor(threads="auto"))
        wall = time.perf_counter() - t0
        threads = {store.run_row(r)["versions"]["threads"] for r in store.statuses([c.resolve().identity() for c in cfgs])}
    print(f"{wall:.3f} {','.join(sorted(threads))}")
else:
    t0 = time.perf_counter()
    train_runs(cfgs)
    print(f"{time.perf_counter() - t0:.3f}")
"""

BUSY = "import time\nwhile True:\n    pass\n"


def start(env_extra: dict[str, str], seeds: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "CLBENCH_BENCH_AUTO")}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(seeds)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out.append(f"> {timeout:.0f} (killed)")
            continue
        if p.returncode != 0:
            sys.exit(f"child failed:\n{stderr[-2000:]}")
        wall, *threads = stdout.strip().splitlines()[-1].split()
        out.append(f"{float(wall):.1f}" + (f" ({threads[0]} thr.)" if threads else ""))
    return out


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"some of {', '.join(SETTINGS)}")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a measurement is killed")
    args = ap.parse_args()
    names = chosen(args.settings, SETTINGS, "setting")
    print(machine_line("cpu"), flush=True)
    rows = []
    for name in names:
        env, meaning = SETTINGS[name]
        alone = finish([start(env, args.seeds)], args.timeout)[0]
        print(f"{name}: alone {alone} s", flush=True)
        pair = finish([start(env, args.seeds), start(env, args.seeds)], args.timeout)
        print(f"{name}: two at once {pair[0]} s, {pair[1]} s", flush=True)
        busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", BUSY])
        try:
            time.sleep(1.0)
            beside = finish([start(env, args.seeds)], args.timeout)[0]
        finally:
            busy.kill()
            busy.wait()
        print(f"{name}: beside a busy process at nice 19 {beside} s", flush=True)
        rows.append([meaning, alone, " / ".join(pair), beside])
    print()
    print(f"{args.seeds} seeds of er on seq-fmnist as one group (wall seconds, data loading included; thr.: the threads "
          "auto chose), one process alone, two processes started together, one beside a busy single-threaded "
          "process at nice 19:")
    print(table(["setting", "alone (s)", "two at once, each (s)", "beside nice-19 busy process (s)"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
