"""Incomplete data against independent truths: fitting with missing (NaN) cells, unlabelled
rows, and imputation.

- one full-batch EM step of a circuit that is a mixture of diagonal Gaussians equals the
  textbook EM step of that mixture on the observed cells, written out in NumPy;
- EM with missing cells (and unlabelled rows) never lowers the observed-data likelihood, on
  several structures and input types;
- the gradient objective is ``-log p(x_observed)``, and an unlabelled row's loss and EM
  statistics are the log-sum-exp over classes of the labelled ones (statistics weighted by
  the class posterior);
- conditional means equal numerical integration of the density (Gaussian and multivariate
  inputs) or enumeration (categorical inputs); k conditional draws and the MPE completion
  keep the observed cells;
- structure learning with missing cells measures each pair on the rows observing both;
- the scikit-learn estimators fit incomplete rows; the imputer drops into a ``Pipeline``
  (its ``check_estimator`` run is in ``test_sklearn.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ugmm_prob import fit
from ugmm_prob.circuits import RegionGraph, UGMMCircuit, fit_em
from ugmm_prob.circuits.em import expected_statistics
from ugmm_prob.circuits.region_graphs import gaussian_mutual_information
from ugmm_prob.circuits.structures import hclt, pairwise_mutual_information
from ugmm_prob.roles import UNLABELLED

NAN = float("nan")


def _correlated(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    base = torch.randn(n, d, generator=generator, dtype=torch.float64)
    shift = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.5, 1.5)
    return base @ mixing / math.sqrt(d) + shift.double()


def _holes(x: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """``x`` with cells removed completely at random (NaN)."""
    missing = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < rate
    return x.masked_fill(missing, NAN)


def _observed_log_likelihood(circuit: UGMMCircuit, x: torch.Tensor, y=None) -> float:
    """``sum_n log p(x_n,observed[, y_n])``."""
    with torch.no_grad():
        joint = circuit.joint_log_prob(x, ~torch.isnan(x))
        return float(circuit.log_likelihood_from_logits(joint, y).sum())


# ------------------------------------------------------------------------------------------
# (a) EM with missing cells on a Gaussian mixture = the textbook EM step
# ------------------------------------------------------------------------------------------
def _textbook_em_step(x: np.ndarray, weights, means, variances):
    """One EM step of ``p(x) = sum_k w_k prod_d N(x_d | m_kd, v_kd)`` on the observed cells.

    The missing cells of a row integrate out of a diagonal Gaussian, so the E-step gives
    ``r_nk ∝ w_k prod_{d observed in n} N(x_nd | m_kd, v_kd)`` and the M-step maximises
    ``sum_nk r_nk (log w_k + sum_{d observed} log N(x_nd | m_kd, v_kd))``: the weights from
    every row, each mean and variance from the rows observing its column.
    """
    seen = ~np.isnan(x)
    filled = np.where(seen, x, 0.0)
    log_terms = -0.5 * (
        np.log(2 * np.pi * variances)[None] + (filled[:, None] - means[None]) ** 2 / variances
    )  # (n, K, D)
    log_r = np.log(weights)[None] + (log_terms * seen[:, None]).sum(-1)
    log_r -= log_r.max(1, keepdims=True)
    r = np.exp(log_r)
    r /= r.sum(1, keepdims=True)  # (n, K)
    counts = r.T @ seen  # (K, D): responsibility of the rows observing each column
    new_means = (r.T @ filled) / counts
    spread = np.einsum("nk,nkd->kd", r, seen[:, None] * (filled[:, None] - new_means[None]) ** 2)
    return r.sum(0) / len(x), new_means, spread / counts


def test_one_full_batch_em_step_is_the_textbook_missing_data_em_step():
    d, k = 3, 4
    graph = RegionGraph.from_nested((list(range(d)),))  # one leaf region under the root
    circuit = UGMMCircuit(
        d, graph=graph, input_channels=k, channels=1, components=1, scale_floor=1e-6
    ).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        circuit.inputs.loc_unconstrained.copy_(torch.randn(d, k, 1, generator=generator))
        circuit.inputs.scale_unconstrained.copy_(0.3 * torch.randn(d, k, 1, generator=generator))
        circuit.root.logits_unconstrained.copy_(torch.randn(1, 1, k, generator=generator))
    x = _holes(_correlated(400, d, seed=1), 0.35, seed=2)
    x[0] = NAN  # a row with nothing observed
    weights = torch.softmax(circuit.root.logits, -1)[0, 0].detach().numpy()
    means = circuit.inputs.loc[..., 0].T.detach().numpy()  # (K, D)
    variances = circuit.inputs.scale[..., 0].T.detach().numpy() ** 2
    expected = _textbook_em_step(x.numpy(), weights, means, variances)

    fit_em(
        circuit,
        x,
        online=False,
        epochs=1,
        batch_size=128,  # statistics summed over minibatches: still one full-batch step
        pseudo_count=0.0,
        variance_pseudo_count=0.0,
        progress=False,
    )
    got = (
        torch.softmax(circuit.root.logits, -1)[0, 0].detach().numpy(),
        circuit.inputs.loc[..., 0].T.detach().numpy(),
        circuit.inputs.scale[..., 0].T.detach().numpy() ** 2,
    )
    for name, mine, truth in zip(("weights", "means", "variances"), got, expected, strict=True):
        np.testing.assert_allclose(mine, truth, rtol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------
# (c) EM with missing cells never lowers the observed-data likelihood
# ------------------------------------------------------------------------------------------
def _circuits(x: torch.Tensor, y: torch.Tensor | None) -> dict[str, UGMMCircuit]:
    classes = 1 if y is None else 2
    options = {"channels": 3, "num_classes": classes}
    return {
        "random trees, gaussian": UGMMCircuit(
            x.shape[1], depth=1, repetitions=3, components=2, **options
        ),
        "data tree, multivariate": UGMMCircuit.from_data(
            x, y, num_classes=classes, depth=1, repetitions=2, inputs="multivariate", channels=3
        ),
        "hclt, gaussian": UGMMCircuit.from_data(
            x, y, num_classes=classes, structure="hclt", channels=3
        ),
    }


@pytest.mark.parametrize("labelled", [False, True])
def test_full_batch_em_with_missing_cells_never_lowers_the_observed_likelihood(labelled):
    x = _holes(_correlated(240, 5, seed=3), 0.3, seed=4)
    y = None
    if labelled:  # a semi-supervised set: a third of the rows without a class
        y = (x.nan_to_num(0.0).sum(1) > 0).long()
        y[::3] = UNLABELLED
    for name, circuit in _circuits(x, y).items():
        circuit = circuit.double()
        start = _observed_log_likelihood(circuit, x, y)
        history = fit_em(
            circuit,
            x,
            y,
            online=False,
            epochs=6,
            batch_size=100,
            pseudo_count=0.0,
            variance_pseudo_count=1e-3,
            progress=False,
        )
        final = _observed_log_likelihood(circuit, x, y)
        totals = [-row["loss"] * len(x) * x.shape[1] for row in history] + [final]
        assert totals[0] == pytest.approx(start, rel=1e-9), name
        steps = np.diff(totals)
        assert (steps >= -1e-9 * abs(totals[0])).all(), (name, totals)
        assert totals[-1] > totals[0] + 1.0, (name, totals)


def test_em_with_missing_cells_on_categorical_inputs_never_lowers_the_likelihood():
    generator = torch.Generator().manual_seed(5)
    latent = torch.randint(0, 2, (300, 1), generator=generator)
    x = (latent * 3 + torch.randint(0, 3, (300, 6), generator=generator)).double()  # 0..5
    x = _holes(x, 0.4, seed=6)
    circuit = UGMMCircuit(
        6, depth=1, repetitions=2, channels=3, inputs="categorical", num_values=6
    ).double()
    circuit.init_from_data(x, generator=generator)
    history = fit_em(
        circuit, x, online=False, epochs=5, batch_size=300, pseudo_count=0.0, progress=False
    )
    totals = [-row["loss"] * len(x) * 6 for row in history] + [_observed_log_likelihood(circuit, x)]
    assert (np.diff(totals) >= -1e-9 * abs(totals[0])).all(), totals
    assert totals[-1] > totals[0] + 1.0


def test_online_em_and_gradient_training_on_incomplete_rows_improve_the_fit():
    x = _holes(_correlated(300, 4, seed=7), 0.3, seed=8)
    for train in ("online EM", "gradient"):
        circuit = UGMMCircuit.from_data(x, depth=1, repetitions=2, channels=3).double()
        before = _observed_log_likelihood(circuit, x)
        if train == "gradient":
            history = fit(circuit, x, x_val=x, epochs=5, batch_size=64, lr=3e-2, progress=False)
        else:
            history = fit_em(circuit, x, x_val=x, epochs=3, batch_size=100, progress=False)
        after = _observed_log_likelihood(circuit, x)
        assert after > before + 10, train
        # the validation metric on rows with NaN cells is -log p(x_observed) per row
        assert history[-1]["nll"] == pytest.approx(-after / len(x), rel=1e-9), train


# ------------------------------------------------------------------------------------------
# (d) the objective of incomplete rows
# ------------------------------------------------------------------------------------------
def test_gradient_loss_is_the_observed_cells_likelihood_and_unlabelled_rows_marginalise():
    x = _holes(_correlated(12, 4, seed=9), 0.3, seed=10)
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=3, channels=2).double()
    mask = ~torch.isnan(x)
    y = torch.tensor([0, 1, 2, -1] * 3)
    loss = circuit.training_loss(x, y, mask=mask)
    with torch.no_grad():
        labelled = torch.stack(  # -log p(x_obs, c) / D for every class
            [
                circuit.training_loss(x[i : i + 1], torch.tensor([c]), mask=mask[i : i + 1])
                for i in range(12)
                for c in range(3)
            ]
        ).reshape(12, 3)
    per_row = torch.where(
        y >= 0,
        labelled.gather(1, y.clamp_min(0)[:, None]).squeeze(1),
        -torch.logsumexp(-labelled * 4, 1) / 4,  # log p(x) = logsumexp_c log p(x, c)
    )
    torch.testing.assert_close(loss, per_row.mean())
    # without labels: -log p(x_observed) / D
    expected = -circuit.log_prob(x, mask=mask).mean() / 4
    torch.testing.assert_close(circuit.training_loss(x, mask=mask), expected)
    # the hybrid objective: no cross-entropy term for unlabelled rows
    hybrid = UGMMCircuit(
        4, num_classes=3, depth=1, repetitions=3, channels=2, likelihood_weight=0.5
    ).double()
    hybrid.load_state_dict(circuit.state_dict())
    joint = circuit.joint_log_prob(x, mask)
    known = y >= 0
    cross_entropy = -(
        torch.log_softmax(joint[known], -1).gather(1, y[known][:, None]).sum() / len(y)
    )
    torch.testing.assert_close(
        hybrid.training_loss(x, y, mask=mask), 0.5 * per_row.mean() + 0.5 * cross_entropy
    )


def test_an_unlabelled_rows_em_statistics_are_weighted_by_its_class_posterior():
    x = _holes(_correlated(1, 4, seed=11), 0.3, seed=12)
    x[0, 0] = 0.3  # at least one observed cell
    mask = ~torch.isnan(x)
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=3, channels=2).double()
    with torch.no_grad():
        posterior = torch.softmax(circuit.joint_log_prob(x, mask)[0], -1)
    _, unlabelled = expected_statistics(circuit, x, torch.tensor([UNLABELLED]), mask=mask)
    per_class = [expected_statistics(circuit, x, torch.tensor([c]), mask=mask)[1] for c in range(3)]
    for key, value in unlabelled.items():
        mixed = sum(p * stats[key] for p, stats in zip(posterior, per_class, strict=True))
        torch.testing.assert_close(value, mixed, msg=key)


def test_missing_cells_contribute_no_input_statistics():
    """A row whose only observed cell is ``x_0`` gives the units of ``x_1`` no counts: the
    statistics of ``x_1`` are those of the rows observing it."""
    graph = RegionGraph.from_nested(([0], [1]))
    circuit = UGMMCircuit(2, graph=graph, channels=2, components=2).double()
    x = torch.tensor([[0.5, -1.0], [1.5, 2.0], [0.2, NAN]], dtype=torch.float64)
    _, with_hole = expected_statistics(circuit, x, mask=~torch.isnan(x))
    slot = int((circuit.inputs.slot_var == 1).nonzero())
    assert float(with_hole["inputs.count"][slot].sum()) == pytest.approx(2.0)
    # and its data moments are those two rows' (the hole adds nothing, not the unit's mean)
    _, two_rows = expected_statistics(circuit, x[:2])
    posterior_shift = with_hole["inputs.count"][slot] - two_rows["inputs.count"][slot]
    assert float(posterior_shift.abs().sum()) < 1.0  # only the flows' split may differ
    other = int((circuit.inputs.slot_var == 0).nonzero())
    assert float(with_hole["inputs.count"][other].sum()) == pytest.approx(3.0)
    assert float(with_hole["root"].sum()) == pytest.approx(3.0)  # every row counts above


# ------------------------------------------------------------------------------------------
# (b) imputation against integration and enumeration
# ------------------------------------------------------------------------------------------
def _quadrature_mean(circuit, row, mask, target, c=None, grid=None, function=None):
    """``E[f(x_target) | x_observed(, c)]`` (``f`` the identity unless given) by the
    trapezoid rule over ``x_target``, the other missing cells marginalised by the circuit."""
    # the integrands are Gaussian mixtures (scales >= 0.05 here): the trapezoid rule on this
    # grid is exact to far below the tolerance
    grid = torch.linspace(-10, 10, 4001, dtype=torch.float64) if grid is None else grid
    points = row.expand(len(grid), -1).clone()
    points[:, target] = grid
    with_target = mask.clone()
    with_target[target] = True
    with torch.no_grad():
        joint = circuit.joint_log_prob(points.nan_to_num(0.0), with_target)
        log_p = torch.logsumexp(joint, -1) if c is None else joint[:, c]
    weight = (log_p - log_p.max()).exp()
    values = grid if function is None else function(grid)
    return float(torch.trapezoid(values * weight, grid) / torch.trapezoid(weight, grid))


@pytest.mark.parametrize("inputs", ["gaussian", "multivariate"])
@pytest.mark.parametrize("structure", ["tree", "hclt"])
def test_conditional_mean_equals_numerical_integration(inputs, structure):
    x = _correlated(300, 4, seed=13)
    y = (x[:, 0] > 0).long()
    circuit = UGMMCircuit.from_data(
        x,
        y,
        structure=structure,
        depth=1,
        repetitions=2,
        channels=3,
        inputs=inputs,
        scale_floor=0.05,
    ).double()
    fit_em(circuit, x, y, epochs=3, online=False, progress=False)
    rows = torch.tensor(
        [[0.4, NAN, -0.3, NAN], [NAN, NAN, NAN, 1.2], [NAN, NAN, NAN, NAN], [1.0, 0.5, NAN, 0.2]],
        dtype=torch.float64,
    )
    mean = circuit.impute(rows, method="mean")
    given = circuit.impute(rows, method="mean", c=torch.tensor([1, 0, 1, -1]))
    for i, row in enumerate(rows):
        mask = ~torch.isnan(row)
        assert torch.equal(mean[i][mask], row[mask])  # observed cells are kept
        for d in (~mask).nonzero().squeeze(1).tolist():
            truth = _quadrature_mean(circuit, row, mask, d)
            assert float(mean[i, d]) == pytest.approx(truth, abs=1e-6), (i, d)
            c = [1, 0, 1, None][i]
            truth = _quadrature_mean(circuit, row, mask, d, c=c)
            assert float(given[i, d]) == pytest.approx(truth, abs=1e-6), (i, d, c)
    # nothing observed: the mean of the density itself
    torch.testing.assert_close(mean[2], circuit.moments()[0])


@pytest.mark.parametrize("structure", ["tree", "hclt"])
def test_conditional_expectation_of_a_function_equals_numerical_integration(structure):
    """``E[sigmoid(x_d) | x_O]`` (the pixel-space mean of a logit-space variable) by
    Gauss-Hermite quadrature per component against the trapezoid rule over ``x_d`` through
    the circuit's marginals; observed cells come back as ``f(x_d)``, the identity gives
    the conditional mean, and it differs from ``sigmoid`` of the conditional mean."""
    x = _correlated(300, 4, seed=15)
    y = (x[:, 1] > 0).long()
    circuit = UGMMCircuit.from_data(
        x, y, structure=structure, depth=1, repetitions=2, channels=3, scale_floor=0.05
    ).double()
    fit_em(circuit, x, y, epochs=3, online=False, progress=False)
    rows = torch.tensor(
        [[0.4, NAN, -0.3, NAN], [NAN, NAN, NAN, 1.2], [1.0, 0.5, NAN, 0.2]], dtype=torch.float64
    )
    expected = circuit.conditional_expectation(rows, torch.sigmoid)
    given = circuit.conditional_expectation(rows, torch.sigmoid, c=torch.tensor([1, -1, 0]))
    torch.testing.assert_close(
        circuit.conditional_expectation(rows, lambda v: v), circuit.impute(rows, method="mean")
    )
    gap = 0.0
    for i, row in enumerate(rows):
        mask = ~torch.isnan(row)
        torch.testing.assert_close(expected[i][mask], torch.sigmoid(row[mask]))
        for d in (~mask).nonzero().squeeze(1).tolist():
            truth = _quadrature_mean(circuit, row, mask, d, function=torch.sigmoid)
            assert float(expected[i, d]) == pytest.approx(truth, abs=1e-7), (i, d)
            c = [1, None, 0][i]
            truth = _quadrature_mean(circuit, row, mask, d, c=c, function=torch.sigmoid)
            assert float(given[i, d]) == pytest.approx(truth, abs=1e-7), (i, d, c)
            mean = _quadrature_mean(circuit, row, mask, d)
            gap = max(gap, abs(float(expected[i, d]) - math.exp(-math.log1p(math.exp(-mean)))))
    assert gap > 1e-3  # the test tells the two apart


def test_conditional_expectation_needs_univariate_units():
    x = _correlated(100, 4, seed=16)
    circuit = UGMMCircuit.from_data(x, depth=1, repetitions=2, channels=2, inputs="multivariate")
    with pytest.raises(NotImplementedError, match="expectations of functions"):
        circuit.conditional_expectation(
            x[:2].masked_fill(torch.eye(4)[:2].bool(), NAN), torch.sigmoid
        )


def test_conditional_mean_of_categorical_inputs_equals_enumeration():
    generator = torch.Generator().manual_seed(14)
    circuit = UGMMCircuit(3, depth=1, repetitions=3, channels=3, inputs="categorical", num_values=5)
    circuit = circuit.double()
    with torch.no_grad():
        for parameter in circuit.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    rows = torch.tensor([[2.0, NAN, NAN], [NAN, 4.0, NAN], [NAN, NAN, NAN]], dtype=torch.float64)
    mean = circuit.impute(rows, method="mean")
    values = torch.arange(5, dtype=torch.float64)
    for i, row in enumerate(rows):
        mask = ~torch.isnan(row)
        for d in (~mask).nonzero().squeeze(1).tolist():
            points = row.expand(5, -1).clone()
            points[:, d] = values
            with_d = mask.clone()
            with_d[d] = True
            with torch.no_grad():
                p = circuit.log_prob(points.nan_to_num(0.0), mask=with_d).exp()
            assert float(mean[i, d]) == pytest.approx(float((values * p).sum() / p.sum()), abs=1e-9)
            squared = float(circuit.conditional_expectation(rows, torch.square)[i, d])
            assert squared == pytest.approx(float((values**2 * p).sum() / p.sum()), abs=1e-9)


def test_draws_and_the_mpe_completion_keep_the_observed_cells():
    x = _correlated(200, 4, seed=15)
    circuit = UGMMCircuit.from_data(x, depth=1, repetitions=2, channels=3).double()
    rows = torch.tensor([[0.4, NAN, -0.3, NAN], [NAN, 2.0, NAN, NAN]], dtype=torch.float64)
    torch.manual_seed(0)
    draws = circuit.impute(rows, num_samples=4000)
    assert draws.shape == (4000, 2, 4) and torch.isfinite(draws).all()
    observed = ~torch.isnan(rows)
    assert torch.equal(draws[:, observed], rows[observed].expand(4000, -1))
    # the draws' average is the conditional mean (an exact draw of p(x_M | x_O))
    mean = circuit.impute(rows, method="mean")
    spread = draws.std(0)
    assert ((draws.mean(0) - mean).abs() <= 5 * spread / math.sqrt(4000) + 1e-12).all()
    completed = circuit.impute(rows, method="mpe")
    torch.testing.assert_close(completed, circuit.mpe(rows)[0])
    assert torch.equal(completed[observed], rows[observed])
    # an explicit mask: NaN-free x, the same answers
    filled = rows.nan_to_num(0.0)
    torch.testing.assert_close(circuit.impute(filled, observed, method="mean"), mean)
    with pytest.raises(ValueError, match="method must be one of 'mean', 'mpe', 'sample'"):
        circuit.impute(rows, method="median")
    with pytest.raises(ValueError, match="num_samples must be an int >= 1 with method='sample'"):
        circuit.impute(rows, method="mean", num_samples=3)


# ------------------------------------------------------------------------------------------
# structure learning and initialisation with missing cells
# ------------------------------------------------------------------------------------------
def test_dependence_with_missing_cells_is_measured_on_the_rows_observing_both():
    x = _correlated(400, 3, seed=16)
    holes = _holes(x, 0.3, seed=17)
    both = ~torch.isnan(holes[:, 0]) & ~torch.isnan(holes[:, 1])
    torch.testing.assert_close(
        gaussian_mutual_information(holes)[0, 1],
        gaussian_mutual_information(holes[both][:, :2])[0, 1],
    )
    codes = (x > 0).double() + (x > 1).double()  # integers 0..2
    codes = codes.masked_fill(torch.isnan(holes), NAN)
    torch.testing.assert_close(
        pairwise_mutual_information(codes)[0, 1],
        pairwise_mutual_information(codes[both][:, :2])[0, 1],
    )
    assert hclt(holes).in_features == 3
    circuit = UGMMCircuit.from_data(holes, depth=1, repetitions=2, channels=3)
    assert all(torch.isfinite(p).all() for p in circuit.parameters())


# ------------------------------------------------------------------------------------------
# SVI and the refusals of models that cannot marginalise
# ------------------------------------------------------------------------------------------
def test_svi_fits_incomplete_rows_and_unlabelled_rows_score_log_p_x():
    from ugmm_prob.bayes import fit_svi, make_bayesian
    from ugmm_prob.circuits.distribution import ObservedCircuit

    x = _holes(_correlated(60, 4, seed=18), 0.3, seed=19).float()
    y = (x.nan_to_num(0.0)[:, 0] > 0).long()
    y[::2] = UNLABELLED
    circuit = UGMMCircuit.from_data(x, y, depth=1, repetitions=2, channels=2)
    joint = circuit.joint_log_prob(x, ~torch.isnan(x)).detach()
    conditional = joint - circuit.class_log_prior().detach()
    site = ObservedCircuit(circuit, y, x, conditional, marginal=torch.logsumexp(joint, -1))
    expected = torch.where(
        y >= 0, conditional.gather(1, y.clamp_min(0)[:, None]).squeeze(1), joint.logsumexp(-1)
    )
    torch.testing.assert_close(site.log_prob(x), expected)
    _, history = fit_svi(make_bayesian(circuit), x, y, epochs=2, batch_size=20, progress=False)
    assert all(math.isfinite(row["elbo_loss"]) and math.isfinite(row["nll"]) for row in history)


def test_models_that_cannot_marginalise_refuse_missing_cells_and_unlabelled_rows():
    from ugmm_prob import UGMMClassifier

    net = UGMMClassifier(4, hidden=(3,), num_classes=2, layer_norm=False)
    x = torch.randn(10, 4)
    holes = x.clone()
    holes[2, 1] = NAN
    with pytest.raises(ValueError, match="UGMMClassifier cannot marginalise"):
        fit(net, holes, torch.zeros(10, dtype=torch.long), epochs=1, progress=False)
    labels = torch.zeros(10, dtype=torch.long)
    labels[3] = UNLABELLED
    with pytest.raises(ValueError, match=r"-1, an unlabelled row, .* UGMMClassifier cannot"):
        fit(net, x, labels, epochs=1, progress=False)


# ------------------------------------------------------------------------------------------
# (e) scikit-learn: NaN allowed, a semi-supervised classifier, the imputer in a Pipeline
# ------------------------------------------------------------------------------------------
def test_scikit_learn_estimators_on_incomplete_tables():
    pytest.importorskip("sklearn")
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    from ugmm_prob.sklearn import UGMMCircuitClassifier, UGMMCircuitDensity, UGMMCircuitImputer

    x = _correlated(400, 4, seed=20).numpy()
    holes = _holes(torch.as_tensor(x), 0.3, seed=21).numpy()
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    for estimator in (UGMMCircuitDensity(), UGMMCircuitClassifier(), UGMMCircuitImputer()):
        assert estimator.__sklearn_tags__().input_tags.allow_nan
    imputer = UGMMCircuitImputer(max_iter=10, random_state=0).fit(holes)
    filled = imputer.transform(holes)
    missing = np.isnan(holes)
    assert np.array_equal(filled[~missing], holes[~missing]) and np.isfinite(filled).all()
    rmse = np.sqrt(np.mean((filled - x)[missing] ** 2))
    baseline = SimpleImputer().fit_transform(holes)
    assert rmse < 0.8 * np.sqrt(np.mean((baseline - x)[missing] ** 2))  # correlated columns
    draws = imputer.conditional_sample(holes[:5], n_samples=3)
    assert draws.shape == (3, 5, 4) and np.isfinite(draws).all()
    pipeline = make_pipeline(UGMMCircuitImputer(max_iter=5, random_state=0), LogisticRegression())
    assert cross_val_score(pipeline, holes, y, cv=3).mean() > 0.8
    # semi-supervised: half the rows without a class (-1), every row with its NaN cells
    partial = np.where(np.arange(len(y)) % 2 == 0, -1, y)
    classifier = UGMMCircuitClassifier(unlabelled_label=-1, max_iter=10, random_state=0)
    classifier.fit(holes, partial)
    assert list(classifier.classes_) == [0, 1] and classifier.score(holes, y) > 0.8
    with pytest.raises(ValueError, match="which leaves 1 class"):
        UGMMCircuitClassifier(unlabelled_label=-1).fit(holes, np.where(y == 1, 1, -1))
    # without unlabelled_label, -1 is a class like any other (binary labels {-1, 1})
    plain = UGMMCircuitClassifier(max_iter=2, random_state=0).fit(x, np.where(y == 1, 1, -1))
    assert list(plain.classes_) == [-1, 1]


def test_imputer_is_the_density_with_a_strategy():
    """scikit-learn reads parameters off ``__init__``, so the imputer repeats the density's
    signature: the same names and defaults (but ``depth``: 0, chosen for imputation), plus
    ``strategy``; and ``transform`` with the mean strategy is the density's
    ``impute(method="mean")`` from the same fit."""
    import inspect

    pytest.importorskip("sklearn")
    from ugmm_prob.sklearn import UGMMCircuitDensity, UGMMCircuitImputer

    def defaults(cls):
        signature = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in signature if p.name != "self"}

    expected = {"strategy": "mean", **defaults(UGMMCircuitDensity), "depth": 0}
    assert defaults(UGMMCircuitImputer) == expected
    holes = _holes(_correlated(120, 3, seed=30), 0.2, seed=31).numpy()
    fixed = {"channels": 2, "covariance_pooling": 0.0, "depth": 0, "max_iter": 5}
    imputer = UGMMCircuitImputer(**fixed, random_state=0).fit(holes)
    density = UGMMCircuitDensity(**fixed, random_state=0).fit(holes)
    np.testing.assert_array_equal(imputer.transform(holes), density.impute(holes, method="mean"))


def test_imputer_chooses_its_size_by_held_out_imputation_error():
    """The imputer's search keeps the candidate with the lowest squared error on held-out
    cells, each hidden in turn (the density's keeps the likeliest): the score recomputed
    cell by cell, and the chosen candidate the best scored."""
    pytest.importorskip("sklearn")
    from ugmm_prob.sklearn import UGMMCircuitDensity, UGMMCircuitImputer

    holes = _holes(_correlated(150, 4, seed=32), 0.1, seed=33).numpy()
    imputer = UGMMCircuitImputer(channels=(1, 2, 4), max_iter=5, random_state=0).fit(holes)
    scores = [row["validation_score"] for row in imputer.search_results_]
    best = imputer.search_results_[int(np.argmax(scores))]
    assert imputer.best_params_ == {name: best[name] for name in imputer.best_params_}
    rows = holes[:20]
    errors = []  # by hand: hide one observed cell, impute it from the rest of its row
    for i, j in zip(*np.nonzero(~np.isnan(rows)), strict=True):
        one = rows[i : i + 1].copy()
        one[0, j] = np.nan
        errors.append((imputer.transform(one)[0, j] - rows[i, j]) / imputer.scale_[j])
    expected = -np.square(errors)  # one item per cell, in the order of np.nonzero
    assert imputer._validation_items(rows, 7) == pytest.approx(expected, rel=1e-10)
    # the density scores the same rows by their likelihood instead, one item per row
    density = UGMMCircuitDensity(channels=2, max_iter=5, random_state=0).fit(holes)
    items = density._validation_items(rows, 7)
    assert items == pytest.approx(density.score_samples(rows), rel=1e-12)
    assert float(np.mean(items)) == pytest.approx(density.score(rows), rel=1e-12)
