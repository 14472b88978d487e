"""The mask's keep-set (issue 20, item 2): which classes stay live on a masked row."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import synthetic_config
from test_lockstep import assert_same_run

from clbench import MaskSpec, RunConfig, train_runs
from clbench.lockstep.step import Batch, LossLayer
from clbench.masking import masked_cross_entropy
from clbench.reports.experiments import load_experiment

# 3 tasks of 2 classes; a step of task 1: two stream rows of class 2, two replayed rows of class 0
# and one replayed padding row of class 1 (left out of the loss).
CLASS_TASK = torch.tensor([0, 0, 1, 1, 2, 2])
Y = torch.tensor([2, 2, 0, 0, 1])


def hand_made_batch(n_runs: int) -> Batch:
    y = Y.expand(n_runs, -1)
    return Batch(
        x=torch.zeros(n_runs, 5, 1, 1, 1),
        y=y,
        task=CLASS_TASK[y],
        from_buffer=torch.tensor([False, False, True, True, True]),
        valid=torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).expand(n_runs, -1),
    )


def keeping(cfg: RunConfig, mask: MaskSpec) -> RunConfig:
    return replace(cfg, mask=mask)


def live(*classes):
    return [j in classes for j in range(6)]


EXPECTED = {
    # stream rows: task 1's classes; replayed rows: task 0's
    "task": [live(2, 3), live(2, 3), live(0, 1), live(0, 1), live(0, 1)],
    # stream rows: the classes of the stream rows (2); replayed: of the valid replayed rows (0), and
    # the padding row its own class (1) so that its (unused) loss stays finite
    "batch": [live(2), live(2), live(0), live(0), live(0, 1)],
    # every row: the classes of tasks 0..1
    "seen": [live(0, 1, 2, 3)] * 5,
}


def test_each_keep_set_on_a_hand_made_batch():
    keeps = ("task", "batch", "seen")
    layer = LossLayer([MaskSpec(-math.inf, "both", k) for k in keeps], CLASS_TASK)
    batch = hand_made_batch(len(keeps))
    kept = layer.kept(batch, task=1)
    for r, keep in enumerate(keeps):
        assert kept[r].tolist() == EXPECTED[keep], keep
    # The loss is the general masked softmax with those classes live; masked logits get no gradient.
    logits = torch.randn(len(keeps), 5, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = layer.cross_entropy(logits, batch, task=1)
    for r, keep in enumerate(keeps):
        active = torch.tensor(EXPECTED[keep])
        rows = masked_cross_entropy(logits[r], batch.y[r], active, -math.inf, reduction="none")
        torch.testing.assert_close(loss[r], rows[:4].mean())
    loss.sum().backward()
    dead = ~kept
    dead[:, 4] = True  # the padding row adds no gradient anywhere
    assert torch.all(logits.grad[dead] == 0)
    # ... and live ones do, where a row has more than its own class live (alone, its softmax is 1).
    several = kept[:, :4] & (kept[:, :4].sum(-1, keepdim=True) > 1)
    assert several.any() and torch.all(logits.grad[:, :4][several] != 0)


def test_keep_sets_act_only_on_the_rows_the_mask_is_placed_on():
    layer = LossLayer([MaskSpec(-2.0, "stream", "batch"), MaskSpec(None)], CLASS_TASK)
    batch = hand_made_batch(2)
    logits = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
    loss = layer.cross_entropy(logits, batch, task=1)
    active = torch.tensor(EXPECTED["batch"])
    active[2:] = True  # replayed rows unmasked: the mask is on the stream
    expected = masked_cross_entropy(logits[0], batch.y[0], active, -2.0, reduction="none")[:4].mean()
    torch.testing.assert_close(loss[0], expected)
    torch.testing.assert_close(loss[1], torch.nn.functional.cross_entropy(logits[1, :4], batch.y[1, :4]))


def test_the_default_keep_set_leaves_configs_and_identities_as_they_were():
    # Identities computed by clbench before keep-sets existed (main at 9372765).
    before = {
        ("er", None, "stream"): "1785304391d44663",
        ("er", -math.inf, "stream"): "1036afd30ea0cbe8",
        ("derpp", -2.0, "both"): "79737cbb1c75ba01",
        ("gdumb", -math.inf, "buffer"): "db8453df5179eeaa",
    }
    for (method, value, on), identity in before.items():
        cfg = RunConfig(method=method, mask=MaskSpec(value, on), seed=3).resolve()
        assert cfg.identity() == identity
        assert "keep" not in cfg.to_dict()["mask"]
        assert RunConfig(method=method, mask=MaskSpec(value, on, "task"), seed=3).resolve().identity() == identity
    # Without a mask a keep-set means nothing: normalised away, the same run.
    assert RunConfig(mask=MaskSpec(None, keep="seen"), seed=3).resolve().identity() == "1785304391d44663"
    # With one, each keep-set is another run, and it survives the store's JSON.
    ids = {RunConfig(mask=MaskSpec(-math.inf, keep=k), seed=3).resolve().identity() for k in ("task", "batch", "seen")}
    assert len(ids) == 3
    cfg = RunConfig(mask=MaskSpec(-math.inf, keep="batch")).resolve()
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_a_bad_keep_set_is_refused_in_one_line():
    with pytest.raises(ValueError, match="invalid mask keep-set 'all': valid are task, batch, seen"):
        MaskSpec(-math.inf, keep="all")


def test_a_method_that_cannot_use_a_keep_set_refuses_it(monkeypatch):
    import clbench.runs.config as config_module
    from clbench.methods import CARDS

    limited = CARDS["er"].__class__(**{**CARDS["er"].__dict__, "mask_keeps": ("task",)})
    monkeypatch.setitem(CARDS, "er", limited)
    with pytest.raises(ValueError, match="valid keep-sets for er are task"):
        config_module.resolve(RunConfig(mask=MaskSpec(-math.inf, keep="seen")))
    config_module.resolve(RunConfig(mask=MaskSpec(None, keep="seen")))  # no mask: nothing to refuse


@pytest.mark.parametrize("method", ["er", "er_ace", "derpp"])
def test_a_group_with_mixed_keep_sets_equals_each_run_alone(method):
    cfgs = [
        synthetic_config(method, seed=0, buffer=50),
        keeping(synthetic_config(method, seed=1, buffer=5), MaskSpec(-math.inf, "both", "batch")),
        keeping(synthetic_config(method, seed=2, buffer=30), MaskSpec(-2.0, "stream", "seen")),
        keeping(synthetic_config(method, seed=3, buffer=8), MaskSpec(-math.inf, "both", "task")),
    ]
    grouped = train_runs(cfgs)
    assert {r.group_size for r in grouped} == {4}
    for cfg, res in zip(cfgs, grouped):
        (alone,) = train_runs([cfg])
        assert_same_run(res, alone)


def test_keep_sets_change_what_a_run_learns():
    base = synthetic_config("er", seed=0)
    results = train_runs([keeping(base, MaskSpec(-math.inf, "both", k)) for k in MASKS_KEEPS])
    losses = [np.concatenate([v for v in r.train_loss.values()]) for r in results]
    assert not np.array_equal(losses[0], losses[1]) and not np.array_equal(losses[0], losses[2])


MASKS_KEEPS = ("task", "batch", "seen")


def test_experiment_files_take_a_keep_set(tmp_path):
    path = tmp_path / "keep.toml"
    path.write_text(
        'kind = "methods"\nbenchmark = "seq-fmnist"\nmethods = ["er", "gdumb"]\nmasks = ["none", "-inf"]\n'
        'buffers = [200]\nseeds = 2\nmask_keep = "seen"\n'
        '[per_method.gdumb]\nmask_on = "buffer"\nmask_keep = "batch"\n'
    )
    spec = load_experiment(path)
    keeps = {(c.method, c.resolve().mask.label, c.resolve().mask.keep) for c in spec.configs()}
    assert keeps == {
        ("er", "none", "task"),
        ("er", "-inf", "seen"),
        ("gdumb", "none", "task"),
        ("gdumb", "-inf", "batch"),
    }
    path.write_text(path.read_text().replace('mask_keep = "seen"', 'mask_keep = "all"'))
    with pytest.raises(ValueError, match="invalid mask_keep 'all': valid are task, batch, seen"):
        load_experiment(path)


def test_the_command_line_takes_a_keep_set_and_refuses_a_bad_one(tmp_path, monkeypatch, capsys):
    from clbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLBENCH_DB", raising=False)
    assert main(["run", "--mask", "-inf", "--mask-keep", "all", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: invalid --mask-keep 'all': valid are task, batch, seen"
    assert main(["run", "--mask", "-inf", "--mask-keep", "seen", "--dry-run"]) == 0
    assert "1 to compute" in capsys.readouterr().out
    assert not (tmp_path / "results.db").exists()


def test_compare_never_pairs_two_keep_sets_as_one_variant():
    import pandas as pd

    from clbench.reports.compare import compare_runs

    rows = []
    for seed in range(3):
        for label, keep, faa in (("none", "task", 70.0), ("-inf", "task", 72.0), ("-inf", "seen", 75.0)):
            mask = {"value": label, "on": "stream", **({"keep": keep} if keep != "task" else {})}
            rows.append(
                {
                    "run_id": f"{label}{keep}{seed}",
                    "method": "er",
                    "dataset": "seq-fmnist",
                    "buffer_size": 200,
                    "mask": label,
                    "mask_on": "stream",
                    "seed": seed,
                    "status": "finished",
                    "config": {"method": "er", "seed": seed, "mask": mask},
                    "faa_class_il": faa + seed,
                    "faa_task_il": 90.0,
                    "forgetting_class_il": 10.0,
                    "forgetting_task_il": 1.0,
                }
            )
    out = compare_runs(pd.DataFrame(rows))
    faa = out[out["metric"] == "faa_class_il"].set_index("mask_on")["difference"]
    assert faa.to_dict() == pytest.approx({"stream": 2.0, "stream, keep seen": 5.0})
