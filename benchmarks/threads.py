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

Usage: python benchmarks/threads.py [--settings default,passive,threads1,auto] [--seeds 10] [--timeout 600] [--quick]
Targets (2-core CPU): with ``clbench run``'s own choice (auto), two processes at once each within
2.5x of one alone; beside a busy process at nice 19, auto no slower than one thread (threads1).
``--quick``: auto and threads1, one run on small synthetic data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import REPO, base_parser, begin, chosen, load_line, measurement, say_targets, table, target, write_result

# name -> (environment, what it means)
SETTINGS = {
    "default": ({}, "torch's default: waiting threads spin (libgomp: ~3 ms), then sleep"),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once"),
    "threads1": ({"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS=1 (clbench run --threads 1): one thread"),
    "auto": ({"CLBENCH_BENCH_AUTO": "1"}, "clbench run's default: threads chosen before the group from the load"),
}

TARGET_PAIR = 2.5  # two processes at once, each against one alone
QUICK_SYNTHETIC = 300  # training samples per class of the --quick runs

CHILD = """
import os, sys, tempfile, time
from clbench import RunConfig, SyntheticOptions, train_runs
bench = sys.argv[2]
syn = SyntheticOptions(train_per_class=int(sys.argv[3]), test_per_class=10) if bench == "synthetic" else None
n_seeds = int(sys.argv[1])
cfgs = [RunConfig(method="er", benchmark=bench, synthetic=syn, seed=s, buffer_size=200) for s in range(n_seeds)]
if os.environ.get("CLBENCH_BENCH_AUTO"):
    from clbench.sweep.executors import LocalExecutor
    from clbench.store import open_store
    from clbench.sweep.driver import execute
    from clbench.sweep.plan import plan_sweep
    with tempfile.TemporaryDirectory() as tmp, open_store(os.path.join(tmp, "results.db")) as store:
        t0 = time.perf_counter()
        execute(plan_sweep([c.resolve() for c in cfgs], store), store, executor=LocalExecutor(threads="auto"))
        wall = time.perf_counter() - t0
        ids = [c.resolve().identity() for c in cfgs]
        threads = {store.run_row(r)["versions"]["threads"] for r in store.statuses(ids)}
    print(f"{wall:.3f} {','.join(sorted(threads))}")
else:
    t0 = time.perf_counter()
    train_runs(cfgs)
    print(f"{time.perf_counter() - t0:.3f}")
"""

BUSY = "import time\nwhile True:\n    pass\n"


def start(env_extra: dict[str, str], args) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "CLBENCH_BENCH_AUTO")
    }
    env.update(env_extra)
    bench = "synthetic" if args.quick else "seq-fmnist"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.seeds), bench, str(QUICK_SYNTHETIC)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[float | None, str]]:
    """Each process's wall seconds (None: killed after ``timeout``) and the threads auto chose ("")."""
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out.append((None, ""))
            continue
        if p.returncode != 0:
            sys.exit(f"child failed:\n{stderr[-2000:]}")
        wall, *threads = stdout.strip().splitlines()[-1].split()
        out.append((float(wall), threads[0] if threads else ""))
    return out


def shown(measured: tuple[float | None, str], timeout: float) -> str:
    wall, threads = measured
    if wall is None:
        return f"> {timeout:.0f} (killed)"
    return f"{wall:.1f}" + (f" ({threads} thr.)" if threads else "")


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"some of {', '.join(SETTINGS)}")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a measurement is killed")
    args = begin(ap)
    if args.quick:
        args.settings, args.seeds = "auto,threads1", 1
    names = chosen(args.settings, SETTINGS, "setting")
    rows, got = [], {}
    for name in names:
        env, meaning = SETTINGS[name]
        alone = finish([start(env, args)], args.timeout)[0]
        print(f"{name}: alone {shown(alone, args.timeout)} s", flush=True)
        pair = finish([start(env, args), start(env, args)], args.timeout)
        print(f"{name}: two at once {shown(pair[0], args.timeout)} s, {shown(pair[1], args.timeout)} s", flush=True)
        busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", BUSY])
        try:
            time.sleep(1.0)
            beside = finish([start(env, args)], args.timeout)[0]
        finally:
            busy.kill()
            busy.wait()
        print(f"{name}: beside a busy process at nice 19 {shown(beside, args.timeout)} s", flush=True)
        got[name] = {"alone": alone, "pair": pair, "beside": beside}
        rows.append(
            [
                meaning,
                shown(alone, args.timeout),
                " / ".join(shown(p, args.timeout) for p in pair),
                shown(beside, args.timeout),
            ]
        )
    print()
    where = "small synthetic data" if args.quick else "seq-fmnist"
    print(
        f"{args.seeds} seeds of er on {where} as one group (wall seconds, data loading included; thr.: the threads "
        "auto chose), one process alone, two processes started together, one beside a busy single-threaded "
        "process at nice 19:"
    )
    print(table(["setting", "alone (s)", "two at once, each (s)", "beside nice-19 busy process (s)"], rows))
    print()
    targets = []
    what = f"{args.seeds}-seed ER group" + (" (small synthetic data)" if args.quick else " on seq-fmnist")
    if "auto" in got:
        g = got["auto"]
        walls = [p[0] for p in g["pair"]]
        ok = g["alone"][0] is not None and None not in walls
        worst = max(walls) / g["alone"][0] if ok else None
        targets.append(
            target(
                f"two `clbench run` at once on {usable_cores()} cores ({what}, its own thread choice): each within "
                f"{TARGET_PAIR:g}x of one alone",
                worst,
                "x",
                ok and worst <= TARGET_PAIR,
                shown=f"{' and '.join(shown(p, args.timeout) for p in g['pair'])} s against "
                f"{shown(g['alone'], args.timeout)} "
                f"s alone" + (f" ({worst:.1f}x)" if ok else ""),
                why="" if ok else "a process was killed",
            )
        )
    if "auto" in got and "threads1" in got:
        auto, one = got["auto"]["beside"][0], got["threads1"]["beside"][0]
        ok = auto is not None and one is not None
        targets.append(
            target(
                f"beside a busy process at nice 19 ({what}): `clbench run`'s own thread choice no slower than "
                f"one thread",
                auto,
                "s",
                ok and auto <= one,
                shown=f"{shown(got['auto']['beside'], args.timeout)} s against "
                f"{shown(got['threads1']['beside'], args.timeout)} "
                "s with one thread",
                why="" if ok else "a process was killed",
            )
        )
    if "default" in got:
        g = got["default"]
        walls = [p[0] for p in g["pair"]]
        if g["alone"][0] is not None and None not in walls:
            targets.append(
                measurement(
                    f"torch's default threads, two processes at once ({what})",
                    max(walls) / g["alone"][0],
                    "x",
                    shown=f"{' and '.join(shown(p, args.timeout) for p in g['pair'])} s against "
                    f"{shown(g['alone'], args.timeout)} s alone",
                )
            )
    say_targets(targets)
    print(load_line())
    write_result(
        "threads",
        targets,
        {
            "seeds": args.seeds,
            "settings": names,
            "walls": {
                name: {"alone": g["alone"], "two_at_once": g["pair"], "beside_nice19": g["beside"]}
                for name, g in got.items()
            },
        },
        args,
    )


def usable_cores() -> int:
    from _common import usable_cpu_cores

    return usable_cpu_cores()


if __name__ == "__main__":
    main()
