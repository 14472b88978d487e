"""Issue 23, section 4: the attack's findings on outputs, the cache, methods of your own, checkpoints
and method options, one test (or a few) per finding. SQLite only: none is about the database backend."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------------------------------------
# method options are range-checked, the same way for the CLI, experiment files and Python

BAD_OPTIONS = [
    ("gdumb", "fitting_epochs", 0, ">= 1"),
    ("gdumb", "fitting_epochs", -3, ">= 1"),
    ("gdumb", "fitting_epochs", 1.7, "whole number"),
    ("gdumb", "cutmix_prob", 5, "from 0 to 1"),
    ("gdumb", "cutmix_prob", -0.1, "from 0 to 1"),
    ("gdumb", "cutmix_alpha", -1, ">= 0"),
    ("gdumb", "minlr", -1, ">= 0"),
    ("xder", "gamma", -5, ">= 0"),
    ("xder", "eta", -0.1, ">= 0"),
    ("icarl", "wd", -1e-4, ">= 0"),
    ("ss_il", "distill", -1, ">= 0"),
    ("lode", "rho", -0.1, ">= 0"),
    ("lode_derpp", "rho", -0.1, ">= 0"),
    ("er_las", "tau", -1, ">= 0"),
    ("er_las", "window", 0, ">= 1"),
    ("er_las", "window", 2.5, "whole number"),
    ("er_aml", "temperature", 0, "> 0"),
    ("er_aml", "temperature", -0.2, "> 0"),
    ("bic", "val_split", 1, "from 0 to 1 (below 1)"),
    ("bic", "val_split", -0.1, "from 0 to 1 (below 1)"),
    ("bic", "temperature", 0, "> 0"),
    ("bic", "bias_epochs", -1, ">= 0"),
    ("bic", "bias_lr", -1e-3, ">= 0"),
    ("bic", "distill_after_bias", 2, "from 0 to 1"),
]


@pytest.mark.parametrize(("method", "option", "value", "valid"), BAD_OPTIONS)
def test_a_method_option_out_of_its_range_is_refused(method, option, value, valid):
    from conftest import synthetic_config

    with pytest.raises(ValueError) as caught:
        synthetic_config(method, options={option: value}).resolve()
    message = str(caught.value)
    assert "\n" not in message and f"{method} option {option}" in message and valid in message, message
    assert repr(value) in message, message


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gdumb", {"fitting_epochs": 1, "cutmix_prob": 0, "cutmix_alpha": 0, "minlr": 0}),
        ("gdumb", {"fitting_epochs": 2.0, "cutmix_prob": 1}),  # a whole number written as 2.0 stays valid
        ("xder", {"gamma": 0, "eta": 0, "margin": -1}),  # margin has no range
        ("er_las", {"tau": 0, "window": 3}),
        ("er_aml", {"temperature": 1e-3}),
        ("bic", {"val_split": 0, "bias_epochs": 0, "bias_lr": 0, "distill_after_bias": 0}),
        ("bic", {"val_split": 0.999, "distill_after_bias": 1}),
    ],
)
def test_a_method_option_at_the_ends_of_its_range_is_valid(method, options):
    from conftest import synthetic_config

    resolved = synthetic_config(method, options=options).resolve()
    assert {k: dict(resolved.options)[k] for k in options} == options


def test_a_bad_option_is_one_line_on_the_command_line_and_in_an_experiment_file(tmp_path, invoke):
    db = tmp_path / "results.db"
    run = ["run", *TINY, "--method", "gdumb", "--buffer", "10", "--seed", "0", "--db", db]
    one_error_line(*invoke(*run, "--option", "fitting_epochs=0"), "fitting_epochs", ">= 1")
    one_error_line(*invoke(*run, "--option", "cutmix_prob=5"), "cutmix_prob", "from 0 to 1")
    (tmp_path / "exp.toml").write_text(
        'kind = "fig4"\nbenchmark = "synthetic"\nmethods = ["gdumb"]\nmasks = ["none", "-inf"]\n'
        "buffers = [10]\nseeds = 1\n[overrides]\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
        'options = { fitting_epochs = 1.7 }\n[per_method.gdumb]\nmask_on = "buffer"\n'
    )
    one_error_line(*invoke("report", tmp_path / "exp.toml", "--db", db), "fitting_epochs", "1.7", "whole number")
    assert not db.exists() and not (tmp_path / "reports").exists()


def test_a_method_of_your_own_declares_its_option_ranges_the_same_way(tmp_path):
    from conftest import synthetic_config
    from test_user_methods import README_EXAMPLE

    path = tmp_path / "er_ls.py"
    path.write_text(README_EXAMPLE)
    method = f"{path}:ERLabelSmoothing"
    assert dict(synthetic_config(method, options={"smoothing": 1}).resolve().options)["smoothing"] == 1.0
    with pytest.raises(ValueError, match=r"invalid value 2 for the er_ls option smoothing: give a number from 0 to 1"):
        synthetic_config(method, options={"smoothing": 2}).resolve()


# ---------------------------------------------------------------------------------------------
# an experiment file listing a method of your own: its runs are found by every renderer


def test_renderers_find_the_runs_of_a_method_of_your_own(tmp_path, invoke):
    method = tmp_path / "m.py"
    method.write_text("from clbench.methods import ER\n\n\nclass M(ER):\n    name = 'mine'\n")
    db = tmp_path / "results.db"
    for kind in ("methods", "fig2", "forgetting"):  # the first trains, the others render the same runs
        (tmp_path / f"{kind}.toml").write_text(
            f'kind = "{kind}"\nbenchmark = "synthetic"\nmethods = ["{method}:M"]\nmasks = ["none", "-inf"]\n'
            "buffers = [10]\nseeds = 2\n[overrides]\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
        )
        rc, out, err = invoke(
            "report", tmp_path / f"{kind}.toml", "--db", db, *(["--no-run"] if kind != "methods" else [])
        )
        assert rc == 0 and "Traceback" not in err, err
        assert "missing" not in out and "none of the runs" not in out, out
    reports = tmp_path / "reports"
    methods_rows = (reports / "methods" / "methods.csv").read_text().splitlines()[1:]
    assert len(methods_rows) == 8 and all(r.startswith("mine,") and ",2,0," in r for r in methods_rows)
    assert (reports / "methods" / "methods-compare.csv").read_text().splitlines()[1].startswith("mine,synthetic,10,")
    fig2 = json.loads((reports / "fig2" / "fig2.data.json").read_text())
    assert fig2["method"] == "mine" and fig2["n_seeds_wanted"] == 2 and fig2["seeds"] == [0, 1]
    forgetting = (reports / "forgetting" / "forgetting.csv").read_text().splitlines()[1:]
    assert len(forgetting) == 8 and all(r.startswith("mine,") and ",2,0," in r for r in forgetting)


def test_two_methods_of_one_name_in_an_experiment_file_are_refused(tmp_path, invoke):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.py").write_text("from clbench.methods import ER\n\n\nclass M(ER):\n    name = 'mine'\n")
    (tmp_path / "exp.toml").write_text(
        f'kind = "forgetting"\nbenchmark = "synthetic"\nmethods = ["{tmp_path}/a.py:M", "{tmp_path}/b.py:M"]\n'
        'masks = ["none"]\nbuffers = [10]\nseeds = 1\n'
    )
    db = tmp_path / "results.db"
    one_error_line(*invoke("report", tmp_path / "exp.toml", "--db", db), "both named 'mine'")
    assert not db.exists()
