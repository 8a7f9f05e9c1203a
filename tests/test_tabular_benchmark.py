"""``benchmarks/tabular.py --quick --no-write`` in a subprocess, checked against independent
computations: the split and standardisation redone with NumPy, the exact Jacobian
``-sum(log sd)``, every GaussianMixture test log-likelihood refitted directly with
scikit-learn and scored with ``GaussianMixture.score``, the baselines' accuracies."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip(
    "sklearn", reason="scikit-learn is needed for the tabular benchmark (pip install -e .[dev])"
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "tabular.py"


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory) -> dict:
    """The numbers of one quick run (Iris and wine), from its ``RESULT`` line."""
    docs = REPO / "docs"
    before = {p.name: p.read_bytes() for p in docs.glob("results.*")}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-write", "--datasets", "iris", "wine"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path_factory.mktemp("tabular"),
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # --no-write leaves docs/ alone
    assert {p.name: p.read_bytes() for p in docs.glob("results.*")} == before
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, completed.stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


def _by_name(result: dict) -> dict[str, dict]:
    return {d["name"]: d for d in result["datasets"]}


def _iris_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's Iris split redone from the shipped CSV with NumPy: scikit-learn's
    ``train_test_split(test_size=0.2, random_state=42)`` rows (not stratified)."""
    import torch
    from sklearn.model_selection import train_test_split

    from ugmm_prob.datasets import load_iris

    x, y = load_iris(dtype=torch.float64)
    x_train, x_test, y_train, y_test = train_test_split(
        x.double().numpy(), y.numpy(), test_size=0.2, random_state=42
    )
    return x_train, y_train, x_test, y_test


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if name == "iris":
        return _iris_raw()
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_split_and_jacobian(quick_result, name):
    data = _by_name(quick_result)[name]
    x_train, _, x_test, _ = _raw(name)
    assert (data["train_rows"], data["test_rows"]) == (len(x_train), len(x_test))
    sd = x_train.std(axis=0)  # population sd, as the benchmark's standardisation
    assert data["log_jacobian"] == pytest.approx(-np.log(sd).sum(), abs=1e-9)


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_gmm_logliks_match_sklearn_score(quick_result, name):
    """Each reported GMM test log-likelihood = a direct refit's ``score`` + the Jacobian."""
    from sklearn.mixture import GaussianMixture

    data = _by_name(quick_result)[name]
    x_train, _, x_test, _ = _raw(name)
    mean, sd = x_train.mean(0), x_train.std(0)
    z_train, z_test = (x_train - mean) / sd, (x_test - mean) / sd
    settings = data["gmm_settings"]
    rows = [(cov, row) for cov, row in data["gmm"].items()]
    rows.append((data["best_gmm"]["covariance_type"], data["best_gmm"]))  # validation-chosen
    for cov, row in rows:
        gmm = GaussianMixture(
            row["components"],
            covariance_type=cov,
            n_init=settings["n_init"],
            max_iter=settings["max_iter"],
            random_state=settings["seed"],
        ).fit(z_train)
        direct = gmm.score(z_test) - np.log(sd).sum()
        assert row["test_loglik"] == pytest.approx(direct, abs=1e-6), cov
    lowest = data["bic_gmm"]
    assert lowest["train_bic"] == min(row["train_bic"] for row in data["gmm"].values())


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_jacobian_gives_original_units(name):
    """The correction's sign and size: one Gaussian fitted to standardised data, scored and
    corrected by ``-sum(log sd)``, equals the Gaussian fitted to the raw data and scored there
    (maximum likelihood is affine-equivariant; scikit-learn's reg_covar=1e-6 aside)."""
    from scipy.stats import multivariate_normal
    from sklearn.mixture import GaussianMixture

    x_train, _, x_test, _ = _raw(name)
    mean, sd = x_train.mean(0), x_train.std(0)
    gmm = GaussianMixture(1, covariance_type="full").fit((x_train - mean) / sd)
    corrected = gmm.score((x_test - mean) / sd) - np.log(sd).sum()
    raw_cov = np.cov(x_train, rowvar=False, bias=True)
    direct = multivariate_normal(x_train.mean(0), raw_cov).logpdf(x_test).mean()
    assert corrected == pytest.approx(direct, abs=2e-3)


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_whitened_jacobian_is_the_raw_covariance_log_determinant(quick_result, name):
    """Standardising then whitening maps raw x to unit covariance, so its total log-Jacobian
    is ``-1/2 log det`` of the raw training covariance."""
    data = _by_name(quick_result)[name]
    x_train = _raw(name)[0]
    _, logdet = np.linalg.slogdet(np.cov(x_train, rowvar=False, bias=True))
    assert data["log_jacobian_whitened"] == pytest.approx(-0.5 * logdet, abs=1e-6)


def test_gaussian_nb_accuracy_matches(quick_result):
    from sklearn.naive_bayes import GaussianNB

    data = _by_name(quick_result)["wine"]
    x_train, y_train, x_test, y_test = _raw("wine")
    mean, sd = x_train.mean(0), x_train.std(0)
    nb = GaussianNB().fit((x_train - mean) / sd, y_train)
    assert data["gaussian_nb"]["test_accuracy"] == pytest.approx(
        nb.score((x_test - mean) / sd, y_test)
    )


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_circuit_numbers_are_sane(quick_result, name):
    """Finite, seeds as asked, mean of the runs, and a density no absurdly far from the
    GMMs' (a few nats per feature below the best one at most after 20 quick epochs)."""
    data = _by_name(quick_result)[name]
    for circuit in (data["circuit"], data["circuit_whitened"]):
        _check_circuit(circuit, data)


def _check_circuit(circuit: dict, data: dict) -> None:
    assert [run["seed"] for run in circuit["runs"]] == [0]
    run = circuit["runs"][0]
    assert circuit["test_loglik_mean"] == pytest.approx(run["test_loglik"])
    assert np.isfinite(run["test_loglik"])
    assert 0.0 <= run["test_accuracy"] <= 1.0
    assert run["test_accuracy"] > 1.5 / data["classes"]  # far better than chance
    best = data["best_gmm"]["test_loglik"]
    assert np.isfinite(best)
    assert best - 2.0 * data["features"] < run["test_loglik"] < best + 2.0 * data["features"]
    # the epoch count was chosen on validation, within the quick schedule
    assert 1 <= circuit["epochs"] <= 20
