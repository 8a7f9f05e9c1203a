"""``benchmarks/mnist_baselines.py`` on tiny settings in a subprocess: the table, the choices
made on validation, one test figure recomputed independently (data prepared with NumPy, the
mixture refitted with scikit-learn), and a clear error where MNIST is absent."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "mnist_baselines.py"
MNIST = pathlib.Path(
    os.environ.get("UGMM_PROB_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist"
)
TINY = [
    "--train-rows", "600", "--val-rows", "200", "--test-rows", "300",
    "--components", "2", "4", "--reg-covars-pixels", "1e-6", "--reg-covars-logit", "1e-6", "1e-3",
    "--class-components", "1", "2", "--pca-dims", "5", "10", "--pca-components", "1", "2",
    "--no-write",
]  # fmt: skip


def _run(args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, str]:
    """The ``RESULT`` numbers and the printed output of one tiny run."""
    pytest.importorskip("sklearn", reason="scikit-learn is needed (pip install -e .[bench])")
    if not all((MNIST / f"{name}.gz").exists() or (MNIST / name).exists() for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    )):  # fmt: skip
        pytest.skip(f"MNIST not available (expected the IDX files in {MNIST})")
    docs = REPO / "docs"
    before = {p.name: p.read_bytes() for p in docs.glob("results.*")}
    completed = _run([*TINY, "--mnist-dir", str(MNIST)], tmp_path_factory.mktemp("baselines"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    # --no-write leaves docs/ alone
    assert {p.name: p.read_bytes() for p in docs.glob("results.*")} == before
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, completed.stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :]), completed.stdout


def test_table(tiny):
    result, stdout = tiny
    assert result["rows"] == {"train": 600, "val": 200, "test": 300}
    header = "| model | chosen on validation | validation figures | test bits/dim "
    table = stdout[stdout.index(header) :].splitlines()
    rows = [line for line in table if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| diagonal GMM, logit",
        "| diagonal GMM, pixels",
        f"| diagonal GMM per class, {result['diag_space']}",
        "| PCA + full-covariance GMM per class, pixels",
        "| GaussianNB, logit",
        "| GaussianNB, pixels",
    ]
    assert all(row.count("|") == 8 for row in rows)  # seven columns
    assert "python benchmarks/mnist_baselines.py --train-rows 600" in stdout
    assert "nothing written (--no-write)" in stdout
    for space, row in zip(("logit", "pixels"), rows[:2], strict=True):
        assert f"{result['diag'][space]['test_bits_per_dim']:.3f}" in row


def test_choices_follow_validation(tiny):
    result, _ = tiny
    for space, row in result["diag"].items():
        # reg_covar chosen at the smallest size, then the best size with that reg_covar
        smallest = [t for t in row["tried"] if t["components"] == 2]
        assert len(smallest) == (2 if space == "logit" else 1)
        reg = min(smallest, key=lambda t: t["val_bits_per_dim"])["reg_covar"]
        same = [t for t in row["tried"] if t["reg_covar"] == reg]
        assert row["chosen"] == min(same, key=lambda t: t["val_bits_per_dim"])
        assert all(t["converged"] and t["iterations"] < 2000 for t in row["tried"])
    spaces = result["diag"]
    chosen = min(spaces, key=lambda s: spaces[s]["chosen"]["val_bits_per_dim"])
    assert result["diag_space"] == chosen
    row = result["class"]
    assert row["chosen"] == max(row["tried"], key=lambda t: t["val_log_pxy"])
    assert row["reg_covar"] == spaces[result["diag_space"]]["chosen"]["reg_covar"]
    pca = result["pca"]
    assert len(pca["tried"]) == 4
    best = max((t["val_accuracy"], t["val_log_pzy"]) for t in pca["tried"])
    assert (pca["chosen"]["val_accuracy"], pca["chosen"]["val_log_pzy"]) == best
    nb = result["nb"]["logit"]
    for figure in (row["test_accuracy"], pca["test_accuracy"], nb["test_accuracy"]):
        assert 0.5 < figure <= 1.0  # far above chance even on 600 images


def _independent_data(alpha: float = 1e-6):
    """Pixels, logits and log |dz/dx| with NumPy, from the IDX files and seed-0 noise."""
    import torch

    from ugmm_prob.datasets import load_mnist

    x_train, y_train = load_mnist("train", root=MNIST)
    x_test, y_test = load_mnist("test", root=MNIST)
    generator = torch.Generator().manual_seed(0)
    noise_train = torch.rand(x_train.shape, generator=generator)
    noise_test = torch.rand(x_test.shape, generator=generator)

    def space(x, noise, rows):
        pixels = ((torch.round(x * 255) + noise) / 256)[rows].double().numpy()
        y = alpha + (1 - 2 * alpha) * pixels
        logits = np.log(y) - np.log1p(-y)
        jacobian = (math.log(1 - 2 * alpha) - np.log(y) - np.log1p(-y)).sum(1)
        return pixels, logits, jacobian

    train = space(x_train, noise_train, slice(0, 600))
    test = space(x_test, noise_test, slice(0, 300))
    return train, y_train[:600].numpy(), test, y_test[:300].numpy()


def test_figures_recomputed_independently(tiny):
    from sklearn.mixture import GaussianMixture
    from sklearn.naive_bayes import GaussianNB

    result, _ = tiny
    (pixels, logits, _), y, (pixels_test, logits_test, jacobian), y_test = _independent_data()
    chosen = result["diag"]["logit"]["chosen"]
    gmm = GaussianMixture(
        chosen["components"],
        covariance_type="diag",
        tol=1e-3,
        max_iter=2000,
        reg_covar=chosen["reg_covar"],
        init_params="k-means++",
        random_state=0,
    ).fit(logits)
    log_px = gmm.score_samples(logits_test) + jacobian
    bpd = -(log_px.mean() / 784 - math.log(256)) / math.log(2)
    assert result["diag"]["logit"]["test_bits_per_dim"] == pytest.approx(bpd, abs=1e-6)
    nb = GaussianNB().fit(pixels, y)
    assert result["nb"]["pixels"]["test_accuracy"] == pytest.approx(nb.score(pixels_test, y_test))


def test_missing_mnist_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "UGMM_PROB_MNIST_DIR"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--mnist-dir", str(tmp_path / "nowhere"), "--no-write"],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "MNIST IDX files not found" in completed.stderr and "nowhere" in completed.stderr
