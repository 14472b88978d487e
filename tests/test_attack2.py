"""Issue 23, section 4 (the attack's findings), second half: bad bytes in databases and experiment
files, user method files that exit or interrupt, method names, interrupted renders, small option
checks. One test (or a few) per item, through the console script's entry point in this process."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
from test_hardening import one_error_line, one_torch_thread, tiny, train  # noqa: F401

from clbench import cli
from clbench.store.queries import load_runs

TINY = ["--dataset", "synthetic", "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "10"]


@pytest.fixture
def invoke(monkeypatch, capsys, tmp_path):
    """``clbench ARGS`` through the console script's entry point in this process: (status, out, err)."""

    def run(*args, cwd: Path | None = None):
        monkeypatch.chdir(cwd or tmp_path)
        monkeypatch.delenv("CLBENCH_DB", raising=False)
        rc = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def _corrupt_text(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)
    conn.close()


# ---------------------------------------------------------------------------------------------
# Database pages that decode as bad UTF-8


def test_text_that_is_not_utf8_in_the_database_is_one_line_naming_it(tmp_path, invoke):
    db = tmp_path / "results.db"
    train(db, tiny(methods=["er"], masks=["none"], buffers=[10], seeds=[0]))
    rid = load_runs(db)["run_id"].iloc[0]
    _corrupt_text(db, "UPDATE runs SET method = CAST(X'65ff1b5b33316d72' AS TEXT)")
    for command in (["runs"], ["export"], ["compare"], ["show", rid]):
        line = one_error_line(*invoke(*command, "--db", db), f"the database {db}", "not valid UTF-8", "backup")
        assert "\x1b" not in line
    rc, out, err = invoke("run", *TINY, "--method", "er", "--buffer", "10", "--seed", "0", "--db", db)
    assert rc != 0 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: the database {db} holds text that is not valid UTF-8"), err


# ---------------------------------------------------------------------------------------------
# Experiment files: a list where one name goes, bytes that are not UTF-8, unknown synthetic keys

EXPERIMENT = (
    'kind = "forgetting"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none"]\nbuffers = [10]\nseeds = 1\n'
)


@pytest.mark.parametrize(
    "text, needles",
    [
        (EXPERIMENT + '[render]\nforgetting = ["chaudhry"]\n', ["render.forgetting must be one name", "['chaudhry']"]),
        (EXPERIMENT + '[render]\nclass_il = ["all"]\n', ["render.class_il must be one name"]),
        (
            EXPERIMENT + "[overrides]\nsynthetic = { train_per_clas = 20 }\n",
            ["unknown key overrides.synthetic.train_per_clas", "valid keys are n_tasks,", "train_per_class"],
        ),
    ],
)
def test_experiment_file_values_of_the_wrong_shape_are_one_line(tmp_path, invoke, text, needles):
    (tmp_path / "exp.toml").write_text(text)
    one_error_line(*invoke("report", "exp.toml", "--db", tmp_path / "r.db"), "exp.toml", *needles)
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "reports").exists()


def test_an_experiment_file_that_is_not_utf8_is_named(tmp_path, invoke):
    (tmp_path / "exp.toml").write_bytes(EXPERIMENT.encode() + b'title = "caf\xe9"\n')
    one_error_line(
        *invoke("report", "exp.toml", "--db", tmp_path / "r.db"), "exp.toml is not UTF-8", "save it as UTF-8"
    )
    assert not (tmp_path / "r.db").exists()


# ---------------------------------------------------------------------------------------------
# Interrupted renders: no staging folders left behind; SIGTERM says what was kept

FIG4 = (
    'kind = "fig4"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [10]\nseeds = 1\n'
    "[overrides]\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_render_removes_the_staging_folders_of_ended_processes(tmp_path):
    from clbench.files import LEGACY_STAGING_AGE_S, staged_folder

    reports = tmp_path / "reports"
    reports.mkdir()
    dead = reports / f".fig4.{_dead_pid()}.abcd_123.tmp"
    live = reports / f".fig4.{os.getppid()}.abcd_123.tmp"  # pytest's parent: alive
    old = reports / ".fig4.k2j4_x9q.tmp"  # an older clbench's name: no process id
    recent = reports / ".fig4.k2j4_x9r.tmp"
    other = reports / f".fig2.{_dead_pid()}.abcd_123.tmp"  # another report's: not this render's business
    for folder in (dead, live, old, recent, other):
        folder.mkdir()
        (folder / "fig4.csv").write_text("x")
    past = time.time() - LEGACY_STAGING_AGE_S - 60
    os.utime(old, (past, past))
    with staged_folder(reports / "fig4") as stage:
        (stage / "fig4.csv").write_text("new")
    assert not dead.exists() and not old.exists()
    assert live.exists() and recent.exists() and other.exists()
    assert (reports / "fig4" / "fig4.csv").read_text() == "new"
    assert sorted(p.name for p in reports.iterdir() if p.name.startswith(".fig4.")) == sorted([live.name, recent.name])


def test_sigterm_while_rendering_says_what_was_kept_and_leaves_no_staging_folder(tmp_path, invoke, monkeypatch):
    from clbench.reports import render

    db = tmp_path / "results.db"
    (tmp_path / "exp.toml").write_text(FIG4)
    assert invoke("report", "exp.toml", "--db", db)[0] == 0
    before = sorted(p.name for p in (tmp_path / "reports" / "exp").iterdir())

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the render")

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the default handler: the process would have ended silently (143)")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(render, "_render_into", terminated)
        for extra in ([], ["--no-run"]):
            rc, out, err = invoke("report", "exp.toml", "--db", db, *extra)
            assert rc == 130, err
            assert f"interrupted while rendering: every run computed is saved in {db}" in err, err
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["exp"]  # no .exp.*.tmp
    assert sorted(p.name for p in (tmp_path / "reports" / "exp").iterdir()) == before


# ---------------------------------------------------------------------------------------------
# A method file that exits or raises KeyboardInterrupt

EXITS = {
    "import_exit": ("import sys\nfrom clbench.methods import ER\nsys.exit(0)\n", "called sys.exit(0) at import"),
    "loss_exit": (
        "import sys\nfrom clbench.methods import ER\nclass M(ER):\n    name = 'm_exit'\n"
        "    def loss_terms(self, step):\n        sys.exit('bye')\n",
        "called sys.exit('bye') in loss_terms (line 6)",
    ),
    "loss_exit0": (
        "import sys\nfrom clbench.methods import ER\nclass M(ER):\n    name = 'm_exit0'\n"
        "    def loss_terms(self, step):\n        sys.exit(0)\n",
        "called sys.exit(0) in loss_terms (line 6)",
    ),
    "loss_interrupt": (
        "from clbench.methods import ER\nclass M(ER):\n    name = 'm_kb'\n"
        "    def loss_terms(self, step):\n        raise KeyboardInterrupt\n",
        "raised KeyboardInterrupt in loss_terms (line 5)",
    ),
}


@pytest.mark.parametrize("case", sorted(EXITS))
def test_a_method_file_that_exits_is_named_and_its_runs_failed(tmp_path, invoke, case):
    code, needle = EXITS[case]
    path = tmp_path / f"{case}.py"
    path.write_text(code)
    db = tmp_path / "results.db"
    rc, out, err = invoke("run", *TINY, "--method", f"{path}:M", "--buffer", "10", "--seed", "0", "--db", db)
    assert rc != 0 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and f"the method file {path}" in last and needle in last, err
    if case == "import_exit":  # bad input, found before anything is written
        assert rc == 2 and not db.exists()
    else:
        assert rc == 1 and "its runs are marked failed" in last
        assert list(load_runs(db)["status"]) == ["failed"]


def test_a_real_interrupt_in_a_method_file_stays_an_interrupt(tmp_path):
    """A Ctrl-C lands in whatever line runs, often one of the method's: only a ``raise`` line of
    the file makes a KeyboardInterrupt the file's own."""
    import importlib.util

    from clbench.methods.user import method_code_error

    path = tmp_path / "calls_back.py"
    path.write_text("def loss_terms(callback):\n    return callback()\n")
    spec = importlib.util.spec_from_file_location("calls_back", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def signal_lands_here():
        raise KeyboardInterrupt

    def exits():
        raise SystemExit(3)

    sources = [f"{path}:M", None]
    with pytest.raises(KeyboardInterrupt) as interrupt:
        module.loss_terms(signal_lands_here)
    assert method_code_error(interrupt.value, sources) is None
    with pytest.raises(SystemExit) as exit_:
        module.loss_terms(exits)
    assert "called sys.exit(3) in loss_terms (line 2)" in str(method_code_error(exit_.value, sources))
    assert method_code_error(exit_.value, [None]) is None


# ---------------------------------------------------------------------------------------------
# -e with bytes that are not UTF-8 (Python's argv holds them as surrogates)


@pytest.mark.parametrize("label", ["ab\udcffc", "a\x9b31mb"])
def test_an_experiment_label_that_is_not_utf8_text_is_refused_before_the_database(tmp_path, invoke, label):
    db = tmp_path / "results.db"
    args = ["run", *TINY, "--method", "er", "--buffer", "10", "--seed", "0", "--db", db, "-e", label]
    line = one_error_line(*invoke(*args), "invalid --experiment")
    assert not db.exists()
    assert "\udcff" not in line and "\x9b" not in line.replace("\\x9b", "")
    one_error_line(*invoke("runs", "--db", db, "-e", label), "invalid --experiment")


# ---------------------------------------------------------------------------------------------
# Method names: no control characters; two methods of one name never look the same

MINE = "from clbench.methods import ER\nclass M(ER):\n    name = {name!r}\n    options = {{'v': {v}}}\n"


@pytest.mark.parametrize("name", ["mine\x1b[31m", "a\nb", "tab\there", "x\x9by"])
def test_a_method_name_with_control_characters_is_refused(tmp_path, invoke, name):
    path = tmp_path / "m.py"
    path.write_text(MINE.format(name=name, v=1))
    db = tmp_path / "results.db"
    rc, out, err = invoke("run", *TINY, "--method", f"{path}:M", "--buffer", "10", "--seed", "0", "--db", db)
    line = one_error_line(rc, out, err, "control characters")
    assert not any(c in line for c in "\x1b\n\t\x9b") and not db.exists()


def test_two_methods_of_one_name_in_a_sweep_are_refused(tmp_path, invoke):
    for v in (1, 2):
        (tmp_path / f"m{v}.py").write_text(MINE.format(name="mine", v=v))
    db = tmp_path / "results.db"
    args = ["--method", f"{tmp_path / 'm1.py'}:M,{tmp_path / 'm2.py'}:M", "--buffer", "10", "--seed", "0"]
    one_error_line(*invoke("run", *TINY, *args, "--db", db), "two different methods are named 'mine'", "m2.py:M")
    assert not db.exists()


def test_two_versions_of_a_method_are_told_apart_in_listings(tmp_path, invoke):
    path = tmp_path / "m.py"
    db = tmp_path / "results.db"
    shas = []
    for v in (1, 2):  # the file edited between two sweeps: new runs, the same name
        path.write_text(MINE.format(name="mine", v=v))
        shas.append(hashlib.sha256(path.read_bytes()).hexdigest()[:8])
        assert invoke("run", *TINY, "--method", f"{path}:M", "--buffer", "10", "--seed", "0", "--db", db)[0] == 0
    labels = [f"mine@{sha}" for sha in shas]
    assert sorted(load_runs(db)["method"]) == sorted(labels)
    rc, out, err = invoke("runs", "--db", db)
    assert rc == 0 and all(label in out for label in labels), out
    rc, out, err = invoke("export", "--db", db, "-f", "csv")
    assert rc == 0 and sorted(pd.read_csv(io.StringIO(out))["method"]) == sorted(labels)
    assert sorted(load_runs(db, method="mine")["method"]) == sorted(labels)  # the name still filters both


def test_a_stored_name_with_control_characters_is_shown_escaped(tmp_path, invoke):
    db = tmp_path / "results.db"
    train(db, tiny(methods=["er"], masks=["none"], buffers=[10], seeds=[0]))
    _corrupt_text(db, "UPDATE runs SET method = 'a' || char(10) || 'b' || char(27) || '[31m'")
    rc, out, err = invoke("export", "--db", db, "-f", "csv")
    assert rc == 0 and len(out.splitlines()) == 2 and "\x1b" not in out, out
    assert "a\\nb\\x1b[31m" in out
    rc, out, err = invoke("runs", "--db", db)
    assert rc == 0 and "\x1b" not in out and "a\\nb\\x1b[31m" in out


# ---------------------------------------------------------------------------------------------
# Small ones: numbers with underscores


@pytest.mark.parametrize(
    "option, value", [("--lr", "1_0"), ("--alpha", "1_0"), ("--epochs", "1_0"), ("--seeds", "1_0"), ("--buffer", "1_0")]
)
def test_numbers_with_underscores_are_refused(tmp_path, invoke, option, value):
    db = tmp_path / "results.db"
    one_error_line(*invoke("run", *TINY, "--method", "er", option, value, "--db", db), "'1_0'", "give a")
    assert not db.exists()


# ---------------------------------------------------------------------------------------------
# The small ones (issue 23 §4): each failed before its fix


@pytest.mark.parametrize(
    "args,needles",
    [
        (["report", "fig2", "--checkpoint-every", "x", "--dry-run"], ["invalid --checkpoint-every", "'x'"]),
        (["report", "fig2", "--checkpoint-every", "x", "--no-run"], ["invalid --checkpoint-every", "'x'"]),
        (["export", "--mlflow", "--format", "json"], ["--format, --matrices and --output do not apply"]),
        (["compare", "--buffer", "-1"], ["invalid --buffer -1", "from 0"]),
        (["runs", "--seed", "-3"], ["invalid --seed -3", "from 0"]),
        (["export", "--buffer", "-1"], ["invalid --buffer -1"]),
    ],
)
def test_the_small_findings_are_bad_input(tmp_path, invoke, args, needles):
    db = tmp_path / "results.db"
    one_error_line(*invoke(*args, "--db", db), *needles)
    assert not db.exists() and not (tmp_path / "reports").exists()


def test_minus_zero_is_the_mask_zero_not_a_second_mask(tmp_path, invoke):
    from clbench.runs.mask import MaskSpec, parse_mask_value

    assert repr(parse_mask_value("-0.0")) == "0.0" and repr(MaskSpec(-0.0).value) == "0.0"
    db = tmp_path / "results.db"
    rc, out, err = invoke("run", *TINY, "--method", "er", "--mask", "-0.0,0", "--db", db)
    assert rc == 0, err
    runs = load_runs(db)
    assert len(runs) == 1 and runs["mask"].tolist() == ["0.0"]


def test_a_cuda_device_index_is_named_as_given():
    from clbench.engine.environment import resolve_device

    with pytest.raises(ValueError, match="device 'cuda:99'"):
        resolve_device("cuda:99")
