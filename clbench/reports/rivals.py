"""The ``rivals`` report: the masked variants of ER and DER++ against the methods built to fix the
same bias, on one benchmark, per buffer.

A variant is a method with one of its masks (``er`` unmasked, ``er`` with m = -inf, ``ss_il``
unmasked, ...). ``render.masked`` names the masked variants ("METHOD:MASK"); each is compared with
every other variant of the experiment that is not one of them (the rivals and the unmasked runs of
its own method). Written beside each other:

- ``NAME.md`` / ``.csv`` / ``.tex``: per variant and buffer, final average accuracy and forgetting,
  class-IL and task-IL, mean ± std over seeds (``tables``; the CSV has each cell's ``n_seeds``);
- ``NAME-compare.md`` / ``.csv``: each masked variant against each rival, paired by seed (runs of
  the two variants with the same seed, buffer and class order), with ``clbench compare``'s
  statistics (``clbench.reports.compare``): the mean difference (masked - rival) with its 95 %
  Student's t interval, Cohen's d_z, the sign-flip permutation p, Holm-adjusted over the
  comparisons of one masked variant at one buffer of each metric (its rivals: see
  :func:`comparison`), and wins/losses/ties over the seeds;
- ``NAME.png`` / ``.pdf`` with ``NAME.data.csv``: class-IL FAA and class-IL forgetting (the
  experiment's convention, ``render.forgetting``) against the buffer size, a series per variant:
  the mean over seeds with its 95 % Student's t interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.metrics import FORGETTING_DEFINITIONS
from clbench.reports import tables
from clbench.reports.compare import (
    ALPHA,
    COMPARE_METRICS,
    by_pair,
    holm,
    paired_summary,
    procedures,
    reach_note,
    t_interval,
)
from clbench.reports.experiments import ExperimentSpec, mask_sort_key
from clbench.reports.fig2 import METHOD_NAMES, mask_title
from clbench.runs.results import CLASS_IL_NAMES

COLUMNS = (
    "dataset",
    "buffer_size",
    "method",  # the masked variant's method and mask
    "mask",
    "rival",  # the variant it is compared with
    "rival_mask",
    "metric",
    "n_seeds",
    "mean",
    "std",
    "rival_mean",
    "rival_std",
    "difference",  # mean over the paired seeds of masked - rival
    "ci_low",
    "ci_high",
    "effect_size_dz",
    "p_value",
    "p_holm",
    "min_p",
    "test",
    "note",
    "wins",  # seeds where the masked variant is better (higher accuracy, lower forgetting)
    "losses",
    "ties",
)
FIGURE_COLUMNS = ("method", "mask", "variant", "buffer_size", "metric", "n_seeds", "mean", "ci_low", "ci_high")


def forgetting_column(spec: ExperimentSpec, setting: str = "class_il") -> str:
    """The load_runs column of the experiment's forgetting convention (``render.forgetting``)."""
    variant = spec.render.get("forgetting", "chaudhry")
    return f"forgetting_{setting}" if variant == "chaudhry" else f"forgetting_{variant}_{setting}"


def metrics(spec: ExperimentSpec) -> dict[str, tuple[str, bool]]:
    """load_runs column -> (label, higher is better) of the compared metrics: FAA and forgetting (the
    experiment's convention: ``forgetting_class_il`` for Chaudhry's, ``forgetting_mammoth_class_il``
    for Mammoth's), class-IL and task-IL."""
    variant = spec.render.get("forgetting", "chaudhry")
    suffix = "" if variant == "chaudhry" else f" ({variant})"
    out = {}
    for name, (label, higher) in COMPARE_METRICS.items():
        if name.startswith("forgetting_"):
            name, label = forgetting_column(spec, name.removeprefix("forgetting_")), label + suffix
        out[name] = (label, higher)
    return out


def shown(spec: ExperimentSpec) -> tuple[str, ...]:
    """What the compact comparison table shows per row, in this order (the CSV has every metric)."""
    return ("faa_class_il", "faa_task_il", forgetting_column(spec))


def variants(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Every (method, mask) of the experiment, in its order (methods as listed, masks none first)."""
    return [(m, mask) for m in spec.methods for mask in sorted(spec.masks_for(m), key=mask_sort_key)]


def variant_title(spec: ExperimentSpec, method: str, mask: str) -> str:
    """``ER, m = -inf``; ``ER, no mask``; a method run only unmasked by its name alone (``SS-IL``)."""
    name = METHOD_NAMES.get(method, method)
    return name if spec.masks_for(method) == ("none",) else f"{name}, {mask_title(mask)}"


def _masked(spec: ExperimentSpec) -> list[tuple[str, str]]:
    return [tuple(v.rsplit(":", 1)) for v in spec.render.get("masked") or ()]


def _cell(df: pd.DataFrame, method: str, mask: str, buffer: int | None = None) -> pd.DataFrame:
    keep = (df["method"] == method) & (df["mask"] == mask)
    if buffer is not None:
        keep &= df["buffer_size"] == buffer
    return df[keep]


def figure_data(spec: ExperimentSpec, df: pd.DataFrame) -> pd.DataFrame:
    """The plotted numbers: per variant, buffer and metric (class-IL FAA, class-IL forgetting), the
    mean over seeds and its 95 % Student's t interval (NaN with one seed)."""
    rows = []
    for method, mask in variants(spec):
        for buffer in spec.buffers:
            cell = _cell(df, method, mask, buffer)
            if cell.empty:
                continue
            for metric in ("faa_class_il", forgetting_column(spec)):
                values = cell[metric].dropna().to_numpy(float)
                low, high = t_interval(values)
                mean = float(values.mean()) if len(values) else math.nan
                title = variant_title(spec, method, mask)
                rows.append([method, mask, title, int(buffer), metric, len(values), mean, low, high])
    return pd.DataFrame(rows, columns=list(FIGURE_COLUMNS))


def _pair_row(spec, buffer, masked, rival, mine, theirs, metric, higher, test) -> dict | None:
    a, b = by_pair(mine), by_pair(theirs)
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return None
    stats = paired_summary(a.loc[common, metric].to_numpy(float), b.loc[common, metric].to_numpy(float), higher, test)
    renamed = {"variant_mean": "mean", "variant_std": "std", "baseline_mean": "rival_mean", "baseline_std": "rival_std"}
    return {
        "dataset": spec.benchmark,
        "buffer_size": int(buffer),
        "method": masked[0],
        "mask": masked[1],
        "rival": rival[0],
        "rival_mask": rival[1],
        "metric": metric,
        **{renamed.get(k, k): v for k, v in stats.items()},
        "note": "",
    }


def comparison(spec: ExperimentSpec, df: pd.DataFrame, test: str = "permutation") -> pd.DataFrame:
    """Each masked variant (``render.masked``) against every other variant that is not one of them,
    per buffer, paired by (seed, class order): one row per (buffer, masked variant, rival, metric),
    ``COLUMNS``. Holm's adjustment is over one masked variant's comparisons at one buffer of each
    metric (its rivals: "is it better than each of them at this buffer?"); a family over the whole
    table (every buffer and masked variant) could not reach p < 0.05 with 10 seeds."""
    masked = _masked(spec)
    rivals = [v for v in variants(spec) if v not in masked]
    labels = metrics(spec)
    rows = []
    for buffer in spec.buffers:
        for mine in masked:
            ours = _cell(df, *mine, buffer)
            if ours.empty:
                continue
            for rival in rivals:
                theirs = _cell(df, *rival, buffer)
                if theirs.empty:
                    continue
                for metric, (_, higher) in labels.items():
                    row = _pair_row(spec, buffer, mine, rival, ours, theirs, metric, higher, test)
                    if row is not None:
                        rows.append(row)
    out = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    for _, family in out.groupby(["buffer_size", "method", "mask", "metric"], sort=False):
        out.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy(float))
        m = int(family["p_value"].notna().sum())
        for i, row in family.iterrows():
            out.at[i, "note"] = reach_note(row["n_seeds"], row["min_p"], m)
    out.attrs["class_il"] = df.attrs.get("class_il", spec.render.get("class_il", "all"))
    return out


def _diff(r) -> str:
    if r is None or r.difference != r.difference:
        return "–"
    star = "*" if r.p_holm == r.p_holm and r.p_holm < ALPHA else ""
    p = "-" if r.p_value != r.p_value else (f"{r.p_value:.3f}" if r.p_value >= 0.001 else f"{r.p_value:.1e}")
    ph = "-" if r.p_holm != r.p_holm else (f"{r.p_holm:.3f}" if r.p_holm >= 0.001 else f"{r.p_holm:.1e}")
    return f"{r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] p {p} / {ph}{star}"


def comparison_caption(spec: ExperimentSpec, result: pd.DataFrame, note: str = "", test: str = "permutation") -> str:
    convention = spec.render.get("class_il", "all")
    forgetting = FORGETTING_DEFINITIONS[spec.render.get("forgetting", "chaudhry")]
    return (
        "Each masked variant against every other variant (the rivals and the unmasked runs), paired by seed "
        f"(runs with the same seed, buffer and class order; "
        f"{tables.seeds_phrase(result['n_seeds'], len(spec.seeds))}; only the seeds both sides have), on "
        f"{spec.benchmark}: diff = mean of masked - rival (points, %) [95% CI]; p = unadjusted / Holm-adjusted "
        f"over one masked variant's comparisons at one buffer of that metric (its rivals); * Holm p < {ALPHA:g}. "
        "Procedures: "
        + "; ".join(p for p in procedures(test, convention) if not p.startswith("p Holm"))
        + f". {tables._sentence(forgetting)} (lower is better, so a negative diff is an improvement). "
        "W/L/T: seeds where the masked variant's class-IL FAA is higher/lower/equal." + (f" {note}" if note else "")
    )


def comparison_markdown(spec: ExperimentSpec, result: pd.DataFrame, note: str = "") -> str:
    lines = [f"# {spec.title or spec.name}: masked variants against the rivals", ""]
    lines += [comparison_caption(spec, result, note), ""]
    head = ["buffer", "masked", "rival", "FAA class-IL: rival → masked"]
    head += [f"{metrics(spec)[m][0]} diff" for m in shown(spec)] + ["W/L/T"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(head) - 3)) + "|")
    cells = {(r.buffer_size, r.method, r.mask, r.rival, r.rival_mask, r.metric): r for r in result.itertuples()}
    keys = dict.fromkeys(
        zip(result["buffer_size"], result["method"], result["mask"], result["rival"], result["rival_mask"])
    )
    for key in keys:
        rows = {m: cells.get((*key, m)) for m in shown(spec)}
        cil = rows["faa_class_il"]
        base = "–" if cil is None else f"{cil.rival_mean:.2f} → {cil.mean:.2f}"
        wlt = "–" if cil is None else f"{cil.wins}/{cil.losses}/{cil.ties}"
        buffer, method, mask, rival, rival_mask = key
        named = [variant_title(spec, method, mask), variant_title(spec, rival, rival_mask)]
        lines.append("| " + " | ".join([str(buffer), *named, base, *(_diff(rows[m]) for m in shown(spec)), wlt]) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(data: pd.DataFrame, spec: ExperimentSpec):
    """Two panels against the buffer size (log scale): class-IL FAA and class-IL forgetting; a series
    per variant (mean and 95 % t interval as error bars, nudged sideways so they do not overlap);
    masked variants solid, the rest dashed. Series carry gid ``<method> <mask> <metric>``."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(12, 5.6), layout="constrained")
    axes = fig.subplots(1, 2)
    series = [v for v in variants(spec) if not data[(data["method"] == v[0]) & (data["mask"] == v[1])].empty]
    masked = set(_masked(spec))
    # The masked variants in blue and red, the rest in tab20's other dark colours, then its light ones.
    palette = [colormaps["tab20"](i) for i in (0, 6, 2, 4, 8, 10, 12, 14, 16, 18, 1, 7, 3, 5, 9, 11, 13, 15, 17, 19)]
    ranked = sorted(series, key=lambda v: v not in masked)
    colors = {v: palette[i % len(palette)] for i, v in enumerate(ranked)}
    forgetting = forgetting_column(spec)
    panels = (("faa_class_il", "class-IL final average accuracy (%)"), (forgetting, "class-IL forgetting (%)"))
    buffers = sorted(set(data["buffer_size"])) or list(spec.buffers)
    for ax, (metric, label) in zip(axes, panels):
        for k, (method, mask) in enumerate(series):
            part = data[(data["method"] == method) & (data["mask"] == mask) & (data["metric"] == metric)]
            part = part.sort_values("buffer_size")
            x = part["buffer_size"].to_numpy(float) * math.exp(0.025 * (k - (len(series) - 1) / 2))
            mean = part["mean"].to_numpy(float)
            err = np.nan_to_num(np.vstack([mean - part["ci_low"].to_numpy(float), part["ci_high"] - mean]))
            own = (method, mask) in masked
            ax.errorbar(
                x,
                mean,
                yerr=err,
                color=colors[(method, mask)],
                marker="o" if own else "s",
                markersize=5 if own else 3.5,
                linestyle="-" if own else "--",
                linewidth=2 if own else 1,
                capsize=2,
                label=variant_title(spec, method, mask),
                gid=f"{method} {mask} {metric}",
            )
        ax.set_xscale("log")
        ax.set_xticks(buffers)
        ax.set_xticklabels([str(b) for b in buffers])
        ax.minorticks_off()
        ax.set_xlabel("buffer size (samples)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("class-IL final average accuracy", fontsize=9)
    axes[1].set_title(FORGETTING_DEFINITIONS[spec.render.get("forgetting", "chaudhry")].split(":")[0], fontsize=9)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(6, max(1, len(names))), frameon=False)
    convention = CLASS_IL_NAMES[spec.render.get("class_il", "all")]
    fig.suptitle(
        f"{spec.title or spec.name}\nmean over seeds with its 95 % Student's t interval ({convention})", fontsize=11
    )
    return fig


def write_report(spec: ExperimentSpec, df: pd.DataFrame, out: Path, save_figure, note: str = "") -> list[Path]:
    """The rivals report's files in ``out`` (``save_figure(fig, out, stem)`` writes PNG and PDF);
    ``note`` names the runs left out (diverged, non-finite), in every caption."""
    stem = spec.name
    summary = tables.summary(spec, df)
    summary.attrs["excluded"] = note
    written = tables.write_tables(summary, spec, out / stem)
    result = comparison(spec, df)
    md, csv = out / f"{stem}-compare.md", out / f"{stem}-compare.csv"
    md.write_text(comparison_markdown(spec, result, note))
    result.to_csv(csv, index=False)
    written += [md, csv]
    data = figure_data(spec, df)
    data.to_csv(out / f"{stem}.data.csv", index=False)
    written.append(out / f"{stem}.data.csv")
    written += save_figure(plot(data, spec), out, stem)
    return written
