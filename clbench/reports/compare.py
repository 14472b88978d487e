"""Did masking help? A baseline mask against each masked variant of the same run config, paired
over their common seeds.

Two runs pair when everything in their resolved config but the mask and the seed agrees (method,
benchmark, buffer, hyperparameters, ...), and their seeds are equal.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..masking import format_mask_value, parse_mask_value
from .experiments import mask_sort_key

TESTS = {"wilcoxon": "Wilcoxon signed-rank, two-sided", "t": "paired t-test, two-sided"}
# metric -> (label, higher is better)
COMPARE_METRICS = {
    "faa_class_il": ("FAA class-IL", True),
    "faa_task_il": ("FAA task-IL", True),
    "forgetting_class_il": ("forgetting class-IL", False),
    "forgetting_task_il": ("forgetting task-IL", False),
}
COLUMNS = ("method", "dataset", "buffer_size", "baseline", "variant", "mask_on", "metric", "n_seeds",
           "baseline_mean", "baseline_std", "variant_mean", "variant_std", "difference", "p_value", "test",
           "wins", "losses", "ties")
_NOT_PAIRING = ("seed", "mask", "notes", "preset_source")


def _pair_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _NOT_PAIRING}, sort_keys=True, default=str)


def paired_p_value(variant: np.ndarray, baseline: np.ndarray, test: str = "wilcoxon") -> float:
    """Two-sided p-value of the paired differences ``variant - baseline`` (NaN with < 2 pairs;
    1.0 when every difference is 0)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}: valid tests are {', '.join(TESTS)}")
    d = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    from scipy import stats  # noqa: PLC0415 - only here

    if test == "wilcoxon":
        return float(stats.wilcoxon(d).pvalue)
    if np.all(d == d[0]):  # no variance: the t statistic is infinite
        return 0.0
    return float(stats.ttest_rel(variant, baseline).pvalue)


def compare_runs(df: pd.DataFrame, baseline: str = "none", test: str = "wilcoxon") -> pd.DataFrame:
    """One row per (config, masked variant, metric): ``COLUMNS``.

    ``df`` is a :func:`clbench.registry.load_runs` frame (only finished runs count). For every group
    of runs whose configs agree but for the mask and seed, the runs with mask ``baseline`` are
    paired by seed with those of each other mask (and mask placement); means and stds (ddof=1) are
    over the common seeds, ``difference`` is the mean of variant - baseline, ``wins`` counts seeds
    where the variant is better (higher accuracy, lower forgetting). Pairs with a NaN metric (e.g.
    forgetting of a single task) are left out of that metric.
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}: valid tests are {', '.join(TESTS)}")
    base_label = format_mask_value(parse_mask_value(str(baseline)))
    done = df[df["status"] == "finished"].copy() if "status" in df else df.copy()
    rows = []
    if done.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    done["_key"] = [_pair_key(c) for c in done["config"]]
    for _, cell in done.groupby("_key", sort=False):
        base = cell[cell["mask"] == base_label]
        if base.empty:
            continue
        variants = cell[cell["mask"] != base_label]
        groups = sorted(variants.groupby(["mask", "mask_on"], sort=False), key=lambda g: (mask_sort_key(g[0][0]), g[0][1]))
        for (mask, on), var in groups:
            b = base if base_label == "none" else base[base["mask_on"] == on]
            b = b.drop_duplicates("seed").set_index("seed")
            v = var.drop_duplicates("seed").set_index("seed")
            common = sorted(set(b.index) & set(v.index))
            if not common:
                continue
            first = var.iloc[0]
            for metric, (_, higher) in COMPARE_METRICS.items():
                bv = b.loc[common, metric].to_numpy(float)
                vv = v.loc[common, metric].to_numpy(float)
                ok = ~(np.isnan(bv) | np.isnan(vv))
                bv, vv = bv[ok], vv[ok]
                n = len(bv)
                d = vv - bv
                better = d > 0 if higher else d < 0
                worse = d < 0 if higher else d > 0
                rows.append({
                    "method": first["method"], "dataset": first["dataset"], "buffer_size": int(first["buffer_size"]),
                    "baseline": base_label, "variant": mask, "mask_on": on, "metric": metric, "n_seeds": n,
                    "baseline_mean": bv.mean() if n else math.nan,
                    "baseline_std": bv.std(ddof=1) if n > 1 else math.nan,
                    "variant_mean": vv.mean() if n else math.nan,
                    "variant_std": vv.std(ddof=1) if n > 1 else math.nan,
                    "difference": d.mean() if n else math.nan,
                    "p_value": paired_p_value(vv, bv, test), "test": TESTS[test],
                    "wins": int(better.sum()), "losses": int(worse.sum()), "ties": int(n - better.sum() - worse.sum()),
                })
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))
