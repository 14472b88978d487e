"""Options the literature disagrees on, each recorded in the run's config: the class-IL convention,
which logits DER stores, and masks that cannot act (refused instead of silently copying a baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench import MaskSpec, RunConfig, SyntheticOptions, train_runs
from clbench import trainer as trainer_module
from clbench.buffer import ReservoirBuffer
from clbench.data.benchmarks import prepare_inputs

from conftest import synthetic_config

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

    class RecordingNetState(trainer_module._NetState):
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
    monkeypatch.setattr(trainer_module, "_NetState", RecordingNetState)
    monkeypatch.setattr(trainer_module, "ReservoirBuffer", CheckingBuffer)
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
    with pytest.raises(ValueError, match=f"cannot act in {method}.*valid placements for {method} are stream, both"):
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
