"""Datasets for the examples and benchmarks: Iris (shipped) and MNIST (local IDX files).

What lives here:

- Iris, shipped inside the package (``ugmm_prob/data/iris.csv``): :func:`load_iris`, the
  seeded train/test split :func:`iris_split` (the same rows as scikit-learn's
  ``train_test_split(X, y, test_size=0.2, random_state=42)``) and :func:`standardize`;
- MNIST, read from the four IDX files of the canonical distribution (gzipped or raw):
  :func:`find_mnist`, :func:`load_mnist` (optionally downloading, checksum-verified) and
  :func:`mnist_subset`;
- :func:`check_classification_data`, the input checks shared by the classifiers;
- the errors :class:`DatasetNotFoundError`, :class:`DatasetDownloadError` and
  :class:`CorruptDatasetError`.

Nothing here needs pandas, scikit-learn or torchvision.

Why one module of some 600 lines: callers (the experiments, the command line, the
benchmarks, users) take every data set and its errors from one place, and about half of it
is the private machinery behind :func:`load_mnist` (finding, downloading and verifying the
IDX files), which has no public name of its own to live under.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import io
import math
import os
import pathlib
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

from .validation import is_validation_enabled

__all__ = [
    "IRIS_CLASSES",
    "IRIS_FEATURES",
    "MNIST_ENV",
    "CorruptDatasetError",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "Split",
    "check_classification_data",
    "check_finite_cells",
    "find_mnist",
    "holdout_split",
    "iris_split",
    "load_iris",
    "load_mnist",
    "mnist_subset",
    "standardize",
]

PathLike = str | os.PathLike


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message lists the places and the fix.

    Attributes:
        looked_in: the places looked at, as ``(source, folder, problem)`` triples:
            ``source`` is ``"root"`` (the folder passed in), ``"env"``
            (``$UGMM_PROB_MNIST_DIR``) or ``"cache"`` (the default cache folder), and
            ``problem`` says what was wrong there. Empty where not known. The command line
            uses them to name its own options in the fix.
    """

    def __init__(
        self, message: str, *, looked_in: tuple[tuple[str, pathlib.Path, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.looked_in = tuple(looked_in)


class DatasetDownloadError(DatasetNotFoundError):
    """The files were not found locally and no mirror could provide them.

    A subclass of :class:`DatasetNotFoundError` so that code which skips or falls back when
    the data is absent also handles an offline machine.
    """


class CorruptDatasetError(ValueError):
    """A dataset file exists but its content is not what the format promises."""


# --------------------------------------------------------------------------------------------
# Iris
# --------------------------------------------------------------------------------------------

IRIS_CLASSES = ("setosa", "versicolor", "virginica")
"""Iris species, in label order: label ``c`` is ``IRIS_CLASSES[c]``."""
IRIS_FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
"""Iris feature names, in column order (centimetres)."""
_IRIS_RESOURCE = "data/iris.csv"
_IRIS_ROWS = 150


class Split(NamedTuple):
    """A train/test split; a tuple, so ``x_tr, y_tr, x_te, y_te = iris_split()`` works."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _check_float_dtype(dtype: torch.dtype, caller: str) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{caller}: dtype must be a floating torch dtype, got {dtype!r}")


def load_iris(*, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Fisher's Iris data, in the file's (classic UCI) row order.

    Returns:
        ``(x, y)``: features of shape ``(150, 4)`` as ``dtype`` (columns as in
        :data:`IRIS_FEATURES`, in centimetres) and int64 labels of shape ``(150,)`` indexing
        :data:`IRIS_CLASSES`.
    """
    _check_float_dtype(dtype, "load_iris")
    text = resources.files("ugmm_prob").joinpath(_IRIS_RESOURCE).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    # The file ships with the package, so a malformed one means a broken install: say so
    # precisely rather than letting float() fail somewhere in the middle.
    expected_header = [*IRIS_FEATURES, "species"]
    if not rows or rows[0] != expected_header:
        raise CorruptDatasetError(
            f"ugmm_prob/{_IRIS_RESOURCE}: expected the header {','.join(expected_header)}, "
            f"found {','.join(rows[0]) if rows else 'an empty file'}"
        )
    body = [row for row in rows[1:] if row]
    if len(body) != _IRIS_ROWS or any(len(row) != 5 for row in body):
        raise CorruptDatasetError(
            f"ugmm_prob/{_IRIS_RESOURCE}: expected {_IRIS_ROWS} rows of 5 fields, "
            f"found {len(body)} rows"
        )
    features = [[float(v) for v in row[:4]] for row in body]
    labels = [int(row[4]) for row in body]
    if any(not 0 <= label < len(IRIS_CLASSES) for label in labels):
        raise CorruptDatasetError(
            f"ugmm_prob/{_IRIS_RESOURCE}: species must be 0, 1 or 2, found {sorted(set(labels))}"
        )
    # Parse in float64 so that the values are the decimal ones rounded once to ``dtype``.
    x = torch.tensor(features, dtype=torch.float64).to(dtype)
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y


def iris_split(
    *, seed: int = 42, test_fraction: float = 0.2, dtype: torch.dtype = torch.float32
) -> Split:
    """Iris split into train and test rows, exactly as scikit-learn would split it.

    The rows are those of ``sklearn.model_selection.train_test_split(X, y,
    test_size=test_fraction, random_state=seed)`` (not stratified), so results are comparable
    with work that used it, without depending on scikit-learn: ``ceil(test_fraction * n)``
    test rows, then a NumPy ``RandomState(seed)`` permutation whose head is the test set and
    whose tail is the train set, both in permutation order.

    Args:
        seed: seed of the permutation.
        test_fraction: fraction of the rows held out, in ``(0, 1)``.
        dtype: floating dtype of the features.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"iris_split: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_iris(dtype=dtype)
    n = len(x)
    # Same arithmetic as scikit-learn (ceil for test, the rest for train), so the sizes agree
    # even where test_fraction * n is not a whole number.
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if n_train < 1:
        raise ValueError(f"iris_split: test_fraction={test_fraction} leaves no training rows")
    # The legacy RandomState (not np.random.default_rng) because that is the generator
    # scikit-learn seeds from an integer random_state; another one gives other rows.
    perm = np.random.RandomState(seed).permutation(n)
    test = torch.from_numpy(perm[:n_test].astype(np.int64))
    train = torch.from_numpy(perm[n_test : n_test + n_train].astype(np.int64))
    return Split(x[train], y[train], x[test], y[test])


def holdout_split(x: torch.Tensor, y: torch.Tensor, *, fraction: float, seed: int = 0) -> Split:
    """Hold out ``fraction`` of every class of ``(x, y)``, at random rows (seeded).

    For selecting an epoch or a setting on data the model does not train on, while the test
    set stays untouched: each class contributes ``round(fraction * n_c)`` rows (at least one
    when it has two or more), so small data sets keep their class balance.

    Returns:
        ``Split(x_fit, y_fit, x_held_out, y_held_out)``, rows in random order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_split: fraction must be in (0, 1), got {fraction}")
    if len(x) != len(y):
        raise ValueError(f"holdout_split: x has {len(x)} rows but y has {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    held, kept = [], []
    for label in torch.unique(y):
        rows = (y == label).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        count = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        held.append(rows[:count])
        kept.append(rows[count:])
    held_rows, kept_rows = torch.cat(held), torch.cat(kept)
    held_rows = held_rows[torch.randperm(len(held_rows), generator=generator)]
    kept_rows = kept_rows[torch.randperm(len(kept_rows), generator=generator)]
    return Split(x[kept_rows], y[kept_rows], x[held_rows], y[held_rows])


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Z-score ``train`` and every tensor of ``others`` with the statistics of ``train``.

    The mean and (population, ``unbiased=False``) standard deviation are taken over the rows
    of ``train`` only, so that test data never leaks into the preprocessing. A constant column
    gets a standard deviation of 1: it is only centred, instead of becoming NaN.

    Returns:
        ``(train_z, *others_z)``, in the order given.
    """
    if not isinstance(train, torch.Tensor) or not train.is_floating_point():
        raise TypeError("standardize: train must be a floating tensor")
    if train.dim() < 1 or len(train) == 0:
        raise ValueError(
            f"standardize: train needs at least one row, got shape {tuple(train.shape)}"
        )
    for i, other in enumerate(others):
        if not isinstance(other, torch.Tensor) or other.shape[1:] != train.shape[1:]:
            shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise ValueError(
                f"standardize: others[{i}] must be a tensor of shape (n, *{tuple(train.shape[1:])})"
                f" like train, got {shape}"
            )
    # Test constancy on the values rather than std == 0: the float mean of a constant column
    # may differ from the constant by a rounding error, which leaves a tiny non-zero std (and
    # a tiny offset); taking the constant itself as the mean centres it exactly.
    constant = train.amax(dim=0) == train.amin(dim=0)
    mean = torch.where(constant, train[0], train.mean(dim=0))
    std = torch.where(constant, torch.ones_like(train[0]), train.std(dim=0, unbiased=False))
    return tuple((t - mean) / std for t in (train, *others))


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------

MNIST_ENV = "UGMM_PROB_MNIST_DIR"
"""Environment variable naming a folder with the MNIST IDX files (see :func:`find_mnist`)."""

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_NAMES = (*_MNIST_FILES["train"], *_MNIST_FILES["test"])

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# MD5 of the ``.gz`` files (keyed by the IDX name) of the canonical distribution, as served by
# the mirrors and published with it (the values every MNIST downloader checks). They guard
# against truncated or substituted downloads, not tampering. They are checked on download
# only: a local folder is used as is, since the same data compressed by another tool (or
# stored raw) has other bytes.
_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DOWNLOAD_TIMEOUT_S = 60.0

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_MNIST_SIDE = 28
_GZIP_MAGIC = b"\x1f\x8b"


def _cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "ugmm-prob" / "mnist"


def _env_dir() -> pathlib.Path | None:
    value = os.environ.get(MNIST_ENV)
    # An empty value counts as unset, as `UGMM_PROB_MNIST_DIR= cmd` usually means "none".
    return pathlib.Path(value).expanduser() if value else None


def _existing(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    """The file ``name`` of ``folder``, raw or gzipped; raw first since it needs no inflating."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


_SOURCE_LABELS = {"root": "root argument", "env": f"${MNIST_ENV}", "cache": "default cache"}


def _candidates(root: PathLike | None) -> list[tuple[str, pathlib.Path]]:
    """The folders to look in, in order, each with its source (``root``, ``env``,
    ``cache``)."""
    places = []
    if root is not None:
        places.append(("root", pathlib.Path(root).expanduser()))
    env = _env_dir()
    if env is not None:
        places.append(("env", env))
    places.append(("cache", _cache_dir()))
    return places


def find_mnist(root: PathLike | None = None) -> pathlib.Path:
    """The folder holding the four MNIST IDX files (each raw or ``.gz``).

    Looks, in order, at ``root`` (if given), ``$UGMM_PROB_MNIST_DIR`` (if set) and
    ``~/.cache/ugmm-prob/mnist``, and returns the first folder holding all four of
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``.

    Raises:
        DatasetNotFoundError: no such folder; the message lists every place looked at, what
            was missing there, and how to point the library at the data.
    """
    looked_in = []
    for source, folder in _candidates(root):
        if not folder.is_dir():
            looked_in.append((source, folder, "no such folder"))
            continue
        missing = [name for name in _MNIST_NAMES if _existing(folder, name) is None]
        if not missing:
            return folder
        looked_in.append((source, folder, f"missing {', '.join(f'{m}[.gz]' for m in missing)}"))
    report = [
        f"  - {_SOURCE_LABELS[source]}: {folder} ({problem})"
        for source, folder, problem in looked_in
    ]
    if _env_dir() is None:
        report.append(f"  - ${MNIST_ENV} is not set")
    raise DatasetNotFoundError(
        "MNIST IDX files not found. Looked in:\n"
        + "\n".join(report)
        + f"\nTo fix it: pass root=<folder with the four files>, set {MNIST_ENV}=<folder>, "
        "or call load_mnist(..., download=True) to fetch them.",
        looked_in=tuple(looked_in),
    )


def _download_mnist(target: pathlib.Path) -> None:
    """Fetch the ``.gz`` files missing from ``target``, verified, each written atomically."""
    target.mkdir(parents=True, exist_ok=True)
    for name in _MNIST_NAMES:
        if _existing(target, name) is None:
            _download_one(name, target)


def _download_one(name: str, target: pathlib.Path) -> None:
    filename = f"{name}.gz"
    expected = _MNIST_MD5[name]
    failures: list[str] = []
    mismatches: list[str] = []
    for mirror in _MNIST_MIRRORS:
        url = mirror + filename
        # Write beside the destination so that os.replace is an atomic rename: an interrupted
        # download never leaves a truncated file under the real name.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=target)
        tmp = pathlib.Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "ugmm-prob"})
                with (
                    os.fdopen(fd, "wb") as out,
                    urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response,
                ):
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError, HTTPError, timeouts and dropped connections are all OSErrors; try
                # the next mirror and keep the reason for the final message.
                failures.append(f"  - {url}: {type(exc).__name__}: {exc}")
                continue
            found = digest.hexdigest()
            if found != expected:
                mismatches.append(f"  - {url}: md5 {found}")
                continue
            os.replace(tmp, target / filename)
            return
        finally:
            tmp.unlink(missing_ok=True)
    if mismatches:
        raise CorruptDatasetError(
            f"{filename}: downloaded data does not match the canonical checksum "
            f"(expected md5 {expected}); found:\n" + "\n".join(mismatches + failures)
        )
    raise DatasetDownloadError(
        f"could not download {filename} into {target}: no mirror was reachable.\n"
        + "\n".join(failures)
        + f"\nDownload the four MNIST .gz files by hand into a folder and pass root= or set "
        f"{MNIST_ENV}."
    )


def _read_bytes(path: pathlib.Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # BadGzipFile: not gzip or bad CRC; EOFError: truncated; zlib.error: damaged stream.
        raise CorruptDatasetError(f"{path}: not a valid gzip file ({exc})") from exc


def _check_magic(path: pathlib.Path, data: bytes, expected: int, what: str) -> None:
    if len(data) < 4:
        raise CorruptDatasetError(
            f"{path}: expected an IDX {what} file (magic number {expected}), "
            f"found only {len(data)} bytes"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected:
        hint = (
            " (the file looks gzip-compressed: give it a .gz suffix)"
            if data[:2] == _GZIP_MAGIC
            else ""
        )
        raise CorruptDatasetError(
            f"{path}: expected IDX {what} magic number {expected}, found {magic}{hint}"
        )


def _check_size(path: pathlib.Path, data: bytes, header: int, count: int, unit: int) -> None:
    expected = header + count * unit
    if len(data) != expected:
        raise CorruptDatasetError(
            f"{path}: header declares {count} items, i.e. {expected} bytes, "
            f"found {len(data)} bytes (truncated or padded file)"
        )


def _read_idx(
    path: pathlib.Path, magic: int, what: str, dims: int
) -> tuple[bytes, int, tuple[int, ...]]:
    """An IDX file's bytes, header length and the ``dims`` sizes its header declares."""
    data = _read_bytes(path)
    _check_magic(path, data, magic, what)
    header = 4 * (1 + dims)
    if len(data) < header:
        raise CorruptDatasetError(
            f"{path}: expected a {header}-byte IDX {what} header, found {len(data)} bytes"
        )
    return data, header, struct.unpack(">" + "I" * dims, data[4:header])


def _parse_images(path: pathlib.Path) -> np.ndarray:
    data, header, (count, rows, cols) = _read_idx(path, _IDX_IMAGES_MAGIC, "images", 3)
    if (rows, cols) != (_MNIST_SIDE, _MNIST_SIDE):
        raise CorruptDatasetError(
            f"{path}: expected {_MNIST_SIDE}x{_MNIST_SIDE} images, found {rows}x{cols}"
        )
    _check_size(path, data, header, count, rows * cols)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(count, rows * cols)


def _parse_labels(path: pathlib.Path) -> np.ndarray:
    data, header, (count,) = _read_idx(path, _IDX_LABELS_MAGIC, "labels", 1)
    _check_size(path, data, header, count, 1)
    labels = np.frombuffer(data, dtype=np.uint8, offset=header)
    if count and labels.max() > 9:
        bad = int(np.count_nonzero(labels > 9))
        raise CorruptDatasetError(
            f"{path}: expected labels in 0..9, found {bad} outside (max {int(labels.max())})"
        )
    return labels


def load_mnist(
    split: str = "train",
    *,
    root: PathLike | None = None,
    download: bool = False,
    dtype: torch.dtype = torch.float32,
    flatten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels of one split, read from the IDX files.

    The folder is found by :func:`find_mnist`. With ``download=True`` and no folder found,
    the ``.gz`` files are fetched into ``root`` (else ``$UGMM_PROB_MNIST_DIR``, else
    ``~/.cache/ugmm-prob/mnist``) and verified against the MD5 of the canonical
    distribution; local files are never checksum-checked (recompressed copies differ in
    bytes), only parsed strictly.

    Args:
        split: ``"train"`` (60000 examples) or ``"test"`` (10000).
        root: folder holding the files, tried first.
        download: fetch the files if they are not found.
        dtype: floating dtype of the images.
        flatten: images of shape ``(n, 784)`` if true, else ``(n, 1, 28, 28)``.

    Returns:
        ``(x, y)``: images scaled to ``[0, 1]`` and int64 labels of shape ``(n,)``.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"test"``.
        DatasetNotFoundError: no folder holds the files (and ``download`` is false).
        DatasetDownloadError: the download was asked for but no mirror answered.
        CorruptDatasetError: a file is not valid IDX (or gzip), or a download's checksum is
            wrong.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"load_mnist: split must be 'train' or 'test', got {split!r}")
    _check_float_dtype(dtype, "load_mnist")
    try:
        folder = find_mnist(root)
    except DatasetNotFoundError:
        if not download:
            raise
        target = _candidates(root)[0][1]
        _download_mnist(target)
        folder = find_mnist(target)

    images_name, labels_name = _MNIST_FILES[split]
    images_path = _existing(folder, images_name)
    labels_path = _existing(folder, labels_name)
    assert images_path is not None and labels_path is not None  # find_mnist checked them
    images = _parse_images(images_path)
    labels = _parse_labels(labels_path)
    if len(images) != len(labels):
        raise CorruptDatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; expected the same count"
        )
    # np.frombuffer views immutable bytes; copy once so torch owns writable memory.
    x = torch.from_numpy(images.copy()).to(dtype).div_(255.0)
    if not flatten:
        x = x.reshape(-1, 1, _MNIST_SIDE, _MNIST_SIDE)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def mnist_subset(
    x: torch.Tensor, y: torch.Tensor, n: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subset of ``n`` examples, as class-balanced as the data allows.

    Examples are drawn round-robin over the classes in a seeded random order (one of each
    class, then a second of each, ...), so every class gets ``n // num_classes`` or one more
    while it has examples left. The result depends only on ``seed``, not on the global RNG.

    Returns:
        ``(x_sub, y_sub)`` with ``n`` rows.
    """
    if len(x) != len(y):
        raise ValueError(f"mnist_subset: x has {len(x)} rows but y has {len(y)}")
    if not 1 <= n <= len(x):
        raise ValueError(f"mnist_subset: n must be in [1, {len(x)}], got {n}")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=generator).numpy()
    # The bookkeeping is in NumPy, which sorts 60000 labels far faster than CPU torch does.
    shuffled = y.detach().cpu().numpy()[perm]
    # Rank of each shuffled example within its class, so that round r holds every class's
    # r-th example: position in a stable sort by class, minus where its class starts.
    by_class = np.argsort(shuffled, kind="stable")
    _, counts = np.unique(shuffled, return_counts=True)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.empty(len(shuffled), dtype=np.int64)
    rank[by_class] = np.arange(len(shuffled)) - starts
    # A stable sort keeps the random order inside each round.
    chosen = torch.from_numpy(perm[np.argsort(rank, kind="stable")[:n]])
    return x[chosen.to(x.device)], y[chosen.to(y.device)]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_classification_data(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    name: str = "data",
    allow_missing: bool = False,
    allow_unlabelled: bool = False,
    model: str | None = None,
) -> None:
    """Check a classification dataset before it reaches a model; raise a clear error if not.

    ``x`` must be a floating tensor of shape ``(n, ...)`` with ``n >= 1`` and finite values
    (NaN cells allowed with ``allow_missing``: a model that marginalises them); ``y`` an
    integer tensor of shape ``(n,)`` with labels in ``[0, num_classes)`` (also ``-1``, an
    unlabelled row, with ``allow_unlabelled``). Every message starts with ``f"{name}: "``
    so the caller's dataset is named, and says when the ``model`` (a class name) cannot
    take what was refused. The value checks (label range, finite features) are skipped
    while validation is disabled (:mod:`ugmm_prob.validation`).

    Raises:
        TypeError: ``x`` is not a floating tensor, or ``y`` not an integer tensor.
        ValueError: wrong shapes, no rows, mismatched lengths, labels out of range, or
            non-finite features.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        found = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: x must be a floating tensor, got {found}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: y must be an integer tensor, got {type(y).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{name}: x must have shape (n, features...), got {x.dim()} dimension(s) "
            f"{tuple(x.shape)}"
        )
    if len(x) == 0:
        raise ValueError(f"{name}: empty data (x has 0 rows)")
    if y.dim() != 1:
        raise ValueError(f"{name}: y must have shape (n,), got {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{name}: length mismatch, x has {len(x)} rows but y has {len(y)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name}: y must hold integer labels, got dtype {y.dtype}")
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be at least 1, got {num_classes}")
    if not is_validation_enabled():
        return
    low, high = int(y.min()), int(y.max())
    lowest = -1 if allow_unlabelled else 0
    if low < lowest or high >= num_classes:
        unlabelled = ""
        if low == -1:
            who = model or "this model"
            unlabelled = (
                f" (-1, an unlabelled row, needs a model that marginalises the class; {who} cannot)"
            )
        elif allow_unlabelled:
            unlabelled = " or -1 (unlabelled)"
        raise ValueError(
            f"{name}: labels must be in [0, {num_classes - 1}] for {num_classes} classes"
            f"{unlabelled}, found min {low} and max {high}"
        )
    check_finite_cells(x, name=name, allow_missing=allow_missing, model=model)


def check_finite_cells(
    x: torch.Tensor, *, name: str = "data", allow_missing: bool = False, model: str | None = None
) -> None:
    """Raise a ``ValueError`` naming the counts when ``x`` has infinite cells, or NaN cells
    (missing values) unless ``allow_missing`` (the model marginalises them)."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    nans = int(torch.isnan(x).sum())
    infs = int(x.numel() - finite.sum()) - nans
    if infs or not allow_missing:
        hint = ""
        if nans and not allow_missing:
            hint = (
                f"; NaN cells are missing values, which {model or 'this model'} cannot "
                "marginalise (a density model such as UGMMCircuit can)"
            )
        raise ValueError(
            f"{name}: x has {nans + infs} non-finite value(s) ({nans} NaN, {infs} inf) "
            f"out of {x.numel()}{hint}"
        )
