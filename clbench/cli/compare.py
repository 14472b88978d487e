"""``clbench compare``: the baseline against each masked variant of the same config, paired over
seeds, as a table, markdown, CSV or JSON."""

from __future__ import annotations

import io
import math
import sys

import typer
from rich.table import Table
from rich.text import Text

from clbench.cli.common import (
    FILTER_HELP,
    SPLIT_CHOICES,
    UsageProblem,
    class_il_option,
    class_order_option,
    console,
    db_option,
    db_url,
    filter_options,
    load,
    p_value,
    pm,
    split,
    split_option,
)
from clbench.runs.mask import format_mask_value, parse_mask_value
from clbench.runs.results import CLASS_IL_CONVENTIONS

COMPARE_FORMATS = ("table", "md", "csv", "json")


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
    curves: bool = typer.Option(
        False,
        "--curves",
        help="Compare the metrics of the accuracy curves instead (runs trained with --eval-every): average "
        "anytime accuracy, min-ACC, the stability gap, the steps to its minimum and the share recovered.",
    ),
    db: str | None = db_option(),
) -> None:
    """The baseline (no mask) against each masked variant of the same config, paired over seeds and class orders."""
    if split_on not in SPLIT_CHOICES:
        raise UsageProblem(f"invalid --split {split_on!r}: valid are {', '.join(SPLIT_CHOICES)}")
    if format not in COMPARE_FORMATS:
        raise UsageProblem(f"invalid --format {format!r}: valid are {', '.join(COMPARE_FORMATS)}")
    if test not in _stats().TESTS:
        raise UsageProblem(f"invalid --test {test!r}: valid are {', '.join(_stats().TESTS)}")
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
    metrics = None
    if curves:
        df, metrics = _with_curve_metrics(df, db)
    result = _stats().compare_runs(df, baseline=base_label, test=test, metrics=metrics)
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


def _with_curve_metrics(df, db):
    """``df`` with the curve metrics of its runs (``reports.stability_gap.CURVE_METRICS``) beside; runs
    without curves are left out, and none at all is bad input."""
    from clbench.reports.stability_gap import CURVE_METRICS, run_curve_metrics
    from clbench.store.measures import load_curves

    curves = load_curves(db_url(db), list(df["run_id"]))
    if curves.empty:
        raise UsageProblem(
            "--curves: none of the runs compared has accuracy curves; train them with --eval-every N "
            "(see clbench run --help)"
        )
    return df.merge(run_curve_metrics(curves), on="run_id", how="inner"), CURVE_METRICS


def _metric_label(metric: str) -> tuple[str, bool]:
    known = _stats().COMPARE_METRICS
    if metric in known:
        return known[metric]
    from clbench.reports.stability_gap import CURVE_METRICS

    return CURVE_METRICS[metric]


def _rows(result):
    for r in result.itertuples():
        label, higher = _metric_label(r.metric)
        better = (r.difference > 0) if higher else (r.difference < 0)
        yield r, label, better


def _test_key(result) -> str:
    return next(k for k, v in _stats().TESTS.items() if v == result["test"].iloc[0])


def compare_caption(result) -> str:
    """Names every procedure behind the table's numbers."""
    base = result["baseline"].iloc[0]
    return (
        f"Mask {base} (baseline) against each masked variant, paired by seed over the seeds both have: "
        f"mean ± std (%) over those seeds; diff = mean of variant - baseline; "
        + "; ".join(_stats().procedures(_test_key(result), result.attrs.get("class_il", "all")))
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
    return text + ("*" if value == value and value < _stats().ALPHA else "")


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
    table = Table(title=head + compare_caption(result) + f" * p < {_stats().ALPHA:g}.", title_justify="left")
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
    buf.write(compare_caption(result) + f" * p < {_stats().ALPHA:g}.\n\n")
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


def _stats():
    """``clbench.reports.compare``, loaded by the first comparison (pandas, scipy): not by ``--help``."""
    from clbench.reports import compare

    return compare
