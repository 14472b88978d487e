"""``clbench report`` and ``clbench compare``: registered experiments rendered from the registry, and
the baseline against each masked variant, paired over seeds."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.table import Table
from rich.text import Text

from ..masking import format_mask_value, parse_mask_value
from ..reports import list_experiments, load_experiment, missing_runs, render_report
from ..reports.compare import COMPARE_METRICS, TESTS, compare_runs
from ..store import StoreError, describe_url, open_store, resolve_db_url
from ..sweep import plan_sweep
from .common import (
    FILTER_HELP,
    UsageProblem,
    check_data,
    console,
    db_option,
    duration,
    filter_options,
    inspect,
    load,
    p_value,
    pm,
    sigterm_as_interrupt,
    split,
)
from .executor import (
    ExecutorChoice,
    build_executor,
    cpus_per_group_option,
    executor_option,
    gpus_per_group_option,
    ray_address_option,
    retries_option,
    start_executor,
)
from .progress import execute_with_progress

COMPARE_FORMATS = ("table", "md", "csv", "json")


def report_command(
    name: Optional[str] = typer.Argument(
        None, metavar="NAME", help="A registered experiment (fig2, fig4, forgetting, tiny-buffer, ...) or a path "
                                   "to an experiment .toml file. Without NAME: list the registered experiments."),
    no_run: bool = typer.Option(False, "--no-run", help="Render from the runs that exist; list the missing ones."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Output folder. [default: reports/NAME]"),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="N", help="Seeds 0..N-1 instead of the experiment's."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu or cuda."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset."),
    download: bool = typer.Option(False, "--download", help="Download a missing dataset (needs torchvision)."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="CPU threads for torch."),
    db: Optional[str] = db_option(),
    executor: str = executor_option(),
    ray_address: Optional[str] = ray_address_option(),
    gpus_per_group: Optional[float] = gpus_per_group_option(),
    cpus_per_group: Optional[int] = cpus_per_group_option(),
    retries: Optional[int] = retries_option(),
) -> None:
    """Run what the database lacks for a registered experiment, then render its figures and tables."""
    if name is None:
        table = Table(title="Registered experiments (clbench report NAME)", title_justify="left")
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
    try:
        spec = load_experiment(name)
        if seeds is not None:
            spec = spec.with_seeds(seeds)
        configs = spec.configs()
        plan_sweep(configs, None)  # resolves every run
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if threads is not None and threads < 1:
        raise UsageProblem(f"invalid --threads {threads}: give N >= 1")
    runner = build_executor(ExecutorChoice(executor, ray_address, gpus_per_group, cpus_per_group, retries), device,
                            threads)
    out_dir = out if out is not None else Path("reports") / spec.name
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageProblem(f"--out {out_dir} is a file, not a folder")
    url = resolve_db_url(db)
    state = inspect(url)
    err = console(stderr=True)
    stdout = console()
    if no_run:
        if state in ("missing", "empty"):
            what = "does not exist yet" if state == "missing" else "holds no runs"
            stdout.print(f"nothing to render: {describe_url(url)} {what}", highlight=False)
            _print_missing(stdout, spec, [r.config for r in plan_sweep(configs).runs], describe_url(url), name)
            return
        store = open_store(url, readonly=True)
        with store:
            missing = missing_runs(spec, store)
            written = render_report(spec, store, out_dir)
        _print_written(stdout, spec, written, out_dir)
        _print_missing(stdout, spec, missing, store.where, name)
        return
    check_data({c.resolve().benchmark for c in configs}, data_dir, download)
    if threads is not None:
        torch.set_num_threads(threads)
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
        plan = plan_sweep(configs, store)
        err.print(
            f"{spec.name}: {len(plan.runs)} runs, {len(plan.to_run)} to compute in {len(plan.groups)} group(s) "
            f"(estimated {duration(plan.estimate_s)}), {len(plan.cached)} cached; saving to {store.where}",
            highlight=False,
        )
        if plan.to_run and runner.name != "local":
            err.print(runner.describe(), highlight=False)
        with sigterm_as_interrupt():
            execute_with_progress(plan, store, err, executor=runner, device=device, data_dir=data_dir,
                                  download=download, experiment=spec.name)
        missing = missing_runs(spec, store)
        written = render_report(spec, store, out_dir)
    _print_written(stdout, spec, written, out_dir)
    if missing:
        _print_missing(stdout, spec, missing, store.where, name)

def compare_command(
    baseline: str = typer.Option("none", "--baseline", metavar="MASK", help="The baseline's mask value."),
    test: str = typer.Option("wilcoxon", "--test", metavar="TEST", help="Paired test: wilcoxon or t."),
    format: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=f"{', '.join(COMPARE_FORMATS)}."),
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help="Masked variants to compare. " + FILTER_HELP),
    mask_on: list[str] = typer.Option([], "--mask-on", metavar="WHERE", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    seed: list[str] = typer.Option([], "--seed", metavar="SEED", help=FILTER_HELP),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    db: Optional[str] = db_option(),
) -> None:
    """The baseline (no mask) against each masked variant of the same config, paired over seeds."""
    if format not in COMPARE_FORMATS:
        raise UsageProblem(f"invalid --format {format!r}: valid are {', '.join(COMPARE_FORMATS)}")
    if test not in TESTS:
        raise UsageProblem(f"invalid --test {test!r}: valid are {', '.join(TESTS)}")
    try:
        base_label = format_mask_value(parse_mask_value(baseline))
    except ValueError as exc:
        raise UsageProblem(f"invalid --baseline: {exc}") from None
    filters = filter_options(method, dataset, None, buffer, ["finished"], experiment, seed, None)
    masks = split(mask)
    ons = split(mask_on)
    df = load(db, **filters)
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
        print(f"nothing to compare: no finished runs with mask {base_label} and a masked variant over common seeds"
              " (see clbench runs)")
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


def compare_table(result) -> Table:
    test = result["test"].iloc[0]
    base = result["baseline"].iloc[0]
    table = Table(title=f"Mask {base} (baseline) against each masked variant, paired over common seeds: mean ± std (%), "
                        f"diff = variant - baseline, p: {test}, W/L/T: seeds where the variant is better/worse/equal",
                  title_justify="left")
    for col in ("method", "dataset", "buffer", "mask", "on", "metric", "seeds", "baseline", "variant", "diff", "p",
                "W/L/T"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("method", "dataset", "mask", "on", "metric")
                         else "right")
    for r, label, better in _rows(result):
        diff = Text("-" if math.isnan(r.difference) else f"{r.difference:+.2f}",
                    style="" if r.difference == 0 or math.isnan(r.difference) else ("green" if better else "red"))
        table.add_row(r.method, r.dataset, str(r.buffer_size), r.variant, r.mask_on, label, str(r.n_seeds),
                      pm(r.baseline_mean, r.baseline_std), pm(r.variant_mean, r.variant_std), diff, p_value(r.p_value),
                      f"{r.wins}/{r.losses}/{r.ties}")
    return table


def compare_markdown(result) -> str:
    buf = io.StringIO()
    buf.write(f"Baseline vs masked, paired over common seeds (mean ± std, %). p: {result['test'].iloc[0]}.\n\n")
    head = ["method", "dataset", "buffer", "baseline", "variant", "on", "metric", "seeds", "baseline mean",
            "variant mean", "difference", "p", "wins/losses/ties"]
    buf.write("| " + " | ".join(head) + " |\n")
    buf.write("|" + "|".join(["---"] * 7 + ["---:"] * 6) + "|\n")
    for r, label, _ in _rows(result):
        cells = [r.method, r.dataset, str(r.buffer_size), r.baseline, r.variant, r.mask_on, label, str(r.n_seeds),
                 pm(r.baseline_mean, r.baseline_std), pm(r.variant_mean, r.variant_std),
                 "-" if math.isnan(r.difference) else f"{r.difference:+.2f}", p_value(r.p_value),
                 f"{r.wins}/{r.losses}/{r.ties}"]
        buf.write("| " + " | ".join(cells) + " |\n")
    return buf.getvalue()
