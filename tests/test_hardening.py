"""Issue 14: every failure found when the CLI was attacked as a demanding user would, one test (or a
few) per item. Tests taking ``db_url`` run on an SQLite file and on PostgreSQL (see test_store.py).
Most go through the console script's entry point in this process (fast); real processes only where
the item is about processes (concurrency, read-only storage as another user, output off a terminal).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_store import PG_ENV, _fresh_pg_database

from clbench import cli
from clbench.store.opening import inspect_db, open_store
from clbench.store.ownership import Owner, process_start
from clbench.store.queries import load_runs
from clbench.store.schema import Run
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs

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
            pytest.fail(f'CI is set but {PG_ENV} is not: start PostgreSQL with `eval "$(bash .ci/postgres.sh)"`')
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
    from clbench.data.specs import SyntheticOptions

    return sweep_configs(**{**SYN, "synthetic": SyntheticOptions(train_per_class=20, test_per_class=10), **kw})


def train(db, configs, experiment=None):
    with open_store(db) as store:
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


# ---------------------------------------------------------------------------------------------
# 5-8. One validator for the command line and the experiment files, within what every backend stores

from clbench.reports import load_experiment  # noqa: E402

EXPERIMENT = (
    'kind = "fig4"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [10]\nseeds = 2\n'
)


def nothing_written(db_url: str, cwd: Path) -> None:
    """No database file, no schema on the server, no report folder."""
    if "://" in db_url:
        assert inspect_db(db_url) == "empty"
    else:
        assert not Path(db_url).exists()
    assert not (cwd / "reports").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("overrides = 5\n", "overrides must be a table"),
        ("[overrides]\nsynthetic = 5\n", "overrides.synthetic must be a table"),
        ("render = [1]\n", "render must be a table"),
        ("title = 3\n", "title must be a string"),
        (
            '[overrides]\nsynthetic = { train_per_class = "many" }\n',
            "invalid overrides.synthetic.train_per_class 'many'",
        ),
        ("[overrides]\nsynthetic = { input_shape = 5 }\n", "invalid overrides.synthetic.input_shape 5"),
    ],
)
def test_experiment_files_with_wrong_types_are_one_line_errors(tmp_path, invoke, text, needle):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT + text)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")) as info:
        load_experiment(path)
    assert "\n" not in str(info.value)
    one_error_line(*invoke("report", path, "--no-run"), needle)
    assert not (tmp_path / "reports").exists() and not (tmp_path / "results.db").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--seed", "99999999999999999999"],
            "invalid --seed 99999999999999999999: give a whole number from 0 to 2147483647",
        ),
        (["--buffer", "99999999999999999999"], "invalid --buffer 99999999999999999999"),
        (["--seed", "2147483648"], "invalid --seed 2147483648"),
        (["--epochs", "99999999999999999999"], "invalid --epochs"),
        (["--batch-size", "2147483648"], "invalid --batch-size"),
        (["--seeds", "2147483648"], "invalid --seeds"),
        (["--group-size", "99999999999999999999"], "invalid --group-size"),
        (["-e", "x" * 300], "invalid --experiment 'xxxxxxxxxxxxxxxxxxxx...': it has 300 characters; give at most 200"),
    ],
)
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_values_no_backend_stores_are_refused_before_the_database_opens(db_url, tmp_path, invoke, args, needle, dry):
    one_error_line(*invoke("run", *TINY, *args, *(["--dry-run"] if dry else []), "--db", db_url), needle)
    nothing_written(db_url, tmp_path)


def test_the_largest_accepted_values_are_stored_by_every_backend(db_url, invoke):
    label = "L" * 200
    rc, out, err = invoke("run", *TINY, "--method", "sgd", "--seed", "2147483647", "-e", label, "--db", db_url)
    assert rc == 0, err
    runs = load_runs(db_url)
    assert runs["seed"].tolist() == [2147483647] and runs["experiment"].tolist() == [label]
    with pytest.raises(ValueError, match="at most 200"):  # the library refuses it too, before writing
        train(db_url, tiny(methods=["sgd"], seeds=[1]), experiment=label + "L")
    assert len(load_runs(db_url)) == 1


@pytest.mark.parametrize(
    "key, value, option, text",
    [
        ("lr", "inf", "--lr", "inf"),
        ("lr", "nan", "--lr", "nan"),
        ("lr", "0", "--lr", "0"),
        ("alpha", "-1.0", "--alpha", "-1"),
        ("epochs", "1.7", "--epochs", None),  # typer refuses a decimal for an integer option itself
        ("epochs", "0", "--epochs", "0"),
        ("batch_size", "3000000000", "--batch-size", "3000000000"),
        ("minibatch_size", "-2", "--minibatch-size", "-2"),
        ("class_order_seed", "-1", None, None),
        ("width", "0", None, None),
    ],
)
def test_the_command_line_and_experiment_files_refuse_the_same_values(tmp_path, invoke, key, value, option, text):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT + f"[overrides]\nepochs = 1\n{key} = {value}\n".replace("epochs = 1\nepochs", "epochs"))
    line = one_error_line(*invoke("report", path, "--no-run"), f"invalid overrides.{key} {value.replace('.0', '')}")
    assert "exp.toml" in line
    if option is not None:
        rc, out, err = invoke("run", *TINY, option, text or value, "--dry-run")
        assert rc == 2 and len(err.splitlines()) == 1 and option in err, err
    assert not (tmp_path / "results.db").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\\\b", "x" * 201, ""])
def test_an_experiment_name_stays_one_folder_under_reports(tmp_path, invoke, name):
    path = tmp_path / "sub" / "exp.toml"
    path.parent.mkdir()
    path.write_text(f'name = "{name}"\n' + EXPERIMENT)
    one_error_line(*invoke("report", path, "--no-run"), "invalid name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_an_experiment_file_runs_what_the_command_line_runs(tmp_path):
    """Accepted values mean the same on both paths: the same run identities."""
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT + "[overrides]\nepochs = 2\nlr = 0.05\nclass_order_seed = 3\n")
    spec = load_experiment(path)
    from clbench.runs.config import resolve_unique

    from_file = {c.identity() for c in resolve_unique(spec.configs())}
    from_cli = {
        c.identity()
        for c in resolve_unique(
            sweep_configs(
                methods=["er"],
                masks=["none", "-inf"],
                buffers=[10],
                seeds=range(2),
                benchmark="synthetic",
                epochs=2,
                lr=0.05,
                class_order_seed=3,
            )
        )
    }
    assert from_file == from_cli and len(from_file) == 4


# ---------------------------------------------------------------------------------------------
# 9. Silent no-ops: empty masks, an in-memory database, a filter naming no method


@pytest.mark.parametrize("value", ["", " ", ",", "-inf,", ",none"])
@pytest.mark.parametrize("command", ["run", "runs", "export", "compare"])
def test_an_empty_mask_is_an_error_not_no_mask(tmp_path, invoke, command, value):
    extra = [*TINY, "--dry-run"] if command == "run" else []
    one_error_line(*invoke(command, *extra, "--mask", value), f"invalid --mask {value!r}", "empty value")
    assert not (tmp_path / "results.db").exists()


@pytest.mark.parametrize("option", ["--method", "--buffer", "--seed", "--dataset", "--status"])
def test_every_list_option_refuses_an_empty_item(tmp_path, invoke, option):
    one_error_line(*invoke("runs", option, ","), f"invalid {option} ','")


def test_the_library_refuses_an_empty_mask_too():
    from clbench.runs.mask import parse_mask_value

    for text in ("", "  "):
        with pytest.raises(ValueError, match="invalid mask"):
            parse_mask_value(text)
    assert parse_mask_value("none") is None


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"])
@pytest.mark.parametrize(
    "command",
    [
        ["run", *TINY, "--method", "sgd"],
        ["run", *TINY, "--dry-run"],
        ["runs"],
        ["show", "abcd"],
        ["export"],
        ["compare"],
        ["report", "fig2", "--no-run"],
    ],
    ids=lambda c: " ".join(c[:2]) if c[0] == "run" and "--dry-run" in c else c[0],
)
def test_an_in_memory_database_is_refused(tmp_path, invoke, command, url):
    one_error_line(*invoke(*command, "--db", url), "in-memory database", "keeps nothing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["runs", "export", "compare"])
def test_an_unknown_method_filter_is_an_error_like_an_unknown_dataset(db_url, invoke, command):
    train(db_url, tiny(methods=["sgd"], seeds=[0]))
    one_error_line(*invoke(command, "--method", "foo", "--db", db_url), "unknown method 'foo'", "sgd, joint, er")
    one_error_line(*invoke(command, "--dataset", "foo", "--db", db_url), "unknown benchmark 'foo'")
    rc, out, err = invoke(command, "--method", "er", "--db", db_url)  # known, no runs: not an error
    assert rc == 0, err
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        load_runs(db_url, method="foo")


# ---------------------------------------------------------------------------------------------
# Read-only storage, for real: a read-only bind mount in a private mount namespace when running as
# root (file permissions do not bind root; read-only storage does), file modes otherwise.

import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

_DRIVER = """
import contextlib, io, json, sys
from clbench.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    results.append([rc, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _chmod_tree(root: Path, dir_mode: int, file_mode: int) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(dir_mode if p.is_dir() else file_mode)


def cli_on_readonly(readonly: list[Path], commands: list[list[str]], cwd: Path) -> list[tuple[int, str, str]]:
    """Run ``clbench`` commands (in one process) with the folders ``readonly`` made read-only:
    bind-mounted read-only in a private mount namespace as root, mode 0555/0444 otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DB"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    python = [sys.executable, "-c", _DRIVER, json.dumps([[str(a) for a in c] for c in commands])]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make read-only storage here")
        mount = (
            'n=$1; shift; i=0; while [ $i -lt $n ]; do mount --bind "$1" "$1" && '
            'mount -o remount,bind,ro "$1" "$1" || exit 97; shift; i=$((i+1)); done; exec "$@"'
        )
        cmd = ["unshare", "-m", "sh", "-c", mount, "sh", str(len(readonly)), *map(str, readonly), *python]
    else:
        for d in readonly:
            _chmod_tree(d, 0o555, 0o444)
        cmd = python
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        if os.geteuid() != 0:
            for d in readonly:
                _chmod_tree(d, 0o755, 0o644)
    if done.returncode == 97:
        pytest.skip(f"cannot make a read-only bind mount here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout.splitlines()[-1])]


# ---------------------------------------------------------------------------------------------
# 3. Output paths: a folder, a missing folder, read-only storage


def test_export_to_a_path_that_cannot_be_written_is_one_line(db_url, tmp_path, invoke):
    train(db_url, tiny(methods=["sgd"], seeds=[0]))
    (tmp_path / "adir").mkdir()
    one_error_line(*invoke("export", "-o", tmp_path / "adir", "--db", db_url), "is a folder; give a file path")
    one_error_line(*invoke("export", "-o", tmp_path / "missing" / "x.csv", "--db", db_url), "does not exist")
    (tmp_path / "afile").write_text("x")
    one_error_line(*invoke("export", "-o", tmp_path / "afile" / "x.csv", "--db", db_url), "is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "results.db") == ["adir", "afile"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_export_and_report_into_read_only_storage_are_one_line(tmp_path):
    db = tmp_path / "r.db"
    train(db, tiny(methods=["er"], masks=["none", "-inf"], buffers=[10], seeds=[0, 1]), experiment="exp")
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    ro = tmp_path / "ro"
    (ro / "old").mkdir(parents=True)
    (ro / "old" / "keep.txt").write_text("kept")
    results = cli_on_readonly(
        [ro],
        [
            ["export", "-o", ro / "x.csv", "--db", db],
            ["export", "--format", "parquet", "-o", ro / "old" / "x.parquet", "--db", db],
            ["report", tmp_path / "exp.toml", "--no-run", "-o", ro / "rep", "--db", db],
            ["report", tmp_path / "exp.toml", "-o", ro / "old", "--db", db],
            ["export", "-o", tmp_path / "ok.csv", "--db", db],  # the same process can write elsewhere
        ],
        cwd=tmp_path,
    )
    for rc, out, err in results[:4]:
        one_error_line(rc, out, err, "not writable")
    assert results[4][0] == 0 and (tmp_path / "ok.csv").read_text().count("\n") == 5
    assert sorted(str(p.relative_to(ro)) for p in ro.rglob("*")) == ["old", "old/keep.txt"]


# ---------------------------------------------------------------------------------------------
# 2. Reports with diverged runs: rendered without them, naming them; never half a report

DIVERGING = (
    EXPERIMENT.replace('masks = ["none", "-inf"]', 'masks = ["none", "-inf", "-2", "3e38"]')
    + "[overrides]\nepochs = 1\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
)


@pytest.mark.parametrize("kind", ["fig4", "forgetting", "tiny-buffer"])
def test_a_report_renders_without_diverged_runs_and_names_them(tmp_path, invoke, kind):
    """m = 3e38 is a finite mask (valid input) whose masked logits overflow the loss at once: every
    run with it diverges, deterministically. The report must render the rest and say so."""
    path = tmp_path / "exp.toml"
    path.write_text(
        DIVERGING.replace('kind = "fig4"', f'kind = "{kind}"').replace("buffers = [10]", "buffers = [5, 10]")
    )
    rc, out, err = invoke("report", path, "--checkpoint-every", "0")
    assert rc == 0, err
    runs = load_runs(tmp_path / "results.db")
    diverged = runs[runs["status"] == "diverged"]
    assert len(diverged) == 4 and set(diverged["mask"]) == {"3e+38"}  # 2 buffers x 2 seeds
    line = "er, buffer 10, mask 3e+38: 2 of 2 seeds diverged and are excluded (seeds 0, 1)"
    assert f"excluded: {line}" in out
    assert "missing" not in out  # done, not missing: running again would diverge again
    folder = tmp_path / "reports" / "exp"
    files = {p.name for p in folder.iterdir()}
    assert files and not any(name.startswith(".") for name in os.listdir(tmp_path / "reports"))
    for name in files:
        if name.endswith((".md", ".tex")):
            assert "2 of 2 seeds diverged" in (folder / name).read_text()
        if name.endswith(".data.csv"):
            data = pd.read_csv(folder / name)
            assert "3e+38" not in set(data["mask"].astype(str)) and np.isfinite(data["mean"]).all()
    again = invoke("report", path, "--checkpoint-every", "0")
    assert again[0] == 0 and "to compute" not in again[2].replace("0 to compute", "")  # nothing recomputed


def test_a_failing_render_leaves_the_previous_report_and_no_half_folder(tmp_path, monkeypatch):
    from clbench.reports import fig4, render_report

    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT + "[overrides]\nepochs = 1\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n")
    spec = load_experiment(path)
    db = tmp_path / "r.db"
    train(db, spec.configs(), experiment="exp")
    out = tmp_path / "reports" / "exp"
    first = render_report(spec, db, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {p.name for p in first} and len(before) == 3

    def boom(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(fig4, "plot_fig4", boom)  # after the data file is written
    with pytest.raises(RuntimeError, match="the plot failed"):
        render_report(spec, db, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(RuntimeError):
        render_report(spec, db, tmp_path / "fresh" / "exp")
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("r.db")) == ["exp.toml", "reports"]
    assert os.listdir(tmp_path / "reports") == ["exp"]


# ---------------------------------------------------------------------------------------------
# 15 (b). Nothing to render: no folder


def test_report_with_nothing_to_render_creates_no_folder(tmp_path, invoke):
    path = tmp_path / "f2.toml"
    path.write_text(
        EXPERIMENT.replace('kind = "fig4"', 'kind = "fig2"')
        + "[overrides]\nepochs = 1\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
    )
    spec = load_experiment(path)
    train(tmp_path / "results.db", [c for c in spec.configs() if c.mask.value is None], experiment="f2")
    rc, out, err = invoke("report", path, "--no-run")  # the baseline alone: fig2 has no pair to draw
    assert rc == 0, err
    assert "nothing rendered" in out and not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------
# 4. A database whose schema reads but whose data pages are corrupt


def _corrupt_data_pages(path: Path) -> None:
    """Overwrite the root page of every table and index but the schema's with garbage: the schema
    (sqlite_master, clbench_schema) still reads, every query of the runs fails."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [
            r
            for (r,) in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE rootpage > 1 AND tbl_name != 'clbench_schema'"
            )
        ]
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with open(path, "r+b") as fh:
        for page in roots:
            fh.seek((page - 1) * page_size)
            fh.write(b"\xff" * page_size)
    assert inspect_db(path) == "ready"  # the checks before any query pass: the damage is deeper


def test_a_database_with_corrupt_data_pages_is_one_line(tmp_path, invoke):
    db = tmp_path / "results.db"
    train(db, tiny(methods=["er"], masks=["none", "-inf"], buffers=[10], seeds=[0, 1]), experiment="exp")
    rid = load_runs(db)["run_id"].iloc[0]
    (tmp_path / "exp.toml").write_text(
        EXPERIMENT + "[overrides]\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
    )
    _corrupt_data_pages(db)
    before = db.read_bytes()
    for command in (
        ["runs"],
        ["show", rid],
        ["export"],
        ["export", "-o", "x.csv"],
        ["compare"],
        ["report", "exp.toml", "--no-run"],
    ):
        one_error_line(
            *invoke(*command, "--db", db),
            f"the database {db} is damaged",
            "database disk image is malformed",
            "restore it from a backup",
        )
    assert db.read_bytes() == before and not (tmp_path / "x.csv").exists() and not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------
# 12. A registry on read-only storage


def test_read_only_commands_work_on_a_registry_on_read_only_storage(tmp_path):
    made = tmp_path / "made.db"
    train(made, tiny(methods=["er"], masks=["none", "-inf"], buffers=[10], seeds=[0, 1]), experiment="exp")
    rid = load_runs(made)["run_id"].iloc[0]
    ro = tmp_path / "shared"
    ro.mkdir()
    shutil.copy(made, ro / "results.db")  # a copy, as published: no -wal, no -shm beside it
    (ro / "results.db").chmod(0o444)
    (tmp_path / "exp.toml").write_text(
        EXPERIMENT + "[overrides]\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
    )
    db = ro / "results.db"
    results = cli_on_readonly(
        [ro],
        [
            ["runs", "--db", db],
            ["show", rid[:8], "--db", db],
            ["export", "--format", "json", "--db", db],
            ["export", "-o", tmp_path / "out.csv", "--db", db],
            ["compare", "--format", "csv", "--db", db],
            ["report", tmp_path / "exp.toml", "--no-run", "-o", tmp_path / "rep", "--db", db],
            ["run", *TINY, "--method", "sgd", "--db", db],  # writing is what cannot work: one line
        ],
        cwd=tmp_path,
    )
    for rc, _out, err in results[:6]:
        assert rc == 0 and "error" not in err, err
    assert "4 runs" in results[0][1] and rid in results[1][1]
    assert len(json.loads(results[2][1])) == 4 and (tmp_path / "out.csv").exists()
    assert "faa_class_il" in results[4][1] and (tmp_path / "rep" / "exp.png").exists()
    rc, out, err = results[6]
    assert rc in (1, 2) and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert sorted(os.listdir(ro)) == ["results.db"]  # no -wal, -shm or journal was left there


# ---------------------------------------------------------------------------------------------
# 13. Every listing shows a dead owner's runs as interrupted, without writing


def test_listings_show_a_dead_owners_runs_as_interrupted(db_url, invoke):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = Owner.current().host
        ghost = Owner(host, dead.pid, 1)
        live = Owner(host, alive.pid, process_start(alive.pid))
        a, b, c = (cfg.resolve() for cfg in tiny(methods=["sgd"], seeds=[0, 1, 2]))
        with open_store(db_url) as store:
            store.claim([a, b], ghost)
            store.mark_running([a.identity()], ghost)  # one running, one pending when it was killed
            store.claim([c], live)
        rc, out, err = invoke("runs", "--db", db_url)
        assert rc == 0, err
        assert out.count("│ interrupted") == 2 and out.count("│ pending") == 1 and "│ running" not in out
        assert "no runs match" in invoke("runs", "--status", "running", "--db", db_url)[1]
        assert "2 runs" in invoke("runs", "--status", "interrupted", "--db", db_url)[1]
        assert "1 runs" in invoke("runs", "--status", "pending", "--db", db_url)[1]
        assert "interrupted" in invoke("show", a.identity(), "--db", db_url)[1]
        exported = pd.read_csv(io.StringIO(invoke("export", "--db", db_url)[1]))
        assert sorted(exported["status"]) == ["interrupted", "interrupted", "pending"]
        dry = invoke("run", *TINY, "--method", "sgd", "--seeds", "3", "--dry-run", "--db", db_url)[1]
        assert dry.count("interrupted") == 2
        assert sorted(load_runs(db_url)["status"]) == ["interrupted", "interrupted", "pending"]
        with open_store(db_url, readonly=True) as store:  # derived when read: nothing was written
            stored = store.transaction(
                lambda conn: sorted(r[0] for r in conn.execute(__import__("sqlalchemy").select(Run.status)))
            )
        assert stored == ["pending", "pending", "running"]
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------------------------
# 15 (a, c). Output off a terminal; the busy-cores note


@pytest.mark.parametrize(
    "stop, first_word, status", [(KeyboardInterrupt, "interrupted:", 130), (RuntimeError, "error:", 1)]
)
def test_off_a_terminal_the_last_line_starts_its_own_line(tmp_path, monkeypatch, capsys, stop, first_word, status):
    """Live's last frame ends without a newline off a terminal; what follows must not be glued to it."""
    import typer
    from rich.console import Console

    from clbench.cli import progress

    def stopping(plan, store, progress=None, **kwargs):
        from clbench.sweep.driver import SweepProgress

        progress(SweepProgress("group_start", 0, 1, 0, 1, "a group", 0.0, 0.0))
        raise stop("stopped")

    monkeypatch.setattr(progress, "execute", stopping)
    with open_store(tmp_path / "r.db") as store:
        plan = plan_sweep(tiny(methods=["sgd"]), store)
        with pytest.raises(typer.Exit) as info:
            progress.execute_with_progress(plan, store, Console(stderr=True, width=120))
    err = capsys.readouterr().err
    assert info.value.exit_code == status
    lines = err.splitlines()
    assert any(line.startswith(first_word) for line in lines), err
    assert all(line.startswith(first_word) or first_word not in line for line in lines), err


# ---------------------------------------------------------------------------------------------
# 10. Planning is bounded; groups fit the memory they run in


def test_an_absurd_sweep_is_refused_at_once_in_bounded_memory(tmp_path, invoke):
    import tracemalloc

    tracemalloc.start()
    try:
        for args in (
            ["--seeds", "1000000000"],
            ["--seed", "5", "--seeds", "100001"],
            ["--method", "er,der", "--mask", "none,-inf", "--seeds", "30000"],
        ):
            line = one_error_line(*invoke("run", *TINY, *args, "--dry-run"), "100000")
            assert "--seeds" in line or "split it into several" in line
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak  # nothing of the size of the request was built
    assert list(tmp_path.iterdir()) == []


def test_a_buffer_larger_than_the_stream_is_refused(tmp_path, invoke):
    one_error_line(
        *invoke("run", "--buffer", "10000000", "--dry-run"),
        "invalid --buffer 10000000: seq-fmnist's stream has 60000 training samples",
    )
    one_error_line(*invoke("run", *TINY, "--buffer", "201"), "synthetic's stream has 200 training samples")
    rc, out, err = invoke("run", *TINY, "--buffer", "200", "--dry-run")  # the whole stream: fine
    assert rc == 0, err
    assert list(tmp_path.iterdir()) == []


def test_groups_are_split_to_fit_the_memory_budget():
    from clbench.sweep import ram as memory

    cfgs = [c.resolve() for c in tiny(methods=["er"], buffers=[10, 100], seeds=range(10))]
    per_run, shared = memory.run_bytes(cfgs), memory.shared_bytes(cfgs)
    assert per_run > 0 and shared > 0
    budget = int(memory.SAFETY * (shared + 3.5 * per_run))
    plan = plan_sweep(cfgs, memory_budget=budget)
    assert [len(g) for g in plan.groups] == [3] * 6 + [2] and "groups of at most 3" in plan.memory_note
    assert all(b <= budget for b in plan.group_memory_bytes())
    assert plan_sweep(cfgs, memory_budget=10 * budget).memory_note == ""  # one group of 20 fits
    with pytest.raises(ValueError, match="needs about .* of memory .* cannot run here"):
        plan_sweep(cfgs, memory_budget=int(shared))


def test_the_plan_and_the_run_say_how_groups_were_sized(tmp_path, invoke, monkeypatch):
    from clbench.cli import run as cli_run
    from clbench.sweep import ram as memory

    cfgs = [c.resolve() for c in tiny(methods=["sgd"], seeds=range(5))]
    budget = int(memory.SAFETY * (memory.shared_bytes(cfgs) + 2.5 * memory.run_bytes(cfgs)))
    monkeypatch.setattr(cli_run, "budget_bytes", lambda device: budget)
    rc, out, err = invoke("run", *TINY, "--method", "sgd", "--seeds", "5", "--dry-run")
    assert rc == 0, err
    assert "5 to compute in 3 lockstep group(s)" in out and "groups of at most 2" in out and "of memory" in out
    rc, out, err = invoke("run", *TINY, "--method", "sgd", "--seeds", "5")
    assert rc == 0, err
    assert "5 to compute in 3 groups" in err and "groups sized to fit" in err
    assert "5 runs: 5 computed" in out


def test_a_run_that_cannot_fit_alone_is_one_line(tmp_path, invoke):
    # 2e9 samples per class: the dataset alone is over a terabyte
    one_error_line(
        *invoke("run", "--dataset", "synthetic", "--synthetic-train-per-class", "2000000000", "--dry-run"),
        "of memory (estimate)",
        "cannot run here",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize(
    "kw, syn, sizes",
    [
        # a buffer of the whole stream: memory per run well above what the allocator keeps from loading
        (
            dict(method="er", buffer_size=3000),
            dict(train_per_class=300, test_per_class=100, input_shape=[1, 28, 28]),
            (2, 34),
        ),
        (
            dict(method="er", buffer_size=50, width=8, batch_size=16, minibatch_size=16),
            dict(train_per_class=40, test_per_class=20, input_shape=[3, 16, 16], backbone="resnet18", augment=True),
            (1, 5),
        ),
    ],
    ids=["mlp", "resnet18"],
)
def test_the_memory_estimate_matches_the_measured_peak(kw, syn, sizes):
    """Peak resident memory of real groups (fresh processes, from after the data is loaded): what
    each run adds is within a factor 1.5 of the estimate, and a whole group stays within its budget
    (the estimate times SAFETY)."""
    from concurrent.futures import ThreadPoolExecutor

    from clbench.sweep import ram as memory

    with ThreadPoolExecutor(len(sizes)) as pool:  # the two processes at once
        small, large = pool.map(lambda r: memory.measure_group(kw, syn, r, timeout_s=300), sizes)
    measured = (large["growth"] - small["growth"]) / (sizes[1] - sizes[0])
    assert 1 / 1.5 <= large["run"] / measured <= 1.5, (large["run"], measured)
    assert large["growth"] <= memory.SAFETY * large["group"], (large["growth"], large["group"])


# ---------------------------------------------------------------------------------------------
# 11. Concurrent processes compute each run once


@pytest.mark.parametrize(
    "seed_sets",
    [[["--seeds", "4"]] * 3, [["--seed", "0,1,2,3"], ["--seed", "2,3,4,5"], ["--seed", "4,5,6,7"]]],
    ids=["identical", "overlapping"],
)
def test_concurrent_sweeps_compute_each_run_once(db_url, tmp_path, seed_sets):
    common = [
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-train-per-class",
        "200",
        "--method",
        "er",
        "--group-size",
        "2",
        "--checkpoint-every",
        "0",
        "--db",
        db_url,
    ]
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DB"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "clbench", *common, *seeds],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seeds in seed_sets
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    import re

    computed = 0
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "Pipeline" not in err and "error" not in err, err
        done = re.search(r"(\d+) runs: (\d+) computed in .*?, (\d+) cached(?:, (\d+) held by another process)?", out)
        assert done, out
        total, n_computed, n_cached, n_held = (int(g or 0) for g in done.groups())
        assert n_computed + n_cached + n_held == total == 4, out
        if n_held:
            assert re.search(rf"held: {n_held} runs? left to \S+ pid \d+", err), err
        computed += n_computed
    runs = load_runs(db_url)
    assert computed == len(runs) == len({s for seeds in seed_sets for s in _seeds(seeds)})  # each once
    assert set(runs["status"]) == {"finished"}


def _seeds(args: list[str]) -> list[int]:
    return list(range(int(args[1]))) if args[0] == "--seeds" else [int(s) for s in args[1].split(",")]


# ---------------------------------------------------------------------------------------------
# 14. Each run records what its numbers depend on


def test_a_run_records_the_numeric_environment_it_was_computed_in(db_url, invoke):
    rc, out, err = invoke("run", *TINY, "--method", "er", "--seeds", "3", "--threads", "1", "--db", db_url)
    assert rc == 0, err
    with open_store(db_url, readonly=True) as store:
        rows = [store.run_row(rid) for rid in load_runs(store)["run_id"]]
        result = store.load_result(rows[0]["run_id"])
    for row in rows:
        v = row["versions"]
        assert v["threads"] == "1" and row["group_size"] == 3 and row["device"] == "cpu"
        assert v["torch"] == torch.__version__ and v["torch_git"] == torch.version.git_version
        assert v["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and v["device_name"]
        assert "blas" in v and v["deterministic_algorithms"] in ("true", "false")
    assert result.versions == rows[0]["versions"]  # round trip
    assert "threads 1" in invoke("show", rows[0]["run_id"], "--db", db_url)[1]


def test_the_same_environment_gives_the_same_bits_and_says_so():
    from clbench.data.loading import load_benchmark
    from clbench.engine.loop import train_group

    cfgs = [c.resolve() for c in tiny(methods=["er"], seeds=[0, 1])]
    data = load_benchmark("synthetic", synthetic=cfgs[0].synthetic)
    torch.set_num_threads(1)
    a, b = train_group(cfgs, data)[0], train_group(cfgs, data)[0]
    torch.set_num_threads(2)
    try:
        c = train_group(cfgs, data)[0]
    finally:
        torch.set_num_threads(1)
    assert a.versions == b.versions and a.to_dict()["class_il"] == b.to_dict()["class_il"]
    assert np.array_equal(a.confidence, b.confidence)
    assert a.versions["threads"] == "1" and c.versions["threads"] == "2"  # the record tells them apart


def test_a_report_whose_runs_all_diverged_renders_nothing_and_names_them(tmp_path, invoke):
    path = tmp_path / "exp.toml"
    path.write_text(
        EXPERIMENT + "[overrides]\nepochs = 1\nlr = 1e30\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
    )
    rc, out, err = invoke("report", path, "--checkpoint-every", "0")
    assert rc == 0, err
    assert set(load_runs(tmp_path / "results.db")["status"]) == {"diverged"}
    assert "nothing rendered" in out and not (tmp_path / "reports").exists()
    assert "excluded: er, buffer 10, mask none: 2 of 2 seeds diverged and are excluded (seeds 0, 1)" in out
