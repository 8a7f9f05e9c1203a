"""``UGMMCircuitDensity``'s size search and covariance pooling, against independent truths:
the candidate a plain validation loop picks, the maximum-likelihood Gaussian, a tied
mixture; and ``UGMMCircuitClassifier``'s defaults on a 10-class table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the estimators need scikit-learn (pip install -e .[dev])")

from ugmm_prob.sklearn import UGMMCircuitClassifier, UGMMCircuitDensity


def _clusters(n: int = 240, seed: int = 0) -> np.ndarray:
    """Three correlated Gaussian clusters in 3 columns."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]])
    mixing = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, 0.2, 0.9]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 3)) @ mixing.T


def test_search_picks_what_a_validation_loop_picks():
    """Each candidate's recorded held-out score is the held-out mean log p(x) of that
    candidate fitted alone (same seed, so the same held-out rows and start, and not refitted);
    the chosen one is the best of them."""
    x = _clusters()
    fixed = {"depth": 0, "covariance_pooling": 0.0, "max_iter": 15, "random_state": 0}
    searched = UGMMCircuitDensity(channels=(1, 2, 3, 4), **fixed).fit(x)
    seed = np.random.RandomState(0).randint(0, 2**31 - 1)  # the estimator's draw
    held_out = np.sort(np.random.RandomState(seed).permutation(len(x))[: round(0.2 * len(x))])
    scores = {}
    for k in (1, 2, 3, 4):
        alone = UGMMCircuitDensity(channels=k, refit=False, **fixed).fit(x)
        scores[k] = alone.score(x[held_out])
        recorded = next(r for r in searched.search_results_ if r["channels"] == k)
        assert recorded["validation_score"] == pytest.approx(scores[k], abs=1e-9)
    assert searched.best_params_["channels"] == max(scores, key=scores.get)
    assert scores[1] < max(scores.values())  # three clusters: one Gaussian is not the best


def test_one_standard_error_rule_on_known_scores():
    """:func:`search.select` by hand-made scores: the best is the highest score; the
    one-standard-error rule takes the fewest parameters among the scores at least the
    highest minus its standard error; a diverged candidate never counts; an unknown rule is
    refused."""
    from ugmm_prob.sklearn.search import Score, select

    scores = {
        "a": Score(-1.00, 0.10, 5, 50),
        "b": Score(-1.05, 0.20, 7, 10),  # within 0.10 of a: the smaller one
        "c": Score(-1.20, 0.05, 9, 5),  # smaller still, but below -1.10
        "d": Score(float("nan"), float("nan"), 0, 1),  # diverged
    }
    options = [{"name": name} for name in scores]
    chosen, epoch, records = select(options, lambda c: scores[c["name"]])
    assert (chosen["name"], epoch) == ("a", 5)
    assert [r["n_parameters"] for r in records] == [50, 10, 5, 1]
    chosen, epoch, _ = select(options, lambda c: scores[c["name"]], "one_standard_error")
    assert (chosen["name"], epoch) == ("b", 7)
    with pytest.raises(ValueError, match="selection must be one of"):
        select(options, lambda c: scores[c["name"]], "lowest")


def test_one_standard_error_search_records_the_held_out_noise():
    """The recorded ``validation_se`` of each candidate is the standard error of the held-out
    rows' ``log p(x)`` of that candidate fitted alone; the choice is the rule applied to the
    records; an unknown rule is refused before any fit."""
    x = _clusters(150)
    fixed = {"depth": 0, "covariance_pooling": 0.0, "max_iter": 15, "random_state": 0}
    searched = UGMMCircuitDensity(
        channels=(1, 2, 3, 4), selection="one_standard_error", **fixed
    ).fit(x)
    seed = np.random.RandomState(0).randint(0, 2**31 - 1)  # the estimator's draw
    held_out = np.sort(np.random.RandomState(seed).permutation(len(x))[: round(0.2 * len(x))])
    for record in searched.search_results_:
        alone = UGMMCircuitDensity(channels=record["channels"], refit=False, **fixed).fit(x)
        rows = alone.score_samples(x[held_out])
        assert record["validation_se"] == pytest.approx(rows.std() / np.sqrt(len(rows)), rel=1e-9)
        assert record["n_parameters"] == alone.n_parameters_
    best = max(searched.search_results_, key=lambda r: r["validation_score"])
    within = [
        r
        for r in searched.search_results_
        if r["validation_score"] >= best["validation_score"] - best["validation_se"]
    ]
    expected = min(within, key=lambda r: r["n_parameters"])
    assert expected is not best, "the set-up should have a smaller candidate within noise"
    assert searched.best_params_["channels"] == expected["channels"]
    with pytest.raises(ValueError, match="selection must be one of"):
        UGMMCircuitDensity(selection="lowest", **fixed).fit(x)


def test_a_list_of_starts_is_searched_like_the_sizes():
    """``init_params`` given as a list: every size is fitted from every start, each record
    is the held-out score of that size and start fitted alone, the best one is chosen; an
    unknown start is refused before any fit."""
    x = _clusters(150)
    fixed = {"depth": 0, "covariance_pooling": 0.0, "max_iter": 10, "random_state": 0}
    starts = ("kmeans", "random_from_data")
    searched = UGMMCircuitDensity(channels=(1, 3), init_params=starts, **fixed).fit(x)
    assert len(searched.search_results_) == 4
    scores = {}
    for k in (1, 3):
        for start in starts:
            alone = UGMMCircuitDensity(channels=k, init_params=start, refit=False, **fixed)
            scores[k, start] = alone.fit(x).search_results_[0]["validation_score"]
            recorded = next(
                r
                for r in searched.search_results_
                if r["channels"] == k and r["init_params"] == start
            )
            assert recorded["validation_score"] == pytest.approx(scores[k, start], abs=1e-9)
    best = max(scores, key=scores.get)
    chosen = searched.best_params_
    assert (chosen["channels"], chosen["init_params"]) == best
    with pytest.raises(ValueError, match="init_params must be one of"):
        UGMMCircuitDensity(init_params=("kmeans", "lloyd"), **fixed).fit(x)


def test_cross_validated_search_scores_every_candidate_on_every_fold():
    """``cv=3``: a candidate's recorded score is the mean, over the three folds of a seeded
    partition, of that candidate fitted alone with the fold held out (not refitted), its
    epoch their median; the chosen one is refitted on all rows for that many epochs."""
    x = _clusters(120)
    fixed = {"depth": 0, "covariance_pooling": 0.0, "max_iter": 10, "random_state": 0}
    searched = UGMMCircuitDensity(channels=(1, 3), cv=3, **fixed).fit(x)
    seed = np.random.RandomState(0).randint(0, 2**31 - 1)  # the estimator's draw
    parts = np.array_split(np.random.RandomState(seed).permutation(len(x)), 3)

    class OneFold(UGMMCircuitDensity):
        def _split(self, n, seed):
            return self.rows

    for k in (1, 3):
        values, epochs = [], []
        for part in parts:
            val = np.sort(part)
            alone = OneFold(channels=k, refit=False, **fixed)
            alone.rows = (np.setdiff1d(np.arange(len(x)), val), val)
            values.append(alone.fit(x).score(x[val]))
            epochs.append(alone.best_iter_)
        recorded = next(r for r in searched.search_results_ if r["channels"] == k)
        assert recorded["validation_score"] == pytest.approx(np.mean(values), abs=1e-9)
        assert recorded["epoch"] == int(np.median(epochs))
    best = max(searched.search_results_, key=lambda r: r["validation_score"])
    assert searched.best_params_["channels"] == best["channels"]
    assert searched.n_iter_ == max(best["epoch"], 1) and searched.best_iter_ == best["epoch"]
    for bad in (1, 2.5, True, 100):
        with pytest.raises(ValueError, match="cv must be None or an int"):
            UGMMCircuitDensity(cv=bad, **fixed).fit(x)


def test_n_iter_no_change_stops_where_the_full_curve_first_stalls():
    """A candidate trained with ``n_iter_no_change=P`` follows the held-out curve of the
    same candidate trained for every epoch up to the first epoch ``P`` past its best so far,
    and keeps the same epoch as long as the full curve's best comes before that; bad values
    are refused."""
    x = _clusters(90)
    fixed = {"depth": 0, "channels": 6, "covariance_pooling": 0.0, "max_iter": 40}
    full = UGMMCircuitDensity(n_iter_no_change=None, refit=False, random_state=0, **fixed)
    curve = [row["nll"] for row in full.fit(x).history_]
    assert len(curve) == 40
    for patience in (1, 2):
        stop = next(
            e for e in range(1, 41) if e - (min(range(e), key=curve.__getitem__) + 1) >= patience
        )
        assert stop < 40, "the set-up should overfit before epoch 40"
        stopped = UGMMCircuitDensity(
            n_iter_no_change=patience, refit=False, random_state=0, **fixed
        ).fit(x)
        assert [row["nll"] for row in stopped.history_] == curve[:stop]
        assert stopped.best_iter_ == stop - patience
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="n_iter_no_change must be None or an int >= 1"):
            UGMMCircuitDensity(n_iter_no_change=bad, **fixed).fit(x)


def test_n_init_keeps_the_start_with_the_highest_training_likelihood(monkeypatch):
    """``n_init=3`` from seed ``s`` is the fit, among the single fits from seeds ``s``,
    ``s + 1`` and ``s + 2``, with the highest training log-likelihood (scored here by
    ``score``, on the same rows): its parameters, not only its score; bad values are
    refused."""
    x = _clusters(120)
    fixed = {"depth": 0, "channels": 5, "covariance_pooling": 0.0, "max_iter": 15}
    fixed |= {"init_params": "random_from_data", "early_stopping": False}

    def fit(seed: int, n_init: int) -> UGMMCircuitDensity:
        monkeypatch.setattr(UGMMCircuitDensity, "_seed", lambda self: seed)
        return UGMMCircuitDensity(n_init=n_init, **fixed).fit(x)

    singles = [fit(7 + start, 1) for start in range(3)]
    scores = [single.score(x) for single in singles]
    assert max(scores) - min(scores) > 1e-3, "the starts should reach different optima"
    best = singles[int(np.argmax(scores))]
    restarted = fit(7, 3)
    assert restarted.score(x) == pytest.approx(max(scores), abs=1e-12)
    for mine, theirs in zip(restarted.model_.parameters(), best.model_.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_init must be an int >= 1"):
            UGMMCircuitDensity(n_init=bad, **fixed).fit(x)


def test_one_channel_at_depth_zero_is_the_maximum_likelihood_gaussian():
    """One full-covariance leaf over every column, one EM step: the Gaussian with the rows'
    mean and (population) covariance, scored by SciPy."""
    from scipy.stats import multivariate_normal

    x = _clusters()
    model = UGMMCircuitDensity(
        channels=1, depth=0, covariance_pooling=0.0, early_stopping=False, max_iter=1
    ).fit(x)
    truth = multivariate_normal(x.mean(0), np.cov(x, rowvar=False, bias=True)).logpdf(x)
    # EM's variance pseudo-count (0.01 of a row towards the start) is the only difference
    np.testing.assert_allclose(model.score_samples(x), truth, atol=5e-3)


def test_large_pooling_ties_the_covariances():
    """``covariance_pooling`` -> inf is the tied mixture: every unit the same covariance."""
    x = _clusters()
    model = UGMMCircuitDensity(
        channels=3, depth=0, covariance_pooling=1e7, early_stopping=False, max_iter=10
    ).fit(x)
    covariance = model.model_.inputs.covariance_matrix.detach().numpy()[0]  # (units, 3, 3)
    np.testing.assert_allclose(covariance[1:], covariance[:1].repeat(2, 0), rtol=1e-4)


def test_a_search_without_held_out_rows_is_refused():
    with pytest.raises(ValueError, match="held-out rows"):
        UGMMCircuitDensity(channels=(1, 2), early_stopping=False).fit(_clusters())


def test_classifier_defaults_on_ten_classes():
    """Digits (10 classes, 64 columns): every class starts with repetitions of its own and
    the defaults classify sanely. Measured (random_state=0, this split): 89.3% against
    logistic regression's 96.9%; before (8 repetitions shared by 10 classes) 75.8%."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0
    )
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    reference = logistic.fit(x_train, y_train).score(x_test, y_test)
    model = UGMMCircuitClassifier(random_state=0).fit(x_train, y_train)
    assert model.model_.graph.repetitions % 10 == 0
    accuracy = model.score(x_test, y_test)
    recalls = [(model.predict(x_test[y_test == c]) == c).mean() for c in range(10)]
    assert accuracy >= reference - 0.12, (accuracy, reference)
    assert accuracy >= 0.85
    assert min(recalls) >= 0.5, recalls
