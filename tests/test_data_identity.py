"""A run's identity covers the data it loaded (issue 23 §4, "the cache ignores the data").

The same ``clbench run`` pointed at a copy of the dataset whose test labels were shuffled must be
computed under other run IDs, never served the cached numbers of the original; the published files
keep the identities every run had before fingerprints existed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_cli import clbench
from test_data_readers import idx_bytes, make_mnist_like

from clbench.data import fingerprint as fp
from clbench.data.readers import MNIST_FILES
from clbench.data.sources import DEBIAN_FASHION_MNIST_DIR
from clbench.runs.config import RunConfig
from clbench.sweep.driver import execute, train_runs
from clbench.sweep.executors import DataSource
from clbench.sweep.plan import plan_sweep, with_data

# The identity and config hash of this config on main before data fingerprints (commit 91061f9).
CANONICAL = dict(method="er", benchmark="seq-fmnist", seed=0, buffer_size=200)
CANONICAL_ID, CANONICAL_HASH = "27dadd939e812b62", "bfa43c05b1594b24"
TINY = dict(epochs=1, batch_size=10, minibatch_size=10)


def _learnable_fmnist(root: Path, seed: int = 0) -> None:
    """A tiny Fashion-MNIST in the real IDX format: 20 train and 10 test images per class, each class
    a fixed pattern plus noise, so the labels matter to the numbers."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, (10, 28, 28))

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(10), per_class)
        x = np.clip(protos[y] + rng.normal(0, 40, (len(y), 28, 28)), 0, 255).astype(np.uint8)
        return x, y.astype(np.uint8)

    (train_x, train_y), (test_x, test_y) = split(20), split(10)
    root.mkdir(parents=True)
    arrays = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    for key, base in MNIST_FILES.items():
        (root / (base + ".gz")).write_bytes(gzip.compress(idx_bytes(arrays[key])))


def _shuffled_copy(src: Path, dst: Path) -> None:
    """``src`` with its test labels shuffled (the same labels, in another order)."""
    shutil.copytree(src, dst)
    path = dst / (MNIST_FILES["test_y"] + ".gz")
    data = gzip.decompress(path.read_bytes())
    labels = np.frombuffer(data, np.uint8, offset=8)
    shuffled = np.random.default_rng(1).permutation(labels)
    assert (shuffled != labels).any()
    path.write_bytes(gzip.compress(data[:8] + shuffled.tobytes()))


def test_the_identity_of_a_run_on_the_published_data_is_unchanged() -> None:
    cfg = RunConfig(**CANONICAL).resolve()
    assert (cfg.identity(), cfg.config_hash()) == (CANONICAL_ID, CANONICAL_HASH)
    assert "data" not in cfg.to_dict()
    if not (DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    # Debian's files are the published release (recompressed: their decompressed bytes match).
    (stamped,) = with_data([cfg], DataSource(DEBIAN_FASHION_MNIST_DIR).data_print)
    assert stamped.data is None and stamped.identity() == CANONICAL_ID


def test_the_fingerprint_covers_the_bytes_read_not_how_they_are_stored(tmp_path: Path) -> None:
    make_mnist_like(tmp_path / "gz", compress=True)
    make_mnist_like(tmp_path / "raw", compress=False)
    memo: dict = {}
    gz, raw = fp.fingerprint("fmnist", tmp_path / "gz", memo), fp.fingerprint("fmnist", tmp_path / "raw", memo)
    assert gz.sha256 == raw.sha256 and not gz.canonical and gz.identity_field == gz.sha256
    assert len(memo) == 8
    _shuffled_copy(tmp_path / "gz", tmp_path / "shuffled")
    assert fp.fingerprint("fmnist", tmp_path / "shuffled", memo).sha256 != gz.sha256


def test_data_whose_every_file_has_its_published_md5_is_canonical(tmp_path: Path, monkeypatch) -> None:
    arrays = make_mnist_like(tmp_path / "d", compress=False)
    published = {
        base: frozenset({hashlib.md5(idx_bytes(arrays[key])).hexdigest()}) for key, base in MNIST_FILES.items()
    }
    monkeypatch.setitem(fp.CANONICAL_MD5, "fmnist", published)
    assert fp.fingerprint("fmnist", tmp_path / "d").identity_field is None
    labels = tmp_path / "d" / MNIST_FILES["test_y"]
    labels.write_bytes(labels.read_bytes()[:-1] + bytes([(labels.read_bytes()[-1] + 1) % 10]))
    assert fp.fingerprint("fmnist", tmp_path / "d").identity_field is not None


def test_a_copy_with_shuffled_test_labels_is_computed_not_served_from_the_cache(tmp_path: Path) -> None:
    _learnable_fmnist(tmp_path / "real")
    _shuffled_copy(tmp_path / "real", tmp_path / "shuffled")
    args = ["run", "-m", "er", "--buffer", "50", "--epochs", "1", "--db", "runs.db", "--data-dir"]
    first = clbench(*args, "real", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 computed" in first.stdout and "0 cached" in first.stdout
    again = clbench(*args, "real", cwd=tmp_path)
    assert "0 computed" in again.stdout and "1 cached" in again.stdout, again.stdout
    preview = clbench(*args, "shuffled", "--dry-run", cwd=tmp_path)
    assert "1 to compute" in preview.stdout and "0 already done" in preview.stdout, preview.stdout
    second = clbench(*args, "shuffled", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1 computed" in second.stdout and "0 cached" in second.stdout, second.stdout
    done = clbench("export", "--db", "runs.db", "--format", "json", "-o", "runs.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == 2 and runs[0]["run_id"] != runs[1]["run_id"]
    assert runs[0]["faa_class_il"] != runs[1]["faa_class_il"]
    # The stored config shows the data fingerprint.
    shown = clbench("show", runs[1]["run_id"], "--db", "runs.db", cwd=tmp_path).stdout
    found = re.search(r"data\W+([0-9a-f]{64})", shown)
    assert found and found.group(1) == DataSource(tmp_path / "shuffled").data_print("seq-fmnist"), shown
    assert found.group(1) != DataSource(tmp_path / "real").data_print("seq-fmnist")


def test_train_runs_identifies_runs_with_the_data_it_found(tmp_path: Path) -> None:
    _learnable_fmnist(tmp_path / "real")
    _shuffled_copy(tmp_path / "real", tmp_path / "shuffled")
    cfg = RunConfig(method="er", benchmark="seq-fmnist", seed=0, buffer_size=50, **TINY)
    (real,) = train_runs([cfg], data_dir=str(tmp_path / "real"))
    (shuffled,) = train_runs([cfg], data_dir=str(tmp_path / "shuffled"))
    assert real.config.data and shuffled.config.data and real.config.data != shuffled.config.data
    assert real.run_id != shuffled.run_id != cfg.resolve().identity()
    assert not np.array_equal(real.class_il, shuffled.class_il)


def test_a_group_planned_on_other_data_refuses_to_train(tmp_path: Path) -> None:
    _learnable_fmnist(tmp_path / "real")
    _shuffled_copy(tmp_path / "real", tmp_path / "shuffled")
    cfg = RunConfig(method="er", benchmark="seq-fmnist", seed=0, buffer_size=50, **TINY)
    plan = plan_sweep([cfg], None, data=DataSource(tmp_path / "real").data_print)
    outcome_error = None
    try:
        execute(plan, None, data_dir=str(tmp_path / "shuffled"))
    except Exception as exc:  # noqa: BLE001 - GroupFailed, with the group's one line
        outcome_error = str(exc)
    assert outcome_error is not None and "DataChanged" in outcome_error and "planned" in outcome_error
    assert "\n" not in outcome_error
    # Planned without a fingerprint (as on the published data), other files are refused as well.
    with pytest.raises(Exception, match="the published files"):
        execute(plan_sweep([cfg], None), None, data_dir=str(tmp_path / "real"))


def test_a_report_on_a_shuffled_copy_computes_and_renders_its_own_runs(tmp_path: Path) -> None:
    _learnable_fmnist(tmp_path / "real")
    _shuffled_copy(tmp_path / "real", tmp_path / "shuffled")
    (tmp_path / "exp.toml").write_text(
        'kind = "forgetting"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["none"]\nbuffers = [50]\n'
        "seeds = 1\n[overrides]\nepochs = 1\n"
    )
    tables = []
    for copy in ("real", "shuffled"):
        done = clbench("report", "exp.toml", "--db", "r.db", "--data-dir", copy, "-o", copy + "-report", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        tables.append((tmp_path / (copy + "-report") / "exp.csv").read_text())
    assert tables[0] != tables[1]
    # Rendering alone finds each copy's runs too.
    for copy, table in zip(("real", "shuffled"), tables):
        done = clbench(
            "report", "exp.toml", "--no-run", "--db", "r.db", "--data-dir", copy, "-o", "again", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "again" / "exp.csv").read_text() == table


def test_tune_trains_and_reads_its_trials_on_the_data_it_found(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from clbench.sweep.tune import tune

    _learnable_fmnist(tmp_path / "real")
    _shuffled_copy(tmp_path / "real", tmp_path / "shuffled")
    small = dict(
        method="er", dataset="seq-fmnist", buffer=20, seeds=1, trials=1, epochs=1, heartbeat_s=None, objective="test"
    )
    db = str(tmp_path / "t.db")
    real = tune(**small, db=db, study_name="real", data_dir=str(tmp_path / "real"))
    shuffled = tune(**small, db=db, study_name="shuffled", data_dir=str(tmp_path / "shuffled"))
    (a,), (b,) = real.trials, shuffled.trials
    assert a.params == b.params and a.run_ids != b.run_ids
    assert a.state == b.state == "COMPLETE" and a.seed_values != b.seed_values


def test_a_dataset_file_that_cannot_be_fingerprinted_is_one_line(tmp_path: Path) -> None:
    make_mnist_like(tmp_path / "d")
    labels = tmp_path / "d" / (MNIST_FILES["test_y"] + ".gz")
    labels.write_bytes(labels.read_bytes()[:20])  # a cut gzip stream
    done = clbench("run", "--epochs", "1", "--db", "r.db", "--data-dir", "d", "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("error:") and "cannot be read to fingerprint" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.db").exists()
