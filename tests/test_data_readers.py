"""Tests for clbench.data.readers and clbench.data.sources.

Every fixture is written in the datasets' real on-disk format (IDX with a proper
header, CIFAR pickles with bytes keys, a Tiny ImageNet folder of JPEGs), so the
readers are checked against the format rather than against themselves. No network.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clbench.data import readers
from clbench.data.readers import (
    FASHION_MNIST_CLASSES,
    RawSplits,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist_like,
    load_tinyimagenet,
    read_idx,
)
from clbench.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    DataNotFoundError,
    default_cache_dir,
    load_raw,
    locate,
)

# ----------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``array`` as an IDX file: magic 0x0000<code><ndim>, big-endian dims, payload."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True, code: int = 0x08) -> Path:
    data = idx_bytes(array, code)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_mnist_like(
    root: Path, n_train: int = 12, n_test: int = 5, *, compress: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, base in readers.MNIST_FILES.items():
        write_idx(root / base, arrays[key], compress=compress)
    return arrays


def dump_py2_style(path: Path, obj: dict[bytes, object]) -> None:
    """Pickle like the official CIFAR files: protocol 2, bytes keys, numpy arrays."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, per_batch: int = 4, *, meta: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in (*readers.CIFAR10_TRAIN_BATCHES, readers.CIFAR10_TEST_BATCH):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        dump_py2_style(
            root / name,
            {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []},
        )
        xs.append(data)
        ys.append(labels)
    if meta:
        names = [f"name{i}".encode() for i in range(10)]
        dump_py2_style(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return {
        "train_x": np.concatenate(xs[:5]),
        "train_y": np.concatenate(ys[:5]),
        "test_x": xs[5],
        "test_y": np.asarray(ys[5]),
    }


def make_cifar100(root: Path, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        dump_py2_style(
            root / split,
            {b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * n, b"filenames": []},
        )
        out[f"{split}_x"], out[f"{split}_y"] = data, np.asarray(fine)
    return out


TINY_WNIDS = ("n01443537", "n01629819", "n01641577")
TINY_COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


def write_jpeg(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), color)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format="JPEG", quality=100)


def make_tiny(root: Path, per_class: int = 2) -> None:
    """A miniature tiny-imagenet-200: one solid colour per class, val listed out of order."""
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid, color in zip(TINY_WNIDS, TINY_COLORS):
        for j in range(per_class):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", color)
    # val: class index = position in wnids.txt; annotation lines deliberately unsorted.
    val = [("val_2.JPEG", 2), ("val_0.JPEG", 0), ("val_1.JPEG", 1), ("val_3.JPEG", 0)]
    lines = []
    for name, label in val:
        write_jpeg(root / "val" / "images" / name, TINY_COLORS[label])
        lines.append(f"{name}\t{TINY_WNIDS[label]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    array = np.array([1, -2, 70000, 2**31 - 1], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "ints", array, code=0x0C))
    assert out.dtype == np.dtype(np.int32) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_truncated_raises(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))[:-100]
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_cut_gzip_stream_raises(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.ones((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x02\x08\x01" + b"\x00" * 8, "not an IDX"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (idx_bytes(np.zeros(3, dtype=np.uint8)) + b"\x00", "trailing"),
    ],
)
def test_read_idx_corrupt_header(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


# ------------------------------------------------------------------ MNIST-like


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_like_exact(tmp_path: Path, compress: bool) -> None:
    arrays = make_mnist_like(tmp_path, compress=compress)
    splits = load_mnist_like(tmp_path)
    assert splits.train_x.shape == (12, 1, 28, 28) and splits.train_x.dtype == np.uint8
    assert splits.test_x.shape == (5, 1, 28, 28)
    assert splits.train_y.dtype == np.int64 and splits.test_y.dtype == np.int64
    np.testing.assert_array_equal(splits.train_x[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(splits.test_x[:, 0], arrays["test_x"])
    np.testing.assert_array_equal(splits.train_y, arrays["train_y"])
    np.testing.assert_array_equal(splits.test_y, arrays["test_y"])
    assert splits.class_names == tuple("0123456789")


def test_load_fashion_mnist_names(tmp_path: Path) -> None:
    make_mnist_like(tmp_path)
    assert load_fashion_mnist(tmp_path).class_names == FASHION_MNIST_CLASSES


def test_mnist_label_count_mismatch_names_file(tmp_path: Path) -> None:
    make_mnist_like(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    bad = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(ValueError, match="11 labels for 12 images") as info:
        load_mnist_like(tmp_path)
    assert str(bad) in str(info.value)


def test_mnist_label_out_of_range(tmp_path: Path) -> None:
    make_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 10], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*expected \[0, 10\)"):
        load_mnist_like(tmp_path)


def test_mnist_missing_file(tmp_path: Path) -> None:
    make_mnist_like(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_like(tmp_path)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist() -> None:
    splits = load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR)
    assert splits.train_x.shape == (60000, 1, 28, 28)
    assert splits.test_x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(splits.train_y, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(splits.test_y, minlength=10), [1000] * 10)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"


# ------------------------------------------------------------------------- CIFAR


def test_load_cifar10_exact_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    written = make_cifar10(root)
    splits = load_cifar10(root)
    assert splits.train_x.shape == (20, 3, 32, 32) and splits.test_x.shape == (4, 3, 32, 32)
    assert splits.train_x.dtype == np.uint8 and splits.train_y.dtype == np.int64
    np.testing.assert_array_equal(splits.train_y, written["train_y"])
    np.testing.assert_array_equal(splits.test_y, written["test_y"])
    # Row layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major.
    for n, c, r, q in [(0, 0, 0, 0), (7, 1, 5, 9), (19, 2, 31, 31), (3, 2, 0, 17)]:
        assert splits.train_x[n, c, r, q] == written["train_x"][n, c * 1024 + r * 32 + q]
    np.testing.assert_array_equal(splits.test_x.reshape(4, -1), written["test_x"])
    assert splits.class_names == tuple(f"name{i}" for i in range(10))


def test_cifar10_without_meta_uses_standard_names(tmp_path: Path) -> None:
    make_cifar10(tmp_path, meta=False)
    names = load_cifar10(tmp_path).class_names
    assert names[0] == "airplane" and names[9] == "truck" and len(names) == 10


def test_cifar10_label_mismatch_names_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    data = np.zeros((4, 3072), dtype=np.uint8)
    dump_py2_style(tmp_path / "data_batch_3", {b"data": data, b"labels": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"data_batch_3.*3 labels for 4 images"):
        load_cifar10(tmp_path)


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getenv, ("HOME",))

    make_cifar10(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar10(tmp_path)


def test_load_cifar100(tmp_path: Path) -> None:
    written = make_cifar100(tmp_path)
    splits = load_cifar100(tmp_path)
    assert splits.class_names == tuple(f"class_{i}" for i in range(100))
    np.testing.assert_array_equal(splits.train_x.reshape(6, -1), written["train_x"])
    np.testing.assert_array_equal(splits.test_y, written["test_y"])
    assert splits.train_x[2, 1, 3, 4] == written["train_x"][2, 1024 + 3 * 32 + 4]
    dump_py2_style(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    assert load_cifar100(tmp_path).class_names[5] == "f5"


# ----------------------------------------------------------------- Tiny ImageNet


def test_load_tinyimagenet(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    splits = load_tinyimagenet(root)
    assert splits.class_names == TINY_WNIDS
    assert splits.train_x.shape == (6, 3, 64, 64) and splits.train_x.dtype == np.uint8
    assert splits.test_x.shape == (4, 3, 64, 64)
    np.testing.assert_array_equal(splits.train_y, [0, 0, 1, 1, 2, 2])
    # Sorted by file name: val_0 (0), val_1 (1), val_2 (2), val_3 (0).
    np.testing.assert_array_equal(splits.test_y, [0, 1, 2, 0])
    for images, labels in ((splits.train_x, splits.train_y), (splits.test_x, splits.test_y)):
        for image, label in zip(images, labels):
            mean = image.reshape(3, -1).mean(axis=1)
            np.testing.assert_allclose(mean, TINY_COLORS[label], atol=3)


def test_tinyimagenet_grayscale_becomes_rgb(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    write_jpeg(tmp_path / "train" / TINY_WNIDS[0] / "images" / "gray.JPEG", (90, 90, 90), mode="L")
    splits = load_tinyimagenet(tmp_path)
    assert splits.train_x.shape == (7, 3, 64, 64)


def test_tinyimagenet_unknown_val_wnid(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    ann = tmp_path / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:5"):
        load_tinyimagenet(tmp_path)


def test_tinyimagenet_cache_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tiny-imagenet-200"
    cache = tmp_path / "cache"
    make_tiny(root)
    first = load_tinyimagenet(root, cache_dir=cache)
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp"))

    real_open = Image.open

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = load_tinyimagenet(root, cache_dir=cache)
    np.testing.assert_array_equal(second.train_x, first.train_x)
    np.testing.assert_array_equal(second.test_y, first.test_y)
    assert second.class_names == first.class_names

    # A new training image changes the folder's signature: decode again (and overwrite).
    monkeypatch.setattr(Image, "open", real_open)
    write_jpeg(root / "train" / TINY_WNIDS[1] / "images" / "extra.JPEG", TINY_COLORS[1])
    third = load_tinyimagenet(root, cache_dir=cache)
    assert len(third.train_y) == 7
    assert list(cache.glob("*.npz")) == cached

    monkeypatch.setattr(Image, "open", no_decoding)
    assert len(load_tinyimagenet(root, cache_dir=cache).train_y) == 7


def test_tinyimagenet_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    make_tiny(tmp_path / "tiny")
    load_tinyimagenet(tmp_path / "tiny", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    assert len(load_tinyimagenet(tmp_path / "tiny", cache_dir=tmp_path / "cache").train_y) == 6


def test_rawsplits_validates() -> None:
    x = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 1], dtype=np.int64)
    RawSplits(x, y, x, y, ("a", "b"))
    with pytest.raises(ValueError, match="labels outside"):
        RawSplits(x, y, x, y, ("a",))
    with pytest.raises(ValueError, match="int64"):
        RawSplits(x, y.astype(np.int32), x, y, ("a", "b"))


# ------------------------------------------------------------------------ locate


def test_locate_priority(tmp_path: Path) -> None:
    explicit, env_dir = tmp_path / "explicit", tmp_path / "env"
    system, cache = tmp_path / "system", tmp_path / "cache"
    make_mnist_like(explicit / "fashion-mnist")
    make_mnist_like(env_dir / "FashionMNIST" / "raw")  # torchvision layout
    make_mnist_like(system)  # Debian layout: the files directly in the folder
    make_mnist_like(cache / "FashionMNIST" / "raw")
    env = {"CLBENCH_DATA": str(env_dir)}
    kw = {"cache_dir": cache, "system_dirs": [system]}

    assert locate("fmnist", explicit, env=env, **kw) == explicit / "fashion-mnist"
    assert locate("fmnist", env=env, **kw) == env_dir / "FashionMNIST" / "raw"
    assert locate("fmnist", env={}, **kw) == system
    from_cache = locate("fmnist", env={}, cache_dir=cache, system_dirs=[])
    assert from_cache == cache / "FashionMNIST" / "raw"
    # CLBENCH_DATA may hold only some datasets: a miss there falls through.
    assert locate("fmnist", env={"CLBENCH_DATA": str(tmp_path / "nothing")}, **kw) == system
    assert env == {"CLBENCH_DATA": str(env_dir)}  # not mutated


def test_locate_explicit_dir_without_data_is_an_error(tmp_path: Path) -> None:
    make_mnist_like(tmp_path / "system")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        locate("fmnist", empty, env={}, cache_dir=tmp_path / "c", system_dirs=[tmp_path / "system"])
    assert str(empty) in str(info.value)


def test_locate_subfolders_per_dataset(tmp_path: Path) -> None:
    make_mnist_like(tmp_path / "MNIST" / "raw")
    make_cifar10(tmp_path / "cifar-10-batches-py")
    make_cifar100(tmp_path / "cifar-100-python")
    make_tiny(tmp_path / "tiny-imagenet-200")
    kw = {"env": {}, "cache_dir": tmp_path / "cache"}
    assert locate("mnist", tmp_path, **kw) == tmp_path / "MNIST" / "raw"
    assert locate("cifar10", tmp_path, **kw) == tmp_path / "cifar-10-batches-py"
    assert locate("cifar100", tmp_path, **kw) == tmp_path / "cifar-100-python"
    assert locate("tinyimg", tmp_path, **kw) == tmp_path / "tiny-imagenet-200"
    # The dataset folder itself is accepted too.
    cifar_dir = tmp_path / "cifar-10-batches-py"
    assert locate("cifar10", cifar_dir, **kw) == cifar_dir
    assert locate("tinyimg", tmp_path / "tiny-imagenet-200", **kw) == tmp_path / "tiny-imagenet-200"
    with pytest.raises(ValueError, match="unknown dataset"):
        locate("svhn", tmp_path, **kw)


def test_missing_data_message(tmp_path: Path) -> None:
    env = {"CLBENCH_DATA": str(tmp_path / "data")}
    with pytest.raises(DataNotFoundError) as info:
        locate("fmnist", env=env, cache_dir=tmp_path / "cache", system_dirs=[tmp_path / "sys"])
    message = str(info.value)
    for needle in (
        "CLBENCH_DATA",
        "--data-dir",
        "dataset-fashion-mnist",
        "--download",
        "torchvision",
        "train-images-idx3-ubyte",
        str(tmp_path / "data"),
        str(tmp_path / "sys"),
        str(tmp_path / "cache"),
    ):
        assert needle in message, needle
    assert "\n" not in message


def test_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import torchvision` raise ImportError.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DataNotFoundError, match="torchvision is not installed"):
        locate("cifar10", env={}, download=True, cache_dir=tmp_path / "cache")


def test_default_cache_dir() -> None:
    assert default_cache_dir({"CLBENCH_CACHE": "/x/c", "XDG_CACHE_HOME": "/y"}) == Path("/x/c")
    assert default_cache_dir({"XDG_CACHE_HOME": "/y"}) == Path("/y/clbench")
    assert default_cache_dir({"HOME": "/home/u", "XDG_CACHE_HOME": ""}) == Path("/home/u/.cache/clbench")


def test_load_raw_dispatch(tmp_path: Path) -> None:
    make_mnist_like(tmp_path / "fashion-mnist")
    make_tiny(tmp_path / "tiny-imagenet-200")
    env = {"CLBENCH_DATA": str(tmp_path), "CLBENCH_CACHE": str(tmp_path / "cache")}
    assert load_raw("fmnist", env=env).class_names == FASHION_MNIST_CLASSES
    assert load_raw("tinyimg", env=env).class_names == TINY_WNIDS
    assert list((tmp_path / "cache" / "decoded").glob("*.npz"))
