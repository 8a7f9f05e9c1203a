"""``benchmarks/estimators.py --quick --no-write`` in a subprocess, checked against independent
computations: the split redone with scikit-learn, logistic regression's test NLL refitted and
scored directly, the ratios recomputed, the lowest-BIC GaussianMixture refitted, and the
validation part's folds drawn from the training rows only."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="the estimators benchmark needs scikit-learn")

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "estimators.py"


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory) -> dict:
    docs = REPO / "docs"
    before = {p.name: p.read_bytes() for p in docs.glob("results.*")}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-write", "--tables", "wine"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path_factory.mktemp("estimators"),
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in docs.glob("results.*")} == before  # --no-write
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, completed.stdout[-3000:]
    assert "#### wine" in completed.stdout and "previous default" in completed.stdout
    return json.loads(lines[0][len("RESULT ") :])


def _wine_split():
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def test_test_part_against_direct_computations(quick_result):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    r = quick_result["results"]["test"]["wine"]
    x_train, x_test, y_train, y_test = _wine_split()
    assert r["rows"] == {"train": 133, "test": 45}
    scaler = StandardScaler().fit(x_train)
    reference = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y_train)
    ref_nll = log_loss(y_test, reference.predict_proba(scaler.transform(x_test)))
    assert r["logistic"]["test_nll"] == pytest.approx(ref_nll, rel=1e-9)
    for key in ("circuit-classifier", "net"):
        nll, ratio = r[key]["test_nll"]["values"], r[key]["test_nll_ratio_to_logistic"]["values"]
        np.testing.assert_allclose(ratio, np.array(nll) / ref_nll, rtol=1e-9)
        assert all(0 <= a <= 1 for a in r[key]["test_accuracy"]["values"])
    covariance, components = r["best-bic-gmm"]["chosen"][0].split(", ")
    gmm = GaussianMixture(int(components), covariance_type=covariance, random_state=0)
    score = gmm.fit(x_train).score(x_test)
    assert r["best-bic-gmm"]["test_loglik"]["values"][0] == pytest.approx(score, rel=1e-9)
    assert np.isfinite(r["density"]["test_loglik"]["mean"])


def test_validation_part_uses_training_rows_only(quick_result):
    v = quick_result["results"]["validation"]["wine"]
    assert v["folds"] == 5  # --quick: one repeat of 5 folds, inside the 133 training rows
    assert set(v) >= {"single", "committee", "logistic_nll"}
    for label in ("single", "committee"):
        scores = v[label]["nll"]["values"]
        assert len(scores) == 5
        assert v[label]["ratio"] == pytest.approx(np.mean(scores) / v["logistic_nll"]["mean"])
