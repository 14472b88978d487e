"""Options the literature disagrees on, each recorded in the run's config: the class-IL convention,
which logits DER stores, and masks that cannot act (refused instead of silently copying a baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_config

from clbench import MaskSpec, RunConfig, SyntheticOptions, train_runs
from clbench.data.loading import prepare_inputs
from clbench.engine import group_state as group_state_module
from clbench.lockstep.buffer import ReservoirBuffer

SYN = SyntheticOptions(train_per_class=40, test_per_class=20)


def test_class_il_over_seen_classes_comes_from_the_same_forward_pass():
    (res,) = train_runs([synthetic_config("er", seed=3, synthetic=SYN)])
    all_, seen = res.class_il_correct, res.class_il_seen_correct
    t = all_.shape[0]
    assert (seen >= all_).all()  # restricting the argmax to seen classes can only turn misses into hits
    assert (seen[np.triu_indices(t, 1)] == 0).all()  # a future task's classes are not candidates yet
    np.testing.assert_array_equal(seen[-1], all_[-1])  # after the last task every class is seen
    assert (seen[:-1] > all_[:-1]).any()  # and earlier rows do differ (the reason to record both)
    assert res.class_il_matrix("seen") is res.class_il_seen and res.class_il_matrix("all") is res.class_il
    with pytest.raises(ValueError, match="valid are all, seen"):
        res.class_il_matrix("past")


@pytest.mark.parametrize("when", ["pre", "post"])
def test_der_stores_the_logits_of_the_training_forward_or_of_a_forward_after_the_step(when, monkeypatch):
    states, checked = [], []

    class RecordingNetState(group_state_module.NetState):
        def __init__(self, *args):
            super().__init__(*args)
            states.append(self)

    class CheckingBuffer(ReservoirBuffer):
        def insert(self, slots, x, y, task, logits):
            net = states[-1]
            with torch.no_grad():
                after, _ = net.net.forward(net.params, net.buffers, prepare_inputs(x, data_spec[0]), train=True)
            checked.append(torch.equal(after, logits))
            super().insert(slots, x, y, task, logits)

    data_spec = [SYN.spec()]
    monkeypatch.setattr(group_state_module, "NetState", RecordingNetState)
    monkeypatch.setattr(group_state_module, "ReservoirBuffer", CheckingBuffer)
    cfg = RunConfig(method="derpp", benchmark="synthetic", seed=0, buffer_size=30, synthetic=SYN, der_logits=when)
    train_runs([cfg])
    assert len(checked) == 5 * 8  # 8 steps per task
    # "post": every stored row is the network's output after the step; "pre": none is (it moved).
    assert all(checked) if when == "post" else not any(checked)


def test_der_logits_is_part_of_the_run_and_only_of_der_runs():
    pre, post = (RunConfig(method="der", der_logits=w).resolve() for w in (None, "post"))
    assert pre.der_logits == "pre" and post.der_logits == "post" and pre.identity() != post.identity()
    assert pre.group_key() != post.group_key()  # an extra forward: another computation
    assert RunConfig(method="er", der_logits="post").resolve().der_logits is None  # ignored where it cannot apply
    with pytest.raises(ValueError, match="invalid der_logits 'late': valid are pre, post"):
        RunConfig(method="der", der_logits="late").resolve()


@pytest.mark.parametrize("method", ["der", "sgd", "joint"])
def test_a_mask_that_cannot_act_is_refused(method):
    with pytest.raises(ValueError, match=f"cannot act in {method}.*valid placements for {method} are stream$"):
        RunConfig(method=method, mask=MaskSpec(-1.0, "buffer")).resolve()
    RunConfig(method=method, mask=MaskSpec(-1.0, "stream")).resolve()  # the paper's setting stays valid
    RunConfig(method=method, mask=MaskSpec(None, "buffer")).resolve()  # no mask: nothing to act


def test_the_cli_refuses_a_mask_that_cannot_act_and_writes_nothing(tmp_path, capsys):
    from clbench.cli import main

    assert main(["run", "-m", "der", "--mask", "-inf", "--mask-on", "buffer", "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot act in der" in err
    assert not (tmp_path / "r.db").exists()
    assert main(["run", "-m", "er", "--der-logits", "post", "--db", str(tmp_path / "r.db")]) == 2
    assert "--der-logits applies to der and derpp" in capsys.readouterr().err


def test_compare_and_reports_name_the_class_il_convention_they_use(tmp_path, capsys):
    from clbench.cli import main
    from clbench.reports import compare_runs
    from clbench.store import Owner, open_store
    from clbench.store.queries import load_runs

    cfgs = [synthetic_config("er", seed=s, buffer=20, mask=m, synthetic=SYN) for s in range(3) for m in (None, -1e9)]
    results = train_runs(cfgs)
    db = tmp_path / "r.db"
    with open_store(db) as store:
        store.claim([r.config for r in results], Owner.current())
        store.save_results(results, Owner.current())
    by = {c: compare_runs(load_runs(db, class_il=c)).set_index("metric") for c in ("all", "seen")}
    assert by["all"].attrs["class_il"] == "all" and by["seen"].attrs["class_il"] == "seen"
    for col in ("baseline_mean", "variant_mean"):  # the final row is the same under both conventions
        assert by["all"].loc["faa_class_il", col] == pytest.approx(by["seen"].loc["faa_class_il", col])
    # earlier rows, and so forgetting, differ (most for masked runs)
    assert any(
        by["all"].loc["forgetting_class_il", c] != by["seen"].loc["forgetting_class_il", c]
        for c in ("baseline_mean", "variant_mean")
    )
    assert main(["compare", "--db", str(db), "--format", "md", "--class-il", "seen"]) == 0
    assert "class-IL: argmax over the classes seen so far" in capsys.readouterr().out
    assert main(["compare", "--db", str(db), "--class-il", "past"]) == 2
    assert "invalid --class-il 'past': valid are all, seen" in capsys.readouterr().err


def test_stale_runs_stand_in_only_when_asked_and_are_named(tmp_path):
    import shutil
    from pathlib import Path

    from clbench.reports import load_experiment, render_report

    db = tmp_path / "r.db"
    shutil.copy(Path(__file__).parent / "data" / "schema_v1.sqlite", db)  # 4 er runs of clbench 0.1.0
    toml = tmp_path / "old.toml"
    toml.write_text(
        'kind = "forgetting"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\n'
        "buffers = [20]\nseeds = 2\n"
    )
    spec = load_experiment(toml)
    assert render_report(spec, db, tmp_path / "without") == []  # stale runs are not results of this engine
    written = render_report(spec.with_render(include_stale=True), db, tmp_path / "with")
    md = next(p for p in written if p.suffix == ".md").read_text()
    assert "4 of 4 runs are stale (computed by an older clbench engine)" in md
    assert "Class-IL: argmax over all classes" in md
