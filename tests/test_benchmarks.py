"""Section 2: benchmarks, task splits, data sources (readers are in test_data_readers.py)."""

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import FMNIST_DIR

from clbench import DataNotFoundError, RunConfig, SyntheticOptions, load_benchmark, train_runs
from clbench.data.loading import prepare_inputs
from clbench.data.specs import BENCHMARKS

needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="dataset-fashion-mnist not installed")


def test_tasks_hold_consecutive_label_blocks():
    data = load_benchmark("synthetic", synthetic=SyntheticOptions(n_tasks=3, classes_per_task=2))
    for t, idx in enumerate(data.train_task_idx):
        assert set(data.train_y[idx].tolist()) == {2 * t, 2 * t + 1}
    assert data.class_task.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.class_order == tuple(range(6))


def test_seeded_class_permutation_relabels_consistently():
    opts = SyntheticOptions(n_tasks=3, classes_per_task=2)
    plain = load_benchmark("synthetic", synthetic=opts)
    perm = load_benchmark("synthetic", synthetic=opts, class_order_seed=7)
    again = load_benchmark("synthetic", synthetic=opts, class_order_seed=7)
    assert perm.class_order == again.class_order != plain.class_order
    assert sorted(perm.class_order) == list(range(6))
    # The images of new class c are the images of original class class_order[c].
    for new, orig in enumerate(perm.class_order):
        assert torch.equal(perm.train_x[perm.train_y == new], plain.train_x[plain.train_y == orig])
        assert perm.class_names[new] == plain.class_names[orig]


def test_cifar10_benchmark_from_real_format_files(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(range(10)) * 2
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": labels}, f)
    data = load_benchmark("seq-cifar10", data_dir=tmp_path)
    assert data.train_x.shape == (100, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert [len(i) for i in data.test_task_idx] == [4] * 5
    x = prepare_inputs(data.train_x[:2], data.spec)
    want = (data.train_x[0, 0].float() / 255 - 0.4914) / 0.2470
    torch.testing.assert_close(x[0, 0], want)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_benchmark("seq-cifar100", data_dir=tmp_path / "nothing-here", env={})
    msg = str(err.value)
    assert "CLBENCH_DATA" in msg and "download" in msg and "\n" not in msg.strip()


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="valid benchmarks are seq-fmnist"):
        load_benchmark("seq-imagenet")


def test_protocol_specs():
    assert BENCHMARKS["seq-cifar100"].n_classes == 100 and BENCHMARKS["seq-tinyimg"].n_classes == 200
    assert BENCHMARKS["seq-cifar10"].augment and not BENCHMARKS["seq-fmnist"].augment
    assert BENCHMARKS["seq-cifar100"].lr_milestones == (35, 45)


@needs_fmnist
def test_seq_fmnist_from_the_debian_package():
    data = load_benchmark("seq-fmnist", env={})
    assert [len(i) for i in data.train_task_idx] == [12000] * 5
    assert [len(i) for i in data.test_task_idx] == [2000] * 5
    assert data.class_names[:2] == ("T-shirt/top", "Trouser")
    x = prepare_inputs(data.train_x[:3], data.spec)
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0  # no normalisation for MNIST-like


@needs_fmnist
def test_seq_fmnist_end_to_end_er_learns_and_masking_changes_the_result():
    # Real data, the MLP protocol; a few thousand steps for two runs in one group (~2 s).
    cfgs = [
        RunConfig(method="er", seed=0),
        RunConfig(method="er", seed=0, mask=__import__("clbench").MaskSpec(float("-inf"))),
    ]
    base, masked = train_runs(cfgs)
    for r in (base, masked):
        assert r.class_il.shape == (5, 5)
        assert r.metrics["faa_task_il"] > 90.0  # task-IL is easy on Fashion-MNIST
        assert 40.0 < r.metrics["faa_class_il"] < 95.0
        assert r.class_il[0, 0] > 90.0
    assert not np.array_equal(base.confidence, masked.confidence)
