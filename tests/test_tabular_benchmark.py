"""``benchmarks/tabular.py --quick --no-write`` in a subprocess, checked against independent
computations: the split redone with scikit-learn, the exact Jacobian ``-sum(log sd)``, every
GaussianMixture test log-likelihood refitted directly and scored with
``GaussianMixture.score``, the circuit rows refitted with ``UGMMCircuitDensity`` directly."""

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
        [sys.executable, str(SCRIPT), "--quick", "--no-write", "--tables", "iris", "wine"],
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
    return {d["name"]: d for d in result["tables"]}


def _split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The quick run's split (seed 0) redone with scikit-learn: stratified 80/20."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    x, y = {"iris": datasets.load_iris, "wine": datasets.load_wine}[name](return_X_y=True)
    x_train, x_test = train_test_split(x, test_size=0.2, stratify=y, random_state=0)[:2]
    return x_train, x_test


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_gmm_logliks_match_sklearn_score(quick_result, name):
    """The BIC-chosen and validation-chosen GMMs' test log-likelihoods = a direct refit's
    ``score`` on the standardised split + the Jacobian ``-sum log sd``."""
    from sklearn.mixture import GaussianMixture

    run = _by_name(quick_result)[name]["runs"][0]
    x_train, x_test = _split(name)
    mean, sd = x_train.mean(0), x_train.std(0)  # population sd, as the benchmark's
    for row in ("bic-gmm", "best-gmm"):
        covariance, components = run[row]["chosen"].split(" x")
        gmm = GaussianMixture(
            int(components), covariance_type=covariance, n_init=1, max_iter=200, random_state=0
        ).fit((x_train - mean) / sd)
        direct = gmm.score((x_test - mean) / sd) - np.log(sd).sum()
        assert run[row]["test_loglik"] == pytest.approx(direct, abs=1e-6), row


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_circuit_rows_are_the_estimators_scores(quick_result, name):
    """The default circuit's row = ``UGMMCircuitDensity`` fitted on the training split with
    the quick settings and the split's seed, scored on the test split (original units)."""
    from ugmm_prob.sklearn import UGMMCircuitDensity

    run = _by_name(quick_result)[name]["runs"][0]
    x_train, x_test = _split(name)
    model = UGMMCircuitDensity(
        channels=(1, 2), covariance_pooling=(0.0, 10.0), max_iter=5, random_state=0
    ).fit(x_train)
    assert run["circuit-default"]["test_loglik"] == pytest.approx(model.score(x_test), abs=1e-6)
    assert run["circuit-default"]["chosen"] == model.best_params_
    # the tuned grid holds the default one, so it chose among at least as many candidates
    assert run["circuit"]["candidates"] >= run["circuit-default"]["candidates"]


def test_jacobian_gives_original_units():
    """The correction's sign and size: one Gaussian fitted to standardised data, scored and
    corrected by ``-sum(log sd)``, equals the Gaussian fitted to the raw data and scored there
    (maximum likelihood is affine-equivariant; scikit-learn's reg_covar=1e-6 aside)."""
    from scipy.stats import multivariate_normal
    from sklearn.mixture import GaussianMixture

    x_train, x_test = _split("wine")
    mean, sd = x_train.mean(0), x_train.std(0)
    gmm = GaussianMixture(1, covariance_type="full").fit((x_train - mean) / sd)
    corrected = gmm.score((x_test - mean) / sd) - np.log(sd).sum()
    raw_cov = np.cov(x_train, rowvar=False, bias=True)
    direct = multivariate_normal(x_train.mean(0), raw_cov).logpdf(x_test).mean()
    assert corrected == pytest.approx(direct, abs=2e-3)


def test_tables_ship_with_scikit_learn():
    """Five tables, nothing downloaded; diabetes without its two-valued column, digits
    dequantised (no two rows share a value in a column)."""
    from tests.benchmark_scripts import import_benchmark

    tabular = import_benchmark("tabular")
    assert set(tabular.TABLES) == {"iris", "wine", "breast-cancer", "diabetes", "digits"}
    x, labels = tabular.TABLES["diabetes"]()
    assert labels is None and x.shape == (442, 10)
    assert min(len(np.unique(column)) for column in x.T) > 2
    x, labels = tabular.TABLES["digits"]()
    assert x.shape == (1797, 64) and len(np.unique(x[:, 0])) == len(x)


def test_records_carry_mean_sd_seeds_and_units(quick_result):
    from tests.benchmark_scripts import import_benchmark

    tabular = import_benchmark("tabular")
    table = _by_name(quick_result)["wine"]
    records = tabular.records(table, "cmd")
    assert {r["experiment"] for r in records} == {
        f"wine-{row}" for row in ("circuit", "circuit-default", "best-gmm", "bic-gmm")
    }
    for r in records:
        assert r["metric"] == "test_loglik" and r["seeds"] == [0] and r["sd"] == 0.0
        assert r["units"].startswith("nats per test row") and r["command"] == "cmd"
