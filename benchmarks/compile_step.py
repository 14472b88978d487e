"""Benchmark 13, compile_step: does ``torch.compile`` pay for the MLP's training step on the CPU?

The step's math as clbench's trainer does it for ER on seq-fmnist (10 stream + 10 replay rows as
one batch of 20 rows per run; batched MLP 784-100-100-10 over the run axis by ``baddbmm``,
per-run cross-entropy, one backward, per-run SGD), written in plain torch so that inductor can
take it whole: eager against ``torch.compile`` of forward + loss (AOTAutograd compiles the backward
with it; ``autograd.grad`` and the update stay eager: a graph break), for groups of 1 and 10 runs.
Prints the first call (compile time), the steady per-step time and their ratio, side by side.

Usage: python benchmarks/compile_step.py [--steps 1000] [--rows 20] [--quick]
No target: the speed-ups are recorded as measurements. ``--quick``: 20 steps.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _common import base_parser, begin, load_line, measurement, say_targets, table, write_result

SIZES = (784, 100, 100, 10)


def make(runs: int, rows: int):
    g = torch.Generator().manual_seed(0)
    params = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        params[f"w{i}"] = (torch.randn(runs, b, a, generator=g) * 0.05).requires_grad_()
        params[f"b{i}"] = torch.zeros(runs, b).requires_grad_()
    x = torch.rand(runs, rows, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (runs, rows), generator=g)
    return params, x, y, torch.full((runs,), 0.03)


def forward_loss(params, x, y):
    h = x
    for i in range(len(SIZES) - 1):
        h = torch.baddbmm(params[f"b{i}"].unsqueeze(1), h, params[f"w{i}"].transpose(1, 2))
        if i < len(SIZES) - 2:
            h = F.relu(h)
    return F.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


def step(fl, params, x, y, lr):
    loss = fl(params, x, y)
    grads = torch.autograd.grad(loss.sum(), list(params.values()))
    with torch.no_grad():
        for p, g in zip(params.values(), grads):
            p.addcmul_(g, lr.view(-1, *([1] * (p.dim() - 1))), value=-1.0)
    return loss.detach()


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=20)
    args = begin(ap)
    if args.quick:
        args.steps = 20
    rows, targets, record = [], [], {}
    for runs in (1, 10):
        timings = {}
        for name in ("eager", "compiled"):
            torch._dynamo.reset()
            fl = torch.compile(forward_loss, dynamic=False) if name == "compiled" else forward_loss
            params, x, y, lr = make(runs, args.rows)
            t0 = time.perf_counter()
            step(fl, params, x, y, lr)
            first = time.perf_counter() - t0
            for _ in range(20):
                step(fl, params, x, y, lr)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(fl, params, x, y, lr)
            timings[name] = (first, (time.perf_counter() - t0) / args.steps)
            per_step = timings[name][1] * 1e3
            print(f"group of {runs}, {name}: first call {first:.2f} s, {per_step:.3f} ms/step", flush=True)
        (_, eager), (compile_s, compiled) = timings["eager"], timings["compiled"]
        steps_to_pay = compile_s / (eager - compiled) if eager > compiled else float("inf")
        pays = f"{steps_to_pay:,.0f}" if steps_to_pay != float("inf") else "never"
        rows.append(
            [runs, f"{eager * 1e3:.3f}", f"{compiled * 1e3:.3f}", f"{eager / compiled:.2f}x", f"{compile_s:.1f}", pays]
        )
        targets.append(
            measurement(
                f"`torch.compile` of the MLP step, group of {runs}, against eager",
                eager / compiled,
                "x",
                shown=f"{eager / compiled:.2f}x ({compiled * 1e3:.3f} against {eager * 1e3:.3f} ms per step); "
                f"compiling "
                f"{compile_s:.1f} s; " + (f"pays after {pays} steps" if pays != "never" else "never pays"),
            )
        )
        record[str(runs)] = {"eager_s_per_step": eager, "compiled_s_per_step": compiled, "compile_s": compile_s}
    print()
    print(f"MLP step ({args.rows} rows per run), eager against torch.compile of forward + loss, {args.steps} steps:")
    print(
        table(
            [
                "runs",
                "eager (ms/step)",
                "compiled (ms/step)",
                "speed-up",
                "compile, first call (s)",
                "steps to pay the compile",
            ],
            rows,
        )
    )
    print()
    say_targets(targets)
    print(load_line())
    write_result("compile_step", targets, {"steps": args.steps, "rows": args.rows, "groups": record}, args)


if __name__ == "__main__":
    main()
