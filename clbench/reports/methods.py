"""The ``methods`` report: every replay method x masks (where a mask can act) x buffers.

Three things, each written beside the others:

- the table of final average accuracy and forgetting, class-IL and task-IL, mean ± std over seeds
  (``tables``: ``NAME.md``, ``.csv``, ``.tex``);
- the paired comparison of each masked variant against its own method's unmasked runs, with the
  statistics of ``clbench compare`` (``compare.compare_runs``), one Holm family per method and
  metric (the question "does masking help this method?"), ``NAME-compare.md`` and ``.csv``;
- class-IL FAA against the buffer size, one panel per method and a line per mask
  (``NAME-curve.png``/``.pdf`` with ``NAME-curve.data.csv``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.reports import tables
from clbench.reports.compare import ALPHA, COMPARE_METRICS, compare_runs, procedures
from clbench.reports.experiments import ExperimentSpec, mask_sort_key
from clbench.reports.fig2 import METHOD_NAMES, mask_title
from clbench.runs.results import CLASS_IL_NAMES

# What the compact comparison table shows per row, in this order.
SHOWN = ("faa_class_il", "faa_task_il", "forgetting_class_il")


def comparison(spec: ExperimentSpec, df: pd.DataFrame, test: str = "permutation") -> pd.DataFrame:
    """``compare_runs`` against mask ``render.baseline``, run per method so that Holm's adjustment
    is over one method's comparisons (its masked variants x buffers) of each metric."""
    baseline = spec.render.get("baseline") or "none"
    parts = [compare_runs(df[df["method"] == m], baseline=baseline, test=test) for m in spec.methods]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=compare_runs(df.iloc[:0], baseline=baseline).columns)
    # In the experiment's order: methods as listed, then (compare_runs' order) buffers and variants.
    return pd.concat(parts, ignore_index=True)


def _diff(r) -> str:
    if r is None or r.difference != r.difference:
        return "–"
    star = "*" if r.p_holm == r.p_holm and r.p_holm < ALPHA else ""
    p = "-" if r.p_value != r.p_value else (f"{r.p_value:.3f}" if r.p_value >= 0.001 else f"{r.p_value:.1e}")
    ph = "-" if r.p_holm != r.p_holm else (f"{r.p_holm:.3f}" if r.p_holm >= 0.001 else f"{r.p_holm:.1e}")
    return f"{r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] p {p} / {ph}{star}"


def comparison_caption(spec: ExperimentSpec, result: pd.DataFrame, test: str = "permutation") -> str:
    convention = CLASS_IL_NAMES[spec.render.get("class_il", "all")]
    return (
        f"Each masked variant against its own method's unmasked runs ({spec.render.get('baseline') or 'none'}), "
        f"paired by seed ({tables.seeds_phrase(result['n_seeds'], len(spec.seeds))}; only the seeds both sides "
        f"have), on {spec.benchmark}: diff = mean of variant - baseline (points, %) "
        f"[95% CI]; p = unadjusted / Holm-adjusted over one method's comparisons of that metric (its masked "
        f"variants x buffers); * Holm p < {ALPHA:g}. Procedures: "
        + "; ".join(p for p in procedures(test) if not p.startswith("p Holm"))
        + ". Forgetting: Chaudhry et al. 2018 (lower is better, so a negative diff is an improvement). "
        "W/L/T: seeds where the variant's class-IL FAA is higher/lower/equal. "
        f"{tables._sentence(convention)}." + (f" {result.attrs['excluded']}" if result.attrs.get("excluded") else "")
    )


def comparison_markdown(spec: ExperimentSpec, result: pd.DataFrame) -> str:
    lines = [f"# {spec.title or spec.name}: masked against unmasked", "", comparison_caption(spec, result), ""]
    head = [
        "method",
        "buffer",
        "variant",
        "on",
        "FAA class-IL: baseline → variant",
        *(f"{COMPARE_METRICS[m][0]} diff" for m in SHOWN),
        "W/L/T",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|")
    cells = result.set_index(["method", "buffer_size", "variant", "mask_on", "metric"])
    for (method, buffer, variant, on), _ in result.groupby(["method", "buffer_size", "variant", "mask_on"], sort=False):
        rows = {
            m: next(cells.loc[[(method, buffer, variant, on, m)]].itertuples(), None)
            if (method, buffer, variant, on, m) in cells.index
            else None
            for m in SHOWN
        }
        cil = rows["faa_class_il"]
        base = "–" if cil is None else f"{cil.baseline_mean:.2f} → {cil.variant_mean:.2f}"
        wlt = "–" if cil is None else f"{cil.wins}/{cil.losses}/{cil.ties}"
        lines.append(
            "| "
            + " | ".join(
                [
                    METHOD_NAMES.get(method, method),
                    str(buffer),
                    mask_title(variant),
                    on,
                    base,
                    *(_diff(rows[m]) for m in SHOWN),
                    wlt,
                ]
            )
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


def plot_curves(data: pd.DataFrame, spec: ExperimentSpec):
    """Class-IL FAA against the buffer size (log scale): a panel per method, a line (±1 std band) per
    mask; lines carry gid ``<method> <mask>``."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    part = data[data["setting"] == "class_il"]
    methods = [m for m in spec.methods if m in set(part["method"])]
    cols = min(4, max(1, len(methods)))
    rows = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    masks = sorted(part["mask"].unique(), key=mask_sort_key)
    colors = {m: colormaps["tab10"](i % 10) for i, m in enumerate(masks)}
    for ax, method in zip(axes, methods):
        for mask in masks:
            line = part[(part["method"] == method) & (part["mask"] == mask)].sort_values("buffer_size")
            if line.empty:
                continue
            x, mean, std = (
                line["buffer_size"].to_numpy(),
                line["mean"].to_numpy(),
                np.nan_to_num(line["std"].to_numpy()),
            )
            ax.plot(
                x,
                mean,
                marker="o",
                color=colors[mask],
                linestyle="--" if mask == "none" else "-",
                label=mask_title(mask),
                gid=f"{method} {mask}",
            )
            ax.fill_between(x, mean - std, mean + std, color=colors[mask], alpha=0.15, linewidth=0)
        buffers = sorted(part["buffer_size"].unique())
        ax.set_xscale("log")
        ax.set_xticks(buffers)
        ax.set_xticklabels([str(b) for b in buffers])
        ax.minorticks_off()
        ax.set_title(METHOD_NAMES.get(method, method))
        ax.set_xlabel("buffer size")
        ax.grid(alpha=0.3)
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("class-IL FAA (%)")
    handles = {h.get_label(): h for ax in axes[: len(methods)] for h in ax.get_lines()}
    fig.legend(
        list(handles.values()), list(handles.keys()), loc="outside lower center", ncols=len(handles), frameon=False
    )
    fig.suptitle(f"{spec.title or spec.name}\nclass-IL final average accuracy, mean ± 1 std over seeds", fontsize=11)
    return fig


def write_report(spec: ExperimentSpec, df: pd.DataFrame, out: Path, save_figure, note: str = "") -> list[Path]:
    """The methods report's files in ``out`` (``save_figure(fig, out, stem)`` writes PNG and PDF);
    ``note`` names the runs left out (diverged, non-finite), in every caption."""
    stem = spec.name
    summary = tables.summary(spec, df)
    summary.attrs["excluded"] = note
    written = tables.write_tables(summary, spec, out / stem)
    result = comparison(spec, df)
    result.attrs["excluded"] = note
    md, csv = out / f"{stem}-compare.md", out / f"{stem}-compare.csv"
    md.write_text(comparison_markdown(spec, result))
    result.to_csv(csv, index=False)
    written += [md, csv]
    data = tables.buffer_curve_data(summary)
    data.to_csv(out / f"{stem}-curve.data.csv", index=False)
    written.append(out / f"{stem}-curve.data.csv")
    written += save_figure(plot_curves(data, spec), out, f"{stem}-curve")
    return written
