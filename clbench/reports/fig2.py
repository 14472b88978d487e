"""Figure 2: the unmasked baseline against a masked variant over the same seeds.

Row 1: the per-class confidence after the final task (class-IL: the mean softmax probability of the
true class over its test samples) and the per-task class-IL accuracy after the final task; the
masked variant's bars are red where higher than the baseline's and blue where lower. Row 2: the
accuracy on each task as training proceeds through tasks 1..T (one line per task), class-IL and
task-IL, for the baseline and the variant; the final average accuracy in each title, the better
of each pair in bold. Row 3 (runs that recorded confidence histograms): after the final task, the
distribution over test samples of the softmax probability of the true class and of the largest
probability, for the old tasks (1..T-1, pooled) and the newest task T, the baseline against the
variant. All values are means (histograms: pooled counts) over the seeds both variants have.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.metrics import final_average_accuracy
from clbench.reports.experiments import ExperimentSpec
from clbench.runs.results import CLASS_IL_NAMES, HISTOGRAM_EDGES
from clbench.store.store import Store

HIGHER, LOWER, EQUAL, BASE = "#d62728", "#1f77b4", "#7f7f7f", "#bdbdbd"
METHOD_NAMES = {
    "er": "ER",
    "der": "DER",
    "derpp": "DER++",
    "er_ace": "ER-ACE",
    "sgd": "SGD",
    "joint": "Joint",
    "xder": "X-DER",
    "icarl": "iCaRL",
    "agem": "A-GEM",
    "gdumb": "GDumb",
    "ss_il": "SS-IL",
    "lode": "LODE",
    "lode_derpp": "LODE-DER++",
    "er_las": "ER-LAS",
    "er_aml": "ER-AML",
    "wa": "WA",
    "bic": "BiC",
}


def mask_title(label: str) -> str:
    return "no mask" if label == "none" else f"m = {label.removesuffix('.0')}"


def fig2_data(spec: ExperimentSpec, df: pd.DataFrame, store: Store) -> dict | None:
    """The plotted numbers: means over the common seeds of the baseline and the masked runs."""
    r = spec.render
    cell = df[(df["method"] == r["method"]) & (df["buffer_size"] == r["buffer"])]
    sides = {
        name: cell[cell["mask"] == r[name]].drop_duplicates("seed").set_index("seed") for name in ("baseline", "masked")
    }
    seeds = sorted(set(sides["baseline"].index) & set(sides["masked"].index))
    if not seeds:
        return None
    convention = r.get("class_il", "all")
    out: dict = {
        "experiment": spec.name,
        "method": r["method"],
        "benchmark": spec.benchmark,
        "buffer": r["buffer"],
        "seeds": seeds,
        "n_seeds_wanted": len(spec.seeds),
        "baseline_mask": r["baseline"],
        "masked_mask": r["masked"],
        "class_il": convention,
    }
    for name, runs in sides.items():
        results = [store.load_result(runs.loc[s, "run_id"]) for s in seeds]
        conf = np.mean([np.diagonal(res.confidence[-1]) for res in results], axis=0)
        class_il = np.mean([res.class_il_matrix(convention) for res in results], axis=0)
        task_il = np.mean([res.task_il for res in results], axis=0)
        out[name] = {
            "run_ids": [res.run_id for res in results],
            "confidence": conf.tolist(),  # (K,): after the final task, mean p(true class)
            "task_accuracy": class_il[-1].tolist(),  # (T,): class-IL accuracy on each task after the final task
            "class_il": class_il.tolist(),  # (T, T): row i = after task i
            "task_il": task_il.tolist(),
            "faa_class_il": final_average_accuracy(class_il),
            "faa_task_il": final_average_accuracy(task_il),
        }
        out["class_names"] = list(results[0].class_names) or [str(k) for k in range(len(conf))]
        out[name]["histograms"] = final_histograms([res.histograms for res in results])
    if out["baseline"]["histograms"] is None or out["masked"]["histograms"] is None:
        for name in ("baseline", "masked"):
            out[name]["histograms"] = None
    out["histogram_edges"] = HISTOGRAM_EDGES.tolist()
    return out


def final_histograms(per_run: list[dict[str, np.ndarray]]) -> dict | None:
    """kind -> {"old": counts, "newest": counts} after the final task, summed over the runs and,
    for "old", over tasks 1..T-1; None when a run has no histograms (computed before clbench
    recorded them)."""
    if not per_run or any(not h for h in per_run):
        return None
    out = {}
    for kind in per_run[0]:
        last = np.sum([h[kind][-1] for h in per_run], axis=0)  # (T, bins): after the final task, per task
        out[kind] = {"old": last[:-1].sum(0).tolist(), "newest": last[-1].tolist()}
    return out


def write_data(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _paired_bars(ax, labels, base, masked, base_name, masked_name, ylabel, title):
    from matplotlib.patches import Patch  # noqa: PLC0415

    x = np.arange(len(labels))
    w = 0.38
    colors = [HIGHER if m > b else LOWER if m < b else EQUAL for b, m in zip(base, masked)]
    ax.bar(x - w / 2, base, w, color=BASE, edgecolor="#555555", linewidth=0.5, label=base_name, gid="baseline")
    ax.bar(x + w / 2, masked, w, color=colors, edgecolor="#555555", linewidth=0.5, label=masked_name, gid="masked")
    ax.set_xticks(x)
    rotate = sum(len(s) for s in labels) > 60
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, max(max(base), max(masked)) * 1.18 or 1)
    handles = [
        Patch(facecolor=BASE, edgecolor="#555555", label=base_name),
        Patch(facecolor=HIGHER, edgecolor="#555555", label=f"{masked_name}, higher"),
        Patch(facecolor=LOWER, edgecolor="#555555", label=f"{masked_name}, lower"),
    ]
    if EQUAL in colors:
        handles.append(Patch(facecolor=EQUAL, edgecolor="#555555", label=f"{masked_name}, equal"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", ncols=len(handles), frameon=False)


def plot_fig2(data: dict):
    """The figure (a matplotlib ``Figure``: no pyplot, no global backend). Bars carry the gid
    ``baseline`` or ``masked``, the lines of row 2 ``task j``."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    method = METHOD_NAMES.get(data["method"], data["method"])
    base_name = f"{method}, {mask_title(data['baseline_mask'])}"
    masked_name = f"{method}, {mask_title(data['masked_mask'])}"
    b, m = data["baseline"], data["masked"]
    n_tasks = len(b["task_accuracy"])
    with_histograms = b.get("histograms") is not None and n_tasks > 1
    fig = Figure(figsize=(16, 12.8 if with_histograms else 8.6), layout="constrained")
    gs = fig.add_gridspec(3 if with_histograms else 2, 4)
    ax_conf = fig.add_subplot(gs[0, 0:2])
    ax_task = fig.add_subplot(gs[0, 2:4])
    _paired_bars(
        ax_conf,
        data["class_names"],
        b["confidence"],
        m["confidence"],
        base_name,
        masked_name,
        "mean softmax probability of the true class",
        "Per-class confidence after the final task (class-IL)",
    )
    _paired_bars(
        ax_task,
        [f"task {j + 1}" for j in range(n_tasks)],
        b["task_accuracy"],
        m["task_accuracy"],
        base_name,
        masked_name,
        "class-IL accuracy (%)",
        "Per-task accuracy after the final task (class-IL)",
    )
    colors = colormaps["tab10"]
    convention = "class-IL (seen classes)" if data.get("class_il") == "seen" else "class-IL"
    panels = [
        ("class_il", convention, "baseline"),
        ("class_il", convention, "masked"),
        ("task_il", "task-IL", "baseline"),
        ("task_il", "task-IL", "masked"),
    ]
    axes = []
    for col, (key, setting, side) in enumerate(panels):
        ax = fig.add_subplot(gs[1, col], sharey=axes[0] if axes else None)
        axes.append(ax)
        mat = np.asarray(data[side][key])
        for j in range(n_tasks):
            xs = np.arange(j, n_tasks) + 1
            ax.plot(
                xs,
                mat[j:, j],
                marker="o",
                markersize=3.5,
                color=colors(j % 10),
                label=f"task {j + 1}",
                gid=f"task {j + 1}",
            )
        faa = data[side][f"faa_{key}"]
        other = data["masked" if side == "baseline" else "baseline"][f"faa_{key}"]
        name = base_name if side == "baseline" else masked_name
        ax.set_title(f"{name}\n{setting}, FAA {faa:.2f}%", fontweight="bold" if faa > other else "normal", fontsize=10)
        ax.set_xticks(np.arange(1, n_tasks + 1))
        ax.set_xlabel("after training task")
        if col == 0:
            ax.set_ylabel("task accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-2, 102)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, fontsize=8, loc="lower left", frameon=True)
    if with_histograms:
        _histogram_row(fig, gs, data, base_name, masked_name, n_tasks)
    seeds = data["seeds"]
    fig.suptitle(
        f"{method} on {data['benchmark']}, buffer {data['buffer']}: {mask_title(data['baseline_mask'])} vs "
        f"{mask_title(data['masked_mask'])} (mean over {_seeds_text(len(seeds), data.get('n_seeds_wanted'))}; "
        f"{CLASS_IL_NAMES[data.get('class_il', 'all')]})",
        fontsize=13,
    )
    return fig


def _seeds_text(n: int, wanted: int | None) -> str:
    """``3 seeds``, or ``2 of 3 seeds`` when some seeds are missing or excluded (named below)."""
    of = f" of {wanted}" if wanted and wanted != n else ""
    return f"{n}{of} seed{'s' if (wanted or n) != 1 else ''}"


HISTOGRAM_PANELS = (("true_class", "old"), ("true_class", "newest"), ("max", "old"), ("max", "newest"))


def _histogram_row(fig, gs, data, base_name, masked_name, n_tasks):
    """Row 3: one panel per (probability, tasks), the baseline (grey, filled) against the masked
    variant (red outline) as fractions of the test samples per bin. Steps carry the gid
    ``<side> <kind> <tasks>``, e.g. ``masked true_class old``."""
    edges = np.asarray(data["histogram_edges"])
    old = f"old tasks 1-{n_tasks - 1}" if n_tasks > 2 else "old task 1"
    what = {"true_class": "p(true class)", "max": "largest probability"}
    axes = []
    for col, (kind, tasks) in enumerate(HISTOGRAM_PANELS):
        ax = fig.add_subplot(gs[2, col], sharey=axes[0] if axes else None)
        axes.append(ax)
        for side, name, style in (
            ("baseline", base_name, dict(fill=True, color=BASE, alpha=0.9)),
            ("masked", masked_name, dict(fill=False, color=HIGHER, linewidth=1.8)),
        ):
            counts = np.asarray(data[side]["histograms"][kind][tasks], dtype=float)
            ax.stairs(counts / max(counts.sum(), 1), edges, label=name, gid=f"{side} {kind} {tasks}", **style)
        task_text = old if tasks == "old" else f"newest task {n_tasks}"
        ax.set_title(f"{what[kind]}, {task_text}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"softmax {what[kind]} after the final task")
        if col == 0:
            ax.set_ylabel("fraction of test samples")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper center", frameon=False)
