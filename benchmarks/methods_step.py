"""Benchmark 16, methods_step: each method's training step on seq-fmnist against ER's, in lockstep
groups, side by side in one invocation (issue 20, item 6).

MLP protocol (1 epoch, batch 10, each method's seq-fmnist preset, buffer 200), 10 seeds in one
lockstep group per method, on ``--fraction`` of each task's training data (every method the same
steps). Per step = the group's training time (its replay draws, extra forwards, end-of-task work
and refits; not evaluation) over its steps; the table gives it per method, against ER's, with the
extra work each method does per step or per task (``EXTRA``: read from the methods' code). The
methods run in a rotated order in each repeat, so that a slow spell of the machine does not
favour one.

Usage: python benchmarks/methods_step.py [--methods er,...] [--seeds 10] [--fraction 0.25] [--repeats 3] [--quick]
No target: each method's step against ER's is recorded as a measurement. ``--quick``: ER and two
rivals, 2 seeds, 1 % of the data, 1 repeat. ``benchmarks/methods_resnet.py`` does the same with
the reduced ResNet-18 (for a GPU).
"""

from __future__ import annotations

import dataclasses

from _common import base_parser, begin, load_line, measurement, median, say_targets, table, timed, write_result

from clbench import RunConfig, load_benchmark, train_group

METHODS = "er,er_ace,derpp,xder,icarl,agem,gdumb,ss_il,lode,lode_derpp,er_las,er_aml,wa,bic"
# What each method computes beyond ER's one forward and backward of stream + replay rows per step.
EXTRA = {
    "er": "-",
    "er_ace": "none (the stream CE over the batch's classes)",
    "derpp": "two replay draws of 128 rows (a forward each; logits kept in the buffer)",
    "xder": "two replay draws (a forward each); the buffer's logits updated at task ends",
    "icarl": "a forward of the previous task's network on every row (its targets); herding at task ends",
    "agem": "a second forward and backward on a buffer draw (the reference gradient), and the projection",
    "gdumb": "no stream training; a refit from scratch on its memory after each task",
    "ss_il": "a forward of the previous task's network on stream + replay rows (distillation)",
    "lode": "a separate forward of the replay minibatch",
    "lode_derpp": "as DER++, its stream CE in two terms",
    "er_las": "none (label counts over a window)",
    "er_aml": "a separate replay forward (task 0); from task 1 a forward of each stream sample's positive "
    "and negative drawn from the buffer (SupCon on features)",
    "wa": "a forward of the previous task's network (distillation); weight aligning at task ends",
    "bic": "a forward of the previous task's network (distillation); the bias layer fitted at task ends",
}


def step_times(methods: list[str], data, seeds: int, repeats: int, device: str) -> dict[str, float]:
    """Each method's group of ``seeds`` runs: training seconds per step (median of ``repeats``)."""
    groups = {
        m: [RunConfig(method=m, benchmark="seq-fmnist", seed=s, buffer_size=200).resolve() for s in range(seeds)]
        for m in methods
    }
    train_group(groups[methods[0]][:1], data)  # warm-up (allocator, oneDNN kernel selection)
    per_method: dict[str, list[float]] = {m: [] for m in methods}
    steps = sum(-(-len(i) // groups[methods[0]][0].batch_size) for i in data.train_task_idx)
    for rep in range(repeats):
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
        for method in order:
            results, wall = timed(lambda: train_group(groups[method], data), device)  # noqa: B023
            train_s = float(sum(results[0].train_s))
            per_method[method].append(train_s / steps)
            print(f"repeat {rep + 1}: {method}: {train_s:.2f} s training ({wall:.2f} s wall)", flush=True)
    return {m: median(v) for m, v in per_method.items()}


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.25, help="fraction of each task's training set")
    args = begin(ap)
    if args.quick:
        args.methods, args.seeds, args.fraction, args.repeats = "er,ss_il,er_aml", 2, 0.01, 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "er" not in methods:
        methods.insert(0, "er")
    data = load_benchmark("seq-fmnist", device=args.device)
    data = dataclasses.replace(
        data, train_task_idx=tuple(i[: max(1, int(len(i) * args.fraction))] for i in data.train_task_idx)
    )
    per_step = step_times(methods, data, args.seeds, args.repeats, args.device)
    base = per_step["er"]
    rows = [[m, f"{1e3 * s:.2f}", f"{s / base:.2f}x", EXTRA.get(m, "?")] for m, s in per_step.items()]
    print()
    print(
        f"seq-fmnist, MLP protocol, buffer 200, groups of {args.seeds} seeds, {args.fraction:g} of the data, "
        f"{args.device}: training time per step of the whole group (median of {args.repeats})"
    )
    print(table(["method", "ms per step (group)", "vs ER", "extra work"], rows))
    shown = ", ".join(f"{m} {s / base:.2f}x" for m, s in per_step.items() if m != "er")
    targets = [
        measurement(
            f"each method's {args.seeds}-seed group step against ER's (seq-fmnist MLP)",
            None,
            "",
            shown=f"{shown} (ER: {1e3 * base:.2f} ms per step)",
        )
    ]
    say_targets(targets)
    print(load_line())
    write_result(
        "methods_step",
        targets,
        {"seeds": args.seeds, "fraction": args.fraction, "seconds_per_step": per_step, "extra": EXTRA},
        args,
    )


if __name__ == "__main__":
    main()
