"""Render a registered experiment from the registry database into ``out_dir``.

Every figure is written as PNG and PDF with a data file beside it (``NAME.data.csv`` or
``NAME.data.json``) holding exactly the plotted numbers; every table as Markdown, CSV and LaTeX.
Only the experiment's own runs (by run id) are read, whoever computed them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import ResolvedConfig
from ..registry import Db, _with_store, load_runs
from ..store import Store, config_hash
from ..sweep import resolve_unique
from .experiments import ExperimentSpec


def experiment_configs(spec: ExperimentSpec) -> list[ResolvedConfig]:
    """The resolved runs of the experiment (duplicates dropped), in sweep order."""
    return resolve_unique(spec.configs())


def missing_runs(spec: ExperimentSpec, db: Db = None) -> list[ResolvedConfig]:
    """The experiment's runs that are not finished in ``db`` (all of them for an empty store)."""
    configs = experiment_configs(spec)

    def work(store: Store):
        statuses = store.statuses([c.identity() for c in configs])
        return [c for c in configs if statuses.get(c.identity()) != "finished"]

    return _with_store(db, work)


COVERAGE_COLUMNS = ("run_id", "method", "dataset", "buffer_size", "mask", "mask_on", "seed", "config_hash", "status")


def run_coverage(spec: ExperimentSpec, db: Db = None) -> pd.DataFrame:
    """Every run the experiment expects, in sweep order, with its status in ``db``: ``missing``
    for a run with no row, else the stored status as it is (``finished``, ``failed``, ...).
    Runs of one cell (a figure's point or bar, a table's cell) share a ``config_hash``."""
    configs = experiment_configs(spec)

    def work(store: Store):
        statuses = store.statuses([c.identity() for c in configs])
        return [(c.identity(), c.method, c.benchmark, c.buffer_size, c.mask.label, c.mask.on, c.seed, config_hash(c),
                 statuses.get(c.identity(), "missing")) for c in configs]

    return pd.DataFrame.from_records(_with_store(db, work), columns=list(COVERAGE_COLUMNS))


def experiment_runs(spec: ExperimentSpec, store: Store) -> pd.DataFrame:
    """The finished runs of the experiment, as a :func:`load_runs` frame in sweep order, with the
    class-IL metrics of the convention ``spec.render["class_il"]``. With ``render["include_stale"]``
    a run this engine has not computed is filled in by a stale run of the same config and seed
    (computed by an older engine: its ``status`` column says ``stale``)."""
    configs = experiment_configs(spec)
    ids = [c.identity() for c in configs]
    class_il = spec.render.get("class_il", "all")
    df = load_runs(store, run_id=ids, class_il=class_il)
    df = df[df["status"] == "finished"]
    order = {rid: i for i, rid in enumerate(ids)}
    if spec.render.get("include_stale"):
        missing = [c for c in configs if c.identity() not in set(df["run_id"])]
        stale = _stale_stand_ins(store, missing, class_il)
        order.update({rid: order[stands_for] for rid, stands_for in zip(stale["run_id"], stale["_for"])})
        df = pd.concat([df, stale.drop(columns="_for")], ignore_index=True) if len(stale) else df
    out = df.assign(_order=df["run_id"].map(order)).sort_values("_order").drop(columns="_order").reset_index(drop=True)
    out.attrs["class_il"] = class_il
    return out


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


def _save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def render_report(spec: ExperimentSpec, db: Db, out_dir: str | Path) -> list[Path]:
    """Render ``spec`` from the finished runs in ``db`` into ``out_dir`` (created); returns the
    files written. Missing runs are left out of the figures and tables (see :func:`missing_runs`);
    a figure with no runs at all is not written."""
    out = Path(out_dir)

    def work(store: Store) -> list[Path]:
        df = experiment_runs(spec, store)
        if df.empty:
            return []
        out.mkdir(parents=True, exist_ok=True)
        stem = spec.name
        written: list[Path] = []
        if spec.kind == "fig2":
            from . import fig2  # noqa: PLC0415

            data = fig2.fig2_data(spec, df, store)
            if data is None:
                return []
            written.append(fig2.write_data(data, out / f"{stem}.data.json"))
            written += _save_figure(fig2.plot_fig2(data), out, stem)
        elif spec.kind == "fig4":
            from . import fig4  # noqa: PLC0415

            data = fig4.fig4_data(spec, df)
            data.to_csv(out / f"{stem}.data.csv", index=False)
            written.append(out / f"{stem}.data.csv")
            written += _save_figure(fig4.plot_fig4(data, spec), out, stem)
        elif spec.kind == "methods":
            from . import methods  # noqa: PLC0415

            written += methods.write_report(spec, df, out, _save_figure)
        else:  # forgetting, tiny-buffer
            from . import tables  # noqa: PLC0415

            summary = tables.summary(spec, df)
            written += tables.write_tables(summary, spec, out / stem)
            if spec.kind == "tiny-buffer":
                data = tables.buffer_curve_data(summary)
                data.to_csv(out / f"{stem}-curve.data.csv", index=False)
                written.append(out / f"{stem}-curve.data.csv")
                written += _save_figure(tables.plot_buffer_curve(data, spec), out, f"{stem}-curve")
        return written

    return _with_store(db, work)
