"""Datasets: shipped Iris and its scikit-learn-compatible split, MNIST IDX parsing, errors.

MNIST error cases run on tiny synthetic IDX files; the real data is used from
``$UGMM_PROB_MNIST_DIR`` (or ``../shared/data/mnist`` next to the repository; see the
``mnist_dir`` fixture). Nothing here touches the network: downloads
go through a monkeypatched ``urllib.request.urlopen``.
"""

import gzip
import hashlib
import io
import math
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ugmm_prob import datasets
from ugmm_prob.datasets import (
    IRIS_CLASSES,
    IRIS_FEATURES,
    MNIST_ENV,
    CorruptDatasetError,
    DatasetDownloadError,
    DatasetNotFoundError,
    Split,
    check_classification_data,
    find_mnist,
    holdout_split,
    iris_split,
    load_iris,
    load_mnist,
    mnist_subset,
    standardize,
)

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# --------------------------------------------------------------------------------------------
# Iris
# --------------------------------------------------------------------------------------------


def test_iris_shapes_classes_and_known_rows():
    x, y = load_iris()
    assert x.shape == (150, 4) and x.dtype == torch.float32
    assert y.shape == (150,) and y.dtype == torch.int64
    assert IRIS_CLASSES == ("setosa", "versicolor", "virginica")
    assert len(IRIS_FEATURES) == 4 and IRIS_FEATURES[0] == "sepal_length_cm"
    assert torch.equal(x[0], torch.tensor([5.1, 3.5, 1.4, 0.2]))
    assert IRIS_CLASSES[int(y[0])] == "setosa"
    assert torch.equal(x[-1], torch.tensor([5.9, 3.0, 5.1, 1.8]))
    assert IRIS_CLASSES[int(y[-1])] == "virginica"
    assert torch.bincount(y).tolist() == [50, 50, 50]


def test_iris_dtype_is_honoured_and_must_be_floating():
    x, _ = load_iris(dtype=torch.float64)
    assert x.dtype == torch.float64 and float(x[0, 0]) == 5.1  # parsed once, no float32 detour
    with pytest.raises(TypeError, match="floating"):
        load_iris(dtype=torch.int64)


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(map(tuple, torch.cat([x, y[:, None].to(x.dtype)], dim=1).tolist()))


def test_iris_split_sizes_disjoint_covering_and_deterministic():
    x, y = load_iris()
    split = iris_split()
    assert isinstance(split, Split)
    assert len(split.x_train) == len(split.y_train) == 120
    assert len(split.x_test) == len(split.y_test) == 30
    # Iris has duplicate rows, so compare (features, label) multisets rather than sets.
    both = rows(split.x_train, split.y_train) + rows(split.x_test, split.y_test)
    assert sorted(both) == rows(x, y)
    again = iris_split()
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    other = iris_split(seed=0)
    assert not torch.equal(split.y_test, other.y_test)
    assert len(iris_split(test_fraction=0.33).x_test) == math.ceil(0.33 * 150)


def test_iris_split_rows_are_disjoint_by_index():
    # The split is a permutation: row indices (found through the permutation itself) must
    # not repeat and must cover 0..149.
    perm = np.random.RandomState(42).permutation(150)
    x, _ = load_iris()
    split = iris_split()
    assert torch.equal(split.x_test, x[torch.from_numpy(perm[:30])])
    assert torch.equal(split.x_train, x[torch.from_numpy(perm[30:])])
    assert sorted(perm.tolist()) == list(range(150))


@pytest.mark.parametrize("seed,fraction", [(42, 0.2), (0, 0.25), (7, 0.1), (123, 0.5)])
def test_iris_split_matches_scikit_learn(seed, fraction):
    model_selection = pytest.importorskip("sklearn.model_selection")
    x, y = load_iris(dtype=torch.float64)
    expected = model_selection.train_test_split(
        x.numpy(), y.numpy(), test_size=fraction, random_state=seed
    )
    split = iris_split(seed=seed, test_fraction=fraction, dtype=torch.float64)
    x_tr, x_te, y_tr, y_te = expected
    assert np.array_equal(split.x_train.numpy(), x_tr)
    assert np.array_equal(split.x_test.numpy(), x_te)
    assert np.array_equal(split.y_train.numpy(), y_tr)
    assert np.array_equal(split.y_test.numpy(), y_te)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.999])
def test_iris_split_rejects_fractions_leaving_an_empty_side(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        iris_split(test_fraction=fraction)


def test_standardize_uses_train_statistics_only():
    train = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    test = torch.tensor([[3.0, 7.0, 0.0]])
    train_z, test_z = standardize(train, test)
    assert torch.allclose(train_z.mean(0), torch.zeros(3), atol=1e-6)
    # Population std (unbiased=False) for the varying columns; the constant one is centred.
    assert torch.allclose(train_z[:, [0, 2]].std(0, unbiased=False), torch.ones(2))
    assert torch.equal(train_z[:, 1], torch.zeros(3))
    mean, std = train.mean(0), train.std(0, unbiased=False)
    assert torch.allclose(test_z[0, [0, 2]], ((test - mean) / std)[0, [0, 2]])
    assert float(test_z[0, 1]) == 2.0  # 7 - 5 over a std of 1
    assert len(standardize(train)) == 1
    assert len(standardize(train, test, test, test)) == 4


def test_standardize_constant_column_with_inexact_mean_stays_finite():
    train = torch.full((150, 2), 0.1)
    train[:, 1] = torch.arange(150.0)
    (z,) = standardize(train)
    assert torch.isfinite(z).all() and torch.equal(z[:, 0], torch.zeros(150))


def test_standardize_errors():
    with pytest.raises(ValueError, match="shape"):
        standardize(torch.ones(4, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="at least one row"):
        standardize(torch.ones(0, 3))
    with pytest.raises(TypeError, match="floating"):
        standardize(torch.ones(4, 3, dtype=torch.int64))


# --------------------------------------------------------------------------------------------
# MNIST: synthetic IDX files
# --------------------------------------------------------------------------------------------


def images_bytes(n, *, magic=2051, rows=28, cols=28, count=None, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=n * rows * cols, dtype=np.uint8)
    header = struct.pack(">IIII", magic, n if count is None else count, rows, cols)
    return header + pixels.tobytes()


def labels_bytes(labels, *, magic=2049, count=None):
    header = struct.pack(">II", magic, len(labels) if count is None else count)
    return header + bytes(labels)


def write(path: Path, data: bytes, *, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist(folder: Path, *, gz=False, n_train=5, n_test=3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = NAMES[split]
        write(folder / images, images_bytes(n, seed=n), gz=gz)
        write(folder / labels, labels_bytes([i % 10 for i in range(n)]), gz=gz)
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env var and an empty home, so the real cache folder cannot be picked up."""
    monkeypatch.delenv(MNIST_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_mnist_round_trip(isolated, gz):
    folder = write_mnist(isolated / "mnist", gz=gz)
    x, y = load_mnist("train", root=folder)
    assert x.shape == (5, 784) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 3, 4] and y.dtype == torch.int64
    pixels = np.frombuffer(images_bytes(5, seed=5)[16:], dtype=np.uint8)
    assert torch.allclose(x.flatten(), torch.from_numpy(pixels.astype(np.float32)) / 255)
    x4, _ = load_mnist("test", root=folder, flatten=False, dtype=torch.float64)
    assert x4.shape == (3, 1, 28, 28) and x4.dtype == torch.float64
    assert 0.0 <= float(x4.min()) and float(x4.max()) <= 1.0


def test_load_mnist_rejects_bad_split_and_dtype(isolated):
    folder = write_mnist(isolated / "mnist")
    with pytest.raises(ValueError, match=r"'train' or 'test'.*'validation'"):
        load_mnist("validation", root=folder)
    with pytest.raises(TypeError, match="floating"):
        load_mnist("train", root=folder, dtype=torch.uint8)


def test_missing_folder_lists_every_place_searched(isolated):
    partial = isolated / "partial"
    partial.mkdir()
    write(partial / "train-images-idx3-ubyte", images_bytes(1), gz=True)
    with pytest.raises(DatasetNotFoundError) as info:
        find_mnist(isolated / "nowhere")
    message = str(info.value)
    assert str(isolated / "nowhere") in message and "no such folder" in message
    assert str(isolated / "home" / ".cache" / "ugmm-prob" / "mnist") in message
    assert f"${MNIST_ENV} is not set" in message
    assert "root=" in message and MNIST_ENV in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)

    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=partial)
    message = str(info.value)
    assert "missing train-labels-idx1-ubyte[.gz]" in message
    assert "train-images-idx3-ubyte[.gz]" not in message  # that one is there


def test_env_var_and_cache_folder_are_honoured(isolated, monkeypatch):
    cache = write_mnist(isolated / "home" / ".cache" / "ugmm-prob" / "mnist", n_test=4)
    assert find_mnist() == cache
    assert len(load_mnist("test")[0]) == 4

    env = write_mnist(isolated / "env", gz=True, n_test=2)
    monkeypatch.setenv(MNIST_ENV, str(env))
    assert find_mnist() == env
    assert len(load_mnist("test")[0]) == 2

    # root comes first; a root without the files falls through to the env var.
    root = write_mnist(isolated / "root", n_test=1)
    assert find_mnist(root) == root and len(load_mnist("test", root=root)[0]) == 1
    assert find_mnist(isolated / "empty-root") == env


def test_bad_magic_number(isolated):
    folder = write_mnist(isolated / "mnist")
    write(folder / "train-images-idx3-ubyte", images_bytes(5, magic=2049), gz=False)
    with pytest.raises(CorruptDatasetError, match=r"train-images-idx3-ubyte.*2051.*found 2049"):
        load_mnist("train", root=folder)


def test_gzip_data_under_a_raw_name_gets_a_hint(isolated):
    folder = write_mnist(isolated / "mnist")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.compress(labels_bytes([1, 2, 3])))
    with pytest.raises(CorruptDatasetError, match=r"t10k-labels-idx1-ubyte.*\.gz suffix"):
        load_mnist("test", root=folder)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(isolated, gz):
    folder = write_mnist(isolated / "mnist")
    (folder / "train-images-idx3-ubyte").unlink()
    write(folder / "train-images-idx3-ubyte", images_bytes(5)[:-100], gz=gz)
    with pytest.raises(CorruptDatasetError, match=r"train-images-idx3-ubyte.*3936 bytes.*3836"):
        load_mnist("train", root=folder)


def test_truncated_header(isolated):
    folder = write_mnist(isolated / "mnist")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels_bytes([1, 2, 3])[:6])
    with pytest.raises(CorruptDatasetError, match=r"t10k-labels-idx1-ubyte.*8-byte"):
        load_mnist("test", root=folder)


def test_image_and_label_counts_must_agree(isolated):
    folder = write_mnist(isolated / "mnist")
    write(folder / "t10k-labels-idx1-ubyte", labels_bytes([1, 2]), gz=False)
    with pytest.raises(CorruptDatasetError, match=r"3 images.*2 labels"):
        load_mnist("test", root=folder)


def test_labels_must_be_digits(isolated):
    folder = write_mnist(isolated / "mnist")
    write(folder / "t10k-labels-idx1-ubyte", labels_bytes([1, 10, 200]), gz=False)
    with pytest.raises(CorruptDatasetError, match=r"t10k-labels.*0\.\.9.*2 outside.*max 200"):
        load_mnist("test", root=folder)


def test_images_must_be_28_by_28(isolated):
    folder = write_mnist(isolated / "mnist")
    write(folder / "t10k-images-idx3-ubyte", images_bytes(3, rows=8, cols=8), gz=False)
    with pytest.raises(CorruptDatasetError, match=r"28x28.*8x8"):
        load_mnist("test", root=folder)


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],  # truncated stream
        lambda gz: b"this is not gzip at all",  # wrong format
        lambda gz: gz[:-8] + bytes(8),  # intact stream, wrong CRC and length
    ],
    ids=["truncated", "not-gzip", "bad-crc"],
)
def test_corrupt_gzip_names_the_file(isolated, damage):
    folder = write_mnist(isolated / "mnist", gz=True)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptDatasetError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        load_mnist("train", root=folder)


# --------------------------------------------------------------------------------------------
# MNIST: download (offline; the opener is monkeypatched)
# --------------------------------------------------------------------------------------------


def test_download_with_no_reachable_mirror(isolated, monkeypatch):
    calls = []

    def offline(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    target = isolated / "dl"
    with pytest.raises(DatasetDownloadError) as info:
        load_mnist("train", root=target, download=True)
    message = str(info.value)
    assert "no mirror was reachable" in message and "network is unreachable" in message
    assert "ossci-datasets" in message and "cvdf-datasets" in message
    assert isinstance(info.value, DatasetNotFoundError)  # offline callers can treat it as absent
    assert len(calls) == 2 and all(url.endswith("train-images-idx3-ubyte.gz") for url in calls)
    assert list(target.iterdir()) == []  # no partial files left behind


def served_files(tmp_path: Path) -> dict[str, bytes]:
    source = write_mnist(tmp_path / "source", gz=True)
    return {p.name: p.read_bytes() for p in source.iterdir()}


def test_download_falls_back_to_the_next_mirror_and_verifies(isolated, monkeypatch):
    files = served_files(isolated)
    for name, data in files.items():
        monkeypatch.setitem(
            datasets._MNIST_MD5, name.removesuffix(".gz"), hashlib.md5(data).hexdigest()
        )
    calls = []

    def flaky(request, timeout=None):
        calls.append(request.full_url)
        if "ossci-datasets" in request.full_url:
            raise TimeoutError("timed out")
        return io.BytesIO(files[request.full_url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    monkeypatch.setenv(MNIST_ENV, str(isolated / "env-target"))  # no root: env var is used
    x, y = load_mnist("train", download=True)
    assert x.shape == (5, 784) and y.tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (isolated / "env-target").iterdir()) == sorted(files)
    assert len(calls) == 8

    # Once the files are there, download=True does not fetch again.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("refetched"))
    assert torch.equal(load_mnist("train", download=True)[1], y)


def test_download_checksum_mismatch(isolated, monkeypatch):
    files = served_files(isolated)  # not the canonical bytes, so the real checksums fail
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda request, timeout=None: io.BytesIO(files[request.full_url.rsplit("/", 1)[1]]),
    )
    target = isolated / "dl"
    with pytest.raises(CorruptDatasetError, match=r"train-images-idx3-ubyte\.gz.*checksum.*f68b"):
        load_mnist("train", root=target, download=True)
    assert list(target.iterdir()) == []


# --------------------------------------------------------------------------------------------
# MNIST: the real data, if present
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist(mnist_dir):
    return {split: load_mnist(split, root=mnist_dir) for split in ("train", "test")}


def test_real_mnist_shapes_range_and_labels(real_mnist):
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = real_mnist[split]
        assert x.shape == (n, 784) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        counts = torch.bincount(y, minlength=10)
        assert len(counts) == 10 and int(counts.sum()) == n and int(counts.min()) > 0.08 * n
    assert torch.bincount(real_mnist["test"][1]).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip


def test_real_mnist_gz_and_raw_files_agree(real_mnist, mnist_dir, tmp_path):
    for name in NAMES["test"]:
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    for name in NAMES["train"]:
        (tmp_path / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    x, y = load_mnist("test", root=tmp_path)
    assert torch.equal(x, real_mnist["test"][0]) and torch.equal(y, real_mnist["test"][1])


def test_mnist_subset_on_real_data(real_mnist):
    x, y = real_mnist["train"]
    xs, ys = mnist_subset(x, y, 1000, seed=3)
    assert xs.shape == (1000, 784) and torch.bincount(ys).tolist() == [100] * 10


# --------------------------------------------------------------------------------------------
# mnist_subset and check_classification_data
# --------------------------------------------------------------------------------------------


def test_mnist_subset_is_balanced_deterministic_and_keeps_pairs():
    y = torch.arange(10).repeat_interleave(torch.tensor([50, 3, 40, 40, 40, 40, 40, 40, 40, 40]))
    x = y[:, None].float() * torch.ones(1, 4) + torch.arange(len(y))[:, None] / 1000
    # While every class has examples left, each round takes one of each.
    assert torch.bincount(mnist_subset(x, y, 20)[1], minlength=10).tolist() == [2] * 10
    # Class 1 has only 3 examples: it runs out and the others share the rest.
    xs, ys = mnist_subset(x, y, 50, seed=1)
    counts = torch.bincount(ys, minlength=10)
    assert int(counts[1]) == 3 and set(counts.tolist()) == {3, 5, 6} and len(ys) == 50
    xs2, ys2 = mnist_subset(x, y, 50, seed=1)
    assert torch.equal(xs, xs2) and torch.equal(ys, ys2)
    assert not torch.equal(mnist_subset(x, y, 50, seed=2)[0], xs)
    assert torch.equal(xs[:, 0].floor().long(), ys)  # rows stay paired with their labels
    assert len(set(xs[:, 0].tolist())) == 50  # no repeats
    with pytest.raises(ValueError, match="n must be"):
        mnist_subset(x, y, 0)
    with pytest.raises(ValueError, match="rows"):
        mnist_subset(x, y[:-1], 5)


def test_check_classification_data_accepts_good_data():
    check_classification_data(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), 3)
    check_classification_data(torch.randn(2, 1, 4, 4), torch.tensor([1, 1], dtype=torch.int32), 2)


GOOD_X, GOOD_Y = torch.zeros(4, 2), torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize(
    "x,y,error,pattern",
    [
        (torch.zeros(4, 2, dtype=torch.int64), GOOD_Y, TypeError, "x must be a floating tensor"),
        (np.zeros((4, 2)), GOOD_Y, TypeError, "x must be a floating tensor.*ndarray"),
        (torch.zeros(4), GOOD_Y, ValueError, "shape .n, features"),
        (torch.zeros(0, 2), GOOD_Y[:0], ValueError, "empty data"),
        (GOOD_X, GOOD_Y[:3], ValueError, "length mismatch, x has 4 rows but y has 3"),
        (GOOD_X, GOOD_Y.float(), TypeError, "integer labels.*float32"),
        (GOOD_X, GOOD_Y.bool(), TypeError, "integer labels.*bool"),
        (GOOD_X, torch.tensor([0, 1, 3, 5]), ValueError, r"\[0, 2\].*min 0 and max 5"),
        (GOOD_X, torch.tensor([-1, 1, 2, 0]), ValueError, r"\[0, 2\].*min -1 and max 2"),
        (
            torch.tensor([[0.0, math.nan], [math.inf, 1.0], [-math.inf, 0.0], [0.0, 0.0]]),
            GOOD_Y,
            ValueError,
            r"3 non-finite value\(s\) \(1 NaN, 2 inf\)",
        ),
    ],
    ids=[
        "int-x", "numpy-x", "1d-x", "empty", "length", "float-y", "bool-y", "too-high",
        "negative", "non-finite",
    ],
)  # fmt: skip
def test_check_classification_data_errors(x, y, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        check_classification_data(x, y, 3, name="iris train")
    assert str(info.value).startswith("iris train: ")


def test_holdout_split_keeps_every_class_and_loses_no_row():
    x = torch.arange(103, dtype=torch.float32)[:, None]
    y = torch.cat([torch.zeros(50), torch.ones(40), torch.full((13,), 2)]).long()
    x_fit, y_fit, x_held, y_held = holdout_split(x, y, fraction=0.2, seed=3)
    assert torch.bincount(y_held).tolist() == [10, 8, 3]  # round(0.2 * n_c) per class
    rows = torch.cat([x_fit, x_held]).squeeze(1).long()
    assert sorted(rows.tolist()) == list(range(103))
    assert torch.equal(y[rows[: len(x_fit)]], y_fit) and torch.equal(y[rows[len(x_fit) :]], y_held)
    again = holdout_split(x, y, fraction=0.2, seed=3)
    assert torch.equal(again.x_test, x_held)
    assert not torch.equal(holdout_split(x, y, fraction=0.2, seed=4).x_test, x_held)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        holdout_split(x, y, fraction=1.0)
    with pytest.raises(ValueError, match="103 rows but y has 5"):
        holdout_split(x, y[:5], fraction=0.2)
