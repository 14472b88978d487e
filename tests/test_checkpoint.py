"""Checkpointed groups: a group interrupted anywhere and resumed from its checkpoint gives exactly
the results of an uninterrupted one (bit for bit on the CPU), including after a real ``kill -9``."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_OPTIONS, synthetic_config

import clbench.engine
from clbench import SyntheticOptions
from clbench.data.loading import load_benchmark
from clbench.engine.checkpoint import CheckpointPolicy, checkpoint_key, list_checkpoints, parse_duration
from clbench.engine.group import Group
from clbench.engine.group_state import GroupState, load_snapshot, saved_fields
from clbench.engine.loop import train_group
from clbench.methods import get_method

MLP = SyntheticOptions(train_per_class=60, test_per_class=10)
RESNET = SyntheticOptions(
    n_tasks=3, train_per_class=24, test_per_class=6, input_shape=(3, 8, 8), augment=True, backbone="resnet18"
)
# Long enough (a few seconds) for a process to be killed several times inside its tasks.
LONG = {
    "mlp": SyntheticOptions(train_per_class=1500, test_per_class=10),
    "resnet18": SyntheticOptions(
        n_tasks=3, train_per_class=200, test_per_class=6, input_shape=(3, 8, 8), augment=True, backbone="resnet18"
    ),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def group(method: str, backbone: str = "mlp", long: bool = False):
    if backbone == "mlp":
        common = dict(synthetic=LONG["mlp"] if long else MLP)
    else:  # tiny ResNet-18 with crop + flip; buffer 3 < minibatch 8 pads the replay rows
        common = dict(synthetic=LONG["resnet18"] if long else RESNET, width=4, batch_size=8, minibatch_size=8)
    cls = get_method(method)
    buffers = (12, 12, 12) if cls.group_by_buffer_size else (40, 3, 12)
    masks = (None, -float("inf"), -2.0) if cls.mask_acts_on else (None,) * 3
    on = "stream" if "stream" in cls.mask_acts_on else "buffer"
    both = "both" if {"stream", "buffer"} <= set(cls.mask_acts_on) else on  # where a mask acts on every row
    if method in TEST_OPTIONS:
        common["options"] = TEST_OPTIONS[method]
    cfgs = [
        synthetic_config(method, seed=0, buffer=buffers[0], mask=masks[0], **common),
        synthetic_config(method, seed=1, buffer=buffers[1], mask=masks[1], on=both, **common),
        synthetic_config(method, seed=2, buffer=buffers[2], mask=masks[2], on=on, lr=0.05, **common),
    ]
    cfgs = [c.resolve() for c in cfgs]
    return cfgs, load_benchmark("synthetic", synthetic=cfgs[0].synthetic)


def assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.config == y.config
        for name in (
            "class_il_correct",
            "task_il_correct",
            "class_il_seen_correct",
            "confidence",
            "per_class_accuracy",
        ):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
        assert x.train_loss.keys() == y.train_loss.keys()
        for k in x.train_loss:
            np.testing.assert_array_equal(x.train_loss[k], y.train_loss[k], err_msg=k)
        assert x.divergence == y.divergence


class Stop(Exception):
    pass


@pytest.mark.parametrize(
    "method,backbone",
    [
        ("derpp", "mlp"),
        ("er_ace", "mlp"),
        ("der", "mlp"),
        ("joint", "mlp"),
        ("er", "resnet18"),
        ("derpp", "resnet18"),
        ("xder", "mlp"),
        ("icarl", "mlp"),
        ("agem", "mlp"),
        ("gdumb", "mlp"),
        ("xder", "resnet18"),
        ("ss_il", "mlp"),
        ("lode", "mlp"),
        ("lode_derpp", "mlp"),
        ("er_las", "mlp"),
        ("er_aml", "mlp"),
        ("ss_il", "resnet18"),
        ("er_aml", "resnet18"),
        ("wa", "mlp"),
        ("wa", "resnet18"),
        ("bic", "mlp"),
        ("bic", "resnet18"),
    ],
)
def test_a_group_stopped_anywhere_resumes_to_the_same_bits(method, backbone, tmp_path):
    cfgs, data = group(method, backbone)
    reference = train_group(cfgs, data)
    policy = CheckpointPolicy(tmp_path / "ckpt", every_s=1e-9)  # a checkpoint after every step
    reports = []
    train_group(cfgs, data, progress=reports.append)  # how many progress reports a whole group makes
    where = [(p.phase, p.task, p.epoch, p.step) for p in reports]
    rng = random.Random(f"{method}-{backbone}")
    stops = [where[i] for i in sorted(rng.sample(range(3, len(where) - 2), 3))]  # three random points
    for stop_at in stops:

        def interrupt(p, stop_at=stop_at):
            if (p.phase, p.task, p.epoch, p.step) == stop_at:
                raise Stop

        with pytest.raises(Stop):
            train_group(cfgs, data, progress=interrupt, checkpoint=policy)
    resumed = []
    results = train_group(cfgs, data, progress=resumed.append, checkpoint=policy)
    assert resumed[0].phase == "resume" and (resumed[0].task, resumed[0].step) != (0, 0)
    assert_identical(results, reference)


def test_bic_stopped_inside_its_bias_stage_resumes_there_to_the_same_bits(tmp_path):
    """BiC's bias stage is the trainer's end-of-task passes, checkpointed between passes: a group
    stopped after the third of task 3's five passes resumes at the fourth, not at the task's start."""
    cfgs, data = group("bic")
    assert TEST_OPTIONS["bic"]["bias_epochs"] == 5
    reference = train_group(cfgs, data)
    policy = CheckpointPolicy(tmp_path / "ckpt", every_s=1e-9)
    passes = []

    def stop_in_the_bias_stage(p):
        if p.phase == "end_of_task" and p.task == 2:
            passes.append(p)
            if len(passes) == 3:
                raise Stop

    with pytest.raises(Stop):
        train_group(cfgs, data, progress=stop_in_the_bias_stage, checkpoint=policy)
    (key,) = {Group.of(cfgs, data).checkpoint_key}
    assert load_snapshot(policy, key)["end_pass"] == 2  # saved after pass 2; the third's report stopped it
    resumed = []
    results = train_group(cfgs, data, progress=resumed.append, checkpoint=policy)
    assert resumed[0].phase == "resume" and resumed[0].task == 2
    phases = [p.phase for p in resumed[1:] if p.phase != "checkpoint"]
    assert phases[:4] == ["end_of_task"] * 3 + ["evaluate"]  # passes 3, 4 and 5, then the evaluation
    assert_identical(results, reference)


def test_a_checkpoint_holds_the_position_and_is_found_by_the_group_in_any_order(tmp_path):
    cfgs, data = group("er")
    policy = CheckpointPolicy(tmp_path, every_s=1e-9)
    seen = []

    def stop_in_task_2(p):
        seen.append(p)
        if p.phase == "train" and p.task == 1 and p.step >= 6:
            raise Stop

    with pytest.raises(Stop):
        train_group(cfgs, data, progress=stop_in_task_2, checkpoint=policy)
    (summary,) = list_checkpoints(tmp_path)
    assert summary.key == checkpoint_key([c.identity() for c in reversed(cfgs)])
    assert sorted(summary.run_ids) == sorted(c.identity() for c in cfgs)
    assert (summary.task, summary.n_tasks, summary.epoch, summary.step) == (1, 5, 0, 5)  # the report came first
    assert summary.describe().startswith("task 2/5, epoch 1/1, step ")
    resumed = []
    train_group(list(reversed(cfgs)), data, progress=resumed.append, checkpoint=policy)
    assert resumed[0].phase == "resume" and resumed[0].task == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other engine"])
def test_an_unusable_checkpoint_is_ignored_with_one_warning(damage, tmp_path, caplog):
    cfgs, data = group("er")
    reference = train_group(cfgs, data)
    policy = CheckpointPolicy(tmp_path, every_s=1e-9)

    def stop(p):
        if p.phase == "train" and p.task == 2:
            raise Stop

    with pytest.raises(Stop):
        train_group(cfgs, data, progress=stop, checkpoint=policy)
    pt = tmp_path / f"{checkpoint_key([c.identity() for c in cfgs])}.pt"
    if damage == "garbage":
        pt.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    else:
        blob = torch.load(pt, weights_only=True)
        blob["engine"]["results_version"] -= 1
        torch.save(blob, pt)
    reports = []
    with caplog.at_level(logging.WARNING, logger="clbench"):
        results = train_group(cfgs, data, progress=reports.append, checkpoint=policy)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "starts over" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert reports[0].phase != "resume"
    assert_identical(results, reference)


def test_durations_parse():
    assert [parse_duration(t) for t in ("10m", "90s", "1h", "1.5h", "45", "0")] == [600, 90, 3600, 5400, 45, 0]
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        parse_duration("soon")


# ---------------------------------------------------------------------------------------------
# The group state's one declaration: what a checkpoint saves is derived from it


def undeclared_fields(cls) -> list[str]:
    """Fields of a state class that say neither how a checkpoint saves them nor why it need not."""
    return [f.name for f in dataclasses.fields(cls) if ("codec" in f.metadata) == ("transient" in f.metadata)]


def test_every_field_of_the_group_state_is_saved_or_declared_transient():
    assert undeclared_fields(GroupState) == []

    @dataclasses.dataclass(eq=False, kw_only=True)
    class Grown(GroupState):
        forgotten: int = 0  # a new field with no word on checkpoints

    assert undeclared_fields(Grown) == ["forgotten"]  # the check above can fail
    cfgs, data = group("xder")
    state = GroupState.start(Group.of(cfgs, data))
    fields = {f.name for f in dataclasses.fields(GroupState)}
    assert set(vars(state)) == fields  # nothing is kept beside the declaration
    assert set(state.snapshot()) == {f.name for f in saved_fields()} | {"threads"}


def test_the_engine_assigns_no_group_state_attribute_outside_the_declaration():
    """The phases advance the state as ``st.<field> = ...``: each such name must be a declared field
    (else it would live in the state and be left out of every checkpoint)."""
    fields = {f.name for f in dataclasses.fields(GroupState)}
    assigned = set()
    for path in Path(clbench.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for t in targets:
                for leaf in t.elts if isinstance(t, ast.Tuple) else [t]:
                    if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "st":
                        assigned.add(leaf.attr)
    assert assigned and assigned <= fields, assigned - fields


def same_tree(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("method", ["xder", "gdumb", "joint"])
def test_a_restored_state_snapshots_to_what_was_saved(method, tmp_path):
    """restore is the inverse of snapshot for every saved field, mid-task (epoch draws, a replay plan,
    the method's draws and state all present) and at a task's end."""
    cfgs, data = group(method)
    policy = CheckpointPolicy(tmp_path, every_s=1e-9)

    def stop(p):
        if p.phase == "train" and p.task == 1 and p.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_group(cfgs, data, progress=stop, checkpoint=policy)
    saved = load_snapshot(policy, checkpoint_key([c.identity() for c in cfgs]))
    assert saved is not None and saved["task"] == 1 and saved["step"] == 2 and saved["draws"] is not None
    assert (saved["plan"] is not None) == (method == "xder")  # the others replay nothing during a task
    state = GroupState.start(Group.of(cfgs, data))
    state.restore(saved, torch.device("cpu"))
    same_tree(state.snapshot(), saved)


# ---------------------------------------------------------------------------------------------
# A real process killed with -9 at random points, then resumed


WORKER = """
import pickle, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_checkpoint import group
from clbench.engine.checkpoint import CheckpointPolicy
from clbench.engine.loop import train_group
cfgs, data = group({method!r}, {backbone!r}, long=True)
results = train_group(cfgs, data, checkpoint=CheckpointPolicy({ckpt!r}, every_s=0.02))
with open({out!r}, "wb") as fh:
    pickle.dump(results, fh)
"""


@pytest.mark.parametrize("method,backbone,kills", [("derpp", "mlp", 3), ("er_ace", "mlp", 2), ("er", "resnet18", 2)])
def test_a_group_killed_with_sigkill_resumes_to_the_same_bits(method, backbone, kills, tmp_path):
    cfgs, data = group(method, backbone, long=True)
    reference = train_group(cfgs, data)
    ckpt, out = tmp_path / "ckpt", tmp_path / "results.pkl"
    script = WORKER.format(
        tests=str(Path(__file__).parent), method=method, backbone=backbone, ckpt=str(ckpt), out=str(out)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random()
    positions = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env)
        try:
            # Wait for a checkpoint past the last one seen, then kill at a random moment after it.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                summaries = list_checkpoints(ckpt)
                if summaries and (summaries[0].task, summaries[0].step) not in positions[-1:]:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            assert proc.poll() is None, "the group finished before it could be killed: make it longer"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        (summary,) = list_checkpoints(ckpt)
        positions.append((summary.task, summary.step))
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=300)
    assert done.returncode == 0
    with open(out, "rb") as fh:
        results = pickle.load(fh)
    assert len(set(positions)) == len(positions), positions  # each kill left a later checkpoint
    assert_identical(results, reference)
    json.loads(next(ckpt.glob("*.json")).read_text())  # the summary beside it stayed readable


def test_the_same_command_again_resumes_a_killed_sweep_from_its_checkpoint(tmp_path):
    """Through the CLI: kill -9 inside a task, run the same command again: it says it resumed, the
    checkpoint is gone once the results are stored, and they equal an uninterrupted sweep's."""
    from clbench.store import open_store

    args = [
        "run",
        "--dataset",
        "synthetic",
        "-m",
        "derpp",
        "--seeds",
        "2",
        "--buffer",
        "50",
        "--synthetic-train-per-class",
        "1500",
        "--checkpoint-every",
        "0.05s",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CLBENCH_DB", None)
    env.pop("CLBENCH_CHECKPOINTS", None)
    cli = [sys.executable, "-m", "clbench"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = subprocess.Popen(
        cli + args, cwd=tmp_path / "a", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = tmp_path / "a" / "results.checkpoints"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            summaries = list_checkpoints(ckpt)
            if summaries and summaries[0].task >= 1 and summaries[0].step > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (summary,) = list_checkpoints(ckpt)
    again = subprocess.run(cli + args, cwd=tmp_path / "a", env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"from its checkpoint at task {summary.task + 1}/5" in again.stderr
    assert list_checkpoints(ckpt) == []  # deleted once the group's results were committed
    fresh = subprocess.run(cli + args, cwd=tmp_path / "b", env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    with (
        open_store(tmp_path / "a" / "results.db", readonly=True) as a,
        open_store(tmp_path / "b" / "results.db", readonly=True) as b,
    ):
        ids = sorted(summary.run_ids)
        assert_identical([a.load_result(i) for i in ids], [b.load_result(i) for i in ids])


def test_a_group_resumed_in_a_process_with_other_threads_trains_on_with_the_checkpoint_threads(tmp_path):
    # clbench run chooses threads from the load before each group: a resume must not change the numbers.
    cfgs, data = group("derpp")
    torch.set_num_threads(2)
    try:
        reference = train_group(cfgs, data)
        policy = CheckpointPolicy(tmp_path / "ckpt", every_s=1e-9)

        def interrupt(p):
            if (p.phase, p.task) == ("train", 1):
                raise Stop

        with pytest.raises(Stop):
            train_group(cfgs, data, progress=interrupt, checkpoint=policy)
    finally:
        torch.set_num_threads(1)
    resumed = train_group(cfgs, data, checkpoint=policy)
    assert torch.get_num_threads() == 1  # the process's own count again
    assert_identical(resumed, reference)
    assert {r.versions["threads"] for r in resumed} == {"2"}
