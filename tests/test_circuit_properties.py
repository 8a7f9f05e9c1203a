"""One property suite for every circuit: each region graph, depths 1-4, both input types.

Every check compares the circuit with an independent truth:

- a plain recursive evaluation of the circuit's definition (loops over regions, units and
  classes, no vectorised layers) for ``log p(x, c)``;
- normalisation: exact enumeration of every configuration (categorical inputs), 2-D
  quadrature or importance sampling with a broad proposal (Gaussian inputs);
- marginals: explicit summation over the missing variable's values, or quadrature;
- ``log_prob`` with every variable missing is ``log 1 = 0``;
- sample moments against the exact moments; conditional samples (the downward pass, which
  shares no code with the upward pass's arithmetic) by a Kolmogorov-Smirnov or chi-square
  test against the conditional computed from ``log_prob``;
- batch shapes, ``expand`` and ``support`` of :class:`CircuitDistribution`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tests.circuit_cases import CASES, build
from tests.circuit_reference import reference_joint
from ugmm_prob.circuits import CircuitDistribution, UGMMCircuit


def _draw(circuit, n, seed=0):
    torch.manual_seed(seed)
    return circuit.sample(n)[0]


def _enumerate(circuit: UGMMCircuit) -> torch.Tensor:
    values = range(circuit.inputs.num_values)
    return torch.tensor(list(itertools.product(values, repeat=circuit.in_features))).double()


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES)
def test_upward_pass_equals_plain_recursion(graph, depth, inputs):
    circuit = build(graph, depth, inputs)
    x = _draw(circuit, 3, seed=1)
    with torch.no_grad():
        expected = torch.stack([reference_joint(circuit, row) for row in x])
        torch.testing.assert_close(circuit.joint_log_prob(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES)
def test_mpe_value_is_the_best_induced_tree_and_the_completion_attains_it(graph, depth, inputs):
    """The max-product value against a plain recursion with maxima (every induced tree,
    latent component and missing value), and the downward pass's completion and class
    reach that value with every variable observed."""
    circuit = build(graph, depth, inputs)
    x = _draw(circuit, 3, seed=6)
    observed = torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) < 0.5
    completed, c, value = circuit.mpe(x, observed)
    assert (completed[observed] == x[observed]).all()
    with torch.no_grad():
        for row in range(len(x)):  # the reference includes log p(c)
            best = reference_joint(circuit, x[row], observed[row], mode="max")
            assert float(value[row]) == pytest.approx(float(best.max()), abs=1e-9)
            attained = reference_joint(circuit, completed[row], mode="max")
            assert float(attained[c[row]]) == pytest.approx(float(value[row]), abs=1e-9)


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES)
def test_normalised_and_marginals_exact(graph, depth, inputs):
    circuit = build(graph, depth, inputs)
    d = circuit.in_features
    with torch.no_grad():
        everything_missing = torch.zeros(2, d, dtype=torch.bool)
        torch.testing.assert_close(
            circuit.log_prob(torch.zeros(2, d, dtype=torch.float64), mask=everything_missing),
            torch.zeros(2, dtype=torch.float64),
            rtol=0,
            atol=1e-12,
        )
        if inputs == "categorical":
            configurations = _enumerate(circuit)
            joint = circuit.joint_log_prob(configurations)  # (V**D, C)
            torch.testing.assert_close(
                torch.logsumexp(joint, 0), circuit.class_log_prior(), rtol=0, atol=1e-10
            )
            # marginal of the first variables (the last one missing) by explicit summation
            keep = torch.ones(d, dtype=torch.bool)
            keep[-1] = False
            marginal = circuit.log_prob(configurations, mask=keep)
            groups = configurations[:, :-1].matmul(
                circuit.inputs.num_values ** torch.arange(d - 2, -1, -1).double()
            )
            summed = torch.zeros(int(groups.max()) + 1, dtype=torch.float64)
            summed.index_add_(0, groups.long(), circuit.log_prob(configurations).exp())
            torch.testing.assert_close(marginal.exp(), summed[groups.long()], rtol=1e-9, atol=1e-12)
        elif d == 2:
            grid = torch.linspace(-12, 12, 801, dtype=torch.float64)
            points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
            density = circuit.log_prob(points).exp()
            mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
            assert abs(float(mass) - 1) < 1e-4
        elif d == 4:
            _check_importance_sampling(circuit)
        else:
            _check_chain_of_marginals(circuit)
        if inputs == "gaussian":
            _check_one_dimensional_marginal(circuit)


def _check_importance_sampling(circuit: UGMMCircuit, draws: int = 400_000) -> None:
    """``E_q[p(x) / q(x)] = 1`` for a broad product-of-Normals proposal ``q``."""
    generator = torch.Generator().manual_seed(7)
    centre, spread = torch.zeros(circuit.in_features), torch.full((circuit.in_features,), 3.0)
    proposal = torch.distributions.Normal(centre.double(), spread.double())
    z = proposal.loc + proposal.scale * torch.randn(
        draws, circuit.in_features, generator=generator, dtype=torch.float64
    )
    log_ratio = circuit.log_prob(z) - proposal.log_prob(z).sum(-1)
    ratio = log_ratio.exp()
    estimate, error = float(ratio.mean()), float(ratio.std() / math.sqrt(draws))
    assert error < 0.03, f"importance sampling too noisy to decide (standard error {error})"
    assert abs(estimate - 1) < 5 * error + 1e-3, (estimate, error)


def _check_chain_of_marginals(circuit: UGMMCircuit) -> None:
    """``integral p(x_1..x_k) dx_k = p(x_1..x_{k-1})`` by quadrature at sample points, for
    every ``k``; with the 1-D marginal integrating to 1 this chains to normalisation."""
    grid = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    points = _draw(circuit, 3, seed=5)
    for k in range(2, circuit.in_features + 1):
        upto = torch.arange(circuit.in_features) < k
        for point in points:
            line = point.expand(len(grid), -1).clone()
            line[:, k - 1] = grid
            integral = torch.trapezoid(circuit.log_prob(line, mask=upto).exp(), grid)
            marginal = circuit.log_prob(
                point, mask=upto & (torch.arange(circuit.in_features) < k - 1)
            )
            torch.testing.assert_close(integral, marginal.exp(), rtol=1e-5, atol=1e-12)


def _check_one_dimensional_marginal(circuit: UGMMCircuit) -> None:
    """``p(x_0)`` by masking equals the quadrature of ``p(x_0, x_1)`` over ``x_1``, and
    integrates to 1."""
    grid = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    first = torch.zeros(circuit.in_features, dtype=torch.bool)
    first[0] = True
    pair = first.clone()
    pair[1] = True
    x = torch.zeros(len(grid), circuit.in_features, dtype=torch.float64)
    x[:, 0] = grid
    single = circuit.log_prob(x, mask=first).exp()
    assert abs(float(torch.trapezoid(single, grid)) - 1) < 1e-5
    for row in (100, 700, 1000):
        points = x[row].expand(len(grid), -1).clone()
        points[:, 1] = grid
        integral = torch.trapezoid(circuit.log_prob(points, mask=pair).exp(), grid)
        assert abs(float(integral) - float(single[row])) < 1e-6


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES)
def test_sample_moments_match_exact_moments(graph, depth, inputs):
    circuit = build(graph, depth, inputs)
    samples = _draw(circuit, 40_000, seed=2)
    assert circuit().support.check(samples).all()
    with torch.no_grad():
        for c in (None, 1):
            mean, variance = circuit.moments(c)
            drawn = samples if c is None else circuit.sample(40_000, c)[0]
            error = (variance / len(drawn)).sqrt()
            assert ((drawn.mean(0) - mean).abs() < 5 * error + 1e-9).all()
            assert ((drawn.var(0) - variance).abs() < 0.06 * variance + 1e-9).all()


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES)
def test_conditional_samples_follow_the_conditional(graph, depth, inputs):
    """Impute the last variable given the others; compare with ``p(x_D | x_rest)`` from the
    upward pass (KS test for Gaussian inputs, chi-square for categorical ones)."""
    circuit = build(graph, depth, inputs)
    evidence = _draw(circuit, 1, seed=3)[0]
    observed = torch.ones(circuit.in_features, dtype=torch.bool)
    observed[-1] = False
    torch.manual_seed(4)
    imputed = circuit.impute(evidence.expand(3000, -1), observed)
    assert (imputed[:, :-1] == evidence[:-1]).all()
    with torch.no_grad():
        if inputs == "categorical":
            values = torch.arange(circuit.inputs.num_values, dtype=torch.float64)
            points = evidence.expand(len(values), -1).clone()
            points[:, -1] = values
            probs = torch.softmax(circuit.log_prob(points), 0).numpy()
            counts = np.bincount(imputed[:, -1].long().numpy(), minlength=len(values))
            keep = probs * len(imputed) > 5
            expected = probs[keep] / probs[keep].sum() * counts[keep].sum()
            assert stats.chisquare(counts[keep], expected).pvalue > 1e-3
        else:
            grid = torch.linspace(-14, 14, 20001, dtype=torch.float64)
            points = evidence.expand(len(grid), -1).clone()
            points[:, -1] = grid
            density = circuit.log_prob(points).exp()
            cdf = torch.cumulative_trapezoid(density, grid)
            cdf = (torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]).numpy()
            result = stats.kstest(imputed[:, -1].numpy(), lambda v: np.interp(v, grid.numpy(), cdf))
            assert result.pvalue > 1e-3


@pytest.mark.parametrize(("graph", "depth", "inputs"), CASES[::5])
def test_distribution_shapes_expand_and_support(graph, depth, inputs):
    circuit = build(graph, depth, inputs)
    d = circuit.in_features
    x = _draw(circuit, 5)
    whole = circuit()
    assert isinstance(whole, CircuitDistribution)
    assert whole.batch_shape == () and whole.event_shape == (d,)
    assert whole.sample((4, 3)).shape == (4, 3, d)
    enumerated = circuit(torch.tensor([[0], [1]]))
    assert enumerated.batch_shape == (2, 1) and enumerated.log_prob(x).shape == (2, 5)
    expanded = enumerated.expand((2, 5))
    torch.testing.assert_close(expanded.log_prob(x), enumerated.log_prob(x))
    assert expanded.mean.shape == (2, 5, d)
    assert whole.support.check(x).all()
    if inputs == "categorical":
        assert not whole.support.check(x + 0.5).any()
        with pytest.raises(ValueError, match="outside the support"):
            circuit.log_prob(x + 0.5)
    with pytest.raises(ValueError, match=r"outside the support|NaN"):
        circuit.log_prob(torch.full((1, d), math.inf, dtype=torch.float64))
