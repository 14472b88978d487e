"""Issue 23, section 4: the attack's findings on outputs, the cache, methods of your own, checkpoints
and method options, one test (or a few) per finding. SQLite only: none is about the database backend."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from clbench import cli
from clbench.store.opening import open_store
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep, sweep_configs

TINY = ["--dataset", "synthetic", "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "10"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def tiny(**kw):
    from clbench.data.specs import SyntheticOptions

    syn = SyntheticOptions(train_per_class=20, test_per_class=10)
    return sweep_configs(**{"benchmark": "synthetic", "synthetic": syn, **kw})


def train(db, configs, experiment=None):
    with open_store(db) as store:
        return execute(plan_sweep(configs, store), store, experiment=experiment)


def one_error_line(rc: int, out: str, err: str, *needles: str) -> str:
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# export -o never replaces a symbolic link, a FIFO or a device


@pytest.fixture
def db_with_a_run(tmp_path):
    db = tmp_path / "results.db"
    train(db, tiny(methods=["sgd"], seeds=[0]))
    return db


def test_export_writes_through_a_fifo(db_with_a_run, tmp_path, invoke):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    rc, _, err = invoke("export", "-o", fifo, "--db", db_with_a_run)
    reader.join(timeout=30)
    assert rc == 0, err
    assert received and received[0].startswith("run_id,") and received[0].count("\n") == 2
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_export_through_a_symlink_replaces_its_target_and_keeps_the_link(db_with_a_run, tmp_path, invoke):
    (tmp_path / "real.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to("real.csv")
    rc, _, err = invoke("export", "-o", tmp_path / "link.csv", "--db", db_with_a_run)
    assert rc == 0, err
    assert (tmp_path / "link.csv").is_symlink() and os.readlink(tmp_path / "link.csv") == "real.csv"
    assert (tmp_path / "real.csv").read_text().startswith("run_id,")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "made.csv")
    assert invoke("export", "-o", dangling, "--db", db_with_a_run)[0] == 0
    assert dangling.is_symlink() and (tmp_path / "made.csv").read_text().startswith("run_id,")


def test_export_to_a_pipe_from_process_substitution(db_with_a_run, invoke):
    read_end, write_end = os.pipe()  # what bash's >(cmd) hands over: /dev/fd/N, a pipe
    try:
        rc, _, err = invoke("export", "-o", f"/proc/self/fd/{write_end}", "--db", db_with_a_run)
        os.close(write_end)
        text = os.read(read_end, 1 << 16).decode()
    finally:
        os.close(read_end)
    assert rc == 0, err
    assert text.startswith("run_id,")


def device_node(tmp_path: Path, name: str, minor: int) -> Path:
    """A character device of the memory driver (1, ``minor``: 3 is null, 7 is full) in ``tmp_path``,
    so that a regression replaces a test's node and never the system's; the system's own node where
    this process may not make one (as non-root, where /dev cannot be written to and is safe)."""
    node = tmp_path / name
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (OSError, AttributeError):
        node = Path("/dev") / name
        if not (node.exists() and stat.S_ISCHR(os.stat(node).st_mode)):
            pytest.skip(f"no character device {node} here")
    return node


def test_export_to_a_device_writes_through_and_the_device_stays(db_with_a_run, tmp_path, invoke):
    null = device_node(tmp_path, "null", 3)
    rc, _, err = invoke("export", "-o", null, "--db", db_with_a_run)
    assert rc == 0, err
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert not [p.name for p in null.parent.iterdir() if p.name.startswith(".null")]


def test_export_to_a_full_device_is_one_line_and_the_device_stays(db_with_a_run, tmp_path, invoke):
    full = device_node(tmp_path, "full", 7)
    one_error_line(*invoke("export", "-o", full, "--db", db_with_a_run), str(full), "No space")
    assert stat.S_ISCHR(os.lstat(full).st_mode)


# ---------------------------------------------------------------------------------------------
# a checkpoint folder that cannot be written is refused before training


@pytest.mark.parametrize("where", ["proc", "read-only"])
def test_an_unwritable_checkpoint_folder_is_refused_before_training(where, tmp_path, invoke):
    if where == "proc":
        folder = Path("/proc/clbench-x")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder (the full-disk case is tested in test_checkpoint)")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    db = tmp_path / "results.db"
    args = ["run", *TINY, "--method", "er", "--buffer", "10", "--seed", "0", "--db", db, "--checkpoint-dir", folder]
    one_error_line(*invoke(*args), "--checkpoint-dir", str(folder))
    assert not db.exists()
    assert not folder.exists() or list(folder.iterdir()) == []
