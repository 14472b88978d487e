"""Benchmark 4, resnet: the reduced ResNet-18 (width 64) on seq-cifar10-shaped synthetic data
(32x32x3, 5 tasks of 2 classes, random crop + flip), ER with batch 32 and replay minibatch 32
(the seq-cifar10 protocol's shapes): training images per second of a lockstep group of 4 against
the same 4 runs one after another (groups of one).

Images per second counts every image a run pushes through forward + backward (stream batch and
replay minibatch), summed over the runs, over the training time (evaluation excluded; it runs on
a few test images only).

``--groups 1,4,10,20`` measures instead the images per second of one group of each size (a group
of 1 is a single run) with the peak device memory of each (CUDA: ``max_memory_allocated``, data
included) against clbench's own estimate of the group (``clbench.sweep.ram.group_bytes``, what a
sweep sizes its groups by), the speed-up of each against the single run, and the speed round's GPU
target: a group of 10 at least 5x the images per second of single runs. ``benchmarks/gpu.py``
runs this with every other GPU check.

Usage: python benchmarks/resnet.py [--device cpu|cuda] [--steps-per-task N] [--width 64] [--runs 4] [--repeats 1]
       [--groups 1,4,10,20] [--quick]
Defaults: 4 steps per task on CPU (20 steps: a width-64 step takes seconds there), 60 on CUDA (300 steps).
Targets (GPU): the group of 4 at least 3x the images per second of single runs; with --groups, the
group of 10 at least 5x, and every group's peak memory within clbench's budget for it. On the CPU
they are recorded unchecked. ``--quick``: width 4, one step per task, groups of 1 and 2.
"""

from __future__ import annotations

from _common import base_parser, begin, load_line, median, say_targets, table, target, timed, write_result

from clbench import RunConfig, SyntheticOptions, load_benchmark, train_group

TARGET_GROUP_OF_4 = 3.0
TARGET_GROUP_OF_10 = 5.0


def resnet_data(steps_per_task: int, batch: int, device: str, side: int = 32):
    """seq-cifar10-shaped synthetic data: 5 tasks of 2 classes, 32x32x3 (``side``: smaller for toy
    sizes), crop + flip, enough training images for ``steps_per_task`` steps of ``batch`` per task."""
    syn = SyntheticOptions(
        n_tasks=5,
        classes_per_task=2,
        train_per_class=steps_per_task * batch // 2,
        test_per_class=16,
        input_shape=(3, side, side),
        augment=True,
        backbone="resnet18",
    )
    return syn, load_benchmark("synthetic", synthetic=syn, device=device)


def resnet_configs(
    syn,
    n_runs: int,
    *,
    width: int,
    batch: int,
    method: str = "er",
    buffer: int = 200,
    lr: float = 0.1,
    options: dict | None = None,
):
    # A toy-size stream (--quick, gpu.py on the CPU) is shorter than the buffer: clbench refuses a
    # buffer larger than the stream, so the buffer is then the whole stream.
    buffer = min(buffer, syn.train_per_class * syn.classes_per_task * syn.n_tasks)
    return [
        RunConfig(
            method=method,
            benchmark="synthetic",
            synthetic=syn,
            seed=s,
            buffer_size=buffer,
            width=width,
            batch_size=batch,
            minibatch_size=batch,
            lr=lr,
            options=options,
        ).resolve()
        for s in range(n_runs)
    ]


def images_per_run(steps_per_task: int, batch: int) -> int:
    """Images one ER run pushes through forward + backward: the stream batch every step, the
    replay minibatch from the second step on (step 0 has an empty buffer)."""
    n_steps = 5 * steps_per_task
    return n_steps * batch + (n_steps - 1) * batch


def group_sizes(text: str | None) -> list[int]:
    return [int(g) for g in text.split(",")] if text else []


def by_group_size(cfgs, data, sizes: list[int], repeats: int, device: str, per_run_images: int) -> dict[int, dict]:
    """Per group size: images/s (median of ``repeats``), peak device memory (CUDA, MiB, None on the
    CPU), clbench's estimate of the group (MiB) and its budget (``SAFETY`` x the estimate)."""
    import torch

    from clbench.sweep.ram import SAFETY, group_bytes

    cuda = device.startswith("cuda")
    out = {}
    for size in sizes:
        ips, peaks = [], []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            results, _ = timed(lambda: train_group(cfgs[:size], data), device)  # noqa: B023
            ips.append(size * per_run_images / sum(results[0].train_s))
            peaks.append(torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        estimate = group_bytes(cfgs[:size]) / 2**20
        out[size] = {
            "images_per_s": median(ips),
            "peak_mib": max(peaks) if cuda else None,
            "estimate_mib": estimate,
            "budget_mib": SAFETY * estimate,
        }
        print(
            f"group of {size}: {out[size]['images_per_s']:.1f} images/s"
            + (f", peak {out[size]['peak_mib']:.0f} MiB (estimate {estimate:.0f} MiB)" if cuda else ""),
            flush=True,
        )
    return out


def group_targets(measured: dict[int, dict], device: str, what: str) -> tuple[str, list[dict]]:
    """The table of ``by_group_size``'s numbers and its targets: the group of 10 >= 5x a single
    run's images/s, every group's peak memory within clbench's budget (judged on CUDA only)."""
    cuda = device.startswith("cuda")
    single = measured.get(1, {}).get("images_per_s")
    rows = []
    for size, m in measured.items():
        peak = f"{m['peak_mib']:.0f}" if m["peak_mib"] is not None else "-"
        rows.append(
            [
                size,
                f"{m['images_per_s']:.1f}",
                peak,
                f"{m['estimate_mib']:.0f}",
                f"{m['images_per_s'] / single:.2f}x" if single else "-",
            ]
        )
    text = table(
        [
            "runs in the group",
            "images/s (all runs)",
            "peak device memory (MiB)",
            "clbench's estimate (MiB)",
            "vs a single run",
        ],
        rows,
    )
    targets = []
    on_cpu = "" if cuda else f"ran on {device}: the target is for a GPU"
    if single and 10 in measured:
        ratio = measured[10]["images_per_s"] / single
        targets.append(
            target(
                f"{what}: a group of 10 >= {TARGET_GROUP_OF_10:g}x the images/s of single runs",
                ratio,
                "x",
                ratio >= TARGET_GROUP_OF_10 if cuda else None,
                why=on_cpu,
                shown=f"{ratio:.2f}x ({measured[10]['images_per_s']:.0f} / {single:.0f} images/s)",
            )
        )
    if cuda:
        over = [s for s, m in measured.items() if m["peak_mib"] > m["budget_mib"]]
        worst = max(m["peak_mib"] / m["estimate_mib"] for m in measured.values())
        targets.append(
            target(
                f"{what}: every group's peak device memory within clbench's budget for it (1.25 x its estimate)",
                worst,
                "x estimate",
                not over,
                shown=f"peak / estimate up to {worst:.2f}" + (f"; over for groups of {over}" if over else ""),
                why="",
            )
        )
    else:
        targets.append(
            target(
                f"{what}: every group's peak device memory within clbench's budget for it",
                None,
                "",
                None,
                why="device memory is measured on CUDA only",
            )
        )
    return text, targets


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--groups", default=None, help="comma-separated group sizes, e.g. 1,4,10,20")
    args = begin(ap)
    if args.quick:
        args.width, args.steps_per_task, args.runs, args.repeats = 4, 1, 2, 1
        args.groups = "1,2" if args.groups else None
    cuda = args.device.startswith("cuda")
    steps = args.steps_per_task or (60 if cuda else 4)
    syn, data = resnet_data(steps, args.batch, args.device)
    n_runs = max([args.runs, *group_sizes(args.groups)])
    cfgs = resnet_configs(syn, n_runs, width=args.width, batch=args.batch)
    per_run = images_per_run(steps, args.batch)
    train_group(cfgs[:1], data)  # warm-up (allocator, cuDNN / oneDNN kernel selection)
    what = f"ResNet-18 width {args.width} ER on seq-cifar10-shaped data ({args.device})"
    if args.groups:
        measured = by_group_size(cfgs, data, group_sizes(args.groups), args.repeats, args.device, per_run)
        text, targets = group_targets(measured, args.device, what)
        print()
        print(
            f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps, ER batch "
            f"{args.batch} + replay {args.batch}, crop + flip; device {args.device}; median of {args.repeats}"
        )
        print(text)
        say_targets(targets)
        print(load_line())
        write_result(
            "resnet",
            targets,
            {
                "width": args.width,
                "steps_per_task": steps,
                "batch": args.batch,
                "groups": {str(k): v for k, v in measured.items()},
            },
            args,
        )
        return
    cfgs = cfgs[: args.runs]

    rows, group_ips, single_ips = [], [], []
    for rep in range(args.repeats):
        results, wall_g = timed(lambda: train_group(cfgs, data), args.device)
        train_g = sum(results[0].train_s)
        train_1 = 0.0
        for c in cfgs:
            (res,), _ = timed(lambda: train_group([c], data), args.device)  # noqa: B023
            train_1 += sum(res.train_s)
        g_ips = args.runs * per_run / train_g
        s_ips = args.runs * per_run / train_1
        group_ips.append(g_ips)
        single_ips.append(s_ips)
        rows.append(
            [rep + 1, f"{train_g:.1f}", f"{g_ips:.1f}", f"{train_1:.1f}", f"{s_ips:.1f}", f"{g_ips / s_ips:.2f}x"]
        )
        print(f"repeat {rep + 1}: group {train_g:.1f} s, one after another {train_1:.1f} s (training)", flush=True)
    ratio = median(group_ips) / median(single_ips)
    print()
    print(
        f"reduced ResNet-18 width {args.width}, synthetic 32x32x3, 5 tasks x {steps} steps, ER batch {args.batch} + "
        f"replay {args.batch}, crop + flip; {args.runs} runs; device {args.device}"
    )
    print(
        table(
            [
                "repeat",
                f"group of {args.runs}: training (s)",
                "images/s",
                f"{args.runs} x group of 1: training (s)",
                "images/s",
                "ratio",
            ],
            rows,
        )
    )
    print(
        f"\nmedian: group {median(group_ips):.1f} images/s, single runs {median(single_ips):.1f} images/s, "
        f"ratio {ratio:.2f}x"
    )
    targets = [
        target(
            f"{what}: a group of {args.runs} >= {TARGET_GROUP_OF_4:g}x the images/s of single runs",
            ratio,
            "x",
            ratio >= TARGET_GROUP_OF_4 if cuda else None,
            shown=f"{ratio:.2f}x ({median(group_ips):.0f} / {median(single_ips):.0f} images/s)",
            why="" if cuda else f"ran on {args.device}: the target is for a GPU",
        )
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "resnet",
        targets,
        {
            "width": args.width,
            "steps_per_task": steps,
            "batch": args.batch,
            "runs": args.runs,
            "group_images_per_s": group_ips,
            "single_images_per_s": single_ips,
        },
        args,
    )


if __name__ == "__main__":
    main()
