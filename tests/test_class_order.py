"""Class order as its own axis (issue 21, item 1): ``--class-order K`` (0 the benchmark's order, K > 0 a
permutation drawn from K alone), part of a run's identity only when K > 0, stored, filterable, an axis
of sweeps and experiment files; paired comparisons pair by (seed, class order)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clbench import cli
from clbench.data.loading import load_benchmark
from clbench.data.specs import SyntheticOptions
from clbench.reports import compare_runs, load_experiment, render_report
from clbench.reports.class_order import variance_split
from clbench.runs.checks import InvalidValue
from clbench.runs.config import RunConfig
from clbench.store import open_store
from clbench.store.queries import load_runs
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs

SYN = SyntheticOptions(train_per_class=20, test_per_class=10)


def test_order_zero_is_the_benchmarks_order_with_the_same_identity():
    plain = RunConfig(benchmark="synthetic", synthetic=SYN).resolve()
    zero = RunConfig(benchmark="synthetic", synthetic=SYN, class_order_seed=0).resolve()
    three = RunConfig(benchmark="synthetic", synthetic=SYN, class_order_seed=3).resolve()
    assert zero == plain and zero.identity() == plain.identity() and zero.class_order == 0
    assert zero.class_order_seed is None and "class_order_seed" in plain.to_dict()
    assert three.class_order == 3 and three.identity() != plain.identity()
    assert three.config_hash() != plain.config_hash() and three.group_key() != plain.group_key()


def test_a_class_order_changes_the_order_and_nothing_else():
    opts = SyntheticOptions(n_tasks=3, classes_per_task=2, train_per_class=5, test_per_class=3)
    plain = load_benchmark("synthetic", synthetic=opts)
    perm = load_benchmark("synthetic", synthetic=opts, class_order_seed=4)
    assert perm.class_order != plain.class_order and sorted(perm.class_order) == list(range(6))
    # the same images, each under the new label of its original class
    for split in ("train", "test"):
        x0, y0 = getattr(plain, f"{split}_x"), getattr(plain, f"{split}_y")
        x1, y1 = getattr(perm, f"{split}_x"), getattr(perm, f"{split}_y")
        assert x0.shape == x1.shape
        original = torch_take(perm.class_order, y1)
        key0 = sorted((bytes(x.numpy()), int(y)) for x, y in zip(x0, y0))
        key1 = sorted((bytes(x.numpy()), int(y)) for x, y in zip(x1, original))
        assert key0 == key1
    # drawn from K alone: the same K gives the same order
    again = load_benchmark("synthetic", synthetic=opts, class_order_seed=4)
    assert again.class_order == perm.class_order


def torch_take(order, labels):
    return [order[int(y)] for y in labels]


def test_a_benchmark_of_one_task_has_no_order_to_change():
    one = SyntheticOptions(n_tasks=1, classes_per_task=2)
    assert RunConfig(benchmark="synthetic", synthetic=one, class_order_seed=0).resolve().class_order == 0
    with pytest.raises(InvalidValue, match="1 task, so no class order to change"):
        RunConfig(benchmark="synthetic", synthetic=one, class_order_seed=2).resolve()


def test_sweeps_take_class_orders_as_an_axis():
    configs = sweep_configs(methods=["er"], seeds=range(2), benchmark="synthetic", class_orders=[0, 2], synthetic=SYN)
    assert [(c.class_order_seed, c.seed) for c in configs] == [(None, 0), (None, 1), (2, 0), (2, 1)]
    default = sweep_configs(methods=["er"], seeds=range(2), benchmark="synthetic", synthetic=SYN)
    assert [c.resolve().identity() for c in configs[:2]] == [c.resolve().identity() for c in default]
    with pytest.raises(ValueError, match="class_orders or class_order_seed"):
        sweep_configs(class_orders=[1], class_order_seed=2)
    with pytest.raises(InvalidValue, match="invalid class_order_seed -1"):
        sweep_configs(class_orders=[-1])


@pytest.mark.parametrize("value", ["-1", "x", "1,,2"])
def test_a_bad_class_order_is_one_line_exit_2(tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["run", "--dataset", "synthetic", "--class-order", value, "--dry-run"])
    err = capsys.readouterr().err
    assert (
        rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "class-order" in err or "class order" in err
    )
    assert list(tmp_path.iterdir()) == []


def _frame(rows):
    cfg = {"method": "er", "benchmark": "seq-fmnist", "buffer_size": 200, "lr": 0.1}
    out = []
    for mask, seed, order, value in rows:
        out.append(
            {
                "method": "er",
                "dataset": "seq-fmnist",
                "buffer_size": 200,
                "mask": mask,
                "mask_on": "stream",
                "seed": seed,
                "class_order": order,
                "status": "finished",
                "config": {**cfg, "seed": seed, "mask": mask, "class_order_seed": order or None},
                "faa_class_il": value,
                "faa_task_il": value,
                "forgetting_class_il": math.nan,
                "forgetting_task_il": math.nan,
            }
        )
    return pd.DataFrame(out)


def test_comparisons_pair_by_seed_and_class_order():
    base = {(0, 0): 40.0, (1, 0): 41.0, (0, 3): 30.0, (1, 3): 33.0}
    var = {(0, 0): 42.0, (1, 0): 40.0, (0, 3): 35.0}  # (seed 1, order 3) has no masked run
    df = _frame([("none", s, o, v) for (s, o), v in base.items()] + [("-inf", s, o, v) for (s, o), v in var.items()])
    row = compare_runs(df).set_index("metric").loc["faa_class_il"]
    # three pairs, each within one (seed, order): +2, -1, +5; never seed 0 of order 0 against order 3
    assert row["n_seeds"] == 3 and row["difference"] == pytest.approx(2.0)
    assert (row["wins"], row["losses"]) == (2, 1)


def test_variance_split_by_hand():
    # order 0: 1, 3 (mean 2, var 1); order 1: 5, 7 (mean 6, var 1); grand mean 4
    total, between, within = variance_split(pd.Series([1.0, 3.0, 5.0, 7.0]), pd.Series([0, 0, 1, 1]))
    assert between == pytest.approx(4.0) and within == pytest.approx(1.0)
    assert total == pytest.approx(np.var([1, 3, 5, 7])) == pytest.approx(between + within)


EXPERIMENT = """
kind = "class-order"
benchmark = "synthetic"
methods = ["er"]
masks = ["none", "-inf"]
buffers = [10]
seeds = 2
class_orders = [0, 5]
[overrides]
epochs = 1
synthetic = { train_per_class = 20, test_per_class = 10 }
"""


def test_class_order_experiment_trains_stores_filters_and_renders(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t-orders.toml"
    path.write_text(EXPERIMENT)
    spec = load_experiment(path)
    assert spec.class_orders == (0, 5) and len(spec.configs()) == 8
    db = tmp_path / "results.db"
    with open_store(db) as store:
        execute(plan_sweep(spec.configs(), store), store, experiment=spec.name)
    runs = load_runs(db)
    assert sorted(runs["class_order"].unique()) == [0, 5] and len(runs) == 8
    assert set(load_runs(db, class_order=5)["class_order"]) == {5} and len(load_runs(db, class_order=[5])) == 4
    written = {p.name for p in render_report(spec, db, tmp_path / "out")}
    assert {"t-orders-variance.csv", "t-orders-wins.md", "t-orders-compare.csv", "t-orders.png"} <= written
    variance = pd.read_csv(tmp_path / "out" / "t-orders-variance.csv")
    row = variance[(variance["mask"] == "none") & (variance["metric"] == "faa_class_il")].iloc[0]
    cell = runs[runs["mask"] == "none"]
    expected = variance_split(cell["faa_class_il"], cell["class_order"])
    assert (row["total_var"], row["between_order_var"], row["within_order_var"]) == pytest.approx(expected)
    compared = pd.read_csv(tmp_path / "out" / "t-orders-compare.csv")
    assert set(compared["n_seeds"]) == {4}  # 2 seeds x 2 orders
    wins = pd.read_csv(tmp_path / "out" / "t-orders-wins.csv")
    assert sorted(wins["class_order"]) == [0, 5] and set(wins["n_seeds"]) == {2}
    # the command line filters by class order
    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs", "--class-order", "5"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("4 runs") and "order" in listing
    assert cli.main(["compare", "--class-order", "0", "--format", "csv"]) == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert set(out["n_seeds"]) == {2}


@pytest.mark.parametrize(
    "extra, message",
    [
        ("class_orders = [-1]\n", "invalid class_orders value -1"),
        ("class_orders = []\n", "class_orders must be a non-empty list"),
        ("class_orders = [1]\n[overrides]\nclass_order_seed = 2\n", "give the class order once"),
    ],
)
def test_bad_class_orders_in_a_file(tmp_path, extra, message):
    path = tmp_path / "x.toml"
    path.write_text(
        'kind = "fig4"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\n'
        "buffers = [10]\nseeds = 2\n" + extra
    )
    with pytest.raises(ValueError, match=message):
        load_experiment(path)
