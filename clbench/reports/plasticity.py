"""Plasticity beside stability: what a run still learns at each task's end, next to what it forgets.

Per cell (method, buffer, mask), mean ± std over seeds of (``clbench.metrics.PLASTICITY_DEFINITIONS``):

- ``diagonal``: the mean over tasks of A[i][i], class-IL (the accuracy on the task just learned);
- ``joint_shortfall``: the mean over tasks of A_joint[i][i] - A[i][i], against the finished ``joint``
  run of the same benchmark, seed, class order and schedule in the registry (NaN where there is none);
- ``effective_rank`` and ``dead_fraction`` of the penultimate features after the last task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clbench.metrics import PLASTICITY_DEFINITIONS, joint_shortfall
from clbench.store.measures import load_plasticity
from clbench.store.queries import load_runs
from clbench.store.store import Store

# What must agree between a run and the joint run it is measured against.
JOINT_KEYS = ("benchmark", "synthetic", "class_order_seed", "seed", "epochs", "batch_size", "backbone", "width", "head")
MEASURES = ("diagonal", "joint_shortfall", "effective_rank", "dead_fraction")
COLUMNS = ("method", "buffer_size", "mask", "mask_on", "n_seeds", "n_joint") + tuple(
    f"{m}_{s}" for m in MEASURES for s in ("mean", "std")
)


def _joint_key(config: dict) -> str:
    return repr(tuple((k, repr(config.get(k))) for k in JOINT_KEYS))


def per_run(df: pd.DataFrame, store: Store) -> pd.DataFrame:
    """One row per run of ``df`` (a ``load_runs`` frame): run_id and the ``MEASURES``."""
    ids = list(df["run_id"])
    long = load_plasticity(store, ids)
    joints = load_runs(store, method="joint", status="finished")
    joint_of = {_joint_key(c): rid for rid, c in zip(joints["run_id"], joints["config"])}
    joint_long = load_plasticity(store, sorted(set(joint_of.values())))
    joint_diag = {
        rid: g.sort_values("after_task")["diagonal_class_il"].to_numpy() for rid, g in joint_long.groupby("run_id")
    }
    rows = []
    for rid, config in zip(df["run_id"], df["config"]):
        mine = long[long["run_id"] == rid].sort_values("after_task")
        diag = mine["diagonal_class_il"].to_numpy()
        joint = joint_diag.get(joint_of.get(_joint_key(config)))
        rows.append(
            {
                "run_id": rid,
                "diagonal": float(diag.mean()) if len(diag) else np.nan,
                "joint_shortfall": joint_shortfall(np.diag(diag), np.diag(joint))
                if joint is not None and len(joint) == len(diag) and len(diag)
                else np.nan,
                "effective_rank": float(mine["effective_rank"].iloc[-1]) if len(mine) else np.nan,
                "dead_fraction": float(mine["dead_fraction"].iloc[-1]) if len(mine) else np.nan,
            }
        )
    return pd.DataFrame.from_records(rows, columns=["run_id", *MEASURES])


def summary(df: pd.DataFrame, store: Store) -> pd.DataFrame:
    """``COLUMNS``: one row per (method, buffer, mask, mask_on) of ``df``, in its order."""
    runs = df.merge(per_run(df, store), on="run_id")
    rows = []
    for (method, buffer, mask, on), cell in runs.groupby(["method", "buffer_size", "mask", "mask_on"], sort=False):
        row = {"method": method, "buffer_size": int(buffer), "mask": mask, "mask_on": on, "n_seeds": len(cell)}
        row["n_joint"] = int(cell["joint_shortfall"].notna().sum())
        for m in MEASURES:
            row[f"{m}_mean"] = cell[m].mean()
            row[f"{m}_std"] = cell[m].std(ddof=1) if cell[m].notna().sum() > 1 else np.nan
        rows.append(row)
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame, title: str, note: str = "") -> str:
    """The plasticity table as markdown; ``note``: the report's exclusion note (diverged runs), if any."""

    def pm(row, m: str, fmt: str) -> str:
        mean, std = row[f"{m}_mean"], row[f"{m}_std"]
        if mean != mean:
            return "–"
        return fmt.format(mean) + ("" if std != std else " ± " + fmt.format(std))

    lines = [
        f"# {title}: plasticity beside stability",
        "",
        "Mean ± std over seeds. " + " ".join(f"{k}: {v}." for k, v in PLASTICITY_DEFINITIONS.items()),
        "Effective rank and dead fraction after the last task; joint shortfall over the runs with a joint run.",
        *([note] if note else []),
        "",
        "| method | buffer | mask | seeds | diagonal class-IL (%) | joint shortfall (points) | effective rank "
        "| dead units (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        mask = r["mask"] if r["mask"] == "none" or r["mask_on"] == "stream" else f"{r['mask']} on {r['mask_on']}"
        dead = {"dead_fraction_mean": 100 * r["dead_fraction_mean"], "dead_fraction_std": 100 * r["dead_fraction_std"]}
        lines.append(
            f"| {r['method']} | {r['buffer_size']} | {mask} | {r['n_seeds']} | {pm(r, 'diagonal', '{:.2f}')} | "
            f"{pm(r, 'joint_shortfall', '{:+.2f}')} | {pm(r, 'effective_rank', '{:.1f}')} | "
            f"{pm({**r, **dead}, 'dead_fraction', '{:.1f}')} |"
        )
    return "\n".join(lines + [""])
