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

    from clbench.cli.common import plain_table

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
