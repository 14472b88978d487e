"""The experiment store, planning and execution, against SQLite and PostgreSQL.

Every test taking ``db_url`` runs twice: on an SQLite file and on a fresh database of the
PostgreSQL server named by ``CLBENCH_TEST_PG_URL`` (start one with ``.ci/postgres.sh``). Without
that variable the PostgreSQL half is skipped, except under ``CI``, where it fails: CI must prove it.
Processes are real: concurrent writers and the kill -9 resume run the ``clbench`` console script.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.engine import make_url

import clbench
from clbench.store.connection import StoreError
from clbench.store.opening import inspect_db, open_store
from clbench.store.ownership import HEARTBEAT_TIMEOUT_S, Owner, process_start
from clbench.store.queries import load_runs
from clbench.store.schema import SCHEMA_VERSION, Run
from clbench.sweep.driver import execute
from clbench.sweep.executors import GroupFailed
from clbench.sweep.plan import plan_sweep, sweep_configs

PG_ENV = "CLBENCH_TEST_PG_URL"


def _fresh_pg_database(base_url: str):
    """A new, empty database on the test server; dropped afterwards."""
    name = f"clbench_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "results.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f'CI is set but {PG_ENV} is not: start PostgreSQL with `eval "$(bash .ci/postgres.sh)"`')
        pytest.skip(f"{PG_ENV} is not set (start a server with .ci/postgres.sh)")
    yield from _fresh_pg_database(base)


def synthetic_sweep(**kw):
    args = dict(methods=["er", "derpp"], masks=["none", "-inf"], seeds=[0, 1], benchmark="synthetic")
    return sweep_configs(**{**args, **kw})


@pytest.fixture(scope="module")
def trained():
    """Two finished synthetic runs (trained once for the module)."""
    cfgs = [c.resolve() for c in synthetic_sweep(methods=["derpp"], masks=["-5"])]
    return clbench.train_runs(cfgs)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The synthetic runs are tiny: one thread is faster, and immune to a machine busy elsewhere."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def clbench_cli(*args: str, cwd: Path) -> subprocess.Popen:
    # One thread per process: torch's threads spin, and competing processes slow each other ~50x.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CLBENCH_DB", None)
    return subprocess.Popen(
        [sys.executable, "-m", "clbench", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def processes():
    """Popen objects to kill if a test ends early (a timeout must not leave them running)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Schema, round trip, lifecycle


def test_schema_is_created_once_and_versioned(db_url):
    assert inspect_db(db_url) in ("missing", "empty")
    with open_store(db_url) as store:
        version = store.transaction(lambda c: c.execute(text("SELECT application, version FROM clbench_schema")).all())
    assert version == [("clbench", SCHEMA_VERSION)]
    assert inspect_db(db_url) == "ready"
    open_store(db_url).close()  # opening again neither fails nor adds a row
    with open_store(db_url, readonly=True) as store:
        assert store.transaction(lambda c: c.execute(text("SELECT count(*) FROM clbench_schema")).scalar()) == 1


def test_results_round_trip_exactly(db_url, trained):
    owner = Owner.current()
    with open_store(db_url) as store:
        store.claim([r.config for r in trained], owner, experiment="rt")
        store.save_results(trained, owner)
        for res in trained:
            back = store.load_result(res.run_id)
            assert back.to_dict() == res.to_dict()  # every array, loss, timing, version, class name
            assert np.array_equal(back.confidence, res.confidence) and back.confidence.dtype == np.float64
            assert back.histograms.keys() == {"true_class", "max"}
        histograms = clbench.load_histograms(store, [r.run_id for r in trained] + ["no-such-run"])
        assert histograms.keys() == {r.run_id for r in trained}
        for res in trained:
            for kind, counts in res.histograms.items():
                assert np.array_equal(histograms[res.run_id][kind], counts) and counts.shape == (5, 5, 20)
        row = store.run_row(trained[0].run_id)
    assert row["status"] == "finished" and row["experiments"] == ["rt"]
    assert row["config_hash"] == trained[0].config.config_hash() == trained[1].config.config_hash()
    assert row["run_id"] == trained[0].config.identity() != trained[1].config.identity()
    assert row["device"] == "cpu" and row["versions"]["torch"] and row["group_size"] == 2
    assert row["wall_s"] == pytest.approx(trained[0].wall_s)


def test_lifecycle_only_touches_the_owners_unfinished_runs(db_url, trained):
    me, other = Owner.current(), Owner("elsewhere", 1, None)
    a, b = trained
    with open_store(db_url) as store:
        store.claim([a.config, b.config], me)
        assert set(store.statuses([a.run_id, b.run_id]).values()) == {"pending"}
        store.mark_running([a.run_id, b.run_id], me)
        assert set(store.statuses([a.run_id, b.run_id]).values()) == {"running"}
        store.mark_interrupted([a.run_id], other)  # not its runs: nothing happens
        assert store.statuses([a.run_id])[a.run_id] == "running"
        store.save_results([a], me)
        store.mark_failed([a.run_id, b.run_id], me, "Traceback ...\nRuntimeError: boom")
        assert store.statuses([a.run_id, b.run_id]) == {a.run_id: "finished", b.run_id: "failed"}
        assert store.run_row(b.run_id)["error"].endswith("boom")
        store.mark_interrupted([a.run_id], me)  # finished stays finished
        assert store.statuses([a.run_id])[a.run_id] == "finished"
        store.claim([b.config], me)  # a failed run is taken over again, its error cleared
        assert store.run_row(b.run_id)["status"] == "pending" and store.run_row(b.run_id)["error"] is None
        with pytest.raises(KeyError, match="no results"):
            store.load_result(b.run_id)


def test_stale_rows_of_dead_processes_become_interrupted(db_url, trained):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = Owner(Owner.current().host, dead.pid, 1)
    a, b = trained
    with open_store(db_url) as store:
        store.claim([a.config], ghost)
        store.mark_running([a.run_id], ghost)
        store.claim([b.config], Owner.current())  # alive: left alone
        assert store.mark_stale_runs() == [a.run_id]
        assert store.statuses([a.run_id, b.run_id]) == {a.run_id: "interrupted", b.run_id: "pending"}
        assert "ended before the run finished" in store.run_row(a.run_id)["error"]


def test_a_run_held_by_a_live_process_is_left_to_it(db_url, trained):
    """Each run is computed once across processes: a claim skips runs that a live owner holds (on
    this host: its pid; elsewhere: a recent heartbeat) and takes over those of dead owners."""
    a, b = trained
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = Owner(Owner.current().host, sleeper.pid, process_start(sleeper.pid))
        away = Owner("another-host", 4242, None)
        me = Owner.current()
        with open_store(db_url) as store:
            assert store.claim([a.config], here).claimed == (a.run_id,)
            assert store.claim([b.config], away).claimed == (b.run_id,)
            got = store.claim([a.config, b.config], me)
            assert got.claimed == () and got.held == {
                a.run_id: f"{here.host} pid {here.pid}",
                b.run_id: "another-host pid 4242",
            }
            assert store.mark_stale_runs() == []
            # The remote owner's heartbeat goes quiet for longer than the timeout: abandoned.
            old = datetime.now(UTC) - timedelta(seconds=HEARTBEAT_TIMEOUT_S + 5)
            store.transaction(lambda c: c.execute(update(Run).where(Run.run_id == b.run_id).values(heartbeat_at=old)))
            assert store.claim([a.config, b.config], me).claimed == (b.run_id,)
            assert store.run_row(b.run_id)["pid"] == me.pid
            sleeper.kill()
            sleeper.wait()
            assert store.claim([a.config, b.config], me).claimed == (a.run_id, b.run_id)  # its own, and the dead one's
            store.heartbeat(me)
            assert store.run_row(a.run_id)["heartbeat_at"] is not None
            store.save_results([a], me)
            assert store.claim([a.config], me).claimed == ()  # finished: not claimed again
            assert store.claim([a.config], me, force=True).claimed == (a.run_id,)
            assert store.statuses([a.run_id]) == {a.run_id: "finished"}  # keeps its results meanwhile
    finally:
        sleeper.kill()
        sleeper.wait()


_V1_JSON_COLUMNS = {"runs": ("config", "versions", "class_names"), "confidence": ("probabilities",)}


def _v1_database(db_url: str) -> None:
    """A database made by clbench 0.1.0 (schema version 1) at ``db_url``: the SQLite file it wrote,
    or, on PostgreSQL, its schema (tests/data/schema_v1.postgresql.sql) filled with the same rows."""
    fixture = Path(__file__).parent / "data" / "schema_v1.sqlite"
    if "://" not in db_url:
        shutil.copy(fixture, db_url)
        return
    engine = create_engine(db_url)
    ddl = (Path(__file__).parent / "data" / "schema_v1.postgresql.sql").read_text()
    with sqlite3.connect(fixture) as src, engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip().replace("-", "").strip():
                conn.execute(text(statement))
        src.row_factory = sqlite3.Row
        for table in (
            "clbench_schema",
            "runs",
            "run_experiments",
            "accuracy",
            "class_accuracy",
            "confidence",
            "task_losses",
            "task_timings",
        ):
            rows = [dict(r) for r in src.execute(f"SELECT * FROM {table}")]
            if not rows:
                continue
            cols = list(rows[0])
            values = ", ".join(f"CAST(:{c} AS JSON)" if c in _V1_JSON_COLUMNS.get(table, ()) else f":{c}" for c in cols)
            conn.execute(text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({values})"), rows)
    engine.dispose()


def test_an_older_database_is_migrated_and_its_runs_are_stale(db_url):
    _v1_database(db_url)
    assert inspect_db(db_url) == "outdated"
    with open_store(db_url, readonly=True) as store:  # even a reader upgrades it (the file is writable)
        version = store.transaction(lambda c: c.execute(text("SELECT version FROM clbench_schema")).scalar())
        runs = load_runs(store)
        assert version == SCHEMA_VERSION and inspect_db(db_url) == "ready"
        assert len(runs) == 5 and set(runs["status"]) == {"stale"} and set(runs["results_version"]) == {1}
        assert runs["faa_class_il"].notna().all()  # their results are kept, and readable
        assert load_runs(store, status="stale")["run_id"].tolist() == runs["run_id"].tolist()
        assert load_runs(store, status="finished").empty
        old = store.load_result(runs["run_id"].iloc[0])
        # The same configs are new runs for this engine: nothing is served from the old cache.
        plan = plan_sweep([old.config], store)
        assert [r.action for r in plan.runs] == ["run"] and plan.runs[0].run_id == old.config.identity()
        assert plan.runs[0].run_id != runs["run_id"].iloc[0]
    open_store(db_url).close()  # migrating is done once


def test_a_reused_pid_is_not_mistaken_for_the_owner():
    me = Owner.current()
    assert me.is_alive()
    assert not Owner(me.host, me.pid, (me.process_start or 0) + 12345).is_alive()
    assert Owner("another-host", 1, None).is_alive()  # cannot be checked from here: assumed alive


# ---------------------------------------------------------------------------------------------
# Plan, cache, execution


def test_plan_packs_the_cartesian_product_into_lockstep_groups():
    cfgs = sweep_configs(
        methods=["er", "derpp"],
        masks=["none", "-inf", "-5"],
        buffers=[200, 500],
        seeds=[0, 1, 2],
        benchmark="synthetic",
    )
    assert len(cfgs) == 2 * 3 * 2 * 3
    plan = plan_sweep(cfgs)
    assert len(plan.runs) == 36 and all(r.action == "run" and r.stored_status == "new" for r in plan.runs)
    # Buffer, mask and seed may differ within a group; derpp's presets for buffers 200 and 500 differ
    # in minibatch size, which shapes the computation, so derpp needs two groups.
    assert [len(g) for g in plan.groups] == [18, 9, 9]
    assert all(len({plan.runs[i].config.group_key() for i in g}) == 1 for g in plan.groups)
    # Groups split further on request; sgd's buffers collapse into one run (it has no buffer).
    assert [len(g) for g in plan_sweep(cfgs, max_group_size=5).groups] == [5, 5, 5, 3, 5, 4, 5, 4]
    sgd = plan_sweep(sweep_configs(methods=["sgd"], buffers=[200, 500], benchmark="synthetic"))
    assert len(sgd.runs) == 1 and sgd.runs[0].config.buffer_size == 0
    assert plan.estimate_s > 0
    with pytest.raises(ValueError, match="group size"):
        plan_sweep(cfgs, max_group_size=0)


def test_estimate_matches_the_measured_reference_points():
    er10 = plan_sweep(sweep_configs(methods=["er"], masks=["-inf"], seeds=range(10)))
    assert 5 < er10.estimate_s < 10  # measured: ~7 s on 2 cores
    derpp10 = plan_sweep(sweep_configs(methods=["derpp"], seeds=range(10)))
    assert 30 < derpp10.estimate_s < 90  # measured: ~50 s


def test_finished_runs_are_cached_and_force_recomputes(db_url):
    cfgs = synthetic_sweep()
    with open_store(db_url) as store:
        first = execute(plan_sweep(cfgs, store), store, experiment="a")
        assert len(first.computed) == 8 and not first.cached
        again = plan_sweep(cfgs + synthetic_sweep(seeds=[2]), store)
        assert [r.action for r in again.runs].count("cached") == 8 and len(again.to_run) == 4
        second = execute(again, store, experiment="b")
        assert len(second.computed) == 4 and len(second.cached) == 8
        before = load_runs(store).set_index("run_id")["finished_at"]
        forced = plan_sweep(cfgs[:2], store, force=True)
        assert [r.action for r in forced.runs] == ["run", "run"]
        assert execute(forced, store).computed == tuple(r.run_id for r in forced.runs)
        after = load_runs(store).set_index("run_id")["finished_at"]
    replaced = [r.run_id for r in forced.runs]
    assert all(after[i] > before[i] for i in replaced)
    assert all(after[i] == before[i] for i in before.index if i not in replaced)
    df = load_runs(db_url)
    assert len(df) == 12 and set(df["status"]) == {"finished"}
    # Experiment labels: "b" covers its cached runs too.
    assert len(load_runs(db_url, experiment="b")) == 12 and len(load_runs(db_url, experiment="a")) == 8
    assert set(load_runs(db_url, experiment="a")["experiment"]) == {"a,b"}


def test_a_failing_group_is_marked_failed_and_the_rest_interrupted(db_url, monkeypatch):
    import clbench.engine.loop as unit_of_work  # compute_group imports train_group from here at each group

    real_train_group = unit_of_work.train_group
    calls = []

    def flaky(cfgs, data, **kwargs):
        calls.append(len(cfgs))
        if len(calls) == 2:
            raise RuntimeError("boom in group 2")
        return real_train_group(cfgs, data, **kwargs)

    monkeypatch.setattr(unit_of_work, "train_group", flaky)
    cfgs = synthetic_sweep(methods=["er", "derpp", "sgd"], masks=["-inf"])
    with open_store(db_url) as store:
        plan = plan_sweep(cfgs, store)
        with pytest.raises(GroupFailed, match=r"group 2/3 \(derpp .*\) failed: RuntimeError: boom in group 2"):
            execute(plan, store)
        status = {r.config.method: store.statuses([r.run_id])[r.run_id] for r in plan.runs}
        failed = [r.run_id for r in plan.runs if r.config.method == "derpp"]
        assert status == {"er": "finished", "derpp": "failed", "sgd": "interrupted"}
        assert "RuntimeError: boom in group 2" in store.run_row(failed[0])["error"]
        # Re-planning computes exactly the unfinished runs.
        assert {r.config.method for r in plan_sweep(cfgs, store).to_run} == {"derpp", "sgd"}


def test_keyboard_interrupt_keeps_finished_groups(db_url, monkeypatch):
    import clbench.engine.loop as unit_of_work  # compute_group imports train_group from here at each group

    real_train_group = unit_of_work.train_group

    def interrupted_second_time(cfgs, data, **kwargs):
        if cfgs[0].method == "derpp":
            raise KeyboardInterrupt
        return real_train_group(cfgs, data, **kwargs)

    monkeypatch.setattr(unit_of_work, "train_group", interrupted_second_time)
    with open_store(db_url) as store:
        plan = plan_sweep(synthetic_sweep(), store)
        with pytest.raises(KeyboardInterrupt):
            execute(plan, store)
        statuses = store.statuses([r.run_id for r in plan.runs])
    assert sorted(statuses.values()) == ["finished"] * 4 + ["interrupted"] * 4
    assert len(load_runs(db_url, status="finished", method="er")) == 4


def test_progress_reports_cover_the_sweep(db_url):
    reports = []
    with open_store(db_url) as store:
        execute(plan_sweep(synthetic_sweep(), store), store, progress=reports.append)
    assert [p.event for p in reports if p.event != "train"] == ["group_start", "group_done"] * 2
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert reports[-1].runs_done == reports[-1].n_runs == 8


# ---------------------------------------------------------------------------------------------
# Queries


def test_load_runs_filters_and_metrics(db_url):
    with open_store(db_url) as store:
        execute(plan_sweep(synthetic_sweep(buffers=[200, 500]), store), store, experiment="grid")
    df = load_runs(db_url)
    assert len(df) == 16
    assert list(df.columns[:17]) == [
        "run_id",
        "experiment",
        "method",
        "dataset",
        "backbone",
        "buffer_size",
        "mask",
        "mask_on",
        "seed",
        "status",
        "faa_class_il",
        "faa_task_il",
        "forgetting_class_il",
        "forgetting_task_il",
        "bwt_class_il",
        "wall_s",
        "config_hash",
    ]
    assert len(load_runs(db_url, method="er")) == 8
    assert len(load_runs(db_url, method=["er", "derpp"], buffer=500)) == 8
    assert len(load_runs(db_url, mask="-inf")) == 8 and len(load_runs(db_url, mask=-math.inf)) == 8
    assert len(load_runs(db_url, mask=["none"], dataset="synthetic", seed=1)) == 4
    assert len(load_runs(db_url, status="failed")) == 0 and len(load_runs(db_url, experiment="other")) == 0
    assert df.groupby("config_hash").size().tolist() == [2] * 8  # two seeds per config
    with open_store(db_url, readonly=True) as store:
        one = store.load_result(df["run_id"][0])
    row = df.iloc[0]
    for name, value in one.metrics.items():
        if name in df.columns:
            assert row[name] == pytest.approx(value, nan_ok=True)
    with pytest.raises(ValueError, match="valid are pending"):
        load_runs(db_url, status="done")
    with pytest.raises(ValueError, match="invalid mask"):
        load_runs(db_url, mask="abc")


# ---------------------------------------------------------------------------------------------
# Refusing what is not ours


def test_foreign_and_incompatible_databases_are_refused(db_url):
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER)"))
    with pytest.raises(StoreError, match="not a clbench database.*users"):
        open_store(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE users"))
    open_store(db_url).close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE clbench_schema SET version = version + 1"))
    with pytest.raises(StoreError, match="newer clbench"):
        open_store(db_url)
    with engine.begin() as conn:
        tables = conn.execute(text("SELECT count(*) FROM runs")).scalar()
    engine.dispose()
    assert tables == 0  # nothing was written


@pytest.mark.parametrize("table", ["confidence_histograms", "accuracy", "task_plasticity"])
def test_a_table_dropped_by_hand_is_refused_not_recreated_empty(db_url, trained, table, capsys):
    """Recreated empty, the dropped table's runs would stay finished and be served from the cache
    without their results: the database is refused in one line naming the table, and kept as it is."""
    with open_store(db_url) as store:
        store.claim([trained[0].config], Owner.current())
        store.save_results([trained[0]], Owner.current())
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {table} CASCADE" if "postgresql" in db_url else f"DROP TABLE {table}"))
    for opening in (lambda: open_store(db_url), lambda: open_store(db_url, readonly=True), lambda: inspect_db(db_url)):
        with pytest.raises(StoreError, match=f"lacks the table {table} that its schema version {SCHEMA_VERSION} has"):
            opening()
    from clbench import cli

    assert cli.main(["runs", "--db", db_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"lacks the table {table}" in err[0] and "restore" in err[0]
    with engine.begin() as conn:
        assert table not in inspect(conn).get_table_names()  # not re-created
    engine.dispose()


def test_sqlite_checks_write_nothing(tmp_path):
    missing = tmp_path / "new.db"
    assert inspect_db(missing) == "missing" and not missing.exists()
    with pytest.raises(StoreError, match="no clbench database"):
        open_store(missing, readonly=True)
    with pytest.raises(StoreError, match="no clbench database"):
        load_runs(missing)
    assert not missing.exists()
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database\n")
    with pytest.raises(StoreError, match="not an SQLite file"):
        open_store(text_file)
    assert text_file.read_text() == "not a database\n"
    with pytest.raises(StoreError, match="does not exist"):
        inspect_db(tmp_path / "no" / "such" / "dir.db")
    with pytest.raises(StoreError, match="is a folder"):
        inspect_db(tmp_path)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="not a clbench database"):
        open_store(foreign)
    assert foreign.read_bytes() == before


def test_unreachable_server_is_one_clear_error():
    with pytest.raises(StoreError, match="cannot open the database postgresql.*127.0.0.1:1"):
        inspect_db("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(StoreError) as info:
        inspect_db("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(info.value)  # passwords are never shown


# ---------------------------------------------------------------------------------------------
# Real processes: concurrent writers, kill -9 and resume


SLOW = ["--dataset", "synthetic", "--synthetic-train-per-class", "2500", "--synthetic-test-per-class", "20"]


def test_two_processes_write_one_database_at_once(db_url, tmp_path, processes):
    common = [
        "--dataset",
        "synthetic",
        "--synthetic-train-per-class",
        "800",
        "--mask",
        "none,-inf",
        "--group-size",
        "2",
        "--db",
        db_url,
    ]
    a = clbench_cli("run", *common, "--seed", "0,1,2,3", "--experiment", "A", cwd=tmp_path)
    b = clbench_cli("run", *common, "--seed", "2,3,4,5", "--experiment", "B", cwd=tmp_path)
    processes.extend([a, b])
    out_a, err_a = a.communicate(timeout=240)
    out_b, err_b = b.communicate(timeout=240)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    df = load_runs(db_url)
    assert len(df) == 12 and df["run_id"].is_unique and set(df["status"]) == {"finished"}
    assert df.groupby("seed").size().tolist() == [2] * 6
    assert len(load_runs(db_url, experiment="A")) == 8 and len(load_runs(db_url, experiment="B")) == 8
    with open_store(db_url, readonly=True) as store:
        for rid in df["run_id"]:
            assert store.load_result(rid).class_il.shape == (5, 5)


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if predicate():
                return True
        except StoreError:  # not created yet
            pass
        time.sleep(0.02)
    return False


def test_a_killed_sweep_resumes_with_only_the_missing_runs(db_url, tmp_path, processes):
    args = ["run", *SLOW, "--mask", "none,-inf,-2", "--seeds", "2", "--group-size", "2", "--db", db_url]
    proc = clbench_cli(*args, cwd=tmp_path)
    processes.append(proc)

    def one_group_saved_and_one_running():
        counts = load_runs(db_url)["status"].value_counts()
        return counts.get("finished", 0) >= 2 and counts.get("running", 0) >= 1

    assert _wait_for(one_group_saved_and_one_running, proc), proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = load_runs(db_url).set_index("run_id")
    finished = before.index[before["status"] == "finished"].tolist()
    # kill -9 leaves the running group "running" (or, between two groups, the rest "pending") in the
    # table; listings show them as what they are, interrupted (their owner is dead).
    assert set(before["status"]) - {"finished"} == {"interrupted"}, before["status"]
    assert 2 <= len(finished) < 6, before["status"]

    rerun = clbench_cli(*args, cwd=tmp_path)
    processes.append(rerun)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "as interrupted" in err
    assert f"6 runs: {6 - len(finished)} to compute" in err
    assert f"{6 - len(finished)} computed" in out and f"{len(finished)} cached" in out
    after = load_runs(db_url).set_index("run_id")
    assert set(after["status"]) == {"finished"} and len(after) == 6
    for rid in finished:  # untouched: not recomputed
        assert after.loc[rid, "finished_at"] == before.loc[rid, "finished_at"]
