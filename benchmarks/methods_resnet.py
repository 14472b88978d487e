"""Benchmark 9, methods_resnet: each replay method's lockstep group with the reduced ResNet-18 on
seq-cifar10-shaped synthetic data (32x32x3, 5 tasks of 2 classes, random crop + flip, batch 32,
replay minibatch 32, buffer 200): training throughput against ER's, side by side in one invocation.

Throughput = incoming (stream) images per second of training time, summed over the group's runs:
what a method costs per sample it learns from (its replay draws, extra forwards, end-of-task work
and, for GDumb, its refits are all in the training time; evaluation is not). Every method runs
the same number of steps on the same data; masks: none for all runs (the mask changes no cost).
``benchmarks/gpu.py`` runs this with every other GPU check.

Usage: python benchmarks/methods_resnet.py [--device cpu|cuda] [--runs 4] [--width 64] [--steps-per-task N]
       [--methods er,derpp,...: all but sgd and joint] [--gdumb-epochs 16] [--repeats 1] [--quick]
Defaults: 2 steps per task on CPU (a width-64 ResNet step takes seconds there), 40 on CUDA.
GDumb refits from scratch after every task for --gdumb-epochs passes over its memory (Mammoth: 256).
No target: each method's throughput against ER's is recorded as a measurement. ``--quick``: width
4, 2 runs, 1 step per task, 1 refit epoch.
"""

from __future__ import annotations

from _common import base_parser, begin, load_line, measurement, median, say_targets, table, timed, write_result
from resnet import resnet_configs, resnet_data

from clbench import train_group

METHODS = "er,er_ace,derpp,xder,icarl,agem,gdumb,ss_il,lode,lode_derpp,er_las,er_aml,wa,bic"


def method_throughput(
    methods: list[str],
    data,
    syn,
    *,
    runs: int,
    width: int,
    batch: int,
    buffer: int,
    steps_per_task: int,
    gdumb_epochs: int,
    repeats: int,
    device: str,
) -> dict[str, float]:
    """Each method's group of ``runs``: stream images per second of training (median of ``repeats``)."""

    def group(method: str):
        options = {"fitting_epochs": gdumb_epochs} if method == "gdumb" else None
        return resnet_configs(
            syn, runs, width=width, batch=batch, method=method, buffer=buffer, lr=0.05, options=options
        )

    stream_images = 5 * steps_per_task * batch  # per run
    train_group(group("er")[:1], data)  # warm-up (allocator, cuDNN / oneDNN kernel selection)
    per_method: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(repeats):
        for method in methods:
            results, wall = timed(lambda: train_group(group(method), data), device)  # noqa: B023
            train_s = sum(results[0].train_s)
            per_method[method].append(runs * stream_images / train_s)
            print(
                f"repeat {rep + 1}: {method} group of {runs}: {train_s:.1f} s training ({wall:.1f} s wall)", flush=True
            )
    return {m: median(v) for m, v in per_method.items()}


def against_er(throughput: dict[str, float], what: str) -> tuple[str, list[dict]]:
    """The table of ``method_throughput``'s numbers and one measurement (no target) naming each
    method's ratio to ER's."""
    base = throughput.get("er")
    rows = [[m, f"{ips:.1f}", f"{ips / base:.2f}x" if base else "-"] for m, ips in throughput.items()]
    text = table(["method", "stream images/s (all runs, median)", "vs ER"], rows)
    shown = ", ".join(f"{m} {ips / base:.2f}x" for m, ips in throughput.items() if m != "er") if base else "-"
    return text, [
        measurement(
            f"{what}: each method's group against ER's (stream images/s)",
            None,
            "",
            shown=shown + (f" (ER: {base:.0f} images/s)" if base else ""),
        )
    ]


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--gdumb-epochs", type=int, default=16)
    args = begin(ap)
    if args.quick:
        args.width, args.runs, args.steps_per_task, args.gdumb_epochs, args.repeats = 4, 2, 1, 1, 1
    cuda = args.device.startswith("cuda")
    steps = args.steps_per_task or (40 if cuda else 2)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    syn, data = resnet_data(steps, args.batch, args.device)
    throughput = method_throughput(
        methods,
        data,
        syn,
        runs=args.runs,
        width=args.width,
        batch=args.batch,
        buffer=args.buffer,
        steps_per_task=steps,
        gdumb_epochs=args.gdumb_epochs,
        repeats=args.repeats,
        device=args.device,
    )
    what = f"ResNet-18 width {args.width}, groups of {args.runs} on seq-cifar10-shaped data ({args.device})"
    text, targets = against_er(throughput, what)
    print()
    print(
        f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps of batch {args.batch}, "
        f"replay minibatch {args.batch}, buffer {args.buffer}, crop + flip; groups of {args.runs} runs; device "
        f"{args.device}; gdumb: {args.gdumb_epochs} refit epochs per task"
    )
    print(text)
    say_targets(targets)
    print(load_line())
    write_result(
        "methods_resnet",
        targets,
        {
            "width": args.width,
            "runs": args.runs,
            "steps_per_task": steps,
            "batch": args.batch,
            "buffer": args.buffer,
            "gdumb_epochs": args.gdumb_epochs,
            "stream_images_per_s": throughput,
        },
        args,
    )


if __name__ == "__main__":
    main()
