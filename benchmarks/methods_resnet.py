"""Benchmark 9, methods_resnet: each replay method's lockstep group with the reduced ResNet-18 on
seq-cifar10-shaped synthetic data (32x32x3, 5 tasks of 2 classes, random crop + flip, batch 32,
replay minibatch 32, buffer 200): training throughput against ER's, side by side in one invocation.

Throughput = incoming (stream) images per second of training time, summed over the group's runs:
what a method costs per sample it learns from (its replay draws, extra forwards, end-of-task work
and, for GDumb, its refits are all in the training time; evaluation is not). Every method runs
the same number of steps on the same data; masks: none for all runs (the mask changes no cost).

Usage: python benchmarks/methods_resnet.py [--device cpu|cuda] [--runs 4] [--width 64] [--steps-per-task N]
       [--methods er,derpp,xder,icarl,agem,gdumb] [--gdumb-epochs 16] [--repeats 1]
Defaults: 2 steps per task on CPU (a width-64 ResNet step takes seconds there), 40 on CUDA.
GDumb refits from scratch after every task for --gdumb-epochs passes over its memory (Mammoth: 256).
"""

from __future__ import annotations

from _common import base_parser, load_line, machine_line, median, setup, table, timed

from clbench import RunConfig, SyntheticOptions, load_benchmark
from clbench.engine.loop import train_group


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--buffer", type=int, default=200)
    ap.add_argument("--methods", default="er,derpp,xder,icarl,agem,gdumb")
    ap.add_argument("--gdumb-epochs", type=int, default=16)
    args = ap.parse_args()
    setup(args)
    cuda = args.device.startswith("cuda")
    steps = args.steps_per_task or (40 if cuda else 2)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(machine_line(args.device), flush=True)
    syn = SyntheticOptions(n_tasks=5, classes_per_task=2, train_per_class=steps * args.batch // 2, test_per_class=16,
                           input_shape=(3, 32, 32), augment=True, backbone="resnet18")
    data = load_benchmark("synthetic", synthetic=syn, device=args.device)
    stream_images = 5 * steps * args.batch  # per run

    def group(method: str):
        options = {"fitting_epochs": args.gdumb_epochs} if method == "gdumb" else None
        return [RunConfig(method=method, benchmark="synthetic", synthetic=syn, seed=s, buffer_size=args.buffer,
                          width=args.width, batch_size=args.batch, minibatch_size=args.batch, lr=0.05,
                          options=options).resolve() for s in range(args.runs)]

    train_group(group("er")[:1], data)  # warm-up (allocator, cuDNN / oneDNN kernel selection)
    per_method: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        for method in methods:
            results, wall = timed(lambda: train_group(group(method), data), args.device)
            train_s = sum(results[0].train_s)
            per_method[method].append(args.runs * stream_images / train_s)
            print(f"repeat {rep + 1}: {method} group of {args.runs}: {train_s:.1f} s training ({wall:.1f} s wall)",
                  flush=True)
    base = median(per_method["er"]) if "er" in per_method else None
    rows = []
    for method in methods:
        ips = median(per_method[method])
        rows.append([method, f"{ips:.1f}", f"{ips / base:.2f}x" if base else "-"])
    print()
    print(f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps of batch {args.batch}, "
          f"replay minibatch {args.batch}, buffer {args.buffer}, crop + flip; groups of {args.runs} runs; device "
          f"{args.device}; gdumb: {args.gdumb_epochs} refit epochs per task")
    print(table(["method", "stream images/s (all runs, median)", "vs ER"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
