"""Plasticity beside stability (issue 21, item 3): at each task end the diagonal accuracy, its shortfall
against the joint model, the effective rank of the penultimate features and the fraction of dead ReLU
units; computed in the task-end evaluation's forward pass, stored per run and task, shown by
``clbench show`` and the forgetting report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from clbench import cli
from clbench.data.specs import SyntheticOptions
from clbench.engine.evaluation import _FeatureStats
from clbench.lockstep.backbones import BatchedMLP
from clbench.lockstep.resnet import BatchedResNet18
from clbench.metrics import diagonal_accuracy, effective_rank, joint_shortfall
from clbench.reports import load_experiment, render_report
from clbench.store import open_store
from clbench.store.measures import load_plasticity
from clbench.store.queries import load_runs
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep


def test_metrics_by_hand():
    assert effective_rank([2.0, 2.0]) == pytest.approx(2.0)
    assert effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_rank([0.0, 0.0]) == 0.0
    p = np.array([0.75, 0.25])
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    a = np.array([[90.0, 0, 0], [40, 80, 0], [30, 35, 70]])
    joint = np.array([[95.0, 0, 0], [90, 85, 0], [88, 84, 80]])
    assert diagonal_accuracy(a).tolist() == [90.0, 80.0, 70.0]
    assert joint_shortfall(a, joint) == pytest.approx((5 + 5 + 10) / 3)
    assert math.isnan(joint_shortfall(a, np.eye(2)))


def test_feature_statistics_match_numpy_over_chunks():
    g = torch.Generator().manual_seed(0)
    f = torch.relu(torch.randn(3, 50, 6, generator=g))
    f[:, :, 2] = 0  # a dead unit in every run
    f[1, :, 4] = 0  # and one more in run 1
    f[2, 7, 0] = float("nan")  # run 2 diverged
    stats = _FeatureStats(3, torch.device("cpu"))
    for start in range(0, 50, 16):
        stats.add(f[:, start : start + 16])
    out = stats.measures()
    for r in range(2):
        sv = np.linalg.svd(f[r].double().numpy(), compute_uv=False)
        assert out["effective_rank"][r] == pytest.approx(effective_rank(sv), rel=1e-7)
    assert out["dead_fraction"][:2].tolist() == pytest.approx([1 / 6, 2 / 6])
    assert math.isnan(out["effective_rank"][2]) and math.isnan(out["dead_fraction"][2])


@pytest.mark.parametrize("make", [lambda: BatchedMLP(64, 10), lambda: BatchedResNet18(10, width=4)])
def test_features_then_head_is_forward_bit_for_bit(make):
    net = make()
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    params, buffers = net.init(gens)
    shape = (1, 8, 8) if isinstance(net, BatchedMLP) else (3, 8, 8)
    x = torch.rand(5, *shape, generator=gens[0]).unsqueeze(0).expand(2, 5, *shape)
    with torch.no_grad():
        logits, _ = net.forward(params, buffers, x, train=False)
        features, _ = net.features(params, buffers, x, train=False)
        assert torch.equal(net.head_logits(params, features), logits)


EXPERIMENT = """
kind = "forgetting"
benchmark = "synthetic"
methods = ["er", "joint"]
masks = ["none"]
buffers = [10]
seeds = 2
[overrides]
epochs = 1
synthetic = { n_tasks = 3, train_per_class = 20, test_per_class = 10 }
"""


def test_stored_per_run_and_task_shown_and_reported(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t-plastic.toml"
    path.write_text(EXPERIMENT)
    spec = load_experiment(path)
    db = tmp_path / "results.db"
    with open_store(db) as store:
        execute(plan_sweep(spec.configs(), store), store, experiment=spec.name)
        runs = load_runs(store)
        er = runs[runs["method"] == "er"]["run_id"].iloc[0]
        result = store.load_result(er)
    assert set(result.plasticity) == {"effective_rank", "dead_fraction"}
    assert result.plasticity["effective_rank"].shape == (3,) and (result.plasticity["effective_rank"] >= 1).all()
    long = load_plasticity(db, [er])
    assert long["after_task"].tolist() == [0, 1, 2]
    assert long["diagonal_class_il"].tolist() == pytest.approx(np.diag(result.class_il).tolist())
    assert long["effective_rank"].tolist() == pytest.approx(result.plasticity["effective_rank"].tolist())
    # the forgetting report: plasticity beside it, the shortfall against the joint run of each seed
    written = {p.name for p in render_report(spec, db, tmp_path / "out")}
    assert {"t-plastic-plasticity.md", "t-plastic-plasticity.csv"} <= written
    table = pd.read_csv(tmp_path / "out" / "t-plastic-plasticity.csv").set_index("method")
    assert table.loc["er", "n_joint"] == 2 and table.loc["joint", "joint_shortfall_mean"] == pytest.approx(0.0)
    er_runs = runs[runs["method"] == "er"].sort_values("seed")
    joint_runs = runs[runs["method"] == "joint"].sort_values("seed")
    shortfalls = []
    for rid, jid in zip(er_runs["run_id"], joint_runs["run_id"]):
        a = load_plasticity(db, [rid])["diagonal_class_il"].to_numpy()
        j = load_plasticity(db, [jid])["diagonal_class_il"].to_numpy()
        shortfalls.append((j - a).mean())
    assert table.loc["er", "joint_shortfall_mean"] == pytest.approx(np.mean(shortfalls))
    assert "effective rank" in (tmp_path / "out" / "t-plastic-plasticity.md").read_text()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["show", er]) == 0
    assert "Plasticity after each task" in capsys.readouterr().out


def test_without_a_classifier_or_with_one_the_measures_come_from_the_features():
    """iCaRL's nearest-mean classifier takes the logits' place; the measures still come from the
    backbone's penultimate features."""
    from clbench import train_runs
    from clbench.runs.config import RunConfig

    syn = SyntheticOptions(n_tasks=2, train_per_class=10, test_per_class=5)
    res = train_runs([RunConfig(method="icarl", benchmark="synthetic", synthetic=syn, buffer_size=10, epochs=1)])[0]
    assert res.plasticity["effective_rank"].shape == (2,) and np.isfinite(res.plasticity["dead_fraction"]).all()
