"""``clbench tune``: an Optuna study over m whose trials are seed groups run through the sweep path,
stored in the registry's own database (SQLite, and PostgreSQL when ``CLBENCH_TEST_PG_URL`` names a
server), selected on the validation split unless asked otherwise."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid

import pytest
import torch
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from clbench.cli import main
from clbench.data.specs import SyntheticOptions
from clbench.store.opening import inspect_db
from clbench.store.queries import load_runs
from clbench.store.schema import TABLE_NAMES
from clbench.sweep.driver import execute
from clbench.sweep.tune import TuneProblem, load_study, tune

optuna = pytest.importorskip("optuna")

PG_ENV = "CLBENCH_TEST_PG_URL"
SYN = SyntheticOptions(n_tasks=2, train_per_class=50, test_per_class=10)
SMALL = dict(method="er", dataset="synthetic", buffer=20, seeds=2, synthetic=SYN, epochs=1, heartbeat_s=None)
CLI_SMALL = [
    "tune",
    "--method",
    "er",
    "--dataset",
    "synthetic",
    "--buffer",
    "20",
    "--seeds",
    "2",
    "--epochs",
    "1",
    "--synthetic-train-per-class",
    "50",
    "--synthetic-test-per-class",
    "10",
    "--synthetic-tasks",
    "2",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def counting_into(computed: list[str]):
    """The sweep's ``execute``, recording into ``computed`` the runs it trained."""

    def counting(plan, store, **kw):
        outcome = execute(plan, store, **kw)
        computed.extend(outcome.computed)
        return outcome

    return counting


def _fresh_pg_database(base_url: str):
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


def test_the_objective_is_the_mean_validation_faa_over_seeds_in_the_registrys_database(db_url):
    """On SQLite and PostgreSQL: each trial's value is the mean over its seeds of class-IL FAA on the
    validation split, as load_runs computes it independently; its runs carry the validation split and
    the study's label; Optuna's tables sit beside clbench's (no name shared) and the database is still
    a clbench database of this schema."""
    result = tune(**SMALL, trials=2, study_name="t1", db=db_url)
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"]
    for t in result.trials:
        runs = load_runs(db_url, run_id=list(t.run_ids), split="validation")
        assert sorted(runs["seed"]) == [0, 1]
        assert all(c["validation"] == 0.1 for c in runs["config"])
        assert all("tune:t1" in e for e in runs["experiment"])
        assert all(c["mask"]["value"] == repr(t.params["mask"]) for c in runs["config"])
        assert t.value == pytest.approx(runs["faa_class_il"].mean())
    assert result.best.value == max(t.value for t in result.trials)
    assert result.spec.objective == "validation"
    assert inspect_db(db_url) == "ready"
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"studies", "trials", "trial_params"} <= tables and TABLE_NAMES <= tables
    optuna_tables = tables - TABLE_NAMES
    assert not optuna_tables & TABLE_NAMES
    assert load_study(db_url, "t1").trials == result.trials


def test_the_validation_objective_differs_from_the_test_metric(tmp_path):
    """The objective is measured on the held-out training rows, not the test sets (synthetic runs
    with these sizes differ on the two; a test objective would equal the test FAA)."""
    db = tmp_path / "r.db"
    result = tune(**SMALL, trials=2, study_name="v", db=db)
    test = [load_runs(db, run_id=list(t.run_ids))["faa_class_il"].mean() for t in result.trials]
    assert any(not math.isclose(t.value, v) for t, v in zip(result.trials, test))
    on_test = tune(**SMALL, trials=2, study_name="t", db=db, objective="test")
    for t in on_test.trials:
        assert t.value == pytest.approx(load_runs(db, run_id=list(t.run_ids))["faa_class_il"].mean())
        assert all(not c.get("validation") for c in load_runs(db, run_id=list(t.run_ids))["config"])


def test_a_study_resumes_keeping_its_trials_and_runs(tmp_path):
    """One trial, then three asked for: two more run, the first is kept and its runs are not trained
    again; the suggestions are those of a study run in one go (trial k: TPE seeded with seed + k)."""
    db = tmp_path / "r.db"
    first = tune(**SMALL, trials=1, study_name="s", db=db)
    assert len(first.trials) == 1
    before = load_runs(db, run_id=list(first.trials[0].run_ids)).set_index("run_id")["finished_at"]
    computed: list[str] = []

    again = tune(**SMALL, trials=3, study_name="s", db=db, execute_plan=counting_into(computed))
    assert [t.number for t in again.trials] == [0, 1, 2] and again.trained_trials == 2
    assert again.trials[0] == first.trials[0]
    assert not set(computed) & set(first.trials[0].run_ids) and len(computed) == 4
    after = load_runs(db, run_id=list(first.trials[0].run_ids)).set_index("run_id")["finished_at"]
    assert after.equals(before)
    in_one_go = tune(**SMALL, trials=3, study_name="one-go", db=db)
    assert [t.params for t in in_one_go.trials] == [t.params for t in again.trials]


def test_an_interrupted_trial_is_tried_again_with_its_parameters_and_its_runs_reused(tmp_path):
    db = tmp_path / "r.db"
    calls = {"n": 0}

    def interrupted_after_training(plan, store, **kw):
        outcome = execute(plan, store, **kw)
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial's runs are saved, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return outcome

    with pytest.raises(KeyboardInterrupt):
        tune(**SMALL, trials=2, study_name="i", db=db, execute_plan=interrupted_after_training)
    computed: list[str] = []

    result = tune(**SMALL, trials=2, study_name="i", db=db, execute_plan=counting_into(computed))
    assert result.trained_trials == 1  # the retry is a trial this call ran
    states = [t.state for t in result.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert result.trials[2].params == result.trials[1].params
    assert "interrupted" in result.trials[1].note
    assert computed == []  # the interrupted trial's runs were in the registry already


def test_a_process_that_finds_the_last_trial_running_elsewhere_runs_no_surplus_trial(tmp_path):
    """The moment two processes race in: the study holds 2 complete trials and another process's third
    is running; a process asked for 3 must not start a fourth (Optuna's MaxTrialsCallback looks only
    after a trial). Its surplus trial computes nothing, is left out of the records and its parameters
    are tried by the next tune, so a grid loses no point."""
    from clbench.store.connection import resolve_db_url
    from clbench.sweep.tune import optuna_storage

    db = str(tmp_path / "r.db")
    tune(**SMALL, trials=2, study_name="s", db=db)
    storage = optuna_storage(resolve_db_url(db), None)
    elsewhere = optuna.load_study(study_name="s", storage=storage).ask()  # another process's third trial
    computed: list[str] = []

    result = tune(**SMALL, trials=3, study_name="s", db=db, execute_plan=counting_into(computed))
    assert computed == [] and result.trained_trials == 0
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    raw = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    assert [t.state.name for t in raw] == ["COMPLETE", "COMPLETE", "RUNNING", "FAIL"]
    surplus = raw[3]
    assert surplus.user_attrs["surplus"] and "mask" in surplus.params
    optuna.load_study(study_name="s", storage=storage).tell(elsewhere, 50.0)
    again = tune(**SMALL, trials=4, study_name="s", db=db)  # the surplus trial's parameters, now run
    assert [t.state for t in again.trials] == ["COMPLETE"] * 3 + ["COMPLETE"]
    assert again.trials[3].params == surplus.params


def test_two_processes_share_one_study(tmp_path):
    """Two `clbench tune` processes at once on one SQLite registry (Optuna's tables created by both at
    once) end with the trials asked for, not one more each; a third, later, finds them and adds one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CLBENCH_DB", None)
    db = str(tmp_path / "r.db")

    def start(trials: str, out: str) -> subprocess.Popen:
        args = [*CLI_SMALL, "--trials", trials, "--study", "p", "--db", db, "--out", out]
        return subprocess.Popen(
            [sys.executable, "-m", "clbench", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    both = [start("3", "a"), start("3", "b")]
    for proc in both:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    study = load_study(db, "p")
    assert [t.state for t in study.trials] == ["COMPLETE"] * 3
    assert len({t.params["mask"] for t in study.trials}) == 3
    later = start("4", "c")
    out, err = later.communicate(timeout=120)
    assert later.returncode == 0, err
    assert "4 complete trials of 4" in out and "1 trial(s) ran now" in out
    assert load_study(db, "p").trials[:3] == study.trials
    assert (tmp_path / "c" / "p.png").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--param", "mask=5:5"], "empty range for mask: 5:5"),
        (["--param", "mask=3:-3"], "empty range for mask"),
        (["--param", "lr=0:0.1"], "outside what a run takes (> 0)"),
        (["--param", "alpha=-1:1"], "outside what a run takes (>= 0)"),
        (["--param", "gamma=0:1"], "unknown parameter 'gamma' for er: valid are mask, lr, alpha, beta"),
        (["--param", "mask"], "give NAME=LOW:HIGH"),
        (["--param", "mask=a:b"], "must be numbers"),
        (["--trials", "0"], "--trials"),
        (["--seeds", "0"], "--seeds"),
        (["--objective", "train"], "valid are validation, test"),
        (["--validation", "0.9"], "validation"),
        (["--mask", "-inf"], "--mask fixes m while other parameters are tuned"),
        (["--mask", "-2", "--param", "mask=-3:3"], "--mask fixes m"),
        (["--mask", "x", "--param", "lr=0.01:0.1"], "invalid --mask"),
        (["--param", "mask=1,1"], "two or more distinct finite numbers"),
        (["--param", "mask=1,x"], "a grid's values must be numbers"),
        (["--param", "mask=1,2", "--param", "lr=0.01:0.1"], "every one as a grid (V1,V2,...), not both"),
        (["--param", "mask=-2,2", "--trials", "3"], "the grid has 2 points; give T <= 2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    trials = [] if "--trials" in args else ["--trials", "2"]
    code = main([*CLI_SMALL, *trials, *args, "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not db.exists() and not (tmp_path / "reports").exists()


def test_the_learning_rate_is_tuned_on_a_log_scale_under_a_fixed_mask(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    code = main(
        [*CLI_SMALL, "--trials", "1", "--param", "lr=0.01:0.2", "--mask", "-inf", "--study", "lr", "--db", str(db)]
    )
    assert code == 0, capsys.readouterr().err
    study = load_study(db, "lr")
    assert [p.log for p in study.spec.params] == [True]
    (trial,) = study.trials
    runs = load_runs(db, run_id=list(trial.run_ids))
    assert all(c["mask"]["value"] == "-inf" for c in runs["config"])
    assert list(runs["lr"]) == [pytest.approx(trial.params["lr"])] * 2 and 0.01 <= trial.params["lr"] <= 0.2


def test_a_method_option_is_tuned_on_its_own_scale(tmp_path, capsys, monkeypatch):
    """er_las's window (a whole number) is suggested as one and reaches the runs' options; an option
    of another method is refused naming the valid ones."""
    db = tmp_path / "r.db"
    result = tune(**{**SMALL, "method": "er_las"}, params={"window": (1, 3)}, trials=1, study_name="w", db=db)
    (trial,) = result.trials
    assert isinstance(trial.params["window"], int) and 1 <= trial.params["window"] <= 3
    runs = load_runs(db, run_id=list(trial.run_ids))
    assert all(dict(c["options"])["window"] == trial.params["window"] for c in runs["config"])
    with pytest.raises(TuneProblem, match="whole number"):
        tune(**{**SMALL, "method": "er_las"}, params={"window": (1, 2.5)}, trials=1, study_name="w2", db=db)
    monkeypatch.chdir(tmp_path)
    code = main([*CLI_SMALL[:2], "lode", *CLI_SMALL[3:], "--param", "window=1:3", "--db", str(tmp_path / "n.db")])
    err = capsys.readouterr().err
    assert code == 2 and "valid are mask, lr, alpha, beta, rho (the last ones its own options)" in err


def test_a_grid_study_runs_every_point_once_and_its_report_names_the_best(tmp_path, capsys, monkeypatch):
    """The fair presets' grids (issue 20, item 4): ``--param NAME=V1,V2,...`` runs each point once (a
    whole-number option stays whole), a second call finds the study done, and the best is the largest
    mean of the validation objective."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    args = [*CLI_SMALL[:2], "er_las", *CLI_SMALL[3:], "--param", "window=1,2,4", "--study", "g", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    study = load_study(db, "g")
    assert sorted(t.params["window"] for t in study.trials) == [1, 2, 4]
    assert all(isinstance(t.params["window"], int) and t.state == "COMPLETE" for t in study.trials)
    assert study.spec.params[0].grid == (1.0, 2.0, 4.0) and study.spec.grid_size == 3
    assert study.best.value == max(t.value for t in study.trials)
    out = capsys.readouterr().out
    assert main(args) == 0 and "0 trial(s) ran now" in capsys.readouterr().out, out


def test_a_study_name_with_other_settings_is_refused_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    tune(**SMALL, trials=1, study_name="same", db=db)
    size = db.stat().st_size, (tmp_path / "r.db-wal").stat().st_size if (tmp_path / "r.db-wal").exists() else 0
    with pytest.raises(TuneProblem, match="exists with other settings"):
        tune(**{**SMALL, "seeds": 3}, trials=1, study_name="same", db=db)
    code = main([*CLI_SMALL, "--trials", "1", "--param", "mask=-5:5", "--study", "same", "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the study 'same' exists with other settings (params" in err
    after = db.stat().st_size, (tmp_path / "r.db-wal").stat().st_size if (tmp_path / "r.db-wal").exists() else 0
    assert after == size and not (tmp_path / "reports").exists()
    assert len(load_study(db, "same").trials) == 1


def test_the_test_objective_says_so_on_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    code = main([*CLI_SMALL, "--trials", "2", "--objective", "test", "--study", "on-test", "--db", str(db), "--html"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "selects on the test set" in captured.err.lower()
    assert "SELECTS ON THE TEST SET" in captured.out
    folder = tmp_path / "reports" / "tune-on-test"
    assert "SELECTS ON THE TEST SET" in (folder / "on-test.md").read_text()
    assert "SELECTS ON THE TEST SET" in (folder / "on-test.html").read_text()
    assert set((folder / "on-test.data.csv").read_text().splitlines()[1:][0].split(",")) >= {"test"}
    assert load_study(db, "on-test").spec.objective == "test"
    assert (folder / "on-test.png").stat().st_size > 0 and (folder / "on-test.pdf").exists()


KILLED_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from clbench.data.specs import SyntheticOptions
from clbench.sweep.driver import execute
from clbench.sweep.tune import tune

calls = []

def hangs_in_the_second_trial(plan, store, **kw):
    outcome = execute(plan, store, **kw)
    calls.append(1)
    if len(calls) == 2:  # the second trial's runs are saved; the process is then killed (SIGKILL)
        Path(sys.argv[2]).write_text("trained")
        time.sleep(600)
    return outcome

syn = SyntheticOptions(n_tasks=2, train_per_class=50, test_per_class=10)
tune(method="er", dataset="synthetic", buffer=20, seeds=2, synthetic=syn, epochs=1, trials=2, study_name="k",
     db=sys.argv[1], heartbeat_s=1, execute_plan=hangs_in_the_second_trial)
"""


def test_a_trial_whose_process_was_killed_is_tried_again_with_its_runs_reused(tmp_path):
    """A process killed mid-trial (no exception handler runs) stops beating its trial's heartbeat: the
    next process fails that trial and tries its parameters again; its runs already saved are reused."""
    import time

    db, marker = str(tmp_path / "r.db"), tmp_path / "trained"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLBENCH_DB", None)
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, db, str(marker)], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the child never reached its second trial"
    finally:
        child.kill()
        child.wait()
    # Past the grace period (3 heartbeats of 1 s) by more than a second: SQLite's now() keeps whole
    # seconds, so a beat 3.5 s old can read as 3 s, which Optuna does not call stale (it wants > 3 s).
    time.sleep(5.0)
    computed: list[str] = []

    result = tune(**{**SMALL, "heartbeat_s": 1}, trials=2, study_name="k", db=db, execute_plan=counting_into(computed))
    assert [t.state for t in result.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert result.trials[2].params == result.trials[1].params
    assert computed == []
