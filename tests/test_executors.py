"""The executor interface and the local executor (no Ray needed; the Ray executor: test_ray.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import clbench
from clbench.engine.progress import PhaseTimes
from clbench.store import open_store
from clbench.sweep.driver import execute
from clbench.sweep.executors import (
    DataSource,
    Executor,
    GroupOutcome,
    GroupStarted,
    GroupTask,
    LocalExecutor,
    TrainOptions,
    compute_group,
    make_executor,
)
from clbench.sweep.plan import plan_sweep, sweep_configs


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_sweep(**kw):
    return sweep_configs(
        **{**dict(methods=["er", "sgd"], masks=["none", "-inf"], seeds=[0, 1], benchmark="synthetic"), **kw}
    )


def test_nothing_imports_ray_unless_the_ray_executor_is_asked_for():
    code = (
        "import sys, clbench, clbench.sweep.driver, clbench.sweep.executors, clbench.cli,"
        " clbench.store.queries, clbench.reports;"
        "from clbench.sweep.executors import make_executor; make_executor('local');"
        "print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_unit_of_work_is_train_group_of_its_inputs():
    configs = [c.resolve() for c in small_sweep(methods=["er"], masks=["-inf"])]
    group = GroupTask(0, tuple(configs))
    data = DataSource().load(group)
    a = compute_group(group.configs, data, TrainOptions())
    b = clbench.train_group(configs, data)
    for x, y in zip(a, b):
        assert np.array_equal(x.class_il, y.class_il) and np.array_equal(x.train_loss["total"], y.train_loss["total"])


@dataclass(frozen=True)
class Profiled(TrainOptions):
    """An option of train_group set for every group of a sweep."""

    phases: PhaseTimes | None = None


def test_training_options_reach_train_group_unchanged(tmp_path):
    phases = PhaseTimes()
    with open_store(tmp_path / "r.db") as store:
        execute(plan_sweep(small_sweep(), store), store, options=Profiled(phases=phases))
    assert phases.seconds["backward"] > 0 and phases.seconds["evaluation"] > 0
    assert Profiled(phases=phases).train_group_kwargs() == {"checkpoint": None, "phases": phases}
    assert TrainOptions().train_group_kwargs() == {"checkpoint": None}


def test_the_local_executor_yields_a_start_and_an_outcome_per_group_in_plan_order():
    configs = [c.resolve() for c in small_sweep()]
    plan = plan_sweep(configs)
    groups = [GroupTask(g, tuple(plan.group_configs(g))) for g in range(len(plan.groups))]
    reports = []
    events = list(LocalExecutor().run(groups, DataSource(), TrainOptions(), "cpu", progress=reports.append))
    assert [type(e) for e in events] == [GroupStarted, GroupOutcome] * 2
    assert [e.group for e in events] == [0, 0, 1, 1]
    assert all(e.ok and len(e.results) == 4 for e in events if isinstance(e, GroupOutcome))
    assert {r.group for r in reports} == {0, 1} and all(r.train.n_tasks == 5 for r in reports)


def test_a_group_that_raises_is_an_outcome_with_its_error_not_an_exception():
    cfg = small_sweep(methods=["er"], masks=["none"], seeds=[0])[0].resolve()

    class Broken(DataSource):
        def load(self, group, device="cpu"):
            raise FileNotFoundError("the dataset went away")

    outcome = list(LocalExecutor().run([GroupTask(3, (cfg,))], Broken(), TrainOptions(), "cpu"))[-1]
    assert not outcome.ok and outcome.group == 3 and outcome.results is None
    assert outcome.error == "FileNotFoundError: the dataset went away"
    assert "Traceback" in outcome.detail and "the dataset went away" in outcome.detail


def test_closing_the_events_early_stops_the_local_executor():
    configs = [c.resolve() for c in small_sweep()]
    plan = plan_sweep(configs)
    groups = [GroupTask(g, tuple(plan.group_configs(g))) for g in range(len(plan.groups))]
    events = LocalExecutor().run(groups, DataSource(), TrainOptions(), "cpu")
    assert isinstance(next(events), GroupStarted)
    events.close()
    assert list(events) == []


def test_make_executor_names_the_valid_executors():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="unknown executor 'pbs': valid executors are local, ray, slurm"):
        make_executor("pbs")
    with pytest.raises(ValueError, match="takes only the option threads"):
        make_executor("local", retries=2)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1, 'auto' or None"):
        make_executor("local", threads=0)
    assert make_executor("local", threads="auto").threads == "auto"
    assert issubclass(LocalExecutor, Executor)


def test_the_sweep_progress_knows_what_runs_and_what_is_queued(tmp_path):
    reports = []
    with open_store(tmp_path / "r.db") as store:
        execute(plan_sweep(small_sweep(), store), store, progress=reports.append)
    starts = [p for p in reports if p.event == "group_start"]
    assert [(p.groups_done, len(p.running), p.groups_queued) for p in starts] == [(0, 1, 1), (1, 1, 0)]
    trains = [p for p in reports if p.event == "train"]
    assert trains and all(p.running[0].train is p.train for p in trains)
    assert reports[-1].groups_done == 2 and reports[-1].running == () and reports[-1].groups_queued == 0


def _token_when_released(folder, barrier):
    from clbench.sweep.executors.slurm import _job_folder_token

    barrier.wait(timeout=120)
    return _job_folder_token(folder)


def test_drivers_starting_together_on_one_job_folder_agree_on_its_marker(tmp_path):
    """Two SLURM drivers sharing a job folder must read the same marker token: a driver whose token
    was overwritten by the other's sees each of its jobs refuse the folder (a fresh-clone CI run
    failed test_slurm's two-driver test this way)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # not fork: the test process may hold threads (a full run's)
    with ProcessPoolExecutor(8, mp_context=ctx) as pool, ctx.Manager() as manager:
        for attempt in range(15):
            barrier = manager.Barrier(8)
            folder = tmp_path / f"jobs{attempt}"
            tokens = list(pool.map(_token_when_released, [folder] * 8, [barrier] * 8))
            assert len(set(tokens)) == 1, tokens
            assert (folder / "clbench-shared-folder").read_text() == tokens[0]
