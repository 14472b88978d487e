"""Commands that train nothing start at once (issue 19, item 6): ``clbench --help``, ``runs``, ``show``,
``export``, ``compare`` and ``report --no-run`` never import torch nor the engine's training modules.

Each command runs in a fresh Python process (an import made by an earlier test cannot hide one)
against a small SQLite database written here through the store (fake results, nothing trained), and
the process says at exit which modules it loaded. The engine's torch-free modules (checkpoint
metadata, the progress records) may load: ``show`` and ``runs`` read checkpoint metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clbench.runs.results import RunResult
from clbench.store import open_store
from clbench.store.ownership import Owner
from clbench.sweep.plan import sweep_configs

TORCH_FREE_ENGINE = {"clbench.engine", "clbench.engine.checkpoint", "clbench.engine.progress"}

PROBE = """
import json, sys
from clbench.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "clbench.engine")))
print("\\n" + json.dumps({"rc": rc, "loaded": loaded}))
"""


def fake_result(config) -> RunResult:
    """A finished run's results with made-up numbers of the right shapes (5 tasks, 10 classes)."""
    t, k = 5, 10
    acc = np.tril(np.full((t, t), 50.0 + config.seed))
    correct = np.tril(np.full((t, t), 100 + config.seed, dtype=np.int64))
    return RunResult(
        config=config,
        class_il=acc,
        task_il=acc,
        class_il_correct=correct,
        task_il_correct=correct,
        test_counts=np.full(t, 200, dtype=np.int64),
        per_class_accuracy=np.full((t, k), 50.0),
        confidence=np.full((t, k, k), 0.1),
        train_loss={"total": np.ones(t)},
        train_s=np.ones(t),
        eval_s=np.ones(t),
        group_size=1,
        device="cpu",
        versions={"clbench": "test"},
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """ER on seq-fmnist, masks none and 0, seeds 0..2, stored as finished runs."""
    path = str(tmp_path_factory.mktemp("startup") / "runs.db")
    configs = [c.resolve() for c in sweep_configs(methods=["er"], masks=["none", "0"], seeds=range(3))]
    with open_store(path) as store:
        owner = Owner.current()
        store.claim(configs, owner)
        store.save_results([fake_result(c) for c in configs], owner)
    return path


def loaded_by(args: list[str], cwd) -> list[str]:
    """Run ``clbench ARGS`` in a fresh process; the torch and engine modules it had loaded at exit."""
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DB"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] in (0, None), (args, report, proc.stderr)
    return report["loaded"]


def run_id(db: str) -> str:
    from clbench.store.queries import load_runs

    with open_store(db, readonly=True) as store:
        return str(load_runs(store)["run_id"].iloc[0])


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["runs"],
        ["show", "RUN"],
        ["export", "--format", "csv"],
        ["export", "--matrices", "--format", "json"],
        ["compare"],
        ["report", "fig2", "--no-run", "--out", "rep"],
    ],
    ids=lambda c: " ".join(c),
)
def test_a_command_that_trains_nothing_imports_no_torch(command, db, tmp_path):
    args = [a if a != "RUN" else run_id(db) for a in command]
    if args != ["--help"]:
        args += ["--db", db]
    loaded = loaded_by(args, tmp_path)
    assert "torch" not in loaded, f"clbench {' '.join(command)} imported torch"
    assert set(loaded) <= TORCH_FREE_ENGINE, f"clbench {' '.join(command)} imported {set(loaded) - TORCH_FREE_ENGINE}"


def test_the_probe_sees_torch_where_it_is_imported(tmp_path):
    """The check can fail: a command that trains (a dry run checks the device) loads torch."""
    loaded = loaded_by(["run", "--dry-run", "--db", str(tmp_path / "x.db")], tmp_path)
    assert "torch" in loaded


def test_help_loads_no_database_driver_nor_numpy(tmp_path):
    """`clbench --help` and a bare `clbench` list the commands from their summaries: no command's
    module, SQLAlchemy, numpy or pandas is loaded (issue 19, item 6: start-up under 0.5 s)."""
    probe = PROBE.replace('m == "torch" or m.startswith(("torch.", "clbench.engine"))', "True")
    for args in (["--help"], []):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        loaded = set(json.loads(proc.stdout.strip().splitlines()[-1])["loaded"])
        heavy = {m.split(".")[0] for m in loaded} & {"sqlalchemy", "numpy", "pandas", "torch", "matplotlib"}
        assert not heavy, (args, heavy)
        assert not loaded & {f"clbench.cli.{m}" for m in ("run", "browse", "report", "compare", "tune", "common")}


def test_each_command_summary_is_the_first_paragraph_of_its_docstring():
    """The summaries `clbench --help` prints without importing the commands are theirs."""
    import inspect

    from clbench.cli import COMMANDS, command_function

    for name, (_, _, summary) in COMMANDS.items():
        first = inspect.getdoc(command_function(name)).split("\n\n")[0]
        assert " ".join(first.split()) == summary, name


def test_a_long_listing_is_printed_as_plain_aligned_columns():
    """Over PLAIN_ROWS rows, `clbench runs` prints plain columns (rich takes seconds to lay out a boxed
    table of 1,000 rows): every cell, aligned under its header, styles kept."""
    from rich.table import Table
    from rich.text import Text

    from clbench.cli.plain import plain_table

    table = Table(title="3 runs")
    table.add_column("run id")
    table.add_column("seed", justify="right")
    table.add_column("status")
    for rid, seed, status in (("a1", "0", "finished"), ("b22", "10", "failed"), ("c333", "7", "running")):
        table.add_row(rid, seed, Text(status, style="red" if status == "failed" else ""))
    text = plain_table(table)
    assert text.plain.splitlines() == [
        "3 runs",
        "run id  seed  status",
        "a1         0  finished",
        "b22       10  failed",
        "c333       7  running",
    ]
    failed_at = text.plain.index("failed")
    assert any(s.start <= failed_at < s.end and str(s.style) == "red" for s in text.spans)


# ---------------------------------------------------------------------------------------------
# `clbench runs` on an SQLite file: read without SQLAlchemy nor pandas, the same rows as load_runs


def test_runs_on_sqlite_loads_neither_sqlalchemy_nor_pandas(db, tmp_path):
    """`clbench runs` reads an SQLite registry through sqlite3 (clbench.store.listing): SQLAlchemy,
    pandas and numpy take longer to import than the whole listing of 1,000 runs takes."""
    probe = PROBE.replace('m == "torch" or m.startswith(("torch.", "clbench.engine"))', "True")
    probe = probe.replace("rc = main(sys.argv[1:])", "rc = main(sys.argv[1:]); sys.stdout.flush()")
    for args in (["runs"], ["runs", "--method", "er", "--mask", "0", "--status", "finished,interrupted"]):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args, "--db", db], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["rc"] in (0, None) and "runs" in proc.stdout, (args, proc.stdout, proc.stderr)
        heavy = {m.split(".")[0] for m in report["loaded"]} & {"sqlalchemy", "pandas", "numpy", "torch"}
        assert not heavy, (args, heavy)


@pytest.fixture(scope="module")
def mixed_db(tmp_path_factory) -> str:
    """ER and DER++ on seq-fmnist, masks none and 0, seeds 0..3, with made-up accuracies; then, by
    hand: a failed run, a stale one (an older results version), a diverged one, an abandoned running
    one (interrupted), a running one held by this process, a finished run missing a cell of its
    last row, experiment labels and a class order."""
    import socket
    import sqlite3

    path = str(tmp_path_factory.mktemp("listing") / "runs.db")
    configs = [c.resolve() for c in sweep_configs(methods=["er", "derpp"], masks=["none", "0"], seeds=range(4))]
    rng = np.random.default_rng(0)
    results = []
    for c in configs:
        result = fake_result(c)
        result.class_il[:] = np.tril(rng.uniform(0, 100, result.class_il.shape))
        result.task_il[:] = np.tril(rng.uniform(0, 100, result.task_il.shape))
        results.append(result)
    with open_store(path) as store:
        owner = Owner.current()
        store.claim(configs, owner)
        store.save_results(results, owner)
    ids = [c.identity() for c in configs]
    me = Owner.current()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET status = 'failed', error = 'boom' WHERE run_id = ?", (ids[0],))
        conn.execute("UPDATE runs SET results_version = 1 WHERE run_id = ?", (ids[1],))
        conn.execute(
            "UPDATE runs SET status = 'diverged', diverged_task = 2, diverged_step = 17, last_finite_loss = 3.25 "
            "WHERE run_id = ?",
            (ids[2],),
        )
        conn.execute(
            "UPDATE runs SET status = 'running', host = ?, pid = 999999999, finished_at = NULL WHERE run_id = ?",
            (socket.gethostname(), ids[3]),
        )
        conn.execute(
            "UPDATE runs SET status = 'running', host = ?, pid = ?, process_start = ?, finished_at = NULL "
            "WHERE run_id = ?",
            (me.host, me.pid, me.process_start, ids[4]),
        )
        conn.execute("DELETE FROM accuracy WHERE run_id = ? AND setting = 'task_il' AND after_task = 4", (ids[5],))
        conn.execute("DELETE FROM accuracy WHERE run_id = ? AND on_task = 1 AND after_task = 4", (ids[6],))
        conn.execute("UPDATE runs SET class_order = 3 WHERE run_id = ?", (ids[7],))
        conn.executemany(
            "INSERT INTO run_experiments (run_id, experiment) VALUES (?, ?)",
            [(i, "e2") for i in ids[:5]] + [(i, "e1") for i in ids[3:9]],
        )
    return path


LISTING_FILTERS = [
    {},
    {"method": "er"},
    {"method": ["er", "derpp"], "mask": "0"},
    {"status": "finished"},
    {"status": ["interrupted", "running"]},
    {"status": "stale"},
    {"status": ["failed", "diverged"]},
    {"experiment": "e1"},
    {"experiment": ["e1", "e2"], "seed": [0, 1]},
    {"dataset": "fmnist", "buffer": 200, "mask_on": "stream", "class_order": 0},
    {"class_order": 3},
    {"run_id": "nope"},
]


@pytest.mark.parametrize("filters", LISTING_FILTERS, ids=lambda f: repr(f))
def test_the_sqlite_listing_equals_load_runs(mixed_db, filters):
    """list_runs through sqlite3 gives what it gives through load_runs (SQLAlchemy, pandas): the same
    runs, order, statuses (stale, interrupted), labels and numbers, bit for bit."""
    from clbench.store import listing
    from clbench.store.queries import load_runs

    fast = listing.list_runs(mixed_db, **filters)
    slow = listing._listing_of_frame(mixed_db, filters, "all", "test")  # what a database server gets
    assert fast == slow
    frame = load_runs(mixed_db, **filters)
    assert [r.run_id for r in fast] == list(frame["run_id"])
    assert [r.faa_class_il for r in fast] == [None if v != v else v for v in frame["faa_class_il"]]


def test_the_sqlite_listing_covers_every_status(mixed_db):
    """The database of the tests above holds what they must agree on."""
    from clbench.store.listing import list_runs

    rows = list_runs(mixed_db)
    assert {r.status for r in rows} == {"finished", "failed", "stale", "diverged", "interrupted", "running"}
    assert sum(r.faa_task_il is None for r in rows if r.status == "finished") == 2  # cells missing: NaN
    assert {r.experiment for r in rows} >= {"e1,e2", "e2", "e1", None}


def test_the_sqlite_listing_refuses_bad_filters_as_load_runs_does(mixed_db):
    from clbench.store.listing import list_runs
    from clbench.store.queries import load_runs

    for filters in ({"method": "nope"}, {"status": "done"}, {"mask_on": "x"}, {"dataset": "nope"}):
        with pytest.raises(ValueError) as fast:
            list_runs(mixed_db, **filters)
        with pytest.raises(ValueError) as slow:
            load_runs(mixed_db, **filters)
        assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize(
    "args", [[], ["--status", "interrupted,failed,diverged"], ["--experiment", "e1", "-m", "er"], ["plain"]]
)
def test_clbench_runs_prints_the_same_with_or_without_sqlite3(mixed_db, args, monkeypatch, capsys, tmp_path):
    """`clbench runs` on an SQLite file prints what the SQLAlchemy path prints (the path a database
    server takes), notes of diverged runs included; ``plain``: as plain columns (a long listing)."""
    from clbench.cli import browse, main
    from clbench.store import listing

    plain = args == ["plain"]
    if plain:
        monkeypatch.setattr(browse, "PLAIN_ROWS", 3)
        args = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLBENCH_DB", raising=False)
    outputs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(listing, "sqlite_file_of", lambda db: None)
        rc = main(["runs", *args, "--db", mixed_db])
        out = capsys.readouterr().out
        assert rc in (0, None)
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert "runs" in outputs[0] and ("│" not in outputs[0]) == plain


def test_numpy_mean_is_numpys_bit_for_bit():
    """A final average accuracy from the SQLite listing is np.mean of the last row, to the last bit."""
    from clbench.store.listing import numpy_mean

    rng = np.random.default_rng(1)
    for n in list(range(1, 40)) + [127, 128, 129, 255, 256, 300, 1000]:
        for _ in range(20):
            row = rng.uniform(0, 100, n) * 10.0 ** rng.integers(-3, 4, n)
            assert numpy_mean(row.tolist()) == float(np.mean(row)), n
