"""clbench export --mlflow: runs into a real MLflow tracking store (SQLite, created in the test),
read back through MLflow's own search API. Without MLflow these tests skip, except under ``CI``,
where they fail: CI must prove them (``.ci/run`` installs the test extra, which holds mlflow).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from clbench import SyntheticOptions, cli
from clbench.metrics import average_accuracy_curve
from clbench.store import open_store
from clbench.store.mlflow import export_mlflow, flat_params
from clbench.store.queries import load_runs
from clbench.store.schema import MlflowRun
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs


def needs_mlflow():
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but mlflow is not installed: pip install -e '.[test]'")
        pytest.skip("mlflow is not installed (pip install 'clbench[mlflow]')")


def train(db, seeds):
    configs = sweep_configs(
        methods=["er"],
        masks=["none", "-inf"],
        buffers=[20],
        seeds=seeds,
        benchmark="synthetic",
        epochs=1,
        synthetic=SyntheticOptions(train_per_class=20, test_per_class=10),
    )
    with open_store(db) as store:
        execute(plan_sweep(configs, store), store, experiment="ml")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    needs_mlflow()
    folder = tmp_path_factory.mktemp("mlflow")
    db = folder / "results.db"
    train(db, [0, 1])
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    first = export_mlflow(db, uri, artifact_location=(folder / "artifacts").as_uri())
    return folder, db, uri, first


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri, experiment_id):
    return _client(uri).search_runs([experiment_id], max_results=1000)


def test_parents_children_params_metrics_and_artifacts_read_back(exported, tmp_path):
    folder, db, uri, first = exported
    assert (first.runs, first.new_runs, first.already_there, first.new_parents) == (4, 4, 0, 2)
    runs = _runs(uri, first.experiment_id)
    parents = {r.data.tags["clbench.config_hash"]: r for r in runs if r.data.tags["clbench.entity"] == "config"}
    children = {r.data.tags["clbench.run_id"]: r for r in runs if r.data.tags["clbench.entity"] == "run"}
    stored = load_runs(db)
    assert len(runs) == 6 and set(children) == set(stored["run_id"]) and set(parents) == set(stored["config_hash"])
    client = _client(uri)
    with open_store(db, readonly=True) as store:
        for row in stored.itertuples():
            child = children[row.run_id]
            assert child.data.tags["mlflow.parentRunId"] == parents[row.config_hash].info.run_id
            assert child.info.status == "FINISHED"
            assert child.data.params == flat_params(row.config) and child.data.params["seed"] == str(row.seed)
            res = store.load_result(row.run_id)
            t = res.class_il.shape[0]
            history = client.get_metric_history(child.info.run_id, "class_il/accuracy")
            assert [m.step for m in history] == list(range(t))
            np.testing.assert_allclose([m.value for m in history], average_accuracy_curve(res.class_il))
            task0 = client.get_metric_history(child.info.run_id, "task_il/task_0")
            np.testing.assert_allclose([m.value for m in task0], res.task_il[:, 0])
            loss = client.get_metric_history(child.info.run_id, "loss/total")
            np.testing.assert_allclose([m.value for m in loss], res.train_loss["total"], rtol=1e-6)
            assert [m.step for m in client.get_metric_history(child.info.run_id, "class_il/forgetting")] == list(
                range(1, t)
            )
            assert child.data.metrics["faa_class_il"] == pytest.approx(row.faa_class_il)
            local = client.download_artifacts(child.info.run_id, "accuracy", str(tmp_path / row.run_id))
            matrices = json.loads((Path(local) / "accuracy_matrices.json").read_text())
            np.testing.assert_array_equal(matrices["class_il"], res.class_il)
            np.testing.assert_array_equal(matrices["task_il"], res.task_il)
            assert (Path(local) / "accuracy_matrices.csv").is_file()
    assert str(folder / "artifacts") in children[stored["run_id"][0]].info.artifact_uri
    for config_hash, parent in parents.items():
        cell = stored[stored["config_hash"] == config_hash]
        assert "seed" not in parent.data.params and parent.data.params["method"] == "er"
        assert parent.data.metrics["n_seeds"] == 2
        assert parent.data.metrics["faa_class_il_mean"] == pytest.approx(cell["faa_class_il"].mean())
        assert parent.data.metrics["faa_class_il_std"] == pytest.approx(cell["faa_class_il"].std(ddof=1))


def test_exporting_again_adds_nothing_and_new_seeds_join_their_parent(exported):
    folder, db, uri, first = exported
    client = _client(uri)
    before = {
        r.info.run_id: sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics)
        for r in _runs(uri, first.experiment_id)
    }
    again = export_mlflow(db, uri)
    assert (again.new_runs, again.already_there, again.new_parents) == (0, 4, 0)
    after = {
        r.info.run_id: sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics)
        for r in _runs(uri, first.experiment_id)
    }
    assert after == before  # no run, no metric value added
    # an export that stopped after MLflow but before the registry: the run is adopted, not doubled
    with open_store(db) as store:
        store.transaction(lambda c: c.execute(delete(MlflowRun).where(MlflowRun.entity == "run")))
    adopted = export_mlflow(db, uri)
    assert (adopted.new_runs, adopted.already_there) == (0, 4) and len(_runs(uri, first.experiment_id)) == 6
    # a third seed: two children under the existing parents, whose summaries move to 3 seeds
    train(db, [0, 1, 2])
    more = export_mlflow(db, uri)
    assert (more.new_runs, more.already_there, more.new_parents) == (2, 4, 0)
    runs = _runs(uri, first.experiment_id)
    assert len(runs) == 8
    assert {r.data.metrics["n_seeds"] for r in runs if r.data.tags["clbench.entity"] == "config"} == {3}
    with open_store(db, readonly=True) as store:
        n = store.transaction(lambda c: c.execute(select(func.count()).select_from(MlflowRun)).scalar())
    assert n == 8  # 6 runs + 2 parents remembered for this tracking URI


def test_export_command_and_its_bad_input(exported, tmp_path, monkeypatch, capsys):
    folder, db, uri, first = exported
    monkeypatch.chdir(tmp_path)
    target = f"sqlite:///{tmp_path / 'cli.db'}"
    n = len(load_runs(db, mask="-inf", status="finished"))  # 2 or 3 seeds, by which tests ran before
    assert cli.main(["export", "--mlflow", target, "--db", str(db), "--mask", "-inf"]) == 0
    err = capsys.readouterr().err
    assert f"{n} runs exported now (1 new parent run), 0 already there" in err
    assert cli.main(["export", "--mlflow", target, "--db", str(db), "--mask", "-inf"]) == 0
    assert "0 runs exported now" in capsys.readouterr().err
    with open_store(db, readonly=True) as store:
        remembered = store.mlflow_runs(target)
    assert len(remembered) == n + 1
    before = sorted(os.listdir(tmp_path))
    for args, message in (
        (["export", "--mlflow", "foo://bar"], "cannot use the MLflow tracking URI 'foo://bar'"),
        (["export", "--mlflow", "sqlite:///nowhere/m.db"], "the folder"),
        (["export", "--mlflow", "sqlite:///:memory:"], "give an SQLite file"),
        (["export", "sqlite:///x.db"], "a tracking URI goes with --mlflow"),
        (["export", "--mlflow", target, "--output", "x.csv"], "--matrices and --output do not apply"),
        (
            ["export", "--mlflow", f"sqlite:///{tmp_path / 'new.db'}", "--db", str(tmp_path / "missing.db")],
            "no clbench database",
        ),
    ):
        assert cli.main([*args, "--db", str(db)] if "--db" not in args else args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written: no store, no database, no artifacts
    assert not Path("nowhere").exists()
    # no TRACKING_URI: MLflow's own default, which follows MLFLOW_TRACKING_URI
    from clbench.store.mlflow import resolve_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'env.db'}"
    # MLflow not installed: one line naming the extra
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert cli.main(["export", "--mlflow", target, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'clbench[mlflow]'" in err and err.count("\n") == 1
