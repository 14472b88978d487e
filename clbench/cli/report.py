"""``clbench report`` and ``clbench compare``: registered experiments rendered from the registry, and
the baseline against each masked variant, paired over seeds."""

from __future__ import annotations

import io
import math
import shlex
import sys
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from clbench.cli.common import (
    FILTER_HELP,
    MAX_THREADS,
    SPLIT_CHOICES,
    UsageProblem,
    check_data,
    check_whole_option,
    checkpoint_dir_option,
    checkpoint_every_option,
    checkpoint_policy,
    class_il_option,
    class_order_option,
    console,
    db_option,
    db_url,
    describe_checkpoints,
    duration,
    filter_options,
    given_command,
    inspect,
    interrupted_render,
    load,
    p_value,
    pm,
    report_held,
    sigterm_as_interrupt,
    split,
    split_option,
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
    start_executor,
    threads_option,
)
from clbench.cli.progress import execute_with_progress
from clbench.files import OutputError, check_output_folder
from clbench.reports import list_experiments, load_experiment, missing_runs, render_report
from clbench.reports.compare import ALPHA, COMPARE_METRICS, TESTS, compare_runs, procedures
from clbench.reports.html import INDEX, check_html_root, write_html
from clbench.reports.render import excluded_runs, exclusion_lines
from clbench.runs.mask import format_mask_value, parse_mask_value
from clbench.runs.results import CLASS_IL_CONVENTIONS
from clbench.store.connection import StoreError, describe_url
from clbench.store.opening import open_store
from clbench.sweep.plan import MAX_SWEEP_RUNS, describe_group, plan_sweep
from clbench.sweep.ram import budget_bytes, human

COMPARE_FORMATS = ("table", "md", "csv", "json")


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
        return
    check_whole_option("--seeds", seeds, 1, MAX_SWEEP_RUNS)
    check_whole_option("--threads", threads, 1, MAX_THREADS)
    names = list(list_experiments()) if name == ALL else [name]
    specs = []
    configs = []
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
            configs += spec.configs()
        plan_sweep(configs, None)  # resolves every run
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    runner = build_executor(
        ExecutorChoice(
            executor,
            ray_address,
            gpus_per_group,
            cpus_per_group,
            retries,
            SlurmChoice(slurm_partition, slurm_time, slurm_account, slurm_qos, tuple(slurm_sbatch), slurm_folder).over(
                specs[0].slurm if name != ALL else None
            ),
        ),
        device,
        threads,
    )
    # Groups are sized to fit the memory of the machine they train on: this one, with the local
    # executor (a Ray worker's memory is the cluster's to schedule). Rendering alone trains nothing.
    budget = budget_bytes(device) if runner.name == "local" and not no_run else None  # --dry-run too: it says so
    try:  # before the database is opened: a run that cannot fit in memory is bad input
        plan_sweep(configs, None, memory_budget=budget)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
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
    url = db_url(db)
    # bad values are bad input, --no-run too; the folder is tried only when runs may be trained
    policy = checkpoint_policy(url, checkpoint_every, checkpoint_dir, training=not (no_run or dry_run))
    state = inspect(url)
    err = console(stderr=True)
    stdout = console()
    if no_run:
        if state in ("missing", "empty"):
            what = "does not exist yet" if state == "missing" else "holds no runs"
            stdout.print(f"nothing to render: {describe_url(url)} {what}", highlight=False)
            for spec in specs:
                _print_missing(
                    stdout,
                    spec,
                    [r.config for r in plan_sweep(spec.configs()).runs],
                    describe_url(url),
                    _name_for(spec, name),
                )
            return
        store = open_store(url, readonly=True)
        with store, store_errors_as_bad_input(), interrupted_render(store.where):
            _render(
                specs,
                store,
                out_dirs,
                root,
                html,
                _command(name, no_run, out, html, seeds, db, class_il, include_stale),
                stdout,
                name,
            )
        return
    if dry_run:
        store = open_store(url, readonly=True) if state == "ready" else None
        try:
            for spec in specs:
                _print_dry_run(
                    stdout, spec, plan_sweep(spec.configs(), store, memory_budget=budget), describe_url(url), device
                )
        finally:
            if store is not None:
                store.close()
        return
    check_data({c.resolve().benchmark for c in configs}, data_dir, download)
    start_executor(runner)
    try:
        store = open_store(url)
    except StoreError as exc:
        runner.close()
        raise UsageProblem(str(exc)) from None
    with runner, store:
        stale = store.mark_stale_runs()
        if stale:
            err.print(f"marked {len(stale)} run(s) of ended processes as interrupted")
        for spec in specs:
            try:
                plan = plan_sweep(spec.configs(), store, memory_budget=budget)
            except ValueError as exc:  # a run that cannot fit in memory
                raise UsageProblem(str(exc)) from None
            err.print(
                f"{spec.name}: {len(plan.runs)} runs, {len(plan.to_run)} to compute in {len(plan.groups)} group(s) "
                f"(estimated {duration(plan.estimate_s)}), {len(plan.cached)} cached; saving to {store.where}; "
                f"{describe_checkpoints(policy)}"
                + (f"; {plan.memory_note}" if plan.memory_note and plan.to_run else ""),
                highlight=False,
            )
            if plan.to_run and runner.name != "local":
                err.print(runner.describe(), highlight=False)
            with sigterm_as_interrupt():
                outcome = execute_with_progress(
                    plan,
                    store,
                    err,
                    executor=runner,
                    device=device,
                    data_dir=data_dir,
                    download=download,
                    experiment=spec.name,
                    checkpoint=policy,
                )
            report_held(err, outcome.held)
        with interrupted_render(store.where):
            _render(
                specs,
                store,
                out_dirs,
                root,
                html,
                _command(name, no_run, out, html, seeds, db, class_il, include_stale),
                stdout,
                name,
                quiet_when_complete=True,
            )


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


def compare_command(
    baseline: str = typer.Option("none", "--baseline", metavar="MASK", help="The baseline's mask value."),
    test: str = typer.Option(
        "permutation", "--test", metavar="TEST", help="Paired test: permutation (exact sign-flip), wilcoxon or t."
    ),
    format: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=f"{', '.join(COMPARE_FORMATS)}."),
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help="Masked variants to compare. " + FILTER_HELP),
    mask_on: list[str] = typer.Option([], "--mask-on", metavar="WHERE", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    seed: list[str] = typer.Option([], "--seed", metavar="SEED", help=FILTER_HELP),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    class_order: list[str] = class_order_option(),
    class_il: str = class_il_option(),
    split_on: str = split_option(),
    db: str | None = db_option(),
) -> None:
    """The baseline (no mask) against each masked variant of the same config, paired over seeds and class orders."""
    if split_on not in SPLIT_CHOICES:
        raise UsageProblem(f"invalid --split {split_on!r}: valid are {', '.join(SPLIT_CHOICES)}")
    if format not in COMPARE_FORMATS:
        raise UsageProblem(f"invalid --format {format!r}: valid are {', '.join(COMPARE_FORMATS)}")
    if test not in TESTS:
        raise UsageProblem(f"invalid --test {test!r}: valid are {', '.join(TESTS)}")
    try:
        base_label = format_mask_value(parse_mask_value(baseline))
    except ValueError as exc:
        raise UsageProblem(f"invalid --baseline: {exc}") from None
    if class_il not in CLASS_IL_CONVENTIONS:
        raise UsageProblem(f"invalid --class-il {class_il!r}: valid are {', '.join(CLASS_IL_CONVENTIONS)}")
    # Diverged runs are loaded too, so that the comparison can say how many it leaves out.
    filters = filter_options(
        method, dataset, None, buffer, ["finished", "diverged"], experiment, seed, None, class_order
    )
    masks = split(mask, "--mask")
    ons = split(mask_on, "--mask-on")
    df = load(db, class_il=class_il, split=split_on, **filters)
    try:
        if masks:
            wanted = {format_mask_value(parse_mask_value(m)) for m in masks} | {base_label}
            df = df[df["mask"].isin(wanted)]
    except ValueError as exc:
        raise UsageProblem(f"invalid --mask: {exc}") from None
    if ons:
        bad = [o for o in ons if o not in ("stream", "buffer", "both")]
        if bad:
            raise UsageProblem(f"invalid --mask-on {bad[0]!r}: valid are stream, buffer, both")
        df = df[(df["mask"] == base_label) | df["mask_on"].isin(ons)]
    result = compare_runs(df, baseline=base_label, test=test)
    if format == "csv":
        result.to_csv(sys.stdout, index=False)
        return
    if format == "json":
        sys.stdout.write(result.to_json(orient="records", indent=1) + "\n")
        return
    if result.empty:
        print(
            f"nothing to compare: no finished runs with mask {base_label} and a masked variant over common seeds"
            " (see clbench runs)"
        )
        return
    if format == "md":
        sys.stdout.write(compare_markdown(result))
        return
    console().print(compare_table(result))


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


def _rows(result):
    for r in result.itertuples():
        label, higher = COMPARE_METRICS[r.metric]
        better = (r.difference > 0) if higher else (r.difference < 0)
        yield r, label, better


def _test_key(result) -> str:
    return next(k for k, v in TESTS.items() if v == result["test"].iloc[0])


def compare_caption(result) -> str:
    """Names every procedure behind the table's numbers."""
    base = result["baseline"].iloc[0]
    return (
        f"Mask {base} (baseline) against each masked variant, paired by seed over the seeds both have: "
        f"mean ± std (%) over those seeds; diff = mean of variant - baseline; "
        + "; ".join(procedures(_test_key(result), result.attrs.get("class_il", "all")))
        + "; W/L/T: seeds where the variant is better/worse/equal (higher accuracy, lower forgetting)."
        + (
            " Measured on the validation split (training data the runs held out), not the test sets."
            if result.attrs.get("split") == "validation"
            else ""
        )
    )


def _ci(r) -> str:
    if r.ci_low != r.ci_low:
        return "-"
    return f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"


def _dz(value: float) -> str:
    return "-" if value != value else f"{value:+.2f}"


def _p(value: float) -> str:
    text = p_value(value)
    return text + ("*" if value == value and value < ALPHA else "")


def _notes(result) -> list[str]:
    notes = []
    for note in dict.fromkeys(n for n in result["note"] if n):
        notes.append(f"note: {note}.")
    return notes


# The columns that say which comparison a row is: shown only where they vary, else in the title.
_WHICH = (("method", "method"), ("dataset", "dataset"), ("buffer_size", "buffer"), ("mask_on", "on"))


def compare_table(result) -> Table:
    which = [(key, col) for key, col in _WHICH if result[key].nunique() > 1]
    fixed = [f"{col} {result[key].iloc[0]}" for key, col in _WHICH if (key, col) not in which]
    head = f"{', '.join(fixed)}. " if fixed else ""
    table = Table(title=head + compare_caption(result) + f" * p < {ALPHA:g}.", title_justify="left")
    for col in [c for _, c in which] + [
        "mask",
        "metric",
        "seeds",
        "baseline",
        "variant",
        "diff",
        "95% CI",
        "d_z",
        "p",
        "p Holm",
        "W/L/T",
    ]:
        table.add_column(
            col, no_wrap=True, justify="left" if col in ("method", "dataset", "mask", "on", "metric") else "right"
        )
    for r, label, better in _rows(result):
        diff = Text(
            "-" if math.isnan(r.difference) else f"{r.difference:+.2f}",
            style="" if r.difference == 0 or math.isnan(r.difference) else ("green" if better else "red"),
        )
        table.add_row(
            *[str(getattr(r, key)) for key, _ in which],
            r.variant,
            label,
            str(r.n_seeds),
            pm(r.baseline_mean, r.baseline_std),
            pm(r.variant_mean, r.variant_std),
            diff,
            _ci(r),
            _dz(r.effect_size_dz),
            _p(r.p_value),
            _p(r.p_holm),
            f"{r.wins}/{r.losses}/{r.ties}",
        )
    notes = _notes(result)
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def compare_markdown(result) -> str:
    buf = io.StringIO()
    buf.write(compare_caption(result) + f" * p < {ALPHA:g}.\n\n")
    head = [
        "method",
        "dataset",
        "buffer",
        "baseline",
        "variant",
        "on",
        "metric",
        "seeds",
        "baseline mean",
        "variant mean",
        "difference",
        "95% CI",
        "d_z",
        "p",
        "p Holm",
        "wins/losses/ties",
    ]
    buf.write("| " + " | ".join(head) + " |\n")
    buf.write("|" + "|".join(["---"] * 7 + ["---:"] * 9) + "|\n")
    for r, label, _ in _rows(result):
        cells = [
            r.method,
            r.dataset,
            str(r.buffer_size),
            r.baseline,
            r.variant,
            r.mask_on,
            label,
            str(r.n_seeds),
            pm(r.baseline_mean, r.baseline_std),
            pm(r.variant_mean, r.variant_std),
            "-" if math.isnan(r.difference) else f"{r.difference:+.2f}",
            _ci(r),
            _dz(r.effect_size_dz),
            _p(r.p_value),
            _p(r.p_holm),
            f"{r.wins}/{r.losses}/{r.ties}",
        ]
        buf.write("| " + " | ".join(cells) + " |\n")
    notes = _notes(result)
    if notes:
        buf.write("\n" + "\n".join(notes) + "\n")
    return buf.getvalue()
