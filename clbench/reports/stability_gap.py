"""The ``stability-gap`` report: does masking shrink the stability gap (De Lange et al., ICLR 2023)?

Its runs are evaluated during training (``eval_every``: every N steps of a task, on a fixed subset of
each seen task's test data drawn from the seed). Written beside each other:

- ``NAME-metrics.md`` / ``.csv``: per method and mask, the curve metrics of ``clbench.metrics``
  (``CURVE_DEFINITIONS``: average anytime accuracy, min-ACC, the mean stability gap over the task
  switches, the steps to its minimum, the share of switches recovered during the new task), each the
  mean over seeds with a 95 % Student's t interval.
- ``NAME-compare.md`` / ``.csv``: the masked variant (``render.masked``) against the baseline
  (``render.baseline``), paired by (seed, class order), with ``clbench compare``'s statistics
  (``clbench.reports.compare``) on those metrics.
- ``NAME.png`` / ``.pdf`` with ``NAME.data.csv``: the old tasks' mean class-IL accuracy around each
  task switch (x: steps since the last evaluation before the switch; 0 is that evaluation), mean over
  seeds with its 95 % t interval, baseline against masked; a panel per method (rows) and switch (columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clbench.metrics import CURVE_DEFINITIONS, curve_summary, old_tasks_accuracy
from clbench.reports.compare import compare_runs, procedures, t_interval
from clbench.reports.experiments import ExperimentSpec
from clbench.reports.fig2 import METHOD_NAMES, mask_title
from clbench.store.measures import load_curves
from clbench.store.store import Store

# metric -> (label, higher is better): what the report compares (the gap is negative for a drop).
CURVE_METRICS = {
    "aaa": ("average anytime accuracy", True),
    "min_acc": ("min-ACC", True),
    "stability_gap": ("stability gap (points, < 0: a drop)", True),
    "steps_to_minimum": ("steps to the minimum", True),
    "recovered": ("share of switches recovered", True),
}
METRIC_COLUMNS = ("method", "mask", "metric", "n_seeds", "mean", "ci_low", "ci_high")
FIGURE_COLUMNS = ("method", "mask", "task", "since_switch", "n_seeds", "mean", "ci_low", "ci_high")


def curve_arrays(rows: pd.DataFrame, setting: str = "class_il") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's ``load_curves`` rows -> (steps (P,), tasks (P,), accuracy (P, T) with NaN for unseen tasks)."""
    table = rows.pivot_table(index="step", columns="on_task", values=setting, aggfunc="first")
    tasks = rows.groupby("step")["task_trained"].first().loc[table.index]
    return table.index.to_numpy(np.int64), tasks.to_numpy(np.int64), table.to_numpy(np.float64)


def run_curve_metrics(curves: pd.DataFrame) -> pd.DataFrame:
    """run_id and the columns of ``CURVE_METRICS`` (``clbench.metrics.curve_summary``), one row per run."""
    records = [{"run_id": rid, **curve_summary(*curve_arrays(rows))} for rid, rows in curves.groupby("run_id")]
    return pd.DataFrame.from_records(records, columns=["run_id", *CURVE_METRICS])


def metrics_table(df: pd.DataFrame, spec: ExperimentSpec) -> pd.DataFrame:
    """Per method, mask and curve metric: the mean over seeds and its 95 % t interval."""
    rows = []
    for method in spec.methods:
        for mask in spec.masks:
            cell = df[(df["method"] == method) & (df["mask"] == mask)]
            for metric in CURVE_METRICS:
                values = cell[metric].dropna().to_numpy(float) if len(cell) else np.array([])
                low, high = t_interval(values)
                mean = float(values.mean()) if len(values) else float("nan")
                rows.append([method, mask, metric, len(values), mean, low, high])
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def figure_data(df: pd.DataFrame, curves: pd.DataFrame, spec: ExperimentSpec) -> pd.DataFrame:
    """The plotted numbers: per method, mask, task switch (the new task) and step since the switch, the
    old tasks' mean class-IL accuracy over seeds with its 95 % t interval."""
    points = []
    runs = df.set_index("run_id")
    for rid, rows in curves.groupby("run_id"):
        if rid not in runs.index:
            continue
        steps, tasks, acc = curve_arrays(rows)
        for t in sorted(set(tasks.tolist()) - {0}):
            before, during = np.flatnonzero(tasks == t - 1), np.flatnonzero(tasks == t)
            if not len(before) or not len(during):
                continue
            window = np.concatenate([before[-1:], during])
            old = old_tasks_accuracy(np.full(len(window), t), acc[window])
            for p, value in zip(window, old):
                run = runs.loc[rid]
                points.append((run["method"], run["mask"], t, int(steps[p] - steps[before[-1]]), value))
    frame = pd.DataFrame(points, columns=["method", "mask", "task", "since_switch", "value"])
    out = []
    for key, part in frame.groupby(["method", "mask", "task", "since_switch"], sort=True):
        values = part["value"].dropna().to_numpy(float)
        low, high = t_interval(values)
        out.append([*key, len(values), float(values.mean()) if len(values) else float("nan"), low, high])
    return pd.DataFrame(out, columns=list(FIGURE_COLUMNS))


def plot(data: pd.DataFrame, spec: ExperimentSpec):
    """A panel per method (rows) and task switch (columns): baseline and masked, mean and 95 % band."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    methods = [m for m in spec.methods if m in set(data["method"])] or spec.methods[:1]
    switches = sorted(set(data["task"])) or [1]
    fig = Figure(figsize=(2.6 * len(switches) + 0.8, 2.4 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), len(switches), sharey=True, squeeze=False)
    shown = ((spec.render["baseline"], "#777777"), (spec.render["masked"], "#1f77b4"))
    for i, method in enumerate(methods):
        for j, t in enumerate(switches):
            ax = axes[i][j]
            for mask, color in shown:
                part = data[(data["method"] == method) & (data["mask"] == mask) & (data["task"] == t)]
                if part.empty:
                    continue
                x = part["since_switch"].to_numpy()
                ax.plot(x, part["mean"], color=color, lw=1.2, label=mask_title(mask), gid=f"{method} {mask} {t}")
                ax.fill_between(x, part["ci_low"], part["ci_high"], color=color, alpha=0.2, lw=0)
            ax.axvline(0, color="black", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            ax.set_title(f"{METHOD_NAMES.get(method, method)}: switch to task {t + 1}", fontsize=9)
            if i == len(methods) - 1:
                ax.set_xlabel("steps since the switch")
        axes[i][0].set_ylabel("old tasks' class-IL acc. (%)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{spec.title or spec.name}\nmean over seeds, 95 % t interval", fontsize=10)
    return fig


def _markdown(title: str, caption: list[str], table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = [f"# {title}", "", *caption, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) and v == v else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def write_report(spec: ExperimentSpec, store: Store, df: pd.DataFrame, out: Path, save_figure) -> list[Path]:
    """The stability-gap report's files in ``out`` (``save_figure(fig, out, stem)`` writes PNG and PDF)."""
    stem, title = spec.name, spec.title or spec.name
    curves = load_curves(store, list(df["run_id"]))
    df = df.merge(run_curve_metrics(curves), on="run_id", how="left")
    definitions = [f"- {k}: {v}" for k, v in CURVE_DEFINITIONS.items()]
    metrics = metrics_table(df, spec)
    both = df[df["mask"].isin([spec.render["baseline"], spec.render["masked"]])]
    compared = compare_runs(both, baseline=spec.render["baseline"], metrics=CURVE_METRICS)
    written: list[Path] = []
    for name, table, caption in (
        ("metrics", metrics, ["Mean over seeds with its 95 % Student's t interval.", "", *definitions]),
        ("compare", compared, [f"- {p}" for p in procedures("permutation")] + ["", *definitions]),
    ):
        md, csv = out / f"{stem}-{name}.md", out / f"{stem}-{name}.csv"
        md.write_text(_markdown(f"{title}: {name}", caption, table))
        table.to_csv(csv, index=False)
        written += [md, csv]
    data = figure_data(df, curves, spec)
    data.to_csv(out / f"{stem}.data.csv", index=False)
    written.append(out / f"{stem}.data.csv")
    written += save_figure(plot(data, spec), out, stem)
    return written
