"""The report of a ``clbench tune`` study: the best configuration with the objective's 95 % t interval
over seeds and its test metrics, the trials table, and a figure of the objective against the tuned
parameter (each trial a point with its interval).

Written like every report: into a staging folder beside ``out_dir`` that takes its place in one step
(``clbench.files.staged_folder``): ``NAME.md``, ``NAME.data.csv`` (the trials table: exactly the plotted
numbers), ``NAME.png`` and ``NAME.pdf``, and with ``html`` ``NAME.html``. A study that selects on the
test set says so in every one of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.files import staged_folder
from clbench.reports.compare import t_interval
from clbench.reports.html import _e, _num, _page, _table
from clbench.store.queries import Db, load_runs, with_store
from clbench.sweep.tune import TuneResult

TEST_METRICS = ("faa_class_il", "faa_task_il", "forgetting_class_il", "forgetting_task_il")
METRIC_NAMES = {
    "faa_class_il": "class-IL FAA",
    "faa_task_il": "task-IL FAA",
    "forgetting_class_il": "class-IL forgetting",
    "forgetting_task_il": "task-IL forgetting",
}
TEST_SET_WARNING = (
    "SELECTS ON THE TEST SET: the objective is test accuracy, so the chosen configuration's test "
    "numbers are optimistic (use the validation objective to choose m honestly)"
)


def objective_text(result: TuneResult) -> str:
    """What the objective is, in words (with the test-set warning where it applies)."""
    spec = result.spec
    if spec.objective == "test":
        return f"mean over {spec.seeds} seeds of class-IL FAA on the test set; {TEST_SET_WARNING}"
    return (
        f"mean over {spec.seeds} seeds of class-IL FAA on the validation split "
        f"({spec.validation:g} of each task's training data, held out)"
    )


def trials_table(result: TuneResult) -> pd.DataFrame:
    """One row per trial: its parameters, state, objective (mean over seeds) with its 95 % t interval."""
    names = [p.name for p in result.spec.params]
    rows = []
    for t in result.trials:
        values = np.asarray([v for v in t.seed_values if math.isfinite(v)], dtype=float)
        low, high = t_interval(values) if t.value is not None else (math.nan, math.nan)
        rows.append(
            {
                "trial": t.number,
                "state": t.state,
                **{n: t.params.get(n, math.nan) for n in names},
                "objective": t.value if t.value is not None else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": len(values),
                "split": result.spec.objective,
                "note": t.note,
            }
        )
    columns = ["trial", "state", *names, "objective", "ci_low", "ci_high", "n_seeds", "split", "note"]
    return pd.DataFrame.from_records(rows, columns=columns)


@dataclass(frozen=True)
class BestSummary:
    trial: int
    params: dict
    objective: float
    ci: tuple[float, float]
    test: dict[str, tuple[float, float, float]]  # metric -> (mean, ci low, ci high) on the test sets
    n_seeds: int


def best_summary(result: TuneResult, db: Db) -> BestSummary | None:
    """The best trial with its objective's interval and the test metrics of its runs (``None``
    before a trial is complete)."""
    best = result.best
    if best is None:
        return None

    def work(store):
        return load_runs(store, run_id=list(best.run_ids), split="test")

    runs = with_store(db, work)
    runs = runs[runs["status"] == "finished"]
    test = {}
    for metric in TEST_METRICS:
        v = runs[metric].to_numpy(float)
        v = v[np.isfinite(v)]
        test[metric] = (float(v.mean()) if len(v) else math.nan, *t_interval(v))
    values = np.asarray(best.seed_values, dtype=float)
    return BestSummary(best.number, dict(best.params), float(best.value), t_interval(values), test, len(values))


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())


def _ci(low: float, high: float) -> str:
    return "-" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:.2f}, {high:.2f}]"


def summary_lines(result: TuneResult, best: BestSummary | None) -> list[str]:
    """The report's head as lines of text (the CLI prints them; the Markdown holds them)."""
    spec = result.spec
    n_done = len(result.complete)
    lines = [
        f"study {result.study_name}: {spec.method} on {spec.benchmark}, buffer {spec.buffer}, "
        f"{n_done} complete trial{'s' if n_done != 1 else ''} of {len(result.trials)} (database {result.where})",
        f"objective: {objective_text(result)}",
    ]
    if best is None:
        lines.append("no trial is complete yet")
        return lines
    lines.append(
        f"best: trial {best.trial}, {_fmt_params(best.params)}: {best.objective:.2f} "
        f"(95% t interval over {best.n_seeds} seeds {_ci(*best.ci)})"
    )
    test = "; ".join(f"{METRIC_NAMES[m]} {v[0]:.2f} {_ci(v[1], v[2])}" for m, v in best.test.items())
    lines.append(f"its test metrics (mean, 95% t interval over seeds): {test}")
    if spec.objective == "test":
        lines.append(f"warning: {TEST_SET_WARNING}")
    return lines


def tune_markdown(result: TuneResult, table: pd.DataFrame, best: BestSummary | None) -> str:
    names = [p.name for p in result.spec.params]
    out = [f"# clbench tune: {result.study_name}", ""]
    out += [f"- {line}" for line in summary_lines(result, best)]
    out += ["", "## Trials", ""]
    head = ["trial", "state", *names, "objective", "95% CI", "seeds", "note"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in table.itertuples(index=False):
        d = r._asdict()
        cells = [str(d["trial"]), d["state"], *[_num(d[n], "{:.4g}") for n in names]]
        cells += [_num(d["objective"]), _ci(d["ci_low"], d["ci_high"]), str(d["n_seeds"]), d["note"] or ""]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot_tune(table: pd.DataFrame, result: TuneResult):
    """The objective against the first tuned parameter (``mask`` when tuned): each complete trial a
    point with its 95 % t interval; the best one marked. Points carry gid ``trial N``."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    params = result.spec.params
    x_param = next((p for p in params if p.name == "mask"), params[0])
    done = table[table["state"] == "COMPLETE"]
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    best = result.best
    for r in done.itertuples(index=False):
        d = r._asdict()
        x, y = float(d[x_param.name]), float(d["objective"])
        err = [[y - d["ci_low"]], [d["ci_high"] - y]] if math.isfinite(d["ci_low"]) else None
        is_best = best is not None and d["trial"] == best.number
        ax.errorbar(
            [x],
            [y],
            yerr=err,
            fmt="*" if is_best else "o",
            markersize=12 if is_best else 6,
            color="#d62728" if is_best else "#1f77b4",
            capsize=3,
            gid=f"trial {d['trial']}",
        )
    if x_param.log:
        ax.set_xscale("log")
    ax.set_xlabel("mask value m" if x_param.name == "mask" else x_param.name)
    split = "TEST SET (selects on the test set)" if result.spec.objective == "test" else "validation split"
    ax.set_ylabel(f"class-IL FAA (%), {split}")
    ax.grid(alpha=0.3)
    spec = result.spec
    title = f"{result.study_name}: {spec.method}, {spec.benchmark}, buffer {spec.buffer}, {spec.seeds} seeds"
    if best is not None:
        title += f"\nbest: {_fmt_params(best.params)} (red star); bars: 95% t interval over seeds"
    ax.set_title(title, fontsize=10)
    if spec.objective == "test":
        fig.text(0.005, -0.01, TEST_SET_WARNING, ha="left", va="top", fontsize=8, color="#8b0000", wrap=True)
    return fig


def tune_html(result: TuneResult, table: pd.DataFrame, best: BestSummary | None, stem: str) -> str:
    names = [p.name for p in result.spec.params]
    body = [f"<h1>clbench tune: {_e(result.study_name)}</h1>", "<ul>"]
    body += [f"<li>{_e(line)}</li>" for line in summary_lines(result, best)]
    body.append("</ul>")
    body.append(f'<figure><img src="{_e(stem)}.png" alt="objective against the tuned parameter"></figure>')
    rows = [
        [str(r.trial), _e(r.state), *[_num(getattr(r, n), "{:.4g}") for n in names]]
        + [_num(r.objective), _e(_ci(r.ci_low, r.ci_high)), str(r.n_seeds), _e(r.note or "")]
        for r in table.itertuples(index=False)
    ]
    head = ["trial", "state", *names, "objective", "95% CI", "seeds", "note"]
    body.append(_table(head, rows, caption=_e(f"Trials; objective: {objective_text(result)}")))
    return _page(f"clbench tune: {result.study_name}", "\n".join(body))


def write_tune_report(result: TuneResult, db: Db, out_dir: str | Path, html: bool = False) -> list[Path]:
    """Write the study's report into ``out_dir`` (all or nothing); returns the files written."""
    out = Path(out_dir)
    table = trials_table(result)
    best = best_summary(result, db)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", result.study_name).lstrip(".") or "study"
    with staged_folder(out) as stage:
        (stage / f"{stem}.md").write_text(tune_markdown(result, table, best))
        table.to_csv(stage / f"{stem}.data.csv", index=False)
        fig = plot_tune(table, result)
        for ext in ("png", "pdf"):
            fig.savefig(stage / f"{stem}.{ext}", dpi=150 if ext == "png" else None, bbox_inches="tight")
        if html:
            (stage / f"{stem}.html").write_text(tune_html(result, table, best, stem))
        names = sorted(p.name for p in stage.iterdir())
    return [out / n for n in names]
