"""Section 6: what a run yields, and that its pieces agree with each other."""

import json
import math

import numpy as np
import pytest
from conftest import synthetic_config

from clbench import RunResult, train_runs
from clbench.runs.resolved import ResolvedConfig


@pytest.fixture(scope="module")
def result():
    (r,) = train_runs([synthetic_config("derpp", seed=3, mask=-math.inf)])
    return r


def test_matrices_shapes_and_consistency(result):
    t, k = 5, 10
    assert result.class_il.shape == result.task_il.shape == (t, t)
    assert result.per_class_accuracy.shape == (t, k) and result.confidence.shape == (t, k, k)
    # Task-IL restricts the argmax to the task's classes: never below class-IL.
    assert (result.task_il >= result.class_il).all()
    np.testing.assert_allclose(result.class_il, 100 * result.class_il_correct / result.test_counts)
    # Equal test counts per class: a task's accuracy is the mean of its classes' accuracies.
    np.testing.assert_allclose(result.class_il, result.per_class_accuracy.reshape(t, t, 2).mean(-1))
    np.testing.assert_allclose(result.confidence.sum(-1), 1.0, atol=1e-6)
    # Later tasks are evaluated too (accuracy on unseen classes is 0 in class-IL).
    assert (result.class_il[0, 1:] == 0).all()


def test_losses_timings_versions(result):
    assert set(result.train_loss) == {"ce", "logit_mse", "replay_ce", "total"}
    np.testing.assert_allclose(
        result.train_loss["total"],
        result.train_loss["ce"] + result.train_loss["logit_mse"] + result.train_loss["replay_ce"],
        rtol=1e-5,
    )
    assert (result.train_s > 0).all() and (result.eval_s > 0).all()
    assert result.versions["torch"] and result.versions["clbench"]
    assert result.device == "cpu" and result.group_size == 1


def test_config_is_fully_resolved_and_records_its_sources(result):
    c = result.config
    assert (c.lr, c.minibatch_size, c.alpha, c.beta) == (0.03, 128, 0.2, 1.0)  # seq-mnist derpp/200 preset
    assert any("no published presets" in n for n in c.notes)
    assert c.mask.label == "-inf" and c.mask.on == "stream"


def test_round_trip_through_json(result):
    back = RunResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.run_id == result.run_id and back.config == result.config
    np.testing.assert_array_equal(back.confidence, result.confidence)
    assert back.metrics == pytest.approx(result.metrics, nan_ok=True)


def test_identity_depends_on_seed_and_config_only():
    a = synthetic_config("er", seed=1).resolve()
    assert a.identity() == synthetic_config("er", seed=1).resolve().identity()
    assert a.identity() != synthetic_config("er", seed=2).resolve().identity()
    assert a.identity() != synthetic_config("er", seed=1, mask=-1.0).resolve().identity()
    assert ResolvedConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(method="foo"), "valid methods are"),
        (dict(method="er", buffer=0), "buffer of at least 1"),
        (dict(method="er", lr=-1.0), "invalid lr -1.0: give a finite number > 0"),
        (dict(method="er", backbone="vit"), "valid backbones"),
    ],
)
def test_bad_configs_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        synthetic_config(**kw).resolve()


def test_presets_fallbacks():
    from clbench import RunConfig

    assert (
        RunConfig(method="er", benchmark="seq-cifar10", buffer_size=20)
        .resolve()
        .notes[0]
        .startswith("buffer 20 (< 200)")
    )
    ace = RunConfig(method="er_ace", benchmark="seq-cifar100", buffer_size=500).resolve()
    assert ace.lr == 0.03 and not ace.notes
    sgd = RunConfig(method="sgd", buffer_size=500).resolve()
    assert sgd.buffer_size == 0 and sgd.minibatch_size == 0
