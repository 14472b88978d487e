"""The validation split (issue 20, item 3): held-out training rows, evaluated and stored beside the test sets."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import synthetic_config
from sqlalchemy import text
from test_lockstep import assert_same_run
from test_store import _v1_database, db_url  # noqa: F401 - the fixture, for both backends

from clbench import MaskSpec, RunConfig, train_runs
from clbench.data.loading import hold_out_validation, load_benchmark
from clbench.data.specs import SyntheticOptions
from clbench.engine.group import Group
from clbench.store.opening import open_store
from clbench.store.queries import load_matrices, load_runs
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep

SYN = SyntheticOptions(train_per_class=40, test_per_class=20)


def synthetic_data():
    return load_benchmark("synthetic", synthetic=SYN)


def test_the_split_is_class_balanced_disjoint_from_training_and_drawn_from_the_seed():
    data = synthetic_data()
    held = hold_out_validation(data, 0.25, [3])
    y = data.train_y
    assert all(v.shape[0] == 1 for v in held.val_task_idx)  # (R, v): one row per run
    val_rows = [v[0] for v in held.val_task_idx]
    for t, (before, train, val) in enumerate(zip(data.train_task_idx, held.train_task_idx, val_rows)):
        # class-balanced: a quarter of each class's 40 samples; disjoint; together the task's rows
        assert torch.bincount(y[val], minlength=data.n_classes)[data.class_task == t].tolist() == [10, 10]
        assert torch.bincount(y[train], minlength=data.n_classes)[data.class_task == t].tolist() == [30, 30]
        assert not set(train.tolist()) & set(val.tolist())
        assert sorted(train.tolist() + val.tolist()) == sorted(before.tolist())
        assert train.tolist() == sorted(train.tolist())  # the kept rows in their order
    again = hold_out_validation(data, 0.25, [3])
    other = hold_out_validation(data, 0.25, [4])
    assert all(torch.equal(a, b) for a, b in zip(held.val_task_idx, again.val_task_idx))
    assert not all(torch.equal(a, b) for a, b in zip(held.val_task_idx, other.val_task_idx))
    assert data.val_task_idx is None and len(data.train_task_idx[0]) == 80  # the data given is not changed


def test_every_method_and_mask_of_a_seed_holds_out_the_same_rows():
    data = synthetic_data()
    splits = [
        Group.of([synthetic_config(m, seed=5, mask=v, validation=0.2).resolve()], data).data.val_task_idx
        for m, v in (("er", None), ("derpp", -math.inf), ("gdumb", None))
    ]
    for other in splits[1:]:
        assert all(torch.equal(a, b) for a, b in zip(splits[0], other))


def test_no_split_leaves_every_identity_as_it_was_and_a_split_changes_it():
    # The identity computed by clbench before validation splits existed (main at 9372765).
    assert RunConfig(seed=3).resolve().identity() == "1785304391d44663"
    assert RunConfig(seed=3, validation=0).resolve().identity() == "1785304391d44663"
    assert "validation" not in RunConfig(seed=3).resolve().to_dict()
    ids = {RunConfig(seed=3, validation=f).resolve().identity() for f in (0.0, 0.1, 0.2)}
    assert len(ids) == 3
    cfg = RunConfig(seed=3, validation=0.1).resolve()
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    # Runs of different seeds hold out different rows of equal counts: they share a group, each on
    # its own split (``test_a_group_over_seeds_with_a_split_equals_each_run_alone``).
    assert cfg.group_key() == replace(cfg, seed=4).group_key()
    assert RunConfig(seed=3).resolve().group_key() == RunConfig(seed=4).resolve().group_key()


@pytest.mark.parametrize(
    "value,message",
    [
        (-0.1, "invalid --validation -0.1: give a fraction of each task's training data in (0, 0.5], or 0 for none"),
        ("0.7", "invalid --validation 0.7: give a fraction"),
        ("1", "invalid --validation 1.0: give a fraction"),
        ("0.01", "invalid --validation 0.01: class 0 has 40 training samples, so the split leaves its validation set"),
    ],
)
def test_bad_fractions_are_refused_in_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys, value, message):
    from clbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLBENCH_DB", raising=False)
    args = ["run", "-d", "synthetic", "--synthetic-train-per-class", "40", "--buffer", "20", "--validation", str(value)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message) and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_group_with_a_split_equals_each_run_alone():
    cfgs = [
        synthetic_config("er", seed=2, buffer=20, validation=0.25),
        synthetic_config("er", seed=2, buffer=8, mask=-math.inf, validation=0.25),
        replace(synthetic_config("er", seed=2, buffer=30, validation=0.25), mask=MaskSpec(-2.0, "both", "seen")),
    ]
    grouped = train_runs(cfgs)
    assert {r.group_size for r in grouped} == {3}
    for cfg, res in zip(cfgs, grouped):
        (alone,) = train_runs([cfg])
        assert_same_run(res, alone)
        np.testing.assert_array_equal(res.validation.class_il_correct, alone.validation.class_il_correct)
        np.testing.assert_array_equal(res.validation.task_il_correct, alone.validation.task_il_correct)


def test_runs_of_other_seeds_hold_out_their_own_rows_in_one_group():
    data = synthetic_data()
    both = hold_out_validation(data, 0.25, [3, 4, 3])
    for seed, r in ((3, 0), (4, 1), (3, 2)):
        (alone,) = [hold_out_validation(data, 0.25, [seed])]
        for t in range(data.n_tasks):
            assert torch.equal(both.val_task_idx[t][r], alone.val_task_idx[t][0])
            assert torch.equal(both.train_task_idx[t][r], alone.train_task_idx[t])  # (R, n): each run its own


def test_a_group_over_seeds_with_a_split_equals_each_run_alone():
    # One group for the seeds (tune's trials, the presets' grids), each run on its own split; a method
    # that reads a task's rows itself (BiC) groups only the runs of one seed.
    cfgs = [
        synthetic_config("derpp", seed=1, buffer=20, validation=0.25, eval_every=3, eval_samples=6),
        synthetic_config("derpp", seed=2, buffer=20, mask=-math.inf, validation=0.25, eval_every=3, eval_samples=6),
        synthetic_config("derpp", seed=3, buffer=8, validation=0.25, eval_every=3, eval_samples=6),
    ]
    plan = plan_sweep([c.resolve() for c in cfgs], None)
    assert [len(g) for g in plan.groups] == [3]
    bic = [synthetic_config("bic", seed=s, validation=0.25, options={"bias_epochs": 2}).resolve() for s in (1, 2)]
    assert sorted(len(g) for g in plan_sweep(bic, None).groups) == [1, 1]
    grouped = train_runs(cfgs)
    assert {r.group_size for r in grouped} == {3}
    for cfg, res in zip(cfgs, grouped):
        (alone,) = train_runs([cfg])
        assert_same_run(res, alone)
        for name in ("class_il_correct", "task_il_correct", "class_il_seen_correct", "counts"):
            np.testing.assert_array_equal(getattr(res.validation, name), getattr(alone.validation, name))
        np.testing.assert_array_equal(res.curve.class_il_correct, alone.curve.class_il_correct)
        assert res.curve.split == "validation"
    assert not np.array_equal(grouped[0].validation.class_il_correct, grouped[2].validation.class_il_correct)


def test_a_run_with_a_split_stores_both_matrices(db_url):  # noqa: F811 - the imported fixture
    cfgs = [synthetic_config("er", seed=0, validation=0.25).resolve(), synthetic_config("er", seed=0).resolve()]
    with open_store(db_url) as store:
        execute(plan_sweep(cfgs, store), store)
        held, plain = (store.load_result(c.identity()) for c in cfgs)
        test_runs, val_runs = load_runs(store), load_runs(store, split="validation")
        val_matrices = load_matrices(store, split="validation")
    assert plain.validation is None
    assert held.validation.counts.tolist() == [20] * 5  # 10 of each class's 40, two classes a task
    assert held.validation.class_il_correct.shape == held.class_il_correct.shape == (5, 5)
    assert (held.validation.class_il_correct <= 20).all() and held.validation.class_il_correct.sum() > 0
    by_id = test_runs.set_index("run_id")
    val = val_runs.set_index("run_id")
    rid = cfgs[0].identity()
    assert by_id.loc[rid, "faa_class_il"] == pytest.approx(held.metrics["faa_class_il"])
    assert val.loc[rid, "faa_class_il"] == pytest.approx(held.validation.metrics["faa_class_il"])
    assert math.isnan(val.loc[cfgs[1].identity(), "faa_class_il"])  # no split: no validation numbers
    assert set(val_matrices["run_id"]) == {rid} and len(val_matrices) == 3 * 25
    assert val_runs.attrs["split"] == "validation"
    with pytest.raises(ValueError, match="invalid split 'train': valid are test, validation"):
        load_runs(db_url, split="train")


def test_rows_stored_before_splits_existed_are_test_rows(db_url):  # noqa: F811 - the imported fixture
    _v1_database(db_url)
    with open_store(db_url) as store:
        splits = store.transaction(lambda c: c.execute(text("SELECT DISTINCT split FROM accuracy")).scalars().all())
        runs = load_runs(store)
        assert splits == ["test"] and runs["faa_class_il"].notna().all()
        assert load_runs(store, split="validation")["faa_class_il"].isna().all()


def test_compare_measures_on_the_split_asked_for(tmp_path, monkeypatch, capsys):
    from clbench.cli import main

    db = str(tmp_path / "r.db")
    cfgs = [synthetic_config("er", seed=s, mask=m, validation=0.25).resolve() for s in (0, 1) for m in (None, -2.0)]
    with open_store(db) as store:
        execute(plan_sweep(cfgs, store), store)
    monkeypatch.delenv("CLBENCH_DB", raising=False)
    assert main(["compare", "--db", db, "--split", "validation", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert main(["compare", "--db", db, "--format", "json"]) == 0
    assert out != capsys.readouterr().out
    assert main(["compare", "--db", db, "--split", "train"]) == 2
    assert capsys.readouterr().err.strip() == "error: invalid --split 'train': valid are test, validation"
