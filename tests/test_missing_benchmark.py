"""``benchmarks/missing.py``: the removal pattern, the RMSE and the rows it reports, checked
against plain recomputations on a quick run (no files written)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.benchmark_scripts import import_benchmark

pytest.importorskip("sklearn", reason="scikit-learn is optional (pip install 'scikit-learn>=1.3')")

missing = import_benchmark("missing")


def test_cells_are_removed_completely_at_random_at_the_rate():
    x = np.ones((4000, 5))
    holes = missing.remove_cells(x, 0.3, np.random.RandomState(0))
    share = np.isnan(holes).mean(axis=0)
    # binomial sd of a column's share: sqrt(0.3 * 0.7 / 4000) = 0.0072; 5 sd
    assert np.all(np.abs(share - 0.3) < 0.036)
    assert np.all(holes[~np.isnan(holes)] == 1.0)


@pytest.fixture(scope="module")
def quick_run():
    return missing.main(["--quick", "--no-write", "--tables", "iris", "--rates", "0.3"])


def test_quick_run_reports_every_imputer_and_both_fits(quick_run):
    (result,) = quick_run
    assert result["name"] == "iris" and result["rate"] == 0.3
    (run,) = result["runs"]
    for name in missing.IMPUTERS:
        assert 0 < run[f"rmse_{name}"] < 3, name
    assert math.isfinite(run["loglik_incomplete"])
    assert run["complete_rows"] >= missing.MIN_COMPLETE_ROWS
    assert math.isfinite(run["loglik_complete_rows"])


def test_simple_imputer_rmse_is_the_training_mean_error(quick_run):
    """The benchmark's SimpleImputer row equals the RMSE of the observed training means
    over the removed cells of every test pattern, recomputed here from the same split and
    removal patterns (drawn one after the other)."""
    (run,) = quick_run[0]["runs"]
    assert run["test_patterns"] == missing.TEST_PATTERNS > 1
    x, y = missing.TABLES["iris"]()
    data = missing.split("iris", x, y, 0)
    rng = np.random.RandomState(0)
    train = missing.remove_cells(data.x_train, 0.3, rng)
    means, sd = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    squares = []
    for _ in range(missing.TEST_PATTERNS):
        removed = np.isnan(missing.remove_cells(data.x_test, 0.3, rng))
        squares.append((((means - data.x_test) / sd)[removed]) ** 2)
    expected = float(np.sqrt(np.mean(np.concatenate(squares))))
    assert run["rmse_simple"] == pytest.approx(expected)


def test_records_carry_every_metric(quick_run):
    records = missing.records(quick_run, "command")
    assert {r["metric"] for r in records} == {
        "rmse_circuit",
        "rmse_simple",
        "rmse_knn",
        "rmse_iterative",
        "loglik_incomplete",
        "loglik_complete_rows",
    }
    assert all(r["experiment"] == "iris-missing-0.3" and r["seeds"] == [0] for r in records)
