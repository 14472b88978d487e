"""Figure 4: class-IL final average accuracy against the mask value m.

One panel per buffer size: per method, the mean over seeds as a line with a +-1 std band (ddof=1),
the unmasked runs (the ``baseline`` mask, ``none`` by default) as a dotted horizontal line, and
m = -inf as the leftmost tick.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clbench.reports.experiments import ExperimentSpec, mask_sort_key
from clbench.reports.fig2 import METHOD_NAMES
from clbench.runs.mask import parse_mask_value
from clbench.runs.results import CLASS_IL_NAMES

DATA_COLUMNS = ("dataset", "method", "buffer_size", "mask", "is_baseline", "x", "mean", "std", "n_seeds", "n_stale")


def mask_positions(labels) -> dict[str, float]:
    """x position of each mask label: finite values at themselves, -inf one and a half typical
    steps left of the smallest finite value."""
    finite = sorted({parse_mask_value(m) for m in labels if m not in ("none", "-inf")})
    pos = {m: parse_mask_value(m) for m in labels if m not in ("none", "-inf")}
    if "-inf" in labels:
        if finite:
            steps = np.diff(finite)
            step = float(np.median(steps)) if len(steps) else 1.0
            pos["-inf"] = finite[0] - 1.5 * max(step, 1e-9)
        else:
            pos["-inf"] = 0.0
    return pos


def fig4_data(spec: ExperimentSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, buffer, mask): mean, std (ddof=1; NaN for one seed) and count of the class-IL
    FAA over seeds, with the mask's x position (NaN for the baseline)."""
    baseline = spec.render.get("baseline", "none")
    # Positions of the masks with runs to show: an excluded mask (e.g. every run of m = 3e38
    # diverged) must not stretch the axis.
    pos = mask_positions([m for m in spec.masks if m in set(df["mask"])])
    rows = []
    for (method, buffer), cell in df.groupby(["method", "buffer_size"], sort=False):
        for mask in sorted(cell["mask"].unique(), key=mask_sort_key):
            part = cell[cell["mask"] == mask]
            v = part["faa_class_il"].to_numpy(float)
            rows.append(
                {
                    "dataset": spec.benchmark,
                    "method": method,
                    "buffer_size": int(buffer),
                    "mask": mask,
                    "is_baseline": mask == baseline,
                    "x": math.nan if mask == baseline else pos[mask],
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                    "n_seeds": len(v),
                    "n_stale": int((part["status"] == "stale").sum()),
                }
            )
    return pd.DataFrame.from_records(rows, columns=list(DATA_COLUMNS))


def plot_fig4(data: pd.DataFrame, spec: ExperimentSpec):
    """Mean lines carry gid ``mean <method>``, bands ``band <method>``, baselines ``baseline <method>``."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    buffers = list(dict.fromkeys(data["buffer_size"]))
    n = max(len(buffers), 1)
    fig = Figure(figsize=(5.6 * n + 0.6, 4.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    colors = colormaps["tab10"]
    methods = list(dict.fromkeys(data["method"]))
    shown = data[~data["is_baseline"]]
    ticks = sorted(set(zip(shown["x"], shown["mask"])))
    for ax, buffer in zip(axes[0], buffers):
        part = data[data["buffer_size"] == buffer]
        for k, method in enumerate(methods):
            name = METHOD_NAMES.get(method, method)
            rows = part[(part["method"] == method) & ~part["is_baseline"]].sort_values("x")
            color = colors(k % 10)
            if len(rows):
                x, mean, std = rows["x"].to_numpy(), rows["mean"].to_numpy(), rows["std"].to_numpy()
                ax.plot(x, mean, marker="o", color=color, label=f"{name}, masked (mean)", gid=f"mean {method}")
                if spec.render.get("std_band", True) and np.isfinite(std).any():
                    s = np.nan_to_num(std)
                    ax.fill_between(
                        x,
                        mean - s,
                        mean + s,
                        color=color,
                        alpha=0.2,
                        linewidth=0,
                        label=f"{name}, ±1 std",
                        gid=f"band {method}",
                    )
            base = part[(part["method"] == method) & part["is_baseline"]]
            if len(base):
                value = float(base["mean"].iloc[0])
                ax.axhline(
                    value,
                    linestyle=":",
                    linewidth=2,
                    color=color,
                    gid=f"baseline {method}",
                    label=f"{name}, no mask ({value:.1f}%)",
                )
        ax.set_xticks([x for x, _ in ticks])
        ax.set_xticklabels([m.removesuffix(".0") for _, m in ticks])
        ax.set_xlabel("mask value m")
        n_seeds = int(part["n_seeds"].max()) if len(part) else 0
        ax.set_title(f"{spec.benchmark}, buffer {buffer} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
    axes[0][0].set_ylabel("class-IL final average accuracy (%)")
    n_stale = int(data["n_stale"].sum())
    stale = f"; {n_stale} stale runs of an older engine stand in for missing ones" if n_stale else ""
    fig.suptitle(
        (spec.title or f"{spec.name}: class-IL accuracy against the mask value")
        + f" ({CLASS_IL_NAMES[spec.render.get('class_il', 'all')]}{stale})",
        fontsize=12,
    )
    return fig
