"""``benchmarks/early_stopping.py`` and ``benchmarks/density_defaults.py`` on quick settings,
against the estimator run directly: early stopping read off the full curves equals the
search actually run with ``n_iter_no_change``, and the defaults' comparison scores rows carved
from the training split only."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the benchmarks need scikit-learn (pip install -e .[dev])")

from sklearn.model_selection import train_test_split

from tests.benchmark_scripts import import_benchmark
from ugmm_prob.sklearn import UGMMCircuitDensity

QUICK = {"max_iter": 8, "channels": (1, 2)}


def test_early_stopping_read_off_the_curves_equals_the_search_run_with_patience():
    early = import_benchmark("early_stopping")
    tabular = import_benchmark("tabular")
    x, y = tabular.TABLES["iris"]()
    x_train = train_test_split(x, test_size=0.2, stratify=y, random_state=0)[0]
    recording = early.RecordingDensity(random_state=0, n_iter_no_change=None, **QUICK)
    recording.curves_ = []
    recording.fit(x_train)
    for patience in (1, 2, 5):
        candidate, epoch, _, trained = early.search(recording.curves_, patience)
        run = UGMMCircuitDensity(random_state=0, n_iter_no_change=patience, **QUICK)
        run.fit(x_train)
        assert run.best_params_ == {k: candidate[k] for k in run.best_params_}
        assert run.best_iter_ == epoch
        chosen = next(r for r in run.search_results_ if r == {**r, **candidate})
        assert chosen["epoch"] == epoch
        assert trained <= len(recording.curves_) * QUICK["max_iter"]
    result = early.run_one("iris", 0, 0.0, quick=True)
    assert result[20]["same"] and result[20]["share"] == 1.0  # 20 epochs > max_iter 8


def test_defaults_comparison_scores_validation_rows_of_the_training_split():
    defaults = import_benchmark("density_defaults")
    tabular = import_benchmark("tabular")
    result = defaults.run_one("iris", 0, quick=True)
    x, y = tabular.TABLES["iris"]()
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    fit, val = train_test_split(
        np.arange(len(x_train)), test_size=0.2, stratify=y_train, random_state=0
    )
    for label, options in defaults.VARIANTS.items():
        direct = UGMMCircuitDensity(random_state=0, **options, **tabular.QUICK)
        expected = direct.fit(x_train[fit]).score(x_train[val])
        assert result[label] == pytest.approx(expected, abs=1e-9), label


def test_tables_of_both_kinds_bold_the_better_variant():
    """A density table (per table, higher is better) and an imputer table (per table and
    rate, lower is better) from hand-made runs: mean ± sd (sample sd) over the seeds, the better
    variant in bold, its fit seconds in brackets."""
    defaults = import_benchmark("density_defaults")
    variants = {"a": {}, "b": {}}

    def runs(reference: str, **extra) -> list[dict]:
        return [
            {"table": "t", "seed": s, "a": 1.0 + s, "b": 2.0 + s, reference: 0.0, **extra}
            | {"a seconds": 3.0, "b seconds": 5.0}
            for s in (0, 1)
        ]

    density = defaults.table(runs("BIC GMM"), "cmd", 1.0, variants, "T").splitlines()
    assert density[-1] == "| t | 1.500 ± 0.707 (3 s) | **2.500 ± 0.707** (5 s) | 0.000 ± 0.000 |"
    imputer = runs("best scikit-learn", rate=0.3)
    lines = defaults.table(imputer, "cmd", 1.0, variants, "T").splitlines()
    assert lines[-1] == (
        "| t | 30% | **1.500 ± 0.707** (3 s) | 2.500 ± 0.707 (5 s) | 0.000 ± 0.000 |"
    )
    assert "Imputation RMSE" in lines[2] and "log p(x)" in density[2]
