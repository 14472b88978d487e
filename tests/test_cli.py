"""The ``clbench`` console script, run for real in subprocesses.

Bad input must give one ``error:`` line on stderr, exit status 2, no traceback and no database
file; the commands must work end to end and their exports must read back into pandas.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from clbench.data.sources import DataNotFoundError, locate
from clbench.store import StoreError
from clbench.store.queries import EXPORT_COLUMNS, MATRIX_COLUMNS, load_runs

SCRIPT = Path(sys.executable).with_name("clbench")
SYNTHETIC = ["--dataset", "synthetic"]


def _env(**extra: str) -> dict[str, str]:
    # One torch thread per process: competing processes with spinning threads slow down ~50x.
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DB"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def clbench(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run the installed console script."""
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


def test_the_console_script_is_installed(tmp_path):
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the package (pip install -e .)"
    for command in ([str(SCRIPT)], [sys.executable, "-m", "clbench", "--help"]):
        done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert all(name in done.stdout for name in ("run", "runs", "show", "export"))


# ---------------------------------------------------------------------------------------------
# Bad input: each case is its own test; the processes run four at a time in one fixture.


def _text_file(d: Path) -> list[str]:
    (d / "notes.db").write_text("my notes, not a database\n")
    return ["--db", "notes.db"]


def _foreign_db(d: Path) -> list[str]:
    with sqlite3.connect(d / "other.db") as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    return ["--db", "other.db"]


def _empty_data_dir(d: Path) -> list[str]:
    (d / "data").mkdir()
    return ["--data-dir", "data"]


# case: (arguments, files to create first, what the one line must say). These run the real console
# script, four processes at a time, in one fixture; each case is its own test.
BAD_INPUT = {
    "unknown method": (["run", "--method", "foo"], None, ["unknown method 'foo'", "er, der, derpp"]),
    "unknown dataset": (["run", "--dataset", "imagenet"], None, ["unknown benchmark 'imagenet'", "seq-fmnist"]),
    "mask abc": (["run", "--mask", "abc"], None, ["invalid mask 'abc'", "none, -inf or a finite number"]),
    "mask nan": (["run", "--mask", "nan"], None, ["invalid mask 'nan'", "none, -inf or a finite number"]),
    "negative buffer": (["run", "--buffer", "-5"], None, ["invalid --buffer -5", "from 0 to 2147483647"]),
    "seeds 0": (["run", "--seeds", "0"], None, ["invalid --seeds 0", "N >= 1"]),
    "unreachable db": (
        ["run", "--db", "postgresql+psycopg://nobody:pw@127.0.0.1:1/none"],
        None,
        ["cannot open the database postgresql+psycopg://nobody:***@127.0.0.1:1/none"],
    ),
    "dataset missing": (["run", "--epochs", "1"], _empty_data_dir, ["Fashion-MNIST", "not found"]),
    "not a database": (["run", *SYNTHETIC], _text_file, ["not a clbench database", "not an SQLite file"]),
}
# More bad input, checked in-process through the same entry point (``clbench.cli.main``): fast.
BAD_INPUT_IN_PROCESS = {
    "unknown option": (["run", "--bogus"], None, ["No such option: --bogus"]),
    "foreign database": (["run", *SYNTHETIC], _foreign_db, ["not a clbench database", "customers"]),
    "mask in a comma list": (["run", "--mask", "-inf,x"], None, ["invalid mask 'x'"]),
    "mask-on": (
        ["run", "--mask", "-inf", "--mask-on", "sideways"],
        None,
        ["invalid --mask-on", "stream, buffer, both"],
    ),
    "device": (["run", "--device", "tpu"], None, ["unsupported device 'tpu'", "cpu, cuda"]),
    "seed": (["run", "--seed", "-1"], None, ["invalid --seed -1"]),
    "seeds not a number": (["run", "--seeds", "x"], None, ["invalid --seeds 'x'", "whole number"]),
    "epochs": (["run", "--epochs", "0"], None, ["invalid --epochs 0", "whole number from 1"]),
    "lr": (["run", "--lr", "nan"], None, ["invalid --lr nan"]),
    "zero buffer": (["run", "--buffer", "0"], None, ["er needs a buffer of at least 1 sample"]),
    "group size": (["run", "--group-size", "0"], None, ["invalid --group-size 0"]),
    "db folder missing": (["run", "--db", "no/such/folder/r.db"], None, ["folder", "does not exist"]),
    "db is a folder": (["run", "--db", "."], None, ["is a folder"]),
    "db url": (["run", "--db", "nosuchdialect://x/y"], None, ["unsupported database URL"]),
    "dataset missing everywhere": (["run", "--dataset", "seq-mnist"], None, ["MNIST (mnist) was not found"]),
    "dry run, foreign database": (["run", *SYNTHETIC, "--dry-run"], _foreign_db, ["not a clbench database"]),
    "runs, foreign database": (["runs"], _foreign_db, ["not a clbench database"]),
    "runs before any run": (["runs"], None, ["no clbench database at"]),
    "runs, bad filter": (["runs", "--mask", "abc"], None, ["invalid mask 'abc'"]),
    "show before any run": (["show", "abcd1234"], None, ["no clbench database at"]),
    "export before any run": (["export"], None, ["no clbench database at"]),
    "export format": (["export", "--format", "xml"], None, ["invalid --format 'xml'", "csv, json, parquet"]),
    # Executors: every value is checked before a database is created or a cluster contacted.
    "executor": (["run", "--executor", "pbs"], None, ["invalid --executor 'pbs'", "local, ray, slurm"]),
    "report executor": (
        ["report", "fig2", "--executor", "dask"],
        None,
        ["invalid --executor 'dask'", "local, ray, slurm"],
    ),
    "ray address": (
        ["run", "--executor", "ray", "--ray-address", "head-node"],
        None,
        ["invalid --ray-address 'head-node'", "auto, HOST:PORT"],
    ),
    "ray address, bad port": (
        ["run", "--executor", "ray", "--ray-address", "10.0.0.5:99999"],
        None,
        ["invalid --ray-address '10.0.0.5:99999'"],
    ),
    "ray option, local executor": (
        ["run", "--ray-address", "auto"],
        None,
        ["--ray-address applies to --executor ray only"],
    ),
    "resources, local executor": (
        ["report", "fig2", "--cpus-per-group", "2"],
        None,
        ["--cpus-per-group applies to --executor ray or slurm only"],
    ),
    "negative gpus": (
        ["run", "--executor", "ray", "--device", "cuda", "--gpus-per-group", "-1"],
        None,
        ["invalid --gpus-per-group -1", ">= 0"],
    ),
    "fractional gpus above 1": (
        ["run", "--executor", "ray", "--device", "cuda", "--gpus-per-group", "1.5"],
        None,
        ["invalid --gpus-per-group 1.5", "whole number"],
    ),
    "gpus not a number": (["run", "--executor", "ray", "--gpus-per-group", "many"], None, ["'--gpus-per-group'"]),
    "gpus on cpu": (
        ["run", "--executor", "ray", "--gpus-per-group", "0.5"],
        None,
        ["--gpus-per-group 0.5 with --device cpu"],
    ),
    "cuda without gpus": (
        ["run", "--executor", "ray", "--device", "cuda", "--gpus-per-group", "0"],
        None,
        ["--device cuda with --gpus-per-group 0"],
    ),
    "ray device": (
        ["run", "--executor", "ray", "--device", "cuda:1"],
        None,
        ["unsupported device 'cuda:1' for the Ray executor", "cpu, cuda"],
    ),
    "cpus per group": (["run", "--executor", "ray", "--cpus-per-group", "0"], None, ["invalid --cpus-per-group 0"]),
    "retries": (["run", "--executor", "ray", "--retries", "-1"], None, ["invalid --retries -1"]),
    "threads with ray": (
        ["run", "--executor", "ray", "--threads", "2"],
        None,
        ["--threads applies to --executor local", "--cpus-per-group"],
    ),
}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")

    def one(case: str):
        args, setup, _ = BAD_INPUT[case]
        cwd = root / case.replace(" ", "_")
        cwd.mkdir()
        extra = setup(cwd) if setup else []
        before = _files(cwd)
        done = clbench(*args, *extra, cwd=cwd)
        return done.returncode, done.stdout, done.stderr, before, _files(cwd)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BAD_INPUT, pool.map(one, BAD_INPUT)))


def _check_bad_input(rc, stdout, stderr, before, after, needles):
    lines = stderr.splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and stdout == ""
    for needle in needles:
        assert needle in lines[0]
    assert after == before  # no database created, no file touched
    assert "pw@" not in lines[0]  # passwords are never echoed


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_input_results):
    _check_bad_input(*bad_input_results[case], BAD_INPUT[case][2])


@pytest.mark.parametrize("case", list(BAD_INPUT_IN_PROCESS))
def test_more_bad_input_in_process(case, tmp_path, monkeypatch, capsys):
    from clbench.cli import main

    args, setup, needles = BAD_INPUT_IN_PROCESS[case]
    extra = setup(tmp_path) if setup else []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLBENCH_DB", raising=False)
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))  # no downloaded datasets to find
    monkeypatch.delenv("CLBENCH_DATA", raising=False)
    before = _files(tmp_path)
    rc = main([*args, *extra])
    captured = capsys.readouterr()
    _check_bad_input(rc, captured.out, captured.err, before, _files(tmp_path), needles)


# ---------------------------------------------------------------------------------------------
# The commands end to end (synthetic data, default results.db in the working directory)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    done = clbench(
        "run",
        *SYNTHETIC,
        "--method",
        "er",
        "--method",
        "derpp",
        "--mask",
        "none,-inf",
        "--seeds",
        "2",
        "--experiment",
        "e1",
        cwd=cwd,
    )
    return cwd, done


def test_run_trains_the_product_and_prints_the_summary(swept):
    cwd, done = swept
    assert done.returncode == 0, done.stderr
    assert (cwd / "results.db").exists()
    assert "8 runs: 8 to compute in 2 groups" in done.stderr
    assert "done: group 2/2" in done.stderr
    out = done.stdout
    assert "mean ± std over seeds" in out and "8 runs: 8 computed" in out and "0 cached" in out
    table = [line for line in out.splitlines() if "synthetic" in line]
    assert len(table) == 4  # one row per config: er/derpp x none/-inf, each over 2 seeds
    assert [line.split("│")[1].strip() for line in table] == ["er", "er", "derpp", "derpp"]  # as asked
    assert all(" ± " in line for line in table)


def test_rerun_is_cached_and_dry_run_says_so(swept):
    cwd, _ = swept
    dry = clbench(
        "run",
        *SYNTHETIC,
        "--method",
        "er,derpp",
        "--mask",
        "none",
        "--mask",
        "-inf",
        "--seeds",
        "3",
        "--dry-run",
        cwd=cwd,
    )
    assert dry.returncode == 0, dry.stderr
    assert "4 to compute in 2 lockstep group(s), 8 already done (cached)" in dry.stdout
    assert dry.stdout.count("cached") >= 8 and "Estimated time" in dry.stdout and "estimate" in dry.stdout
    assert load_runs(cwd / "results.db")["seed"].max() == 1  # the dry run wrote nothing
    again = clbench("run", *SYNTHETIC, "--method", "er,derpp", "--mask", "none,-inf", "--seeds", "2", cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "8 runs: 0 computed" in again.stdout and "8 cached" in again.stdout


def test_dry_run_against_no_database_creates_none(tmp_path):
    done = clbench("run", *SYNTHETIC, "--seeds", "3", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 to compute in 1 lockstep group(s), 0 already done" in done.stdout
    assert not (tmp_path / "results.db").exists()


@pytest.fixture
def in_process(monkeypatch, capsys):
    """``clbench ARGS`` through the console script's entry point, in this process (fast, for the
    read-only commands): returns (exit status, stdout, stderr)."""
    from clbench.cli import main

    def invoke(*args: str, cwd: Path, **env: str):
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("CLBENCH_DB", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        rc = main(list(args))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return invoke


def test_runs_lists_with_filters(swept, in_process):
    cwd, _ = swept
    done = clbench("runs", "--method", "er", "--mask", "-inf", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "2 runs" in done.stdout and done.stdout.count("│ finished") == 2 and "derpp" not in done.stdout
    assert "8 runs" in in_process("runs", "--experiment", "e1", "--status", "finished", cwd=cwd)[1]
    assert "no runs match" in in_process("runs", "--experiment", "nope", cwd=cwd)[1]
    rc, _, err = in_process("runs", "--status", "done", cwd=cwd)
    assert rc == 2 and err.startswith("error: invalid status 'done'")


def test_show_prints_config_matrices_and_metrics(swept, in_process):
    cwd, _ = swept
    run_id = load_runs(cwd / "results.db", method="derpp", mask="-inf", seed=1)["run_id"].iloc[0]
    done = clbench("show", run_id[:6], cwd=cwd)
    assert done.returncode == 0, done.stderr
    for needle in (
        run_id,
        "finished",
        "Resolved config",
        "minibatch_size",
        "Class-IL accuracy",
        "Task-IL accuracy",
        "final average accuracy",
        "forgetting (Chaudhry)",
        "-inf on stream",
        "e1",
    ):
        assert needle in done.stdout
    rc, colored, _ = in_process("show", run_id, cwd=cwd, FORCE_COLOR="1")
    foreground = re.findall(r"\x1b\[(?:\d+;)*(3[0-7]|9[0-7]|38;[25];[\d;]+)m", colored)
    assert rc == 0 and len(set(foreground)) >= 2  # matrix cells coloured by value on a terminal
    rc, _, err = in_process("show", "ffffffff", cwd=cwd)
    assert rc == 2 and "no run 'ffffffff'" in err


def test_export_round_trips_into_pandas(swept, in_process, tmp_path):
    cwd, _ = swept
    expected = load_runs(cwd / "results.db")[list(EXPORT_COLUMNS)]
    csv = clbench("export", "--format", "csv", cwd=cwd)
    assert csv.returncode == 0, csv.stderr
    from_csv = pd.read_csv(io.StringIO(csv.stdout), keep_default_na=False, na_values=[""])
    assert list(from_csv.columns) == list(EXPORT_COLUMNS) and len(from_csv) == 8
    assert set(from_csv["mask"]) == {"none", "-inf"} and set(from_csv["experiment"]) == {"e1"}
    pd.testing.assert_frame_equal(from_csv, expected, check_dtype=False)

    rc, js, _ = in_process("export", "--format", "json", "--method", "er", cwd=cwd)
    records = json.loads(js)
    assert rc == 0 and len(records) == 4 and set(records[0]) == set(EXPORT_COLUMNS)
    pd.testing.assert_frame_equal(
        pd.DataFrame(records), expected[expected["method"] == "er"].reset_index(drop=True), check_dtype=False
    )

    rc, _, err = in_process("export", "--format", "parquet", "-o", str(tmp_path / "runs.parquet"), cwd=cwd)
    assert rc == 0 and "wrote 8 runs" in err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs.parquet"), expected, check_dtype=False)

    rc, long, _ = in_process("export", "--format", "csv", "--matrices", cwd=cwd)
    matrices = pd.read_csv(io.StringIO(long))
    assert list(matrices.columns) == list(MATRIX_COLUMNS)
    assert len(matrices) == 8 * 3 * 5 * 5  # runs x settings (class_il, task_il, class_il_seen) x after_task x on_task
    one = matrices[(matrices["run_id"] == expected["run_id"][0]) & (matrices["setting"] == "class_il")]
    final = one[one["after_task"] == 4]["accuracy"].mean()
    assert final == pytest.approx(expected["faa_class_il"][0])  # FAA is the mean of the last row


def test_db_option_and_environment_variable(tmp_path, in_process):
    done = clbench("run", *SYNTHETIC, "--method", "sgd", cwd=tmp_path, CLBENCH_DB=str(tmp_path / "env.db"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.db").exists() and not (tmp_path / "results.db").exists()
    rc, listed, _ = in_process("runs", "--db", f"sqlite:///{tmp_path / 'env.db'}", cwd=tmp_path)
    assert rc == 0 and "1 runs" in listed and "sgd" in listed


# ---------------------------------------------------------------------------------------------
# Stopping a sweep: Ctrl-C and SIGTERM keep the finished groups


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_sweep_keeps_finished_runs_and_marks_the_rest(stop, tmp_path):
    args = [
        str(SCRIPT),
        "run",
        *SYNTHETIC,
        "--synthetic-train-per-class",
        "2500",
        "--synthetic-test-per-class",
        "20",
        "--mask",
        "none,-inf,-2",
        "--seeds",
        "2",
        "--group-size",
        "2",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if (load_runs(tmp_path / "results.db")["status"] == "finished").sum() >= 2:
                    break
            except StoreError:
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "Run the same command again" in err and "Traceback" not in err
    statuses = load_runs(tmp_path / "results.db")["status"].value_counts().to_dict()
    assert set(statuses) == {"finished", "interrupted"} and sum(statuses.values()) == 6


# ---------------------------------------------------------------------------------------------
# The real thing: Fashion-MNIST


def _have_fashion_mnist() -> bool:
    try:
        locate("fmnist")
        return True
    except DataNotFoundError:
        return False


@pytest.mark.skipif(
    not _have_fashion_mnist(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
)
def test_er_on_fashion_mnist_as_in_the_readme(tmp_path):
    done = clbench("run", "--method", "er", "--mask", "-inf", "--seeds", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = load_runs(tmp_path / "results.db")
    assert len(runs) == 2 and set(runs["dataset"]) == {"seq-fmnist"} and set(runs["mask"]) == {"-inf"}
    assert set(runs["buffer_size"]) == {200} and set(runs["mask_on"]) == {"stream"}
    assert (runs["faa_class_il"] > 50).all() and (runs["faa_task_il"] > 90).all()
    assert "seq-fmnist" in done.stdout and "2 runs: 2 computed" in done.stdout
