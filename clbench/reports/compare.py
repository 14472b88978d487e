"""Did masking help? A baseline mask against each masked variant of the same run config, paired
over their common seeds.

Two runs pair when everything in their resolved config but the mask, the seed and the class order
agrees (method, benchmark, buffer, hyperparameters, ...), and their seeds and their class orders are
equal: a pair is one (seed, class order), so runs over several class orders are compared over all
their pairs at once (``n_seeds`` then counts pairs).

Statistics, for each variant against its baseline over the n paired seeds (differences
d = variant - baseline):

- the mean difference with a 95 % confidence interval from Student's t on the differences
  (mean ± t_{0.975, n-1} · sd / sqrt(n));
- a two-sided p-value: by default the exact sign-flip permutation test of the mean difference
  (every one of the 2^n sign patterns for n <= ``EXACT_MAX_PAIRS``; beyond that a fixed-seed
  Monte Carlo of ``MONTE_CARLO_PATTERNS`` patterns, p = (1 + hits) / (1 + patterns)), or the
  Wilcoxon signed-rank test, or the paired t-test;
- that p-value Holm-adjusted over every comparison of the same metric in one result (one table);
- the effect size Cohen's d_z = mean(d) / sd(d) (sd with ddof=1);
- the smallest p-value n pairs can give at all: 2 / 2^n for the exact tests (5 seeds: 0.0625,
  never below 0.05), and a note where n (or n with Holm's factor) cannot reach p < 0.05.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from clbench.reports.experiments import mask_sort_key
from clbench.runs.mask import format_mask_value, parse_mask_value
from clbench.runs.results import CLASS_IL_NAMES
from clbench.store.queries import exclusion_note

TESTS = {
    "permutation": "exact sign-flip permutation test of the mean difference, two-sided",
    "wilcoxon": "Wilcoxon signed-rank test, two-sided",
    "t": "paired t-test, two-sided",
}
CI_METHOD = "95% CI of the mean difference from Student's t on the paired differences"
EFFECT_SIZE = "Cohen's d_z = mean / sd of the paired differences"
CORRECTION = "Holm step-down adjustment over the comparisons of each metric in the table"
ALPHA = 0.05
EXACT_MAX_PAIRS = 20  # 2^20 sign patterns: about a million sums, enumerated exactly
MONTE_CARLO_PATTERNS = 100_000
MONTE_CARLO_SEED = 0
# metric -> (label, higher is better)
COMPARE_METRICS = {
    "faa_class_il": ("FAA class-IL", True),
    "faa_task_il": ("FAA task-IL", True),
    "forgetting_class_il": ("forgetting class-IL", False),
    "forgetting_task_il": ("forgetting task-IL", False),
}
COLUMNS = (
    "method",
    "dataset",
    "buffer_size",
    "baseline",
    "variant",
    "mask_on",
    "metric",
    "n_seeds",
    "baseline_mean",
    "baseline_std",
    "variant_mean",
    "variant_std",
    "difference",
    "ci_low",
    "ci_high",
    "effect_size_dz",
    "p_value",
    "p_holm",
    "min_p",
    "test",
    "note",
    "wins",
    "losses",
    "ties",
)
_NOT_PAIRING = ("seed", "class_order_seed", "mask", "notes", "preset_source", "method_source")
PAIR_INDEX = ["seed", "class_order"]  # what a pair shares beside the pair key


def _pair_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _NOT_PAIRING}, sort_keys=True, default=str)


def procedures(test: str, class_il: str = "all") -> list[str]:
    """What a comparison reports, each procedure named (the caption of a compare table)."""
    return [
        f"p: {TESTS[test]}"
        + (
            f" (all 2^n sign patterns for n <= {EXACT_MAX_PAIRS} seeds, "
            f"{MONTE_CARLO_PATTERNS:,} random ones with seed {MONTE_CARLO_SEED} beyond)"
            if test == "permutation"
            else ""
        ),
        f"p Holm: {CORRECTION}",
        CI_METHOD,
        f"d_z: {EFFECT_SIZE}",
        CLASS_IL_NAMES[class_il],
    ]


def sign_flip_p_value(d: np.ndarray) -> float:
    """Two-sided p of the mean of ``d`` under random signs: the share of sign patterns whose
    |sum| is at least the observed |sum|. Exact (all 2^n patterns) for n <= ``EXACT_MAX_PAIRS``."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.sum())
    tol = 1e-9 * np.abs(d).sum()  # sums equal to the observed one but for rounding count as at least as extreme
    if n <= EXACT_MAX_PAIRS:
        # The 2^n sums as the outer sum of the two halves' 2^(n/2) sums each (a few MB for n = 20).
        lo, hi = d[: n // 2], d[n // 2 :]
        totals = (_all_signed_sums(lo)[:, None] + _all_signed_sums(hi)[None, :]).ravel()
        return float(np.count_nonzero(np.abs(totals) >= observed - tol) / totals.size)
    rng = np.random.default_rng(MONTE_CARLO_SEED)
    hits = 0
    for start in range(0, MONTE_CARLO_PATTERNS, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, MONTE_CARLO_PATTERNS - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + MONTE_CARLO_PATTERNS)


def _all_signed_sums(d: np.ndarray) -> np.ndarray:
    sums = np.zeros(1)
    for v in d:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def smallest_p_value(n: int, test: str) -> float:
    """The smallest two-sided p-value ``n`` pairs can give: 2 / 2^n for the exact tests (the
    observed signs and their mirror image are the two most extreme of 2^n patterns); 0 for t."""
    if n < 1:
        return math.nan
    if test == "t":
        return 0.0
    if test == "permutation" and n > EXACT_MAX_PAIRS:
        return 1 / (1 + MONTE_CARLO_PATTERNS)
    return 2.0 / 2.0**n


def paired_p_value(variant: np.ndarray, baseline: np.ndarray, test: str = "permutation") -> float:
    """Two-sided p-value of the paired differences ``variant - baseline`` (NaN with < 2 pairs;
    1.0 when every difference is 0)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}: valid tests are {', '.join(TESTS)}")
    d = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    if test == "permutation":
        return sign_flip_p_value(d)
    from scipy import stats  # noqa: PLC0415 - only here

    if test == "wilcoxon":
        return float(stats.wilcoxon(d).pvalue)
    if np.all(d == d[0]):  # no variance: the t statistic is infinite
        return 0.0
    return float(stats.ttest_rel(variant, baseline).pvalue)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``d`` (NaN with < 2 values)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats  # noqa: PLC0415

    half = stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def cohens_dz(d: np.ndarray) -> float:
    """mean(d) / sd(d) (ddof=1); NaN with < 2 values or no spread."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else math.nan


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count as comparisons)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_summary(variant: np.ndarray, baseline: np.ndarray, higher: bool, test: str) -> dict:
    """The paired statistics of ``variant`` against ``baseline`` (one value per pair; pairs where either
    is NaN are left out): the ``COLUMNS`` from ``n_seeds`` to ``ties`` but ``note`` (``p_holm`` NaN:
    Holm's adjustment needs the whole family). ``higher``: whether a higher value is better."""
    ok = ~(np.isnan(variant) | np.isnan(baseline))
    vv, bv = variant[ok], baseline[ok]
    n = len(vv)
    d = vv - bv
    better = d > 0 if higher else d < 0
    worse = d < 0 if higher else d > 0
    ci_low, ci_high = t_interval(d)
    return {
        "n_seeds": n,
        "baseline_mean": bv.mean() if n else math.nan,
        "baseline_std": bv.std(ddof=1) if n > 1 else math.nan,
        "variant_mean": vv.mean() if n else math.nan,
        "variant_std": vv.std(ddof=1) if n > 1 else math.nan,
        "difference": d.mean() if n else math.nan,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "effect_size_dz": cohens_dz(d),
        "p_value": paired_p_value(vv, bv, test),
        "p_holm": math.nan,
        "min_p": smallest_p_value(n, test) if n > 1 else math.nan,
        "test": TESTS[test],
        "wins": int(better.sum()),
        "losses": int(worse.sum()),
        "ties": int(n - better.sum() - worse.sum()),
    }


def compare_runs(
    df: pd.DataFrame, baseline: str = "none", test: str = "permutation", metrics: dict | None = None
) -> pd.DataFrame:
    """One row per (config, masked variant, metric): ``COLUMNS``.

    ``df`` is a :func:`clbench.registry.load_runs` frame (only finished runs count). For every group
    of runs whose configs agree but for the mask and seed, the runs with mask ``baseline`` are
    paired by seed with those of each other mask (and mask placement); means and stds (ddof=1) are
    over the common seeds, ``difference`` is the mean of variant - baseline with its 95 % t interval
    ``ci_low``..``ci_high``, ``effect_size_dz`` Cohen's d_z, ``p_value`` the two-sided p of
    ``test`` (see ``TESTS``), ``p_holm`` that p Holm-adjusted over the rows of the same metric,
    ``min_p`` the smallest p the number of pairs allows, ``note`` says when p < 0.05 is out of
    reach, ``wins`` counts seeds where the variant is better (higher accuracy, lower
    forgetting). Pairs with a NaN metric (e.g. forgetting of a single task) are left out of that
    metric; diverged runs are left out and the note says how many. ``df.attrs["class_il"]`` (the
    class-IL convention ``load_runs`` computed the metrics with) is carried to the result's attrs.
    ``metrics``: column -> (label, higher is better) of the metrics compared (default ``COMPARE_METRICS``).
    """
    metrics = COMPARE_METRICS if metrics is None else metrics
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}: valid tests are {', '.join(TESTS)}")
    base_label = format_mask_value(parse_mask_value(str(baseline)))
    df = with_keep_in_placement(df)
    done = df[df["status"] == "finished"].copy() if "status" in df else df.copy()
    diverged = _diverged_counts(df)
    rows = []
    if done.empty:
        return _with_convention(pd.DataFrame(columns=list(COLUMNS)), df)
    done["_key"] = [_pair_key(c) for c in done["config"]]
    for _, cell in done.groupby("_key", sort=False):
        base = cell[cell["mask"] == base_label]
        if base.empty:
            continue
        variants = cell[cell["mask"] != base_label]
        groups = sorted(
            variants.groupby(["mask", "mask_on"], sort=False), key=lambda g: (mask_sort_key(g[0][0]), g[0][1])
        )
        key = cell["_key"].iloc[0]
        for (mask, on), var in groups:
            b = base if base_label == "none" else base[base["mask_on"] == on]
            excluded = _exclusion(diverged, key, base_label, mask, on, len(b), len(var))
            b = by_pair(b)
            v = by_pair(var)
            common = sorted(set(b.index) & set(v.index))
            if not common:
                continue
            first = var.iloc[0]
            for metric, (_, higher) in metrics.items():
                stats = paired_summary(
                    v.loc[common, metric].to_numpy(float), b.loc[common, metric].to_numpy(float), higher, test
                )
                rows.append(
                    {
                        "method": first["method"],
                        "dataset": first["dataset"],
                        "buffer_size": int(first["buffer_size"]),
                        "baseline": base_label,
                        "variant": mask,
                        "mask_on": on,
                        "metric": metric,
                        **stats,
                        "note": excluded,
                    }
                )
    out = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    for _, family in out.groupby("metric", sort=False):
        out.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy(float))
        m = int(family["p_value"].notna().sum())
        for i, row in family.iterrows():
            out.at[i, "note"] = "; ".join(filter(None, (row["note"], reach_note(row["n_seeds"], row["min_p"], m))))
    return _with_convention(out, df)


def with_keep_in_placement(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a mask's keep-set other than the paper's (``task``) written into ``mask_on``
    (``"stream, keep batch"``): runs that differ in it are different variants, never paired as one."""
    if "config" not in df or df.empty:
        return df
    keeps = [_keep_of(c) for c in df["config"]]
    if all(k == "task" for k in keeps):
        return df
    ons = [on if k == "task" else f"{on}, keep {k}" for on, k in zip(df["mask_on"], keeps)]
    return df.assign(mask_on=ons)


def _keep_of(config) -> str:
    mask = config.get("mask") if isinstance(config, dict) else None
    return mask.get("keep", "task") if isinstance(mask, dict) else "task"


def by_pair(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` indexed by (seed, class order), one run each (a frame without the class order column
    is in the benchmark's order)."""
    if "class_order" not in runs:
        runs = runs.assign(class_order=0)
    return runs.drop_duplicates(PAIR_INDEX).set_index(PAIR_INDEX)


def _with_convention(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    out.attrs["class_il"] = df.attrs.get("class_il", "all")
    out.attrs["split"] = df.attrs.get("split", "test")
    return out


def _diverged_counts(df: pd.DataFrame) -> dict[tuple[str, str, str], int]:
    """(pair key, mask, mask_on) -> diverged runs there (left out of every comparison)."""
    if "status" not in df:
        return {}
    bad = df[df["status"] == "diverged"]
    counts: dict[tuple[str, str, str], int] = {}
    for cfg, mask, on in zip(bad["config"], bad["mask"], bad["mask_on"]):
        k = (_pair_key(cfg), mask, on)
        counts[k] = counts.get(k, 0) + 1
    return counts


def _exclusion(diverged, key: str, base_label: str, mask: str, on: str, n_base: int, n_var: int) -> str:
    """``"baseline: 1 of 10 seeds diverged and is excluded"`` and the like, or empty."""
    notes = []
    for who, m, o, n in (
        ("baseline", base_label, on if base_label != "none" else "stream", n_base),
        ("variant", mask, on, n_var),
    ):
        k = diverged.get((key, m, o), 0)
        if k:
            notes.append(f"{who}: {exclusion_note(k, n)}")
    return "; ".join(notes)


def reach_note(n: int, min_p: float, m: int) -> str:
    """Whether p < ``ALPHA`` is reachable at all with ``n`` pairs, alone and after Holm over ``m``."""
    if not n or min_p != min_p:
        return ""
    if min_p >= ALPHA:
        return f"{n} seeds cannot reach p < {ALPHA:g} (smallest p = 2/2^{n} = {min_p:.3g})"
    if m > 1 and m * min_p >= ALPHA:
        return (
            f"{n} seeds cannot reach Holm-adjusted p < {ALPHA:g} over {m} comparisons "
            f"(smallest: {m} x 2/2^{n} = {m * min_p:.3g})"
        )
    return ""
