"""``clbench report``: registered experiments, the runs they lack computed (a session,
``clbench.sweep.session``) and their figures and tables rendered from the registry."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.table import Table

from clbench.cli.common import (
    MAX_THREADS,
    SPLIT_CHOICES,
    UsageProblem,
    check_data,
    check_whole_option,
    checkpoint_dir_option,
    checkpoint_every_option,
    checkpoint_policy,
    console,
    db_option,
    db_url,
    duration,
    given_command,
    inspect,
    interrupted_render,
    store_errors_as_bad_input,
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
from clbench.data.sources import DataNotFoundError
from clbench.files import OutputError, check_output_folder
from clbench.runs.results import CLASS_IL_CONVENTIONS
from clbench.store.connection import describe_url
from clbench.store.opening import open_store
from clbench.sweep.plan import MAX_SWEEP_RUNS, describe_group, plan_sweep
from clbench.sweep.ram import budget_bytes, human
from clbench.sweep.session import Planning, SweepRequest, Training, preview_plans

ALL = "all"


def report_command(
    name: str | None = typer.Argument(
        None,
        metavar="NAME",
        help="A registered experiment (fig2, fig4, forgetting, tiny-buffer, ...), a path "
        "to an experiment .toml file, or 'all' (every registered experiment). Without "
        "NAME: list the registered experiments.",
    ),
    no_run: bool = typer.Option(False, "--no-run", help="Render from the runs that exist; list the missing ones."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the lockstep groups still to compute and an estimate of the time; run and write nothing.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="DIR",
        help="Output folder. [default: reports/NAME; with 'all': reports, one folder per report inside]",
    ),
    html: bool = typer.Option(
        False,
        "--html",
        help="Also write static HTML pages: NAME.html beside the report's "
        "folder and index.html (for 'all' and by default: reports/).",
    ),
    seeds: int | None = typer.Option(None, "--seeds", metavar="N", help="Seeds 0..N-1 instead of the experiment's."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu or cuda."),
    data_dir: Path | None = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset."),
    download: bool = typer.Option(False, "--download", help="Download a missing dataset (needs torchvision)."),
    threads: int | None = threads_option(),
    db: str | None = db_option(),
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
    checkpoint_every: str = checkpoint_every_option(),
    checkpoint_dir: Path | None = checkpoint_dir_option(),
    class_il: str | None = typer.Option(
        None,
        "--class-il",
        metavar="CONVENTION",
        help="Class-IL accuracy with the argmax over all classes (all) or "
        "over the classes seen so far (seen). [default: the experiment's, else all]",
    ),
    include_stale: bool = typer.Option(
        False,
        "--include-stale",
        help="Let runs of an older engine (stale) stand "
        "in for runs this clbench has not computed; they are named as such.",
    ),
    split_on: str | None = typer.Option(
        None,
        "--split",
        metavar="SPLIT",
        help="Measure on the test sets (test) or the validation split (validation). [default: the experiment's, "
        "else test]",
    ),
) -> None:
    """Run what the database lacks for a registered experiment, then render its figures and tables."""
    if name is None:
        _list_experiments()
        return
    check_whole_option("--seeds", seeds, 1, MAX_SWEEP_RUNS)
    check_whole_option("--threads", threads, 1, MAX_THREADS)
    specs = _specs(name, seeds, class_il, include_stale, split_on)
    configs = [c for spec in specs for c in spec.configs()]
    slurm = SlurmChoice(slurm_partition, slurm_time, slurm_account, slurm_qos, tuple(slurm_sbatch), slurm_folder)
    choice = ExecutorChoice(
        executor,
        ray_address,
        gpus_per_group,
        cpus_per_group,
        retries,
        slurm.over(specs[0].slurm if name != ALL else None),
    )
    runner = build_executor(choice, device, threads, check_device=not no_run)  # rendering alone trains nothing
    # Groups are sized to fit the memory of the machine they train on: this one, with the local
    # executor (a Ray worker's memory is the cluster's to schedule). Rendering alone trains nothing.
    planning = Planning(memory_budget=budget_bytes(device) if runner.name == "local" and not no_run else None)
    try:  # before the database is opened: every run resolves, and one that cannot fit in memory is bad input
        planning.plan(configs, None)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    out_dirs, root = _out_dirs(name, specs, out, html)
    url = db_url(db)
    # bad values are bad input, --no-run too; the folder is tried only when runs may be trained
    policy = checkpoint_policy(url, checkpoint_every, checkpoint_dir, training=not (no_run or dry_run))
    state = inspect(url)
    stdout = console()
    command = _command(name, no_run, out, html, seeds, db, class_il, include_stale)
    training = Training(device, data_dir, download, policy)
    if no_run or dry_run:  # the runs of the data found, or (none found) of the published files
        specs = _on_the_data(specs, training)
    if no_run:
        _render_existing(specs, url, state, out_dirs, root, html, command, stdout, name)
        return
    if dry_run:
        for spec, plan in zip(specs, preview_plans(url, _requests(specs), planning)):
            _print_dry_run(stdout, spec, plan, describe_url(url), device)
        return
    check_data({c.resolve().benchmark for c in configs}, data_dir, download)
    specs = _on_the_data(specs, training)
    run_with_display(
        url,
        _requests(specs),
        runner,
        console(stderr=True),
        planning=planning,
        training=training,
        named=True,
        after=lambda store: _render_interruptible(
            specs, store, out_dirs, root, html, command, stdout, name, quiet_when_complete=True
        ),
    )


def _on_the_data(specs: list, training: Training) -> list:
    """``specs`` identified with the data found (a run's identity covers its data's fingerprint when
    the files are not the published ones); where none is found, as on the published files."""
    try:
        return [spec.with_data(training.source().data_print(spec.benchmark)) for spec in specs]
    except DataNotFoundError:
        return specs


def _requests(specs: list) -> list[SweepRequest]:
    """The sweeps of ``specs``: their runs, identified with their data."""
    from clbench.reports.render import experiment_configs  # pandas: not for --help

    return [SweepRequest(tuple(experiment_configs(spec)), spec.name) for spec in specs]


def _list_experiments() -> None:
    from clbench.reports import list_experiments, load_experiment  # pandas: not for --help

    table = Table(title="Registered experiments (clbench report NAME, or all)", title_justify="left")
    for col in ("name", "kind", "benchmark", "runs", "title"):
        table.add_column(col, justify="right" if col == "runs" else "left")
    for exp_name, title in list_experiments().items():
        try:
            s = load_experiment(exp_name)
            table.add_row(exp_name, s.kind, s.benchmark, str(len(s.configs())), title)
        except ValueError as exc:
            table.add_row(exp_name, "-", "-", "-", f"invalid: {exc}")
    console().print(table)


def _specs(name: str, seeds: int | None, class_il: str | None, include_stale: bool, split_on) -> list:
    """The experiments asked for, with the options that change them; a bad one is bad input."""
    from clbench.reports import list_experiments, load_experiment  # pandas: not for --help

    names = list(list_experiments()) if name == ALL else [name]

    specs = []
    try:
        for n in names:
            spec = load_experiment(n)
            if seeds is not None:
                spec = spec.with_seeds(seeds)
            if class_il is not None:
                if class_il not in CLASS_IL_CONVENTIONS:
                    raise ValueError(f"invalid --class-il {class_il!r}: valid are {', '.join(CLASS_IL_CONVENTIONS)}")
                spec = spec.with_render(class_il=class_il)
            if include_stale:
                spec = spec.with_render(include_stale=True)
            if split_on is not None:
                if split_on not in SPLIT_CHOICES:
                    raise ValueError(f"invalid --split {split_on!r}: valid are {', '.join(SPLIT_CHOICES)}")
                spec = spec.with_render(split=split_on)
            specs.append(spec)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    return specs


def _out_dirs(name: str, specs: list, out: Path | None, html: bool) -> tuple[dict[str, Path], Path]:
    """Each report's output folder and the root (of the HTML pages), checked writable before any training."""
    from clbench.reports.html import check_html_root

    if name == ALL:
        root = out if out is not None else Path("reports")
        out_dirs = {spec.name: root / spec.name for spec in specs}
    else:
        out_dirs = {specs[0].name: out if out is not None else Path("reports") / specs[0].name}
        root = out_dirs[specs[0].name].parent
    for out_dir in [*out_dirs.values(), root]:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageProblem(f"--out {out_dir} is a file, not a folder")
    for out_dir in [*out_dirs.values(), root]:
        try:  # before any training: an output folder that cannot be written is found now, not after it
            check_output_folder(out_dir)
        except OutputError as exc:
            raise UsageProblem(f"invalid --out: {exc}") from None
    if html:
        try:
            check_html_root(root)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    return out_dirs, root


def _render_existing(specs, url, state: str, out_dirs, root, html, command: str, stdout, name: str) -> None:
    """``--no-run``: render from the runs that exist (read-only), or say there are none."""
    if state in ("missing", "empty"):
        what = "does not exist yet" if state == "missing" else "holds no runs"
        stdout.print(f"nothing to render: {describe_url(url)} {what}", highlight=False)
        for spec in specs:
            missing = [r.config for r in plan_sweep(spec.configs()).runs]
            _print_missing(stdout, spec, missing, describe_url(url), _name_for(spec, name))
        return
    store = open_store(url, readonly=True)
    with store, store_errors_as_bad_input(), interrupted_render(store.where):
        _render(specs, store, out_dirs, root, html, command, stdout, name)


def _render_interruptible(specs, store, *args, **kwargs) -> None:
    """:func:`_render`, an interruption told in one line (every run computed is kept)."""
    with interrupted_render(store.where):
        _render(specs, store, *args, **kwargs)


def _print_dry_run(out, spec, plan, where: str, device: str) -> None:
    estimates = plan.group_estimates_s()
    memory = plan.group_memory_bytes()
    for g in range(len(plan.groups)):
        out.print(
            f"group {g + 1}: {describe_group(plan.group_configs(g))}, estimated {duration(estimates[g])}, "
            f"{human(memory[g])} of memory",
            highlight=False,
        )
    if plan.memory_note:
        out.print(plan.memory_note, highlight=False)
    where_to = "" if device == "cpu" else f" (the cost model is for CPU; on {device} expect less)"
    out.print(
        f"{spec.name}: {len(plan.runs)} runs against {where}: {len(plan.to_run)} to compute in "
        f"{len(plan.groups)} lockstep group(s), {len(plan.cached)} already done (cached). Estimated time: "
        f"{duration(plan.estimate_s)}, a rough estimate from a CPU cost model{where_to}.",
        highlight=False,
    )


def _name_for(spec, name: str) -> str:
    return spec.name if name == ALL else name


def _command(name, no_run, out, html, seeds, db, class_il=None, include_stale=False) -> str:
    """The command line that rendered these reports, as given (shown on the HTML pages); rebuilt from
    the options below when not started through ``clbench.cli.main``."""
    given = given_command()
    if given is not None:
        return given
    args = ["clbench", "report", name]
    if class_il is not None:
        args += ["--class-il", class_il]
    if include_stale:
        args.append("--include-stale")
    if no_run:
        args.append("--no-run")
    if html:
        args.append("--html")
    if seeds is not None:
        args += ["--seeds", str(seeds)]
    if out is not None:
        args += ["--out", str(out)]
    if db is not None:
        args += ["--db", db]
    return shlex.join(args)


def _render(specs, store, out_dirs, root, html, command, out, name, quiet_when_complete=False) -> None:
    """Render (and with ``html`` write the pages of) every spec; print what was written and missing."""
    from clbench.reports import missing_runs, render_report
    from clbench.reports.html import INDEX, write_html
    from clbench.reports.render import excluded_runs, exclusion_lines

    missing = {spec.name: missing_runs(spec, store) for spec in specs}
    if html:
        written = write_html(specs, store, root, out_dirs=out_dirs, commands={s.name: command for s in specs})
        by_spec = {s.name: [p for p in written if p.parent == out_dirs[s.name]] for s in specs}
    else:
        by_spec = {s.name: render_report(s, store, out_dirs[s.name]) for s in specs}
    for spec in specs:
        _print_written(out, spec, by_spec[spec.name], out_dirs[spec.name])
        for line in exclusion_lines(spec, excluded_runs(spec, store)):
            out.print(f"  excluded: {line}", highlight=False)
        if name == ALL:  # one line each: the full lists would run to hundreds of rows
            n, total = len(missing[spec.name]), len(spec.configs())
            if n:
                out.print(
                    f"  {n} of {total} runs missing from {store.where} (list them: clbench report {spec.name} "
                    "--no-run)",
                    highlight=False,
                )
        elif missing[spec.name] or not quiet_when_complete:
            _print_missing(out, spec, missing[spec.name], store.where, _name_for(spec, name))
    if html:
        out.print(
            f"wrote {root / INDEX} and {len(specs)} report page{'s' if len(specs) != 1 else ''} "
            f"({', '.join(f'{s.name}.html' for s in specs)}): open {root / INDEX} in a browser",
            highlight=False,
        )


def _print_written(out, spec, written: list[Path], out_dir: Path) -> None:
    if not written:
        out.print(f"nothing rendered for {spec.name}: none of its runs are finished", highlight=False)
        return
    out.print(f"rendered {spec.name} ({spec.kind}) into {out_dir}/:", highlight=False)
    for path in written:
        out.print(f"  {path.name}", highlight=False)


def _print_missing(out, spec, missing, where: str, name: str) -> None:
    if not missing:
        out.print(f"all runs of {spec.name} are in {where}", highlight=False)
        return
    table = Table(title=f"{len(missing)} runs of {spec.name} missing from {where}", title_justify="left")
    for col in ("run id", "method", "dataset", "buffer", "mask", "on", "seed"):
        table.add_column(col, justify="right" if col in ("buffer", "seed") else "left")
    for c in missing:
        table.add_row(c.identity(), c.method, c.benchmark, str(c.buffer_size), c.mask.label, c.mask.on, str(c.seed))
    out.print(table)
    out.print(f"compute them with: clbench report {name}", highlight=False)
