"""Benchmark 4, resnet: the reduced ResNet-18 (width 64) on seq-cifar10-shaped synthetic data
(32x32x3, 5 tasks of 2 classes, random crop + flip), ER with batch 32 and replay minibatch 32
(the seq-cifar10 protocol's shapes): training images per second of a lockstep group of 4 against
the same 4 runs one after another (groups of one).

Images per second counts every image a run pushes through forward + backward (stream batch and
replay minibatch), summed over the runs, over the training time (evaluation excluded; it runs on
a few test images only).

``--groups 1,4,10,20`` measures instead the images per second of one group of each size (a group
of 1 is a single run) with the peak device memory of each (CUDA: ``max_memory_allocated``), the
speed-up of each against the single run, and the speed round's GPU target: a group of 10 at
least 5x the images per second of single runs.

Usage: python benchmarks/resnet.py [--device cpu|cuda] [--steps-per-task N] [--width 64] [--runs 4] [--repeats 1]
       [--groups 1,4,10,20]
Defaults: 4 steps per task on CPU (20 steps: a width-64 step takes seconds there), 60 on CUDA (300 steps).
Target (GPU): the group of 4 at least 3x the images per second of single runs; with --groups, the
group of 10 at least 5x.
"""

from __future__ import annotations

from _common import base_parser, load_line, machine_line, median, setup, table, timed, verdict

from clbench import RunConfig, SyntheticOptions, load_benchmark
from clbench.engine.loop import train_group


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--groups", default=None, help="comma-separated group sizes, e.g. 1,4,10,20")
    args = ap.parse_args()
    setup(args)
    cuda = args.device.startswith("cuda")
    steps = args.steps_per_task or (60 if cuda else 4)
    print(machine_line(args.device), flush=True)
    syn = SyntheticOptions(n_tasks=5, classes_per_task=2, train_per_class=steps * args.batch // 2, test_per_class=16,
                           input_shape=(3, 32, 32), augment=True, backbone="resnet18")
    data = load_benchmark("synthetic", synthetic=syn, device=args.device)
    n_runs = max([args.runs, *group_sizes(args.groups)])
    cfgs = [RunConfig(method="er", benchmark="synthetic", synthetic=syn, seed=s, buffer_size=200, width=args.width,
                      batch_size=args.batch, minibatch_size=args.batch, lr=0.1).resolve() for s in range(n_runs)]
    n_steps = 5 * steps
    # Step 0 has an empty buffer: the stream batch only.
    images_per_run = n_steps * args.batch + (n_steps - 1) * args.batch
    train_group(cfgs[:1], data)  # warm-up (allocator, cuDNN / oneDNN kernel selection)
    if args.groups:
        by_group_size(args, cfgs, data, steps, images_per_run)
        return
    cfgs = cfgs[: args.runs]

    rows, group_ips, single_ips = [], [], []
    for rep in range(args.repeats):
        results, wall_g = timed(lambda: train_group(cfgs, data), args.device)
        train_g = sum(results[0].train_s)
        train_1 = 0.0
        wall_1 = 0.0
        for c in cfgs:
            (res,), w = timed(lambda: train_group([c], data), args.device)
            train_1 += sum(res.train_s)
            wall_1 += w
        g_ips = args.runs * images_per_run / train_g
        s_ips = args.runs * images_per_run / train_1
        group_ips.append(g_ips)
        single_ips.append(s_ips)
        rows.append([rep + 1, f"{train_g:.1f}", f"{g_ips:.1f}", f"{train_1:.1f}", f"{s_ips:.1f}", f"{g_ips / s_ips:.2f}x"])
        print(f"repeat {rep + 1}: group {train_g:.1f} s, one after another {train_1:.1f} s (training)", flush=True)
    ratio = median(group_ips) / median(single_ips)
    print()
    print(f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps, ER batch {args.batch} + replay "
          f"{args.batch}, crop + flip; {args.runs} runs; device {args.device}")
    print(table(["repeat", f"group of {args.runs}: training (s)", "images/s", f"{args.runs} x group of 1: training (s)", "images/s",
                 "ratio"], rows))
    print(f"\nmedian: group {median(group_ips):.1f} images/s, single runs {median(single_ips):.1f} images/s, ratio {ratio:.2f}x")
    if cuda:
        print(f"target (GPU): group of {args.runs} >= 3x the images/s of single runs: {verdict(ratio >= 3)}")
    else:
        print("target (GPU): group of 4 >= 3x the images/s of single runs: not checked, this ran on CPU only "
              "(rerun with --device cuda on a GPU machine)")
    print(load_line())


def group_sizes(text: str | None) -> list[int]:
    return [int(g) for g in text.split(",")] if text else []


def by_group_size(args, cfgs, data, steps: int, images_per_run: int) -> None:
    import torch

    cuda = args.device.startswith("cuda")
    rows, ips_of = [], {}
    for size in group_sizes(args.groups):
        ips, peaks = [], []
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            results, _ = timed(lambda: train_group(cfgs[:size], data), args.device)
            ips.append(size * images_per_run / sum(results[0].train_s))
            peaks.append(torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"))
        ips_of[size] = median(ips)
        print(f"group of {size}: {ips_of[size]:.1f} images/s", flush=True)
        rows.append([size, f"{ips_of[size]:.1f}", f"{median(peaks):.0f}" if cuda else "-"])
    single = ips_of.get(1)
    for row in rows:
        row.append(f"{ips_of[row[0]] / single:.2f}x" if single else "-")
    print()
    print(f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps, ER batch {args.batch} + replay "
          f"{args.batch}, crop + flip; device {args.device}; median of {args.repeats}")
    print(table(["runs in the group", "images/s (all runs)", "peak device memory (MiB)", "vs a single run"], rows))
    if single and 10 in ips_of:
        ratio = ips_of[10] / single
        where = "" if cuda else " (this ran on CPU: the target is for a GPU)"
        print(f"target (GPU): group of 10 >= 5x the images/s of single runs: {ratio:.2f}x, {verdict(ratio >= 5)}{where}")
    print(load_line())


if __name__ == "__main__":
    main()
