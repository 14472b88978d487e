"""Issue 14: every failure found when the CLI was attacked as a demanding user would, one test (or a
few) per item. Tests taking ``db_url`` run on an SQLite file and on PostgreSQL (see test_store.py).
Most go through the console script's entry point in this process (fast); real processes only where
the item is about processes (concurrency, read-only storage as another user, output off a terminal).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clbench import cli
from clbench import store as st
from clbench.registry import load_runs
from clbench.sweep import execute, plan_sweep, sweep_configs
from test_store import PG_ENV, _fresh_pg_database

SYN = dict(benchmark="synthetic")
TINY = ["--dataset", "synthetic", "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "10"]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "results.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {PG_ENV} is not: start PostgreSQL with `eval \"$(bash .ci/postgres.sh)\"`")
        pytest.skip(f"{PG_ENV} is not set (start a server with .ci/postgres.sh)")
    yield from _fresh_pg_database(base)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def invoke(monkeypatch, capsys, tmp_path):
    """``clbench ARGS`` through the console script's entry point in this process: (status, out, err)."""

    def run(*args: str, cwd: Path | None = None):
        monkeypatch.chdir(cwd or tmp_path)
        monkeypatch.delenv("CLBENCH_DB", raising=False)
        rc = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def tiny(**kw):
    from clbench.data.benchmarks import SyntheticOptions

    return sweep_configs(**{**SYN, "synthetic": SyntheticOptions(train_per_class=20, test_per_class=10), **kw})


def train(db, configs, experiment=None):
    with st.open_store(db) as store:
        return execute(plan_sweep(configs, store), store, experiment=experiment)


def one_error_line(rc: int, out: str, err: str, *needles: str) -> str:
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# 1. `clbench runs` with labelled and unlabelled runs


def test_runs_lists_labelled_and_unlabelled_runs_together(db_url, invoke):
    train(db_url, tiny(methods=["sgd"], seeds=[0]))
    train(db_url, tiny(methods=["sgd"], seeds=[1]), experiment="lbl")
    rc, out, err = invoke("runs", "--db", db_url)
    assert rc == 0, err
    assert "2 runs" in out and "lbl" in out
    unlabelled = [line for line in out.splitlines() if "sgd" in line and "lbl" not in line]
    assert len(unlabelled) == 1 and "│ -" in unlabelled[0]
