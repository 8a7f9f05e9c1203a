"""The scikit-learn estimators: scikit-learn's own estimator checks, meta-estimators, pickling,
and exact answers (missing-value marginals, posteriors, parameter counts) against truths
computed independently (numerical integrals on a fine grid, hand counts)."""

import pickle

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip(
    "sklearn", reason="scikit-learn is optional (pip install 'scikit-learn>=1.3')"
)

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import ugmm_prob.sklearn as usk  # noqa: E402
from ugmm_prob.sklearn import (  # noqa: E402
    UGMMCircuitClassifier,
    UGMMCircuitDensity,
    UGMMCircuitImputer,
    UGMMNetClassifier,
    count_free_parameters,
    load_estimator,
    save_estimator,
)

# Small settings so that scikit-learn's ~50 checks per estimator stay fast on 2 cores; the
# checks that test learning (check_classifiers_train: accuracy > 0.83 on blobs) pass with them.
FAST = [
    UGMMCircuitDensity(max_iter=3, random_state=0),
    UGMMCircuitClassifier(max_iter=3, random_state=0),
    UGMMNetClassifier(max_iter=8, n_members=2, random_state=0),
    UGMMCircuitImputer(max_iter=3, random_state=0),
]


def expected_failed_checks(estimator):
    """No check is expected to fail. (scikit-learn itself skips ``check_array_api_input``
    unless the environment sets ``SCIPY_ARRAY_API=1``: the estimators take NumPy/pandas
    input only, converted to torch inside.)"""
    return {}


@parametrize_with_checks(FAST, expected_failed_checks=expected_failed_checks)
def test_scikit_learn_estimator_checks(estimator, check):
    torch.set_num_threads(1)
    check(estimator)


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return x, y


def _correlated(n=400, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.normal(size=n)
    b = 0.8 * a + 0.3 * rng.normal(size=n) + np.where(rng.rand(n) < 0.5, -1.0, 1.0)
    return np.column_stack([10.0 * a + 3.0, b])  # different units per column


def test_pipeline_grid_search_and_cross_validation(iris):
    x, y = iris
    scores = cross_val_score(UGMMCircuitClassifier(max_iter=5, random_state=0), x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    pipe = make_pipeline(StandardScaler(), UGMMNetClassifier(max_iter=15, random_state=0))
    assert pipe.fit(x, y).score(x, y) > 0.8
    grid = GridSearchCV(
        UGMMCircuitDensity(max_iter=3, random_state=0), {"channels": [1, 2]}, cv=2
    ).fit(x)
    assert grid.best_params_["channels"] in (1, 2)
    assert np.isfinite(grid.best_score_)


def test_pickled_estimators_predict_the_same_with_a_fresh_pyro_name(iris):
    x, y = iris
    fitted = [
        UGMMCircuitDensity(max_iter=3, random_state=0).fit(x),
        UGMMCircuitClassifier(max_iter=3, random_state=0).fit(x, y),
        UGMMNetClassifier(max_iter=5, random_state=0).fit(x, y),
    ]
    for estimator in fitted:
        blob = pickle.dumps(estimator)
        assert b"torch.nn" not in blob and b"PyroModule" not in blob
        copy = pickle.loads(blob)
        assert copy.model_._pyro_name != estimator.model_._pyro_name
        method = "score_samples" if isinstance(estimator, UGMMCircuitDensity) else "predict_proba"
        np.testing.assert_array_equal(getattr(copy, method)(x), getattr(estimator, method)(x))
        # a clone is unfitted and has the same parameters
        assert clone(estimator).get_params() == estimator.get_params()


def test_density_score_samples_are_in_the_original_units():
    x = _correlated()
    model = UGMMCircuitDensity(max_iter=20, random_state=0).fit(x)
    # integrates to 1 over the plane in the original units (grid over +-6 sd)
    lo, hi = x.mean(0) - 6 * x.std(0), x.mean(0) + 6 * x.std(0)
    g0, g1 = np.linspace(lo[0], hi[0], 301), np.linspace(lo[1], hi[1], 301)
    grid = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(model.score_samples(grid)).reshape(301, 301)
    total = np.trapezoid(np.trapezoid(density, g1, axis=1), g0)
    assert total == pytest.approx(1.0, abs=2e-3)
    assert model.score(x) == pytest.approx(model.score_samples(x).mean())


def test_missing_cell_is_the_numerical_integral_over_that_cell():
    x = _correlated()
    model = UGMMCircuitDensity(max_iter=20, random_state=0).fit(x)
    grid = np.linspace(x[:, 1].min() - 6, x[:, 1].max() + 6, 4001)
    for a in (-5.0, 3.0, 14.0):
        rows = np.column_stack([np.full_like(grid, a), grid])
        integral = np.trapezoid(np.exp(model.score_samples(rows)), grid)
        marginal = model.score_samples(np.array([[a, np.nan]]))[0]
        assert marginal == pytest.approx(np.log(integral), abs=1e-4)
    # and over the first column, and both missing: log 1 = 0
    grid0 = np.linspace(x[:, 0].min() - 60, x[:, 0].max() + 60, 4001)
    rows = np.column_stack([grid0, np.full_like(grid0, 0.5)])
    integral = np.trapezoid(np.exp(model.score_samples(rows)), grid0)
    assert model.score_samples(np.array([[np.nan, 0.5]]))[0] == pytest.approx(
        np.log(integral), abs=1e-4
    )
    assert model.score_samples(np.array([[np.nan, np.nan]]))[0] == pytest.approx(0.0, abs=1e-9)


def test_classifier_posterior_with_a_missing_cell_is_the_integrated_posterior():
    x = _correlated()
    y = np.where(x[:, 1] > 0.8 * (x[:, 0] - 3) / 10, "up", "down")  # string labels
    model = UGMMCircuitClassifier(max_iter=20, random_state=0).fit(x, y)
    assert list(model.classes_) == ["down", "up"]
    grid = np.linspace(x[:, 1].min() - 6, x[:, 1].max() + 6, 4001)
    rows = np.column_stack([np.full_like(grid, 4.0), grid])
    weight = np.exp(model.score_samples(rows))[:, None] * model.predict_proba(rows)
    truth = np.trapezoid(weight, grid, axis=0)
    truth /= truth.sum()
    np.testing.assert_allclose(model.predict_proba(np.array([[4.0, np.nan]]))[0], truth, atol=1e-4)
    assert set(model.predict(x[:5])) <= {"up", "down"}
    assert model.score(x, y) > 0.8


def test_free_parameter_count_and_information_criteria():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(50, 4))
    model = UGMMCircuitDensity(
        depth=1,
        repetitions=2,
        channels=2,
        inputs="gaussian",
        components=3,
        covariance_pooling=0.0,
        max_iter=2,
        random_state=0,
    ).fit(x)
    # inputs: loc and scale (R*D*I*K each) + K-1 mixing weights per unit;
    # root: one sum over R * I^2 products (minus 1); one class: no free prior.
    reps, dims, chans, comps = 2, 4, 2, 3
    expected = 2 * reps * dims * chans * comps + reps * dims * chans * (comps - 1)
    expected += reps * chans**2 - 1
    assert count_free_parameters(model.model_) == model.n_parameters_ == expected
    log_l = model.score_samples(x).sum()
    assert model.bic(x) == pytest.approx(-2 * log_l + expected * np.log(50))
    assert model.aic(x) == pytest.approx(-2 * log_l + 2 * expected)


def test_sample_impute_and_conditional_sample():
    x = _correlated()
    model = UGMMCircuitDensity(max_iter=20, random_state=0).fit(x)
    drawn, labels = model.sample(500)
    assert drawn.shape == (500, 2) and (labels == 0).all()
    np.testing.assert_array_equal(model.sample(5)[0], model.sample(5)[0])  # int random_state
    assert abs(drawn[:, 0].mean() - x[:, 0].mean()) < 0.2 * x[:, 0].std()
    holes = x[:50].copy()
    holes[:, 1] = np.nan
    holes[0] = x[0]  # a complete row stays as it is
    for method in ("sample", "mode", "mpe", "mean"):
        filled = model.impute(holes, method=method)
        np.testing.assert_array_equal(filled[:, 0], x[:50, 0])
        np.testing.assert_array_equal(filled[0], x[0])
        assert np.isfinite(filled).all()
    # exact conditional draws: their mean and spread match E[x1 | x0] and sd[x1 | x0]
    # computed by numerical integration of exp(score_samples) over x1
    grid = np.linspace(x[:, 1].min() - 6, x[:, 1].max() + 6, 4001)
    rows = np.array([[-5.0, np.nan], [3.0, np.nan], [14.0, np.nan]])
    draws = model.conditional_sample(rows, n_samples=4000)[:, :, 1]
    for i, a in enumerate(rows[:, 0]):
        weight = np.exp(model.score_samples(np.column_stack([np.full_like(grid, a), grid])))
        weight /= np.trapezoid(weight, grid)
        mean = np.trapezoid(grid * weight, grid)
        sd = np.sqrt(np.trapezoid((grid - mean) ** 2 * weight, grid))
        assert draws[:, i].mean() == pytest.approx(mean, abs=5 * sd / np.sqrt(4000))
        assert draws[:, i].std() == pytest.approx(sd, rel=0.1)
    draws = model.conditional_sample(holes[:3], n_samples=4)
    assert draws.shape == (4, 3, 2) and np.isfinite(draws).all()
    with pytest.raises(ValueError, match="method must be one of 'mean', 'mpe', 'sample'"):
        model.impute(holes, method="median")


def test_classifier_sample_and_impute_take_labels(iris):
    x, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = UGMMCircuitClassifier(max_iter=5, random_state=0).fit(x, names)
    drawn, labels = model.sample(10, c="virginica")
    assert drawn.shape == (10, 4) and set(labels) == {"virginica"}
    with pytest.raises(ValueError, match="unknown class label 'rose'"):
        model.sample(3, c="rose")
    holes = x[:4].copy()
    holes[:, 2] = np.nan
    assert np.isfinite(model.impute(holes, names[:4])).all()


def test_training_rows_with_missing_cells_are_used():
    """Rows with NaN cells are fitted as they are (their observed cells count), without a
    warning; what no fit can use is refused, naming it."""
    import warnings

    x = _correlated(n=100)
    x[:7, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = UGMMCircuitDensity(max_iter=2, random_state=0).fit(x)
    assert np.isfinite(model.score_samples(x)).all()
    np.testing.assert_allclose(model.mean_, np.nanmean(x, axis=0))
    empty = x.copy()
    empty[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] have no observed value"):
        UGMMCircuitDensity(max_iter=2).fit(empty)


def test_save_and_load_estimator(tmp_path, iris):
    x, y = iris
    model = UGMMCircuitClassifier(max_iter=3, random_state=0).fit(x, np.array(list("abc"))[y])
    path = save_estimator(model, tmp_path / "model.pt", extra={"columns": ["a", "b", "c", "d"]})
    loaded, extra = load_estimator(path)
    assert extra == {"columns": ["a", "b", "c", "d"]}
    assert list(loaded.classes_) == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.score_samples(x), model.score_samples(x))


def test_errors_name_what_was_expected(iris, monkeypatch):
    x, y = iris
    with pytest.raises(ValueError, match="max_iter must be an int >= 1, got 0"):
        UGMMCircuitDensity(max_iter=0).fit(x)
    with pytest.raises(ValueError, match="likelihood_weight must be in"):
        UGMMCircuitClassifier(likelihood_weight=2.0).fit(x, y)
    model = UGMMCircuitDensity(max_iter=2, random_state=0).fit(x)
    with pytest.raises(ValueError, match="4 features"):
        model.score_samples(x[:, :3])
    monkeypatch.setattr(usk.base, "_SKLEARN_ERROR", ImportError("no sklearn"))
    with pytest.raises(ImportError, match="needs scikit-learn"):
        UGMMCircuitDensity().fit(x)


def test_hybrid_objective_trains_with_gradient_descent(iris):
    x, y = iris
    model = UGMMCircuitClassifier(likelihood_weight=0.5, max_iter=10, random_state=0).fit(x, y)
    assert model.score(x, y) > 0.8 and model.history_[-1]["lr"] > 0


def test_the_package_does_not_shadow_scikit_learn():
    """``ugmm_prob.sklearn`` imports the real scikit-learn (absolute imports), whatever is
    imported first."""
    import sys

    import ugmm_prob.sklearn.base as base

    assert sys.modules["sklearn"] is sklearn and "ugmm_prob" not in sklearn.__file__
    assert base.BaseEstimator.__module__ == "sklearn.base"
    assert usk.UGMMNetClassifier.__module__ == "ugmm_prob.sklearn.net"


def test_training_rows_with_missing_cells_by_estimator(iris):
    """Circuits fit rows with NaN cells (marginalised in training and prediction); the
    uGMM-NN refuses NaN cells in fit and predict, saying what to use."""
    x, y = iris
    holes = x.copy()
    holes[::10, 2] = np.nan  # 15 of 150 rows
    circuit = UGMMCircuitClassifier(max_iter=3, random_state=0).fit(holes, y)
    assert np.isfinite(circuit.predict_proba(holes)).all() and circuit.score(x, y) > 0.8
    complete = ~np.isnan(holes).any(axis=1)
    dropped = UGMMCircuitClassifier(max_iter=3, random_state=0).fit(x[complete], y[complete])
    # the incomplete rows took part: not the model of the complete rows alone
    assert not np.allclose(circuit.predict_proba(holes), dropped.predict_proba(holes))
    with pytest.raises(ValueError, match=r"fit: X has missing \(NaN\) cells in 15 of 150 rows"):
        UGMMNetClassifier(max_iter=2).fit(holes, y)
    net = UGMMNetClassifier(max_iter=2, random_state=0).fit(x, y)
    with pytest.raises(ValueError, match=r"predict_proba: .* Use UGMMCircuitClassifier"):
        net.predict(holes)
    with pytest.raises(ValueError, match="infinity"):
        net.predict(np.where(np.isnan(holes), np.inf, holes))


def test_net_committee_members_hold_out_stratified_blocks(iris, tmp_path):
    """With the defaults (5 members x 0.2) the members' held-out rows are the folds of a
    stratified 5-fold split; predict_proba is the members' average; save/load and pickling
    rebuild the committee."""
    x, y = iris
    model = UGMMNetClassifier(max_iter=3, random_state=0)
    blocks = model._member_validation(y, seed=7)
    assert len(blocks) == 5
    counts = np.bincount(np.concatenate(blocks), minlength=len(y))
    assert counts.min() == counts.max() == 1  # every row validates exactly one member
    for block in blocks:
        assert len(block) == 30 and set(np.bincount(y[block])) == {10}  # 1/3 of each class
    model.fit(x, y)
    assert len(model.best_iter_) == 5 and {row["member"] for row in model.history_} == set(range(5))
    z = torch.tensor((x - model.mean_) / model.scale_)
    with torch.no_grad():
        members = [torch.softmax(m.logits(z), -1).numpy() for m in model.model_.members]
    np.testing.assert_allclose(model.predict_proba(x), np.mean(members, 0), atol=1e-12)
    loaded, _ = load_estimator(save_estimator(model, tmp_path / "net.pt"))
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    single = UGMMNetClassifier(n_members=1, early_stopping=False, max_iter=3, random_state=0)
    assert single.fit(x, y).best_iter_ == [None] and len(single.model_.members) == 1
    with pytest.raises(ValueError, match="n_members must be an int >= 1"):
        UGMMNetClassifier(n_members=0).fit(x, y)
