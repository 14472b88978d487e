"""Planning a sweep: the cartesian product methods x buffers x masks x seeds (``sweep_configs``),
looked up in the store (``plan_sweep``: what is cached, what to compute) and packed into lockstep
groups that fit the memory available."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from clbench.data.specs import benchmark_name
from clbench.runs.config import RunConfig, check_field, resolve_unique
from clbench.runs.mask import MaskSpec, parse_mask_value
from clbench.runs.resolved import ResolvedConfig
from clbench.store.schema import DONE_STATUSES
from clbench.store.store import Store
from clbench.sweep import ram as memory
from clbench.sweep.cost import estimate_group_seconds

# A sweep's size is bounded before it is built: each run is a row to plan, store and list. 100,000
# runs plan in seconds; more belong in several sweeps (at ~1 s per run, this is a day of CPU).
MAX_SWEEP_RUNS = 100_000


def sweep_configs(
    *,
    methods: Sequence[str] = ("er",),
    masks: Sequence[str | float | None] = (None,),
    buffers: Sequence[int] = (200,),
    seeds: Sequence[int] = (0,),
    benchmark: str = "seq-fmnist",
    mask_on: str = "stream",
    mask_keep: str = "task",
    class_orders: Sequence[int] | None = None,
    **overrides: Any,
) -> list[RunConfig]:
    """The cartesian product methods x buffers x masks x class orders x seeds (seeds vary fastest).

    ``class_orders``: 0 is the benchmark's own class order, K > 0 a permutation drawn from K alone
    (``RunConfig.class_order_seed``); ``None`` leaves the order to ``overrides`` (the benchmark's).

    ``masks`` are mask values or their text (``"none"``, ``"-inf"``, ``"-5"``); ``overrides`` are
    further :class:`RunConfig` fields shared by all runs (``epochs``, ``lr``, ``synthetic``, ...).
    Raises ``ValueError`` with one line for invalid values.
    """
    if not methods:
        raise ValueError(
            "no method given: valid methods are sgd, joint, er, der, derpp, er_ace, xder, icarl, agem, "
            "gdumb, or PATH.py:CLASS"
        )
    if not seeds:
        raise ValueError("no seeds given: pass --seeds N (seeds 0..N-1, N >= 1) or --seed S")
    if not buffers:
        raise ValueError("no buffer size given")
    if class_orders is not None and not class_orders:
        raise ValueError("no class order given: give 0 (the benchmark's order) or K > 0")
    if class_orders is not None and "class_order_seed" in overrides:
        raise ValueError("give the class order once: class_orders or class_order_seed, not both")
    orders = [None] if class_orders is None else list(dict.fromkeys(class_orders))
    for k in orders:
        if k is not None:
            check_field("class_order_seed", k)
    n_runs = len(methods) * len(buffers) * max(len(masks), 1) * len(orders) * len(seeds)
    if n_runs > MAX_SWEEP_RUNS:  # checked before anything is built: planning stays cheap and bounded
        raise ValueError(
            f"the sweep asks for {n_runs} runs: one sweep plans at most {MAX_SWEEP_RUNS} runs (split it into several)"
        )
    for b in buffers:
        check_field("buffer_size", b)
    for s in seeds if not isinstance(seeds, range) else (seeds.start, seeds[-1]):
        check_field("seed", s)
    mask_specs = [
        MaskSpec(parse_mask_value(m) if isinstance(m, str) else m, mask_on, mask_keep) for m in (masks or (None,))
    ]
    bench = benchmark_name(benchmark)
    ordered = [{} if k is None else {"class_order_seed": int(k) or None} for k in orders]
    return [
        RunConfig(
            method=method, benchmark=bench, seed=int(seed), buffer_size=int(buffer), mask=mask, **order, **overrides
        )
        for method, buffer, mask, order, seed in itertools.product(methods, buffers, mask_specs, ordered, seeds)
    ]


@dataclass(frozen=True)
class PlannedRun:
    config: ResolvedConfig
    stored_status: str  # its status in the store before this sweep: "new" if it has no row
    action: str  # "cached" (finished, reused) or "run"

    @property
    def run_id(self) -> str:
        return self.config.identity()


@dataclass(frozen=True)
class Plan:
    """A sweep against a store: every run with what will happen to it, and the lockstep groups
    (indices into ``runs``) in which the runs to compute will train."""

    runs: tuple[PlannedRun, ...]
    groups: tuple[tuple[int, ...], ...]
    force: bool = False
    memory_note: str = ""  # how the groups were sized to fit the memory budget, if one was given

    @property
    def to_run(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action == "run"]

    @property
    def cached(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action == "cached"]

    def group_configs(self, group: int) -> list[ResolvedConfig]:
        return [self.runs[i].config for i in self.groups[group]]

    def group_estimates_s(self) -> list[float]:
        return [estimate_group_seconds(self.group_configs(g)) for g in range(len(self.groups))]

    @property
    def estimate_s(self) -> float:
        """Estimated seconds to compute what is not cached (see ``estimate_group_seconds``)."""
        return float(sum(self.group_estimates_s()))

    def group_memory_bytes(self) -> list[int]:
        """Estimated peak memory of each group (``clbench.memory.group_bytes``)."""
        return [memory.group_bytes(self.group_configs(g)) for g in range(len(self.groups))]


def plan_sweep(
    configs: Sequence[RunConfig | ResolvedConfig],
    store: Store | None = None,
    *,
    force: bool = False,
    max_group_size: int | None = None,
    memory_budget: int | None = None,
    data: Callable[[str], str | None] | None = None,
) -> Plan:
    """Resolve ``configs`` (duplicates dropped), look each run up in ``store`` (``None``: an empty
    store) and group the runs to compute. Done runs (finished, or diverged: computing one again
    diverges again) are ``cached`` unless ``force``.

    ``memory_budget`` (bytes, e.g. ``clbench.memory.budget_bytes(device)``) splits every group that
    would not fit it (``clbench.memory``'s estimate) into groups that do, and says so in
    ``Plan.memory_note``; a run that does not fit alone is a ``ValueError``.

    ``data`` (e.g. ``DataSource.data_print``): each benchmark's data fingerprint, which joins the
    identities of its runs when the files found are not the published ones (:func:`with_data`);
    without it, the runs are identified as on the published data."""
    if max_group_size is not None and max_group_size < 1:
        raise ValueError(f"the group size must be >= 1, got {max_group_size}")
    resolved = resolve_unique(configs)
    if data is not None:
        resolved = with_data(resolved, data)
    stored = store.statuses([c.identity() for c in resolved]) if store is not None else {}
    runs = []
    for cfg in resolved:
        status = stored.get(cfg.identity(), "new")
        runs.append(PlannedRun(cfg, status, "cached" if status in DONE_STATUSES and not force else "run"))
    todo = [i for i, r in enumerate(runs) if r.action == "run"]
    todo_configs = [runs[i].config for i in todo]
    groups = plan_groups(todo_configs, max_group_size)
    note = ""
    if memory_budget is not None:
        groups, note = _fit_memory(todo_configs, groups, memory_budget)
    return Plan(tuple(runs), tuple(tuple(todo[j] for j in g) for g in groups), force, note)


def with_data(configs: Sequence[ResolvedConfig], data: Callable[[str], str | None]) -> list[ResolvedConfig]:
    """``configs`` with the fingerprint of the data they will train on (``data(benchmark)``, asked
    once per benchmark; ``None``: the published files or synthetic data), duplicates dropped."""
    prints: dict[str, str | None] = {}
    unique: dict[str, ResolvedConfig] = {}
    for cfg in configs:
        if cfg.benchmark not in prints:
            prints[cfg.benchmark] = data(cfg.benchmark)
        found = prints[cfg.benchmark]
        stamped = cfg if cfg.data == found else replace(cfg, data=found)
        unique.setdefault(stamped.identity(), stamped)
    return list(unique.values())


def _fit_memory(configs: list[ResolvedConfig], groups: list[list[int]], budget: int) -> tuple[list[list[int]], str]:
    """``groups`` split so that each fits ``budget`` bytes, and a note saying what was done."""
    out, split = [], []
    for members in groups:
        cfgs = [configs[i] for i in members]
        cap = memory.max_group_size(cfgs, budget)
        if cap < 1:
            need = memory.SAFETY * (memory.run_bytes(cfgs) + memory.shared_bytes(cfgs))
            raise ValueError(
                f"one run of {describe_group(cfgs)} needs about {memory.human(need)} of memory (estimate) "
                f"and this sweep may use {memory.human(budget)}: it cannot run here (a smaller buffer, "
                "batch or width needs less)"
            )
        if cap < len(members):
            split.append(
                f"{describe_group(cfgs)} into groups of at most {cap} "
                f"(about {memory.human(memory.SAFETY * memory.run_bytes(cfgs))} per run)"
            )
        out.extend(members[i : i + cap] for i in range(0, len(members), cap))
    if not split:
        return out, ""
    return out, f"groups sized to fit {memory.human(budget)} of memory: " + "; ".join(split)


def describe_group(configs: Sequence[ResolvedConfig]) -> str:
    """A short label of a lockstep group, e.g. ``er seq-fmnist buffer 200 mask -inf, 10 runs``."""
    c0 = configs[0]
    parts = [c0.method, c0.benchmark]
    buffers = sorted({c.buffer_size for c in configs})
    if c0.buffer_size > 0:
        parts.append("buffer " + ",".join(map(str, buffers)))
    masks = list(dict.fromkeys(c.mask.label for c in configs))
    parts.append("mask " + ",".join(masks))
    return f"{' '.join(parts)} ({len(configs)} run{'s' if len(configs) != 1 else ''})"


def plan_groups(configs: Iterable[ResolvedConfig], max_group_size: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` packed into lockstep groups (first-seen order), each at most
    ``max_group_size`` runs."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg.group_key(), []).append(i)
    out = []
    for members in groups.values():
        size = max_group_size or len(members)
        out.extend(members[i : i + size] for i in range(0, len(members), size))
    return out
