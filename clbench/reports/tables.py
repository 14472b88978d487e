"""Tables of method x mask (rows) against buffer sizes (columns): the forgetting and tiny-buffer
reports. Cells are mean ± std over seeds (ddof=1) of the final average accuracy (FAA) and the
forgetting, one table per setting (class-IL, task-IL); the best per column in bold (highest FAA,
lowest forgetting).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.metrics import FORGETTING_DEFINITIONS
from clbench.reports.experiments import ExperimentSpec, mask_sort_key
from clbench.reports.fig2 import METHOD_NAMES, mask_title
from clbench.runs.results import CLASS_IL_NAMES

SETTINGS = {"class_il": "Class-IL", "task_il": "Task-IL"}
SUMMARY_COLUMNS = ("method", "mask", "buffer_size", "setting", "metric", "mean", "std", "n_seeds", "n_stale", "best")


def _forgetting_column(variant: str, setting: str) -> str:
    return f"forgetting_{setting}" if variant == "chaudhry" else f"forgetting_{variant}_{setting}"


def summary(spec: ExperimentSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per (method, mask, buffer, setting, metric in faa/forgetting)."""
    variant = spec.render.get("forgetting", "chaudhry")
    rows = []
    masks = sorted(df["mask"].unique(), key=mask_sort_key)
    for method in spec.methods:
        for mask in masks:
            for buffer in spec.buffers:
                cell = df[(df["method"] == method) & (df["mask"] == mask) & (df["buffer_size"] == buffer)]
                if cell.empty:
                    continue
                for setting in SETTINGS:
                    for metric, column in (
                        ("faa", f"faa_{setting}"),
                        ("forgetting", _forgetting_column(variant, setting)),
                    ):
                        v = cell[column].to_numpy(float)
                        v = v[~np.isnan(v)]
                        rows.append(
                            {
                                "method": method,
                                "mask": mask,
                                "buffer_size": int(buffer),
                                "setting": setting,
                                "metric": metric,
                                "mean": float(v.mean()) if len(v) else math.nan,
                                "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                                "n_seeds": len(v),
                                "n_stale": int((cell["status"] == "stale").sum()),
                                "best": False,
                            }
                        )
    out = pd.DataFrame.from_records(rows, columns=list(SUMMARY_COLUMNS))
    for (_, _setting, metric), group in out.groupby(["buffer_size", "setting", "metric"]):
        if group["mean"].notna().any():
            best = group["mean"].max() if metric == "faa" else group["mean"].min()
            out.loc[group.index[np.isclose(group["mean"], best)], "best"] = True
    return out


def _cell(row, latex: bool) -> str:
    if row is None or math.isnan(row["mean"]):
        return "–" if not latex else "--"
    pm = r" $\pm$ " if latex else " ± "
    text = f"{row['mean']:.2f}" + ("" if math.isnan(row["std"]) else f"{pm}{row['std']:.2f}")
    if row["best"]:
        text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def _grid(summary_df: pd.DataFrame, setting: str):
    """Rows (method, mask) and, per buffer, the faa and forgetting rows of the summary."""
    part = summary_df[summary_df["setting"] == setting]
    rows = list(dict.fromkeys(zip(part["method"], part["mask"])))
    buffers = sorted(part["buffer_size"].unique())
    lookup = {(r.method, r.mask, r.buffer_size, r.metric): r._asdict() for r in part.itertuples()}
    return rows, buffers, lookup


def caption(spec: ExperimentSpec, summary_df: pd.DataFrame, with_title: bool = True) -> str:
    variant = spec.render.get("forgetting", "chaudhry")
    head = f"{spec.title or spec.name}. " if with_title else ""
    return (
        f"{head}Final average accuracy (FAA, %) and forgetting (%), mean ± std over "
        f"{seeds_phrase(summary_df['n_seeds'], len(spec.seeds))}, on "
        f"{spec.benchmark}; best per column in bold (highest FAA, lowest forgetting). Forgetting "
        f"{FORGETTING_DEFINITIONS[variant].removeprefix('forgetting ')}. "
        f"{_sentence(CLASS_IL_NAMES[spec.render.get('class_il', 'all')])}.{_stale_note(summary_df)}"
        + (f" {summary_df.attrs['excluded']}" if summary_df.attrs.get("excluded") else "")
    )


def seeds_phrase(counts, wanted: int) -> str:
    """How many seeds the cells average, honestly: ``10 seeds`` when every cell has the experiment's
    ``wanted`` seeds, else the range and why (``9 to 10 of 10 seeds per cell (...)``)."""
    counts = [int(n) for n in counts]
    low, high = (min(counts), max(counts)) if counts else (0, 0)
    if low == high == wanted:
        return f"{wanted} seed{'s' if wanted != 1 else ''}"
    have = str(low) if low == high else f"{low} to {high}"
    return f"{have} of {wanted} seeds per cell (the rest are missing or excluded, see below)"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _stale_note(summary_df: pd.DataFrame) -> str:
    """Names the runs of an older engine standing in for missing ones (``--include-stale``)."""
    if not len(summary_df) or not summary_df["n_stale"].any():
        return ""
    per_cell = summary_df.drop_duplicates(["method", "mask", "buffer_size"])
    n_stale, n_all = int(per_cell["n_stale"].sum()), int(per_cell["n_seeds"].sum())
    return (
        f" {n_stale} of {n_all} runs are stale (computed by an older clbench engine) and stand in for runs "
        "this clbench has not computed."
    )


def to_markdown(summary_df: pd.DataFrame, spec: ExperimentSpec) -> str:
    lines = [f"# {spec.title or spec.name}", "", caption(spec, summary_df, with_title=False), ""]
    for setting, label in SETTINGS.items():
        rows, buffers, lookup = _grid(summary_df, setting)
        lines += [f"## {label}", ""]
        head = ["method", "mask"] + [f"{what} (buffer {b})" for b in buffers for what in ("FAA", "forgetting")]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * (2 * len(buffers))) + "|")
        for method, mask in rows:
            cells = [
                _cell(lookup.get((method, mask, b, metric)), False) for b in buffers for metric in ("faa", "forgetting")
            ]
            lines.append("| " + " | ".join([METHOD_NAMES.get(method, method), mask_title(mask), *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def to_html(summary_df: pd.DataFrame, spec: ExperimentSpec) -> str:
    """The tables as HTML (one ``<table>`` per setting, the caption as ``<caption>``)."""
    out = []
    for setting, label in SETTINGS.items():
        rows, buffers, lookup = _grid(summary_df, setting)
        out.append(
            f'<table class="results"><caption>{label}. {html.escape(caption(spec, summary_df, False))}</caption>'
        )
        out.append(
            '<thead><tr><th rowspan="2">method</th><th rowspan="2">mask</th>'
            + "".join(f'<th colspan="2">buffer {b}</th>' for b in buffers)
            + "</tr><tr>"
            + "<th>FAA</th><th>forgetting</th>" * len(buffers)
            + "</tr></thead><tbody>"
        )
        for method, mask in rows:
            cells = []
            for b in buffers:
                for metric in ("faa", "forgetting"):
                    row = lookup.get((method, mask, b, metric))
                    text = html.escape(_cell(row, False).replace("**", ""))
                    bold = row is not None and row["best"]
                    cells.append(f'<td class="num">{f"<strong>{text}</strong>" if bold else text}</td>')
            out.append(
                f"<tr><td>{html.escape(METHOD_NAMES.get(method, method))}</td><td>{html.escape(mask_title(mask))}</td>"
                + "".join(cells)
                + "</tr>"
            )
        out.append("</tbody></table>")
    return "\n".join(out)


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "±": r"$\pm$",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(summary_df: pd.DataFrame, spec: ExperimentSpec) -> str:
    """A table environment with one tabular per setting (needs booktabs)."""
    out = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small"]
    for setting, label in SETTINGS.items():
        rows, buffers, lookup = _grid(summary_df, setting)
        out.append(r"\begin{tabular}{ll" + "rr" * len(buffers) + "}")
        out.append(r"\toprule")
        out.append(
            rf"\multicolumn{{2}}{{l}}{{{label}}} & "
            + " & ".join(rf"\multicolumn{{2}}{{c}}{{buffer {b}}}" for b in buffers)
            + r" \\"
        )
        out.append("".join(rf"\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(buffers))))
        out.append("method & mask & " + " & ".join(["FAA & forgetting"] * len(buffers)) + r" \\")
        out.append(r"\midrule")
        for method, mask in rows:
            cells = [
                _cell(lookup.get((method, mask, b, metric)), True) for b in buffers for metric in ("faa", "forgetting")
            ]
            value = mask.removesuffix(".0").replace("inf", "\\infty")
            mask_text = "no mask" if mask == "none" else f"$m = {value}$"
            out.append(" & ".join([_tex_escape(METHOD_NAMES.get(method, method)), mask_text, *cells]) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out.append(r"\par\medskip")
    out.append(rf"\caption{{{_tex_escape(caption(spec, summary_df))}}}")
    out.append(rf"\label{{tab:{spec.name}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def write_tables(summary_df: pd.DataFrame, spec: ExperimentSpec, stem: Path) -> list[Path]:
    md, csv, tex = (stem.with_name(stem.name + ext) for ext in (".md", ".csv", ".tex"))
    md.write_text(to_markdown(summary_df, spec))
    summary_df.to_csv(csv, index=False)
    tex.write_text(to_latex(summary_df, spec))
    return [md, csv, tex]


def buffer_curve_data(summary_df: pd.DataFrame) -> pd.DataFrame:
    """The tiny-buffer figure's numbers: FAA per (method, mask, setting) against the buffer size."""
    part = summary_df[summary_df["metric"] == "faa"]
    return (
        part[["method", "mask", "setting", "buffer_size", "mean", "std", "n_seeds"]]
        .sort_values(
            ["setting", "method", "mask", "buffer_size"], key=lambda s: s.map(mask_sort_key) if s.name == "mask" else s
        )
        .reset_index(drop=True)
    )


def plot_buffer_curve(data: pd.DataFrame, spec: ExperimentSpec):
    """FAA against the buffer size (log scale), class-IL and task-IL panels; a line and a ±1 std
    band per method and mask (lines carry gid ``<method> <mask> <setting>``)."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = colormaps["tab10"]
    keys = list(dict.fromkeys(zip(data["method"], data["mask"])))
    for ax, (setting, label) in zip(axes, SETTINGS.items()):
        for k, (method, mask) in enumerate(keys):
            rows = data[(data["setting"] == setting) & (data["method"] == method) & (data["mask"] == mask)]
            x, mean, std = (
                rows["buffer_size"].to_numpy(),
                rows["mean"].to_numpy(),
                np.nan_to_num(rows["std"].to_numpy()),
            )
            color = colors(k % 10)
            ax.plot(
                x,
                mean,
                marker="o",
                color=color,
                linestyle="-" if mask != "none" else "--",
                label=f"{METHOD_NAMES.get(method, method)}, {mask_title(mask)}",
                gid=f"{method} {mask} {setting}",
            )
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        buffers = sorted(data["buffer_size"].unique())
        ax.set_xscale("log")
        ax.set_xticks(buffers)
        ax.set_xticklabels([str(b) for b in buffers])
        ax.minorticks_off()
        ax.set_xlabel("buffer size (samples)")
        ax.set_ylabel(f"{label} final average accuracy (%)")
        ax.set_title(f"{label} (mean ± 1 std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(len(keys), 3), frameon=False)
    fig.suptitle(f"{spec.title or spec.name} ({CLASS_IL_NAMES[spec.render.get('class_il', 'all')]})", fontsize=12)
    return fig
