"""Diverged runs: caught at the step their loss or gradient stops being finite, frozen there,
stored as ``diverged`` with where it happened, and invisible to the runs beside them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import synthetic_config

from clbench import SyntheticOptions, train_runs
from clbench.store import Owner, open_store
from clbench.store.queries import load_runs, summarize_runs

SYN = SyntheticOptions(train_per_class=60, test_per_class=10)
RESNET = SyntheticOptions(
    n_tasks=3, train_per_class=24, test_per_class=6, input_shape=(3, 8, 8), augment=True, backbone="resnet18"
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def runs(method, lrs, **kw):
    return [synthetic_config(method, seed=s, buffer=20, lr=lr, **kw) for s, lr in enumerate(lrs)]


def same_bits(a, b):
    for name in ("class_il_correct", "task_il_correct", "confidence"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for k in a.train_loss:
        np.testing.assert_array_equal(a.train_loss[k], b.train_loss[k], err_msg=k)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("derpp", dict(synthetic=SYN)),
        ("er_ace", dict(synthetic=SYN)),
        ("er", dict(synthetic=RESNET, width=4, batch_size=8, minibatch_size=8)),
    ],
)
def test_a_diverging_run_is_frozen_and_leaves_the_others_bit_for_bit(method, kw):
    without = train_runs(runs(method, [0.03, 0.05], **kw))
    with_nan = train_runs(runs(method, [0.03, 0.05, 1e30], **kw))  # the same group plus seed 2 at an absurd lr
    for a, b in zip(without, with_nan[:2]):
        assert a.divergence is None and b.divergence is None
        same_bits(a, b)
    bad = with_nan[2]
    assert bad.divergence is not None and bad.divergence.task == 0
    assert bad.divergence.step >= 0 and math.isfinite(bad.divergence.last_finite_loss)
    # Frozen: every evaluation from the task it diverged in on sees the same network.
    t = bad.divergence.task
    for name in ("class_il_correct", "task_il_correct", "confidence"):
        rows = getattr(bad, name)[t:]
        for row in rows[1:]:
            np.testing.assert_array_equal(row, rows[0], err_msg=name)


def test_a_diverged_run_is_stored_as_such_and_left_out_of_summaries(tmp_path):
    results = train_runs(runs("er", [0.03, 0.03, 1e30], synthetic=SYN, mask=None))
    owner = Owner.current()
    with open_store(tmp_path / "r.db") as store:
        store.claim([r.config for r in results], owner)
        store.save_results(results, owner)
        row = store.run_row(results[2].run_id)
        assert row["status"] == "diverged" and row["diverged_task"] == 0 and row["diverged_step"] >= 0
        assert store.load_result(results[2].run_id).divergence == results[2].divergence
        df = load_runs(store)
    assert df["status"].tolist().count("diverged") == 1
    assert math.isnan(df.loc[df["status"] == "diverged", "faa_class_il"].iloc[0])  # no trusted metrics


def test_the_cli_names_diverged_runs_and_excludes_them(tmp_path, capsys):
    from clbench.cli import main

    db = str(tmp_path / "r.db")
    common = ["--dataset", "synthetic", "--db", db, "--checkpoint-every", "0"]
    assert main(["run", *common, "--seeds", "2", "--lr", "1e30"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 seeds diverged and are excluded" in out
    assert main(["runs", "--db", db, "--status", "diverged"]) == 0
    out = capsys.readouterr().out
    assert out.count("diverged at task 1, step") == 2
    rid = load_runs(db)["run_id"].iloc[0]
    assert main(["show", rid, "--db", db]) == 0
    assert "its numbers are not results" in capsys.readouterr().out
    summary = summarize_runs(load_runs(db))
    assert summary[["n_seeds", "n_diverged"]].values.tolist() == [[0, 2]]


@pytest.mark.parametrize("device_look", ["cpu", "as on a GPU"])
def test_the_watch_flags_exactly_the_runs_whose_loss_or_gradient_is_not_finite(device_look):
    from clbench.engine.divergence import DivergenceWatch

    watch = DivergenceWatch(3, torch.device("cpu"))
    if device_look != "cpu":
        watch.check_on_host = False  # the GPU's way: the exact look and the masks every step
    grads = [torch.ones(3, 4, 5), torch.ones(3, 4)]
    ok = watch.watch(torch.tensor([1.0, 2.0, 3.0]), grads, task=0, step=0)
    assert ok is None or bool(ok.all())
    # A gradient whose float32 sum overflows is still finite: nobody diverges.
    huge = [torch.full((3, 4, 5), 3e38), torch.ones(3, 4)]
    ok = watch.watch(torch.tensor([1.5, 2.5, 3.5]), huge, task=0, step=1)
    assert ok is None or bool(ok.all())
    # Run 1's gradient has one NaN while every loss is finite: run 1 alone stops, at this step.
    bad = [torch.ones(3, 4, 5), torch.ones(3, 4)]
    bad[0][1, 2, 3] = math.nan
    ok = watch.watch(torch.tensor([1.2, 2.2, 3.2]), bad, task=1, step=7)
    assert ok.tolist() == [True, False, True]
    ok = watch.watch(torch.tensor([1.1, math.inf, 3.1]), grads, task=1, step=8)  # frozen from here on
    assert ok.tolist() == [True, False, True]
    saved = {k: v.clone() for k, v in watch.state().items()}
    restored = DivergenceWatch(3, torch.device("cpu"))
    restored.load(saved)
    for w in (watch, restored):
        runs_ = w.per_run()
        assert runs_[0] is None and runs_[2] is None
        assert (runs_[1].task, runs_[1].step) == (1, 7) and runs_[1].last_finite_loss == pytest.approx(2.5)
    assert watch.state()["last_finite"].tolist() == pytest.approx([1.1, 2.5, 3.1])
