"""Finished runs into an MLflow tracking store, through MLflow's own client (the optional extra
``mlflow``: ``pip install 'clbench[mlflow]'``; imported only here, only when exporting).

Layout in MLflow: one experiment (``clbench`` by default); per config (the runs that differ only by
seed: one ``config_hash``) a parent run holding the resolved config without the seed as params and
the mean and std over its exported seeds as metrics; per clbench run a child run
(``mlflow.parentRunId``) with the whole resolved config as params, and as metrics with the task
index (0-based, as in the registry) as step: ``class_il/accuracy`` and ``task_il/accuracy`` (the
mean over the tasks seen so far), ``class_il/task_<j>`` (accuracy on task j), ``class_il/forgetting``
(Chaudhry, from the second task on), ``loss/<term>`` (mean training loss of each term during the
task); the headline metrics (``faa_class_il``, ...) and ``wall_s`` at the last step; the accuracy
matrices as artifacts (``accuracy/accuracy_matrices.json`` and ``.csv``).

Idempotent: the registry remembers the MLflow run id of every run and parent exported to a tracking
URI (table ``mlflow_runs``), and exporting again adds nothing. Runs are tagged with their clbench
run id, so an export interrupted between MLflow and the registry is adopted rather than doubled,
and a half-logged run (not FINISHED) is deleted and logged again.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from clbench.errors import first_line
from clbench.metrics import average_accuracy_curve, curve_summary, forgetting
from clbench.runs.results import RunResult
from clbench.store.connection import StoreError
from clbench.store.opening import open_store
from clbench.store.queries import SUMMARY_METRICS, Db, load_runs
from clbench.store.store import Store

EXTRA = "mlflow"
DEFAULT_EXPERIMENT = "clbench"
ENTITY_TAG, RUN_TAG, CONFIG_TAG = "clbench.entity", "clbench.run_id", "clbench.config_hash"
_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100  # MLflow's log_batch limits


class MlflowExportError(Exception):
    """MLflow is missing, the tracking URI is unusable, or the tracking store failed (one line)."""


@dataclass(frozen=True)
class MlflowExport:
    """What one export did."""

    tracking_uri: str
    experiment_id: str
    experiment: str
    runs: int  # finished runs that matched the filters
    new_runs: int  # child runs logged now
    already_there: int  # runs exported before (nothing added for them)
    new_parents: int


def import_mlflow():
    """``(mlflow, MlflowClient)``, or a :class:`MlflowExportError` naming the extra to install."""
    try:
        import mlflow  # noqa: PLC0415 - optional extra, only on this path
        from mlflow.tracking import MlflowClient  # noqa: PLC0415
    except ImportError:
        raise MlflowExportError(
            f"exporting to MLflow needs the optional extra {EXTRA!r}: pip install 'clbench[{EXTRA}]'"
        ) from None
    return mlflow, MlflowClient


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else MLflow's default (``MLFLOW_TRACKING_URI`` or MLflow's own), with local paths
    made absolute (the registry remembers exports per URI). Checks, without creating anything, that
    a local store's folder exists; other URIs are left to MLflow."""
    mlflow, _ = import_mlflow()
    raw = uri if uri else mlflow.get_tracking_uri()
    parsed = urlparse(raw)
    if parsed.scheme == "sqlite":
        path = raw[len("sqlite:///") :] if raw.startswith("sqlite:///") else ""
        if not path or path == ":memory:" or path.startswith("file:"):
            raise MlflowExportError(
                f"invalid MLflow tracking URI {raw!r}: give an SQLite file, e.g. sqlite:///mlflow.db"
            )
        file = Path(path).expanduser().absolute()
        _check_folder(raw, file.parent)
        return f"sqlite:///{file}"
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else raw).expanduser().absolute()
        _check_folder(raw, folder.parent)
        return folder.as_uri()
    return raw


def _check_folder(raw: str, folder: Path) -> None:
    if not folder.is_dir():
        raise MlflowExportError(f"invalid MLflow tracking URI {raw!r}: the folder {folder} does not exist")


def _client(client_cls, uri: str):
    try:
        client = client_cls(tracking_uri=uri)
        client.search_experiments(max_results=1)  # reaches the tracking store (an SQLite file is created here)
    except Exception as exc:  # MLflow raises many kinds; all mean the same here
        raise MlflowExportError(f"cannot use the MLflow tracking URI {uri!r}: {_mlflow_error(exc)}") from None
    return client


def _mlflow_error(exc: BaseException) -> str:
    """MLflow's message without the link to its documentation that ends it."""
    return first_line(exc).split(". See http")[0][:300]


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage != "active":
        raise MlflowExportError(
            f"the MLflow experiment {name!r} is deleted in that store: restore it or give another experiment name"
        )
    return exp.experiment_id


def _existing_runs(client, experiment_id: str) -> dict[str, Any]:
    """MLflow run id -> run, for the active runs of the experiment (all pages)."""
    out, token = {}, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            out[run.info.run_id] = run
        token = page.token
        if not token:
            return out


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A resolved config as MLflow params: nested dicts as dotted keys, lists as JSON."""
    out = {}
    for key, value in config.items():
        if key == "notes":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def _ms(when) -> int | None:
    if when is None or pd.isna(when):
        return None
    return int(pd.Timestamp(when).timestamp() * 1000)


def run_metrics(res: RunResult) -> list[tuple[str, float, int]]:
    """(key, value, step) of a run's MLflow metrics; step = index of the task just trained."""
    out: list[tuple[str, float, int]] = []
    n = res.class_il.shape[0]
    for setting, a in (("class_il", res.class_il), ("task_il", res.task_il)):
        curve = average_accuracy_curve(a)
        for i in range(n):
            out.append((f"{setting}/accuracy", float(curve[i]), i))
            out += [(f"{setting}/task_{j}", float(a[i, j]), i) for j in range(i + 1)]
            if i >= 1:
                out.append((f"{setting}/forgetting", forgetting(a[: i + 1, : i + 1]), i))
    for term, values in res.train_loss.items():
        out += [(f"loss/{term}", float(v), i) for i, v in enumerate(values)]
    out += [(k, float(v), n - 1) for k, v in res.metrics.items()]
    out.append(("wall_s", res.wall_s, n - 1))
    if res.curve is not None:  # trained with --eval-every: the curves, step = the global training step
        out += curve_metrics(res.curve, n - 1)
    return [m for m in out if math.isfinite(m[1])]  # NaN (e.g. a diverged loss) is left out, not logged


def curve_metrics(curve, last: int) -> list[tuple[str, float, int]]:
    """A run's accuracy curves as MLflow metrics (``curve/class_il/task_<j>``, ``curve/task_il/...``
    at each evaluation's global step) and its curve summary (``curve/aaa``, ``curve/min_acc``,
    ``curve/stability_gap``, ...: ``clbench.metrics.curve_summary``) at the step ``last``."""
    out = []
    for setting in ("class_il", "task_il"):
        acc = curve.accuracy(setting)
        for p, step in enumerate(curve.steps):
            out += [(f"curve/{setting}/task_{j}", float(v), int(step)) for j, v in enumerate(acc[p]) if v == v]
    summary = curve_summary(curve.steps, curve.tasks, curve.accuracy("class_il"))
    return out + [(f"curve/{k}", float(v), last) for k, v in summary.items()]


def _matrices_files(res: RunResult, folder: Path) -> None:
    (folder / "accuracy_matrices.json").write_text(
        json.dumps(
            {
                "run_id": res.run_id,
                "note": "A[i][j]: accuracy (%) on task j's test set after training task i",
                "class_il": res.class_il.tolist(),
                "task_il": res.task_il.tolist(),
                "class_il_correct": res.class_il_correct.tolist(),
                "task_il_correct": res.task_il_correct.tolist(),
                "test_counts": res.test_counts.tolist(),
            },
            indent=1,
        )
        + "\n"
    )
    n = res.class_il.shape[0]
    rows = [
        (s, i, j, float(m[i, j]), int(c[i, j]), int(res.test_counts[j]))
        for s, m, c in (("class_il", res.class_il, res.class_il_correct), ("task_il", res.task_il, res.task_il_correct))
        for i in range(n)
        for j in range(n)
    ]
    pd.DataFrame(rows, columns=["setting", "after_task", "on_task", "accuracy", "n_correct", "n_total"]).to_csv(
        folder / "accuracy_matrices.csv", index=False
    )


def _log(client, run_id: str, metrics=(), params: dict | None = None, timestamp: int = 0) -> None:
    from mlflow.entities import Metric, Param  # noqa: PLC0415

    items = [Param(k, v) for k, v in (params or {}).items()]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _PARAMS_PER_BATCH])
    ms = [Metric(k, v, timestamp, step) for k, v, step in metrics]
    for i in range(0, len(ms), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=ms[i : i + _METRICS_PER_BATCH])


def _label(row) -> str:
    return f"{row['method']} {row['dataset']} buffer {row['buffer_size']} mask {row['mask']} on {row['mask_on']}"


def _find(existing: dict, entity: str, tag: str, value: str):
    """The exported ``entity`` (run or config) carrying ``tag = value``: a FINISHED one is adopted;
    half-logged ones are returned too, to be deleted."""
    found = [r for r in existing.values() if r.data.tags.get(ENTITY_TAG) == entity and r.data.tags.get(tag) == value]
    done = [r for r in found if r.info.status == "FINISHED"]
    return (done[0] if done else None), [r for r in found if r.info.status != "FINISHED"]


def export_mlflow(
    db: Db = None,
    tracking_uri: str | None = None,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    artifact_location: str | None = None,
    **filters: Any,
) -> MlflowExport:
    """Export the finished runs of ``db`` matching ``filters`` (as in :func:`clbench.load_runs`) to
    the MLflow tracking store at ``tracking_uri`` (default: MLflow's), into ``experiment`` (created
    with ``artifact_location`` when new). Runs exported before to that URI are skipped."""
    _, client_cls = import_mlflow()
    uri = resolve_tracking_uri(tracking_uri)
    if isinstance(db, Store):
        return _export(db, client_cls, uri, experiment, artifact_location, filters)
    try:
        store = open_store(db, create=False)
    except StoreError as exc:
        raise MlflowExportError(str(exc)) from None
    with store:
        return _export(store, client_cls, uri, experiment, artifact_location, filters)


def _export(store: Store, client_cls, uri, experiment, artifact_location, filters) -> MlflowExport:
    runs = load_runs(store, status="finished", **filters)
    client = _client(client_cls, uri)
    exp_id = _experiment_id(client, experiment, artifact_location)
    existing = _existing_runs(client, exp_id)
    known = {k: v for k, v in store.mlflow_runs(uri).items() if v[0] in existing}  # still there
    new_runs = new_parents = 0
    already = 0
    for config_hash, cell in runs.groupby("config_hash", sort=False):
        todo = []
        for row in cell.to_dict("records"):
            if ("run", row["run_id"]) in known:
                already += 1
                continue
            adopted, broken = _find(existing, "run", RUN_TAG, row["run_id"])
            for r in broken:
                client.delete_run(r.info.run_id)
            if adopted is not None:
                store.remember_mlflow_runs(uri, [("run", row["run_id"], adopted.info.run_id, exp_id)])
                known[("run", row["run_id"])] = (adopted.info.run_id, exp_id)
                already += 1
            else:
                todo.append(row)
        if not todo:
            continue
        first = todo[0]
        parent = known.get(("config", config_hash), (None,))[0]
        if parent is None:
            adopted, broken = _find(existing, "config", CONFIG_TAG, config_hash)
            for r in broken:
                client.delete_run(r.info.run_id)
            if adopted is not None:
                parent = adopted.info.run_id
            else:
                params = {k: v for k, v in flat_params(first["config"]).items() if k != "seed"}
                run = client.create_run(
                    exp_id, tags={ENTITY_TAG: "config", CONFIG_TAG: config_hash}, run_name=_label(first)
                )
                parent = run.info.run_id
                _log(client, parent, params=params)
                client.set_terminated(parent, "FINISHED")
                new_parents += 1
            store.remember_mlflow_runs(uri, [("config", config_hash, parent, exp_id)])
            known[("config", config_hash)] = (parent, exp_id)
        for row in todo:
            _export_run(client, store, uri, exp_id, parent, row)
            new_runs += 1
        _parent_summary(client, store, parent, config_hash, uri)
    return MlflowExport(
        tracking_uri=uri,
        experiment_id=exp_id,
        experiment=experiment,
        runs=len(runs),
        new_runs=new_runs,
        already_there=already,
        new_parents=new_parents,
    )


def _export_run(client, store: Store, uri: str, exp_id: str, parent: str, row: dict) -> None:
    res = store.load_result(row["run_id"])
    tags = {
        "mlflow.parentRunId": parent,
        ENTITY_TAG: "run",
        RUN_TAG: row["run_id"],
        CONFIG_TAG: row["config_hash"],
        "clbench.experiments": row["experiment"] or "",
        "clbench.device": res.device,
        "clbench.host": row["host"] or "",
        "clbench.database": store.where,
        "clbench.versions": json.dumps(res.versions)[:5000],
        "clbench.notes": "; ".join(row["config"].get("notes", []))[:5000],
    }
    run = client.create_run(
        exp_id, start_time=_ms(row["started_at"]), tags=tags, run_name=f"{_label(row)} seed {row['seed']}"
    )
    rid = run.info.run_id
    _log(client, rid, run_metrics(res), flat_params(row["config"]), timestamp=_ms(row["finished_at"]) or 0)
    with tempfile.TemporaryDirectory(prefix="clbench-mlflow-") as tmp:
        _matrices_files(res, Path(tmp))
        client.log_artifacts(rid, tmp, artifact_path="accuracy")
    client.set_terminated(rid, "FINISHED", end_time=_ms(row["finished_at"]))
    store.remember_mlflow_runs(uri, [("run", row["run_id"], rid, exp_id)])


def _parent_summary(client, store: Store, parent: str, config_hash: str, uri: str) -> None:
    """Mean and std over the seeds of this config exported to ``uri`` so far, at step = their count."""
    ids = [key for (entity, key) in store.mlflow_runs(uri) if entity == "run"]
    runs = load_runs(store, run_id=ids, status="finished")
    cell = runs[runs["config_hash"] == config_hash]
    n = len(cell)
    metrics = [("n_seeds", float(n), n)]
    for m in SUMMARY_METRICS:
        v = cell[m].to_numpy(float)
        v = v[~np.isnan(v)]
        if len(v):
            metrics.append((f"{m}_mean", float(v.mean()), n))
        if len(v) > 1:
            metrics.append((f"{m}_std", float(v.std(ddof=1)), n))
    _log(client, parent, metrics, timestamp=_ms(pd.Timestamp.now(tz="UTC")) or 0)


__all__ = [
    "DEFAULT_EXPERIMENT",
    "MlflowExport",
    "MlflowExportError",
    "export_mlflow",
    "flat_params",
    "resolve_tracking_uri",
    "run_metrics",
]
