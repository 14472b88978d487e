"""``clbench run``: plan the sweep against the registry, train what is missing under a live progress
display, and print the summary of every run asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clbench.cli.common import (
    MAX_THREADS,
    UsageProblem,
    check_data,
    check_experiment,
    check_whole_option,
    checkpoint_dir_option,
    checkpoint_every_option,
    checkpoint_policy,
    class_order_option,
    class_orders,
    config_problem,
    console,
    db_option,
    db_url,
    duration,
    inspect,
    ints,
    key_values,
    pm,
    split,
    strict_float,
    strict_int,
)
from clbench.cli.executor import (
    ExecutorChoice,
    SlurmChoice,
    build_executor,
    cpus_per_group_option,
    executor_option,
    gpus_per_group_option,
    ray_address_option,
    retries_option,
    slurm_account_option,
    slurm_folder_option,
    slurm_partition_option,
    slurm_qos_option,
    slurm_sbatch_option,
    slurm_time_option,
    threads_option,
)
from clbench.cli.progress import run_with_display
from clbench.data.specs import BENCHMARKS, SyntheticOptions
from clbench.lockstep import HEADS
from clbench.methods import METHODS
from clbench.runs.mask import MASK_KEEP_CHOICES, MASK_ON_CHOICES
from clbench.runs.resolved import DER_LOGITS, LOGIT_STORING_METHODS
from clbench.store.connection import describe_url
from clbench.sweep.plan import MAX_SWEEP_RUNS, Plan, describe_group, sweep_configs
from clbench.sweep.ram import budget_bytes, human
from clbench.sweep.session import Planning, SweepRequest, Training, preview_plans


def run(
    method: list[str] = typer.Option(
        ["er"],
        "--method",
        "-m",
        metavar="METHOD",
        help=f"Method: {', '.join(METHODS)}, "
        "PATH.py:CLASS (a method of your own) or an installed clbench.methods entry point. Repeatable.",
    ),
    mask: list[str] = typer.Option(
        ["none"], "--mask", metavar="MASK", help="Mask value: none, -inf or a number. Repeatable, or a comma list."
    ),
    mask_on: str = typer.Option(
        "stream", "--mask-on", metavar="WHERE", help=f"Where the mask applies: {', '.join(MASK_ON_CHOICES)}."
    ),
    validation: float = typer.Option(
        0.0,
        "--validation",
        parser=strict_float("--validation"),
        metavar="F",
        help="Hold out the fraction F (0 < F <= 0.5) of each task's training data, class-balanced and drawn "
        "from the seed, and evaluate on it beside the test sets (0: no validation split).",
    ),
    eval_every: int | None = typer.Option(
        None,
        "--eval-every",
        parser=strict_int("--eval-every"),
        metavar="N",
        help="Evaluate every N steps of each task's training (and after its last) on a fixed subset of each seen "
        "task's test data (validation data with --validation), drawn from the seed: accuracy curves. [default: off]",
    ),
    eval_samples: int | None = typer.Option(
        None,
        "--eval-samples",
        parser=strict_int("--eval-samples"),
        metavar="S",
        help="Samples per seen task evaluated with --eval-every. [default: 1000, or a task's whole test data if less]",
    ),
    mask_keep: str = typer.Option(
        "task",
        "--mask-keep",
        metavar="KEEP",
        help="Which classes stay live on a masked row: task (its own task's), batch (those present in the "
        "batch's rows of its kind, ER-ACE's rule) or seen (those of the tasks seen so far).",
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", parser=strict_int("--seeds"), metavar="N", help="Run seeds 0..N-1. [default: 1]"
    ),
    seed: list[str] = typer.Option(
        [], "--seed", metavar="SEED", help="An explicit seed. Repeatable (adds to --seeds)."
    ),
    class_order: list[str] = class_order_option(),
    dataset: str = typer.Option(
        "seq-fmnist", "--dataset", "-d", metavar="BENCHMARK", help=f"Benchmark: {', '.join(BENCHMARKS)}."
    ),
    buffer: list[str] = typer.Option(["200"], "--buffer", "-b", metavar="SIZE", help="Replay buffer size. Repeatable."),
    epochs: int | None = typer.Option(
        None, "--epochs", parser=strict_int("--epochs"), metavar="N", help="Epochs per task. [default: the benchmark's]"
    ),
    lr: float | None = typer.Option(
        None, "--lr", parser=strict_float("--lr"), metavar="LR", help="Learning rate. [default: the preset's]"
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", parser=strict_int("--batch-size"), metavar="N", help="Stream batch size."
    ),
    minibatch_size: int | None = typer.Option(
        None, "--minibatch-size", parser=strict_int("--minibatch-size"), metavar="N", help="Replay minibatch size."
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", parser=strict_float("--alpha"), metavar="X", help="DER/DER++ logit-matching weight."
    ),
    beta: float | None = typer.Option(
        None, "--beta", parser=strict_float("--beta"), metavar="X", help="DER++ replay cross-entropy weight."
    ),
    der_logits: str | None = typer.Option(
        None,
        "--der-logits",
        metavar="WHEN",
        help="DER/DER++: the logits stored with a sample: pre (the training "
        "forward's, Mammoth) or post (a fresh forward after the step, the paper authors' code). [default: pre]",
    ),
    head: str | None = typer.Option(
        None,
        "--head",
        metavar="HEAD",
        help=f"Classifier head: {', '.join(HEADS)} (bias-free 10 x cosine, the original ER-ACE's). [default: linear]",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="A method option (e.g. gamma=0.9 for xder, fitting_epochs=64 for "
        "gdumb; a method's options are listed when a wrong one is given). Repeatable.",
    ),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu or cuda."),
    data_dir: Path | None = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset."),
    download: bool = typer.Option(False, "--download", help="Download a missing dataset (needs torchvision)."),
    db: str | None = db_option(),
    checkpoint_every: str = checkpoint_every_option(),
    checkpoint_dir: Path | None = checkpoint_dir_option(),
    experiment: str | None = typer.Option(
        None, "--experiment", "-e", metavar="NAME", help="A label grouping these runs."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute finished runs (their results are replaced)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and an estimate of the time; run nothing."),
    group_size: int | None = typer.Option(
        None,
        "--group-size",
        parser=strict_int("--group-size"),
        metavar="N",
        help="At most this many runs per lockstep group.",
    ),
    threads: int | None = threads_option(),
    executor: str = executor_option(),
    ray_address: str | None = ray_address_option(),
    gpus_per_group: float | None = gpus_per_group_option(),
    cpus_per_group: int | None = cpus_per_group_option(),
    retries: int | None = retries_option(),
    slurm_partition: str | None = slurm_partition_option(),
    slurm_time: str | None = slurm_time_option(),
    slurm_account: str | None = slurm_account_option(),
    slurm_qos: str | None = slurm_qos_option(),
    slurm_sbatch: list[str] = slurm_sbatch_option(),
    slurm_folder: Path | None = slurm_folder_option(),
    synthetic_train_per_class: int | None = typer.Option(None, hidden=True),
    synthetic_test_per_class: int | None = typer.Option(None, hidden=True),
) -> None:
    """Train the sweep methods x buffers x masks x seeds; finished runs are reused (cached)."""
    # 1. Everything about the sweep itself (sizes first: nothing large is built before they are checked).
    seed_list = _seed_list(mask_on, mask_keep, seeds, seed, group_size, threads, experiment)
    overrides = _overrides(
        dict(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            minibatch_size=minibatch_size,
            alpha=alpha,
            beta=beta,
            validation=validation or None,
            eval_every=eval_every,
            eval_samples=eval_samples,
        ),
        method,
        der_logits,
        head,
        option,
        dict(train_per_class=synthetic_train_per_class, test_per_class=synthetic_test_per_class),
    )
    slurm = SlurmChoice(slurm_partition, slurm_time, slurm_account, slurm_qos, tuple(slurm_sbatch), slurm_folder)
    runner = build_executor(
        ExecutorChoice(executor, ray_address, gpus_per_group, cpus_per_group, retries, slurm.over(None)),
        device,
        threads,
    )
    # Groups are sized to fit the memory of the machine they train on: this one, with the local
    # executor (a Ray worker's memory is the cluster's to schedule); a run that cannot fit is refused here.
    planning = Planning(force, group_size, budget_bytes(device) if runner.name == "local" else None)
    try:
        configs = sweep_configs(
            methods=split(method, "--method"),
            masks=split(mask, "--mask"),
            buffers=ints(buffer, "buffer size", "--buffer"),
            seeds=seed_list,
            benchmark=dataset,
            mask_on=mask_on,
            mask_keep=mask_keep,
            class_orders=class_orders(class_order),
            **overrides,
        )
        plan = planning.plan(configs, None)  # resolves all
    except ValueError as exc:
        raise config_problem(exc) from None
    # 2. The data, then the database, both without writing anything.
    check_data({r.config.benchmark for r in plan.runs}, data_dir, download)
    url = db_url(db)
    inspect(url)
    policy = checkpoint_policy(url, checkpoint_every, checkpoint_dir, training=not dry_run)
    request = SweepRequest(tuple(configs), experiment)
    training = Training(device, data_dir, download, policy)
    data = training.source().data_print  # run IDs cover the data found (other files, other IDs)
    if dry_run:
        (plan,) = _as_usage_problem(preview_plans, url, [request], planning, data)
        _print_plan(console(), plan, url, device)
        return
    plan = _as_usage_problem(planning.plan, configs, None, data)
    # 3. Run: connect the executor (a cluster is checked here), open the database, plan, train, summarise.
    _run_and_summarise(url, request, runner, planning, training, plan)


def _as_usage_problem(plan, *args):
    """``plan(*args)``, with a dataset file that cannot be fingerprinted as one line, exit 2."""
    try:
        return plan(*args)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _run_and_summarise(url, request: SweepRequest, runner, planning: Planning, training: Training, plan: Plan) -> None:
    """The session of one sweep under the live display, then the summary of every run asked for."""
    ids = [r.run_id for r in plan.runs]
    session = run_with_display(
        url,
        [request],
        runner,
        console(stderr=True),
        planning=planning,
        training=training,
        after=lambda store: _summary(store, ids),
    )
    (outcome,) = session.outcomes
    out = console()
    out.print(_summary_table(session.after))
    out.print(
        f"{len(ids)} runs: {len(outcome.computed)} computed in {duration(outcome.wall_s)}, {len(outcome.cached)} cached"
        f"{f', {len(outcome.held)} held by another process' if outcome.held else ''}. "
        f"Stored in {session.where}; see [bold]clbench runs[/] and [bold]clbench show RUN_ID[/].",
        highlight=False,
    )


def _seed_list(
    mask_on: str, mask_keep: str, seeds: int | None, seed: list[str], group_size, threads, experiment
) -> Sequence[int]:
    """The seeds of ``--seeds`` and ``--seed``, with the options that need no config checked first."""
    if mask_on not in MASK_ON_CHOICES:
        raise UsageProblem(f"invalid --mask-on {mask_on!r}: valid are {', '.join(MASK_ON_CHOICES)}")
    if mask_keep not in MASK_KEEP_CHOICES:
        raise UsageProblem(f"invalid --mask-keep {mask_keep!r}: valid are {', '.join(MASK_KEEP_CHOICES)}")
    if seeds is not None and seeds < 1:
        raise UsageProblem(f"invalid --seeds {seeds}: give N >= 1 to run seeds 0..N-1")
    check_whole_option("--seeds", seeds, 1, MAX_SWEEP_RUNS)
    check_whole_option("--group-size", group_size, 1)
    check_whole_option("--threads", threads, 1, MAX_THREADS)
    if experiment is not None:
        check_experiment(experiment)
    explicit = ints(seed, "seed", "--seed")
    for s in explicit:
        check_whole_option("--seed", s, 0)
    return sorted(set(range(seeds or 0)).union(explicit)) if explicit else range(seeds or 1)


def _overrides(given: dict, method: list[str], der_logits, head, option: list[str], synthetic: dict) -> dict:
    """The config fields given on the command line (``None``: the preset's), checked."""
    if der_logits is not None and not set(split(method, "--method")) & set(LOGIT_STORING_METHODS):
        raise UsageProblem(
            f"--der-logits applies to der and derpp, and none of the methods asked for is one "
            f"(valid: {', '.join(DER_LOGITS)} with -m der or -m derpp)"
        )
    if head is not None and head not in HEADS:
        raise UsageProblem(f"invalid --head {head!r}: valid heads are {', '.join(HEADS)}")
    options = key_values(option, "--option")
    given = dict(given, der_logits=der_logits, head=head, options=options or None)
    overrides = {k: v for k, v in given.items() if v is not None}
    synthetic = {k: v for k, v in synthetic.items() if v is not None}
    if synthetic:
        overrides["synthetic"] = SyntheticOptions(**synthetic)
    return overrides


def _summary(store, ids: list[str]):
    """The summary of the runs asked for, in the order the sweep was asked for (methods, buffers,
    masks as given), not the store's."""
    from clbench.store.queries import load_runs, summarize_runs  # pandas: only once there is a summary

    runs = load_runs(store, run_id=ids)
    present = set(runs["run_id"])
    runs = runs.set_index("run_id").loc[[i for i in ids if i in present]].reset_index()
    return summarize_runs(runs)


def _summary_table(summary) -> Table:
    from clbench.store.queries import exclusion_note

    table = Table(
        title="Final average accuracy (FAA) and forgetting (Chaudhry et al. 2018: max over earlier "
        "rows minus the last), mean ± std over seeds (%)",
        title_justify="left",
    )
    varying = [
        k
        for k in ("epochs", "lr", "batch_size", "minibatch_size", "alpha", "beta")
        if summary[k].nunique(dropna=False) > 1
    ]
    for name in ["method", "dataset", "buffer", "mask", "on", *varying, "seeds"]:
        table.add_column(name, justify="right" if name in ("buffer", "seeds", *varying) else "left")
    for name in ("FAA class-IL", "FAA task-IL", "forgetting class-IL", "forgetting task-IL"):
        table.add_column(name, justify="right")
    excluded = []
    for _, row in summary.iterrows():
        if note := exclusion_note(row["n_diverged"], row["n_seeds"]):
            excluded.append(f"{row['method']} {row['dataset']} buffer {row['buffer_size']} mask {row['mask']}: {note}")
        table.add_row(
            row["method"],
            row["dataset"],
            str(row["buffer_size"]),
            row["mask"],
            row["mask_on"],
            *[str(row[k]) for k in varying],
            str(row["n_seeds"]),
            pm(row["faa_class_il_mean"], row["faa_class_il_std"]),
            pm(row["faa_task_il_mean"], row["faa_task_il_std"]),
            pm(row["forgetting_class_il_mean"], row["forgetting_class_il_std"]),
            pm(row["forgetting_task_il_mean"], row["forgetting_task_il_std"]),
        )
    if excluded:
        table.caption = "\n".join(excluded) + " (see clbench runs --status diverged)"
        table.caption_justify = "left"
        table.caption_style = "magenta"
    return table


PLAN_ROWS_SHOWN = 200  # runs listed by --dry-run; a larger plan is summarised (the groups below say the rest)
PLAN_GROUPS_SHOWN = 50


def _print_plan(out: Console, plan: Plan, url, device: str) -> None:
    estimates = plan.group_estimates_s()
    table = Table(title=f"Plan: {len(plan.runs)} runs against {describe_url(url)}", title_justify="left")
    for name in ("group", "run id", "method", "dataset", "buffer", "mask", "on", "seed", "stored", "action"):
        table.add_column(name, justify="right" if name in ("group", "buffer", "seed") else "left")
    group_of = {i: g for g, members in enumerate(plan.groups) for i in members}
    for i, r in enumerate(plan.runs[:PLAN_ROWS_SHOWN]):
        c = r.config
        action = (
            Text("cached", style="green")
            if r.action == "cached"
            else Text("recompute" if r.stored_status == "finished" else "run", style="yellow")
        )
        table.add_row(
            str(group_of[i] + 1) if i in group_of else "-",
            r.run_id,
            c.method,
            c.benchmark,
            str(c.buffer_size),
            c.mask.label,
            c.mask.on,
            str(c.seed),
            r.stored_status,
            action,
        )
    if len(plan.runs) > PLAN_ROWS_SHOWN:
        table.caption = f"the first {PLAN_ROWS_SHOWN} of {len(plan.runs)} runs; the groups below hold the rest"
    out.print(table)
    memory = plan.group_memory_bytes()
    for g in range(min(len(plan.groups), PLAN_GROUPS_SHOWN)):
        out.print(
            f"group {g + 1}: {describe_group(plan.group_configs(g))}, estimated {duration(estimates[g])}, "
            f"{human(memory[g])} of memory",
            highlight=False,
        )
    if len(plan.groups) > PLAN_GROUPS_SHOWN:
        out.print(f"... and {len(plan.groups) - PLAN_GROUPS_SHOWN} more groups like these", highlight=False)
    if plan.memory_note:
        out.print(plan.memory_note, highlight=False)
    where_to = "" if device == "cpu" else f" (the cost model is for CPU; on {device} expect less)"
    out.print(
        f"{len(plan.to_run)} to compute in {len(plan.groups)} lockstep group(s), {len(plan.cached)} already done "
        f"(cached). Estimated time: {duration(plan.estimate_s)}, a rough estimate from a CPU cost model{where_to}.",
        highlight=False,
    )
