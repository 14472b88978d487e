"""The ``class-order`` report: is the effect of masking a property of the method or of one class order?

Every cell (method x mask) is run over several class orders (``class_orders``: 0 the benchmark's,
K > 0 the permutation drawn from K) x seeds. Written beside each other:

- ``NAME-variance.md`` / ``.csv``: for each method, mask and metric, the variance over all runs split
  into its between-order and within-order parts (the law of total variance, population variances,
  weights n_o / N, so that the two parts add up to the total exactly):

      Var(x) = sum_o (n_o / N) (mean_o - mean)^2  +  sum_o (n_o / N) Var_o(x)
               \\_______ between orders _______/      \\___ within orders ___/

  where o runs over the class orders, n_o is the number of seeds in order o, mean_o and Var_o the
  mean and (population) variance over those seeds, N = sum_o n_o. ``between_share`` is the
  between-order part as a share of the total: near 1, the order decides the number more than the seed.
- ``NAME-wins.md`` / ``.csv``: per method and class order, the masked variant (``render.masked``)
  against the baseline (``render.baseline``), paired by seed: mean difference and the seeds where the
  masked run is better; the caption counts the orders where masking wins on average.
- ``NAME-compare.csv``: ``clbench compare``'s statistics over all (seed, class order) pairs at once.
- ``NAME.png`` / ``.pdf`` with ``NAME.data.csv``: class-IL FAA per class order, a panel per method,
  each seed a dot, the order's mean a bar, baseline against masked side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.reports.compare import COMPARE_METRICS, compare_runs
from clbench.reports.experiments import ExperimentSpec
from clbench.reports.fig2 import METHOD_NAMES, mask_title

VARIANCE_COLUMNS = (
    "method",
    "mask",
    "metric",
    "n_orders",
    "n_runs",
    "mean",
    "total_var",
    "between_order_var",
    "within_order_var",
    "between_share",
)
WINS_COLUMNS = (
    "method",
    "class_order",
    "n_seeds",
    "baseline_mean",
    "masked_mean",
    "difference",
    "seeds_won",
    "seeds_lost",
    "masking_wins",
)


def variance_split(values: pd.Series, orders: pd.Series) -> tuple[float, float, float]:
    """(total, between-order, within-order) population variances of ``values`` grouped by ``orders``;
    between + within = total (law of total variance). NaN values are left out."""
    frame = pd.DataFrame({"x": values.to_numpy(float), "o": orders.to_numpy()}).dropna()
    n = len(frame)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = frame["x"].mean()
    total = float(((frame["x"] - mean) ** 2).mean())
    groups = frame.groupby("o")["x"]
    weights = groups.size() / n
    between = float((weights * (groups.mean() - mean) ** 2).sum())
    within = float((weights * groups.var(ddof=0)).sum())
    return total, between, within


def variance_table(df: pd.DataFrame, spec: ExperimentSpec) -> pd.DataFrame:
    """``VARIANCE_COLUMNS``, one row per method x mask x metric, in the experiment's order."""
    rows = []
    for method in spec.methods:
        for mask in spec.masks_for(method):
            cell = df[(df["method"] == method) & (df["mask"] == mask)]
            if cell.empty:
                continue
            for metric in COMPARE_METRICS:
                total, between, within = variance_split(cell[metric], cell["class_order"])
                rows.append(
                    {
                        "method": method,
                        "mask": mask,
                        "metric": metric,
                        "n_orders": int(cell["class_order"].nunique()),
                        "n_runs": int(cell[metric].notna().sum()),
                        "mean": float(cell[metric].mean()),
                        "total_var": total,
                        "between_order_var": between,
                        "within_order_var": within,
                        "between_share": between / total if total > 0 else math.nan,
                    }
                )
    return pd.DataFrame.from_records(rows, columns=list(VARIANCE_COLUMNS))


def wins_table(df: pd.DataFrame, spec: ExperimentSpec, metric: str = "faa_class_il") -> pd.DataFrame:
    """``WINS_COLUMNS``: per method and class order, masked against baseline paired by seed on ``metric``."""
    baseline, masked = spec.render["baseline"], spec.render["masked"]
    higher = COMPARE_METRICS[metric][1]
    rows = []
    for method in spec.methods:
        runs = df[df["method"] == method]
        for order in sorted(runs["class_order"].unique()):
            here = runs[runs["class_order"] == order]
            b = here[here["mask"] == baseline].drop_duplicates("seed").set_index("seed")[metric]
            v = here[here["mask"] == masked].drop_duplicates("seed").set_index("seed")[metric]
            common = sorted(set(b.dropna().index) & set(v.dropna().index))
            if not common:
                continue
            d = v.loc[common].to_numpy(float) - b.loc[common].to_numpy(float)
            sign = 1 if higher else -1
            rows.append(
                {
                    "method": method,
                    "class_order": int(order),
                    "n_seeds": len(common),
                    "baseline_mean": float(b.loc[common].mean()),
                    "masked_mean": float(v.loc[common].mean()),
                    "difference": float(d.mean()),
                    "seeds_won": int((sign * d > 0).sum()),
                    "seeds_lost": int((sign * d < 0).sum()),
                    "masking_wins": bool(sign * d.mean() > 0),
                }
            )
    return pd.DataFrame.from_records(rows, columns=list(WINS_COLUMNS))


def _md_table(frame: pd.DataFrame, formats: dict[str, str]) -> list[str]:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(cols, row):
            fmt = formats.get(col)
            cells.append(fmt.format(value) if fmt and isinstance(value, float) and value == value else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def variance_markdown(spec: ExperimentSpec, table: pd.DataFrame) -> str:
    caption = (
        f"Variance of each metric over class orders x seeds on {spec.benchmark} (points², population "
        "variances): between orders = variance of the orders' means, within orders = mean of the "
        "variances over seeds in one order, weighted by seeds; they add up to the total. between_share: "
        "the part of the total that the class order explains."
    )
    formats = {c: "{:.3f}" for c in ("mean", "total_var", "between_order_var", "within_order_var", "between_share")}
    return "\n".join(
        [f"# {spec.title or spec.name}: variance by class order", "", caption, "", *_md_table(table, formats), ""]
    )


def wins_markdown(spec: ExperimentSpec, table: pd.DataFrame) -> str:
    lines = [f"# {spec.title or spec.name}: does masking win in every class order?", ""]
    for method in spec.methods:
        part = table[table["method"] == method]
        if len(part):
            lines.append(
                f"- {method}: mask {spec.render['masked']} beats {spec.render['baseline']} on class-IL FAA "
                f"(mean over seeds) in {int(part['masking_wins'].sum())} of {len(part)} class orders; "
                f"seeds won {int(part['seeds_won'].sum())} of {int(part['n_seeds'].sum())} pairs"
            )
    formats = {c: "{:+.2f}" if c == "difference" else "{:.2f}" for c in ("baseline_mean", "masked_mean", "difference")}
    lines += ["", "Class order 0 is the benchmark's own; K > 0 the permutation drawn from K.", ""]
    return "\n".join(lines + _md_table(table, formats) + [""])


def figure_data(df: pd.DataFrame, spec: ExperimentSpec) -> pd.DataFrame:
    """The plotted numbers: method, mask, class_order, seed, faa_class_il (the baseline's and masked runs)."""
    keep = df[df["mask"].isin([spec.render["baseline"], spec.render["masked"]])]
    cols = ["method", "mask", "class_order", "seed", "faa_class_il"]
    return keep[cols].sort_values(["method", "class_order", "mask", "seed"]).reset_index(drop=True)


def plot(data: pd.DataFrame, spec: ExperimentSpec):
    """A panel per method: per class order a bar (mean) and dots (seeds), baseline then masked."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    methods = [m for m in spec.methods if m in set(data["method"])]
    fig = Figure(figsize=(4.2 * max(1, len(methods)), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(methods)), sharey=True, squeeze=False)).ravel()
    shown = ((spec.render["baseline"], -0.2, "#999999"), (spec.render["masked"], 0.2, "#1f77b4"))
    for ax, method in zip(axes, methods):
        part = data[data["method"] == method]
        orders = sorted(part["class_order"].unique())
        for mask, shift, color in shown:
            runs = part[part["mask"] == mask]
            x = np.array([orders.index(o) for o in runs["class_order"]], dtype=float) + shift
            means = runs.groupby("class_order")["faa_class_il"].mean()
            ax.bar(
                [orders.index(o) + shift for o in means.index], means.to_numpy(), width=0.38, color=color, alpha=0.35
            )
            ax.scatter(x, runs["faa_class_il"], s=10, color=color, label=mask_title(mask), gid=f"{method} {mask}")
        ax.set_xticks(range(len(orders)))
        ax.set_xticklabels([str(o) for o in orders])
        ax.set_xlabel("class order (0: the benchmark's)")
        ax.set_title(METHOD_NAMES.get(method, method))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("class-IL FAA (%)")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{spec.title or spec.name}\nclass-IL FAA per class order (bars: mean over seeds)", fontsize=10)
    return fig


def write_report(spec: ExperimentSpec, df: pd.DataFrame, out: Path, save_figure) -> list[Path]:
    """The class-order report's files in ``out`` (``save_figure(fig, out, stem)`` writes PNG and PDF)."""
    stem = spec.name
    written: list[Path] = []
    variance = variance_table(df, spec)
    wins = wins_table(df, spec)
    for name, table, markdown in (
        ("variance", variance, variance_markdown(spec, variance)),
        ("wins", wins, wins_markdown(spec, wins)),
    ):
        md, csv = out / f"{stem}-{name}.md", out / f"{stem}-{name}.csv"
        md.write_text(markdown)
        table.to_csv(csv, index=False)
        written += [md, csv]
    both = df[df["mask"].isin([spec.render["baseline"], spec.render["masked"]])]
    compared = compare_runs(both, baseline=spec.render["baseline"])
    compared.to_csv(out / f"{stem}-compare.csv", index=False)
    written.append(out / f"{stem}-compare.csv")
    data = figure_data(df, spec)
    data.to_csv(out / f"{stem}.data.csv", index=False)
    written.append(out / f"{stem}.data.csv")
    written += save_figure(plot(data, spec), out, stem)
    return written
