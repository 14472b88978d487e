"""Render a registered experiment from the registry database into ``out_dir``.

Every figure is written as PNG and PDF with a data file beside it (``NAME.data.csv`` or
``NAME.data.json``) holding exactly the plotted numbers; every table as Markdown, CSV and LaTeX.
Only the experiment's own runs (by run id) are read, whoever computed them.

A run whose numbers are not results (it diverged, or finished with a non-finite loss or metric, as
runs of engines before divergence was caught could) is left out of every figure and table and
named: in a note on each figure, in the tables' caption, in the data file of fig2 and by
:func:`excluded_runs`. A report is rendered into a temporary folder beside ``out_dir`` and moved
into place once complete: a failure leaves the previous report as it was, never half of a new one.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from clbench.files import staged_folder
from clbench.reports.experiments import ExperimentSpec
from clbench.runs.config import resolve_unique
from clbench.runs.resolved import ResolvedConfig
from clbench.store.connection import in_chunks
from clbench.store.queries import Db, load_runs, with_store
from clbench.store.schema import DONE_STATUSES, TaskLoss
from clbench.store.store import Store


def experiment_configs(spec: ExperimentSpec) -> list[ResolvedConfig]:
    """The resolved runs of the experiment (duplicates dropped), in sweep order, identified with the
    experiment's data (``spec.data``)."""
    configs = resolve_unique(spec.configs())
    if spec.data is None:
        return configs
    return [c if c.data == spec.data else replace(c, data=spec.data) for c in configs]


def missing_runs(spec: ExperimentSpec, db: Db = None) -> list[ResolvedConfig]:
    """The experiment's runs that are not done in ``db`` (all of them for an empty store). A
    diverged run is done, not missing: computing it again gives the same divergence (it is
    excluded from the report and named there, see :func:`excluded_runs`)."""
    configs = experiment_configs(spec)

    def work(store: Store):
        statuses = store.statuses([c.identity() for c in configs])
        return [c for c in configs if statuses.get(c.identity()) not in DONE_STATUSES]

    return with_store(db, work)


COVERAGE_COLUMNS = (
    "run_id",
    "method",
    "dataset",
    "buffer_size",
    "mask",
    "mask_on",
    "seed",
    "config_hash",
    "status",
    "stale_run_id",
)


def run_coverage(spec: ExperimentSpec, db: Db = None) -> pd.DataFrame:
    """Every run the experiment expects, in sweep order, with its status in ``db``: the stored
    status as it is (``finished``, ``failed``, ...); ``stale`` for a run with no row of this engine
    but a finished run of the same config and seed by an older one (its run id in ``stale_run_id``:
    the run that stands in for it with ``render.include_stale``); ``missing`` for neither. Runs of
    one cell (a figure's point or bar, a table's cell) share a ``config_hash``."""
    configs = experiment_configs(spec)

    def work(store: Store):
        statuses = store.statuses([c.identity() for c in configs])
        absent = [c for c in configs if c.identity() not in statuses]
        stale = _stale_stand_ins(store, absent, spec.render.get("class_il", "all"))
        stand_in = dict(zip(stale["_for"], stale["run_id"]))
        return [
            (
                c.identity(),
                c.method,
                c.benchmark,
                c.buffer_size,
                c.mask.label,
                c.mask.on,
                c.seed,
                c.config_hash(),
                statuses.get(c.identity(), "stale" if c.identity() in stand_in else "missing"),
                stand_in.get(c.identity()),
            )
            for c in configs
        ]

    return pd.DataFrame.from_records(with_store(db, work), columns=list(COVERAGE_COLUMNS))


def experiment_runs(spec: ExperimentSpec, store: Store) -> pd.DataFrame:
    """The finished runs of the experiment, as a :func:`load_runs` frame in sweep order, with the
    class-IL metrics of the convention ``spec.render["class_il"]``. With ``render["include_stale"]``
    a run this engine has not computed is filled in by a stale run of the same config and seed
    (computed by an older engine: its ``status`` column says ``stale``)."""
    configs = experiment_configs(spec)
    ids = [c.identity() for c in configs]
    class_il = spec.render.get("class_il", "all")
    df = load_runs(store, run_id=ids, class_il=class_il, split=spec.render.get("split", "test"))
    df = df[df["status"] == "finished"]
    order = {rid: i for i, rid in enumerate(ids)}
    if spec.render.get("include_stale"):
        missing = [c for c in configs if c.identity() not in set(df["run_id"])]
        stale = _stale_stand_ins(store, missing, class_il)
        order.update({rid: order[stands_for] for rid, stands_for in zip(stale["run_id"], stale["_for"])})
        df = pd.concat([df, stale.drop(columns="_for")], ignore_index=True) if len(stale) else df
    df = df[~df["run_id"].isin(_not_finite(store, df).index)]
    out = df.assign(_order=df["run_id"].map(order)).sort_values("_order").drop(columns="_order").reset_index(drop=True)
    out.attrs["class_il"] = class_il
    out.attrs["split"] = spec.render.get("split", "test")
    return out


EXCLUDED_COLUMNS = ("run_id", "method", "buffer_size", "mask", "mask_on", "seed", "status", "reason")


def _not_finite(store: Store, df: pd.DataFrame) -> pd.Series:
    """run id -> why, for the finished runs of ``df`` whose numbers are not finite: a final average
    accuracy that is NaN or infinite, or a training loss that was (stored as NULL)."""
    reasons: dict[str, str] = {}
    for row in df.itertuples():
        bad = [name for name in ("faa_class_il", "faa_task_il") if not math.isfinite(getattr(row, name))]
        if bad:
            reasons[row.run_id] = f"non-finite {', '.join(bad)}"
    ids = [rid for rid in df["run_id"] if rid not in reasons]

    def work(conn):
        out: dict[str, int] = {}
        for chunk in in_chunks(ids):
            stmt = select(TaskLoss.run_id, TaskLoss.task).where(TaskLoss.run_id.in_(chunk), TaskLoss.loss.is_(None))
            for rid, task in conn.execute(stmt.order_by(TaskLoss.task)):
                out.setdefault(rid, task)
        return out

    for rid, task in store.transaction(work).items():
        reasons[rid] = f"its training loss is not finite (NaN or inf) in task {task + 1}"
    return pd.Series(reasons, dtype=object)


def excluded_runs(spec: ExperimentSpec, db: Db = None) -> pd.DataFrame:
    """The experiment's runs that are done but left out of its report, and why (``EXCLUDED_COLUMNS``,
    sweep order): diverged runs (frozen where their loss or gradient stopped being finite), and
    finished runs with non-finite numbers."""
    configs = experiment_configs(spec)
    ids = [c.identity() for c in configs]

    def work(store: Store) -> pd.DataFrame:
        df = load_runs(
            store, run_id=ids, class_il=spec.render.get("class_il", "all"), split=spec.render.get("split", "test")
        )
        rows = []
        for r in df[df["status"] == "diverged"].itertuples():
            where = (
                ""
                if pd.isna(r.diverged_task)
                else f" at task {int(r.diverged_task) + 1}, step {int(r.diverged_step) + 1}"
            )
            rows.append((r.run_id, "diverged: its loss or gradient stopped being finite" + where))
        bad = _not_finite(store, df[df["status"] == "finished"])
        rows += list(bad.items())
        why = dict(rows)
        out = df[df["run_id"].isin(why)].assign(reason=lambda d: d["run_id"].map(why))
        order = {rid: i for i, rid in enumerate(ids)}
        out = out.assign(_order=out["run_id"].map(order)).sort_values("_order")
        return out[list(EXCLUDED_COLUMNS)].reset_index(drop=True)

    return with_store(db, work)


def exclusion_lines(spec: ExperimentSpec, excluded: pd.DataFrame) -> list[str]:
    """One line per config with excluded runs: ``er, buffer 200, mask -inf: 1 of 10 seeds diverged
    and is excluded (seed 3)``."""
    lines = []
    n_seeds = len(spec.seeds)
    for (method, buffer, mask, on), cell in excluded.groupby(["method", "buffer_size", "mask", "mask_on"], sort=False):
        k = len(cell)
        kinds = "diverged" if (cell["status"] == "diverged").all() else "have non-finite numbers"
        if k == 1:
            kinds = "diverged" if kinds == "diverged" else "has non-finite numbers"
        where = f"{method}, buffer {buffer}, mask {mask}" + ("" if mask == "none" or on == "stream" else f" on {on}")
        seeds = ", ".join(str(s) for s in cell["seed"])
        lines.append(
            f"{where}: {k} of {n_seeds} seed{'s' if n_seeds != 1 else ''} {kinds} and "
            f"{'is' if k == 1 else 'are'} excluded (seed{'s' if k != 1 else ''} {seeds})"
        )
    return lines


def exclusion_note(spec: ExperimentSpec, excluded: pd.DataFrame) -> str:
    """The note a figure or a caption carries: ``Excluded: ...; ...`` (empty when nothing is)."""
    lines = exclusion_lines(spec, excluded)
    return "Excluded: " + "; ".join(lines) + "." if lines else ""


def _same_run(config: dict) -> str:
    """A config as this engine reads it (defaults filled in), without what does not make a run."""
    d = ResolvedConfig.from_dict(config).to_dict()
    for derived in ("notes", "preset_source"):
        d.pop(derived)
    return json.dumps(d, sort_keys=True)


def _stale_stand_ins(store: Store, wanted: list[ResolvedConfig], class_il: str) -> pd.DataFrame:
    """The stale finished runs standing in for ``wanted`` (one each at most; ``_for`` holds the run
    id of the run it stands in for, NaN for the rest)."""
    if not wanted:
        return pd.DataFrame(columns=["run_id", "_for"])
    stale = load_runs(store, status="stale", method=sorted({c.method for c in wanted}), class_il=class_il)
    stale = stale[stale["faa_class_il"].notna()]  # it finished, with results
    by_config = {_same_run(c.to_dict()): c.identity() for c in wanted}
    stale = stale.assign(_for=[by_config.get(_same_run(cfg)) for cfg in stale["config"]])
    return stale[stale["_for"].notna()].drop_duplicates("_for")


def _save_figure(fig, out_dir: Path, stem: str, note: str = "") -> list[Path]:
    if note:  # below everything else (bbox_inches="tight" keeps it in the file)
        fig.text(0.005, -0.01, note, ha="left", va="top", fontsize=8, color="#8b0000", wrap=True, gid="excluded")
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def render_report(spec: ExperimentSpec, db: Db, out_dir: str | Path) -> list[Path]:
    """Render ``spec`` from the finished runs in ``db`` into ``out_dir`` (created); returns the
    files written. Missing runs are left out of the figures and tables (see :func:`missing_runs`),
    and so are runs whose numbers are not finite, which are named in each file (see
    :func:`excluded_runs`); with nothing to render, nothing is written, not even the folder. The
    files are written into a temporary folder and moved into ``out_dir`` once all are complete."""
    out = Path(out_dir)

    def work(store: Store) -> list[Path]:
        df = experiment_runs(spec, store)
        if df.empty:
            return []
        note = exclusion_note(spec, excluded_runs(spec, store))
        with staged_folder(out) as stage:
            names = [p.name for p in _render_into(spec, store, df, stage, note)]
        return [out / name for name in names]

    return with_store(db, work)


def _write_plasticity(spec: ExperimentSpec, store: Store, df: pd.DataFrame, out: Path, note: str) -> list[Path]:
    """Plasticity beside the forgetting table: ``NAME-plasticity.md`` and ``.csv``."""
    from clbench.reports import plasticity  # noqa: PLC0415

    table = plasticity.summary(df, store)
    md, csv = out / f"{spec.name}-plasticity.md", out / f"{spec.name}-plasticity.csv"
    md.write_text(plasticity.to_markdown(table, spec.title or spec.name, note))
    table.to_csv(csv, index=False)
    return [md, csv]


def _render_into(spec: ExperimentSpec, store: Store, df: pd.DataFrame, out: Path, note: str) -> list[Path]:
    stem = spec.name
    written: list[Path] = []
    if spec.kind == "fig2":
        from clbench.reports import fig2  # noqa: PLC0415

        data = fig2.fig2_data(spec, df, store)
        if data is None:
            return []
        if note:
            data["excluded"] = note
        written.append(fig2.write_data(data, out / f"{stem}.data.json"))
        written += _save_figure(fig2.plot_fig2(data), out, stem, note)
    elif spec.kind == "fig4":
        from clbench.reports import fig4  # noqa: PLC0415

        data = fig4.fig4_data(spec, df)
        data.to_csv(out / f"{stem}.data.csv", index=False)
        written.append(out / f"{stem}.data.csv")
        written += _save_figure(fig4.plot_fig4(data, spec), out, stem, note)
    elif spec.kind == "class-order":
        from clbench.reports import class_order  # noqa: PLC0415

        written += class_order.write_report(
            spec, df, out, lambda fig, folder, name: _save_figure(fig, folder, name, note)
        )
    elif spec.kind == "stability-gap":
        from clbench.reports import stability_gap  # noqa: PLC0415

        written += stability_gap.write_report(
            spec, store, df, out, lambda fig, folder, name: _save_figure(fig, folder, name, note)
        )
    elif spec.kind == "rivals":
        from clbench.reports import rivals  # noqa: PLC0415

        written += rivals.write_report(
            spec, df, out, lambda fig, folder, name: _save_figure(fig, folder, name, note), note
        )
    elif spec.kind == "methods":
        from clbench.reports import methods  # noqa: PLC0415

        written += methods.write_report(
            spec, df, out, lambda fig, folder, name: _save_figure(fig, folder, name, note), note
        )
    else:  # forgetting, tiny-buffer
        from clbench.reports import tables  # noqa: PLC0415

        summary = tables.summary(spec, df)
        summary.attrs["excluded"] = note
        written += tables.write_tables(summary, spec, out / stem)
        written += _write_plasticity(spec, store, df, out, note)
        if spec.kind == "tiny-buffer":
            data = tables.buffer_curve_data(summary)
            data.to_csv(out / f"{stem}-curve.data.csv", index=False)
            written.append(out / f"{stem}-curve.data.csv")
            written += _save_figure(tables.plot_buffer_curve(data, spec), out, f"{stem}-curve", note)
    return written
