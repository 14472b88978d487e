"""Benchmark 5, efficiency: the training step's achieved FLOP/s against the machine's fp32 matmul
peak (measured in the same run), and where a step's time goes.

Workloads (seq-fmnist, MLP 784-100-100-10, 10 seeds in one lockstep group, buffer 200): DER++
with the preset replay minibatch 128 drawn twice per step (the fig4 sweep's runs, 266 rows per
run per step) and ER (minibatch 10, 20 rows per run per step, the lockstep benchmark's runs).
FLOPs are counted exactly from the step schedule: matrix products only (2 per multiply-add),
forward + weight gradients + input gradients (none for the input layer); elementwise work is
not counted. The profile splits the group's wall time by phase (``clbench.trainer.PhaseTimes``)
and adds the registry write of the group's results to a fresh SQLite database. Last, each layer's
matrix products alone at one full step's shapes, for the group and for a single run.

Usage: python benchmarks/efficiency.py [--methods derpp,er] [--seeds 10] [--fraction 1.0] [--repeats 1] [--quick]
No target: its numbers (time per step, the matrix products' share, achieved GFLOP/s against the
peak) are what the README's "what bounds the misses" reads. ``--quick``: ER, 2 runs, 1 % of the data.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time

import torch
from _common import (
    base_parser,
    begin,
    load_line,
    matmul_peak,
    measurement,
    median,
    say_targets,
    table,
    timed,
    write_result,
)

from clbench import RunConfig, load_benchmark
from clbench.engine.loop import train_group
from clbench.engine.progress import PhaseTimes
from clbench.methods import get_method

MLP = (784, 100, 100, 10)


def mlp_flops(cfg, data) -> tuple[float, float, int]:
    """(training FLOPs, evaluation FLOPs, steps) of one run of ``cfg`` on ``data``."""
    pairs = list(zip(MLP[:-1], MLP[1:]))
    fwd = 2 * sum(a * b for a, b in pairs)
    bwd = 2 * sum(a * b for a, b in pairs) + 2 * sum(a * b for a, b in pairs[1:])  # weight + input gradients
    method = get_method(cfg.method)
    train, steps, seen = 0.0, 0, 0
    for task, idx in enumerate(data.train_task_idx):
        n = len(idx)
        draws = method.replay_draws if task >= method.replay_from_task else 0
        for s in range(math.ceil(n / cfg.batch_size) * cfg.epochs):
            b = min(cfg.batch_size, n - (s % math.ceil(n / cfg.batch_size)) * cfg.batch_size)
            rows = b + (draws * cfg.minibatch_size if draws and seen > 0 else 0)
            train += rows * (fwd + bwd)
            seen += b
            steps += 1
    evaluate = data.n_tasks * sum(len(i) for i in data.test_task_idx) * fwd
    return train, evaluate, steps


def layer_throughput(runs: int, rows: int, device: str, repeats: int = 7) -> list[list[str]]:
    """Forward + backward of each MLP layer through clbench's ``batched_linear`` at one step's
    shapes (``runs`` runs, ``rows`` rows per run): microseconds and GFLOP/s per layer, median
    of ``repeats`` timings of 20 calls. The input layer needs no input gradient."""
    from clbench.lockstep.backbones import batched_linear

    g = torch.Generator().manual_seed(0)
    out = []
    for i, (d, h) in enumerate(zip(MLP[:-1], MLP[1:])):
        x = torch.rand(runs, rows, d, generator=g).to(device).requires_grad_(i > 0)
        w = (torch.randn(runs, h, d, generator=g) * 0.05).to(device).requires_grad_(True)
        b = torch.zeros(runs, h, device=device, requires_grad=True)
        gy = torch.randn(runs, rows, h, generator=g).to(device)
        inputs = (x, w, b) if i > 0 else (w, b)

        def once(x=x, w=w, b=b, inputs=inputs, gy=gy):
            torch.autograd.grad(batched_linear(x, w, b), inputs, gy)

        once()
        seconds = median([timed(lambda: [once() for _ in range(20)], device)[1] / 20 for _ in range(repeats)])
        flops = 2 * runs * rows * d * h * (3 if i > 0 else 2)
        out.append([f"{d} -> {h}", f"{runs} x {rows}", f"{1e6 * seconds:.0f}", f"{flops / seconds / 1e9:.0f}"])
    return out


def save_to_registry(results) -> float | None:
    """Seconds to record a finished group in a fresh SQLite registry as a sweep does (claim,
    running, results); None when the registry is not importable."""
    try:
        from clbench.store import Owner, open_store
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = open_store(os.path.join(tmp, "results.db"))
        owner = Owner.current()
        cfgs = [r.config for r in results]
        store.claim(cfgs, owner)
        store.mark_running([c.identity() for c in cfgs], owner)
        store.save_results(results, owner)
        store.close()
        return time.perf_counter() - t0


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--methods", default="derpp,er")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of each task's training set")
    args = begin(ap)
    if args.quick:
        args.methods, args.seeds, args.fraction, args.repeats = "er", 2, 0.01, 1
    peaks = matmul_peak(args.device)
    peak = max(peaks.values())
    print(
        "fp32 matmul peak, 2048^3, median of 7: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()),
        flush=True,
    )
    data = load_benchmark("seq-fmnist", device=args.device)
    if args.fraction < 1:
        data = dataclasses.replace(
            data, train_task_idx=tuple(i[: max(1, int(len(i) * args.fraction))] for i in data.train_task_idx)
        )

    best = max(peaks, key=peaks.get)
    targets = [
        measurement(
            f"fp32 matmul peak (2048^3, {args.device})",
            peak,
            "GFLOP/s",
            shown=", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()),
        )
    ]
    record = {"peaks_gflops": peaks, "seeds": args.seeds, "fraction": args.fraction, "methods": {}}
    for method in args.methods.split(","):
        cfgs = [
            RunConfig(method=method, benchmark="seq-fmnist", seed=s, buffer_size=200).resolve()
            for s in range(args.seeds)
        ]
        train_flops, eval_flops, steps = mlp_flops(cfgs[0], data)
        runs = []
        for _ in range(args.repeats):
            phases = PhaseTimes(args.device)
            t0 = time.perf_counter()
            results = train_group(cfgs, data, phases=phases)
            wall = time.perf_counter() - t0
            runs.append((wall, phases.seconds, results))
        wall, seconds, results = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median repeat
        db_s = save_to_registry(results)
        train_s = sum(results[0].train_s)
        eval_s = sum(results[0].eval_s)
        gemm_s = seconds["forward and loss"] + seconds["backward"]
        n = args.seeds
        c0 = cfgs[0]
        print(
            f"\n{method}: {n} seeds in one group, buffer 200, batch {c0.batch_size}, replay minibatch "
            f"{c0.minibatch_size} x "
            f"{get_method(method).replay_draws} draw(s); {steps} steps; wall {wall:.2f} s (median of {args.repeats})"
        )
        flop_rows = [
            [
                "training (all phases)",
                f"{n * train_flops / 1e12:.3f}",
                f"{train_s:.2f}",
                f"{n * train_flops / train_s / 1e9:.0f}",
                f"{100 * n * train_flops / train_s / 1e9 / peak:.0f} %",
            ],
            [
                "  forward + backward phases only",
                f"{n * train_flops / 1e12:.3f}",
                f"{gemm_s:.2f}",
                f"{n * train_flops / gemm_s / 1e9:.0f}",
                f"{100 * n * train_flops / gemm_s / 1e9 / peak:.0f} %",
            ],
            [
                "evaluation (5 x 10000 test images)",
                f"{n * eval_flops / 1e12:.3f}",
                f"{eval_s:.2f}",
                f"{n * eval_flops / eval_s / 1e9:.0f}",
                f"{100 * n * eval_flops / eval_s / 1e9 / peak:.0f} %",
            ],
        ]
        print(table(["work", "TFLOP", "seconds", "GFLOP/s", f"of the {peak:.0f} GFLOP/s peak"], flop_rows))
        total = wall + (db_s or 0.0)
        prof = sorted(seconds.items(), key=lambda kv: -kv[1])
        rows = [[name, f"{s:.2f}", f"{100 * s / total:.1f} %", f"{1e6 * s / steps:.0f}"] for name, s in prof]
        other = wall - sum(seconds.values())
        rows.append(
            [
                "other (step bookkeeping, loss sums, progress)",
                f"{other:.2f}",
                f"{100 * other / total:.1f} %",
                f"{1e6 * other / steps:.0f}",
            ]
        )
        if db_s is not None:
            rows.append(
                [
                    "database (SQLite registry: claim, running, results)",
                    f"{db_s:.2f}",
                    f"{100 * db_s / total:.1f} %",
                    "",
                ]
            )
        rows.append(["total", f"{total:.2f}", "100 %", f"{1e6 * total / steps:.0f}"])
        print(table(["phase", "seconds", "share", "us per step"], rows))
        print(
            f"lower bound at the measured peak: {n * train_flops / peak / 1e9:.2f} s of training "
            f"({n * (train_flops + eval_flops) / peak / 1e9:.2f} s with evaluation)"
        )
        # The matrix products alone, at this step's shapes, for the group and for one run: how
        # close the dominant kernels come to the peak (what bounds the forward/backward phases).
        spec = get_method(method)
        full_rows = c0.batch_size + (spec.replay_draws * c0.minibatch_size if spec.uses_buffer else 0)
        layer_rows = layer_throughput(n, full_rows, args.device) + layer_throughput(1, full_rows, args.device)
        print(
            f"matrix products of one full step (forward + backward, {full_rows} rows per run) through batched_linear:"
        )
        print(table(["layer", "runs x rows", "us per step", "GFLOP/s"], layer_rows))
        step_us = 1e6 * total / steps
        products_us = sum(float(r[2]) for r in layer_rows[: len(MLP) - 1])  # the group's layers (first half)
        fb_gflops = n * train_flops / gemm_s / 1e9
        group = f"{n}-run {method} group on seq-fmnist" + (
            f" ({args.fraction:g} of the data)" if args.fraction < 1 else ""
        )
        targets += [
            measurement(
                f"{group}: one training step, and its matrix products alone at the step's shapes",
                step_us,
                "us",
                shown=f"{step_us:.0f} us per step; the three layers' products alone {products_us:.0f} us",
            ),
            measurement(
                f"{group}: achieved FLOP/s in forward + backward",
                fb_gflops,
                "GFLOP/s",
                shown=f"{fb_gflops:.0f} GFLOP/s, {100 * fb_gflops / peak:.0f} % of the {peak:.0f} GFLOP/s peak "
                f"({best}); {n * train_flops / 1e12:.2f} TFLOP, {n * train_flops / peak / 1e9:.1f} s at "
                "the peak",
            ),
        ]
        record["methods"][method] = {
            "steps": steps,
            "wall_s": wall,
            "train_s": train_s,
            "eval_s": eval_s,
            "train_tflop": n * train_flops / 1e12,
            "eval_tflop": n * eval_flops / 1e12,
            "phases_s": dict(seconds),
            "database_s": db_s,
            "step_us": step_us,
            "products_us": products_us,
            "forward_backward_gflops": fb_gflops,
            "layers": [dict(zip(["layer", "runs x rows", "us per step", "GFLOP/s"], r)) for r in layer_rows],
        }
    say_targets(targets)
    print(load_line())
    write_result("efficiency", targets, record, args)


if __name__ == "__main__":
    main()
