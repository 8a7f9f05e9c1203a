"""Multivariate Gaussian leaves (``inputs="multivariate"``) against independent truths.

- leaf values against ``torch.distributions.MultivariateNormal`` of the observed block, one
  missing pattern per example, and the max-product value against the conditional's peak;
- circuits whose leaves hold several variables: ``log p`` against the circuit written out as
  an explicit Gaussian mixture (one component per induced tree, by plain recursion over the
  region graph), normalisation by 2-D quadrature or importance sampling, marginals by 1-D
  quadrature, sample moments against the exact mixture moments, conditional samples by a
  Kolmogorov-Smirnov test against the conditional from ``log_prob``, MPE against
  ``scipy.optimize`` over the missing variables of every induced tree;
- EM: the statistics (missing cells included) against textbook conditional-Gaussian
  expectations, ``fit_em`` never lowering the likelihood, one full-batch step recovering a
  Gaussian's sample mean and covariance, the floored M-step against its closed form.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch.distributions import MultivariateNormal

from ugmm_prob.circuits import (
    MultivariateGaussianInput,
    RegionGraph,
    UGMMCircuit,
    fit_em,
    random_binary_trees,
)
from ugmm_prob.circuits.compile import LEAF_LAYER
from ugmm_prob.circuits.em import expected_statistics, maximise

GRAPHS = {
    "nested": lambda: RegionGraph.from_nested(([0, 1], [2, 3, 4])),
    "sizes-2-1-3": lambda: RegionGraph.from_nested((([0, 1], 5), [2, 3, 4])),
    "random-trees": lambda: random_binary_trees(6, depth=1, repetitions=2, seed=1),
}


def build(graph: RegionGraph, *, channels: int = 2, seed: int = 0, floor: float = 0.05):
    """A float64 multivariate circuit with every parameter randomised."""
    torch.manual_seed(seed)
    circuit = UGMMCircuit(
        graph.in_features, graph=graph, channels=channels, inputs="multivariate", scale_floor=floor
    ).double()
    with torch.no_grad():
        circuit.inputs.loc_unconstrained.normal_(0, 1)
        circuit.inputs.scale_tril_unconstrained.normal_(0, 0.5)
        for name, param in circuit.named_parameters():
            if not name.startswith("inputs."):
                param.normal_(0, 1)
    return circuit


def mixture(circuit: UGMMCircuit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The circuit (one class) as an explicit Gaussian mixture ``(log w (K,), means (K, D),
    covariances (K, D, D))``: every induced tree, by recursion over the region graph."""
    compiled, graph, inputs = circuit.compiled, circuit.graph, circuit.inputs
    loc, covariance = inputs.leaf_loc().detach(), inputs.covariance_matrix.detach()

    def expand(region: int, unit: int) -> list[tuple[float, dict[int, int]]]:
        layer, fold = compiled.place[region]
        if layer == LEAF_LAYER:
            return [(0.0, {fold: unit})]
        group = compiled.sums[layer]
        log_w = circuit._sum_layer(layer).log_weights()[fold, unit].detach()
        out = []
        for q in range(group.inputs):
            products = compiled.products[int(group.input_group[fold, q])]
            partition = products.partitions[int(group.input_fold[fold, q])]
            children = graph.partitions[partition][1]
            u = int(group.input_unit[fold, q])
            if products.kind == "kronecker" and len(children) == 2:
                units = (u // products.child_widths[1], u % products.child_widths[1])
            else:
                units = (u,) * len(children)
            parts = [expand(child, k) for child, k in zip(children, units, strict=True)]
            for combo in itertools.product(*parts):
                chosen: dict[int, int] = {}
                for _, leaves in combo:
                    chosen.update(leaves)
                out.append((float(log_w[q]) + sum(w for w, _ in combo), chosen))
        return out

    d = circuit.in_features
    weights, means, covariances = [], [], []
    for log_w, chosen in expand(graph.root, 0):
        mean, cov = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        for leaf, unit in chosen.items():
            size = int(inputs.leaf_size[leaf])
            variables = inputs.leaf_var[leaf, :size]
            mean[variables] = loc[leaf, unit, :size]
            cov[variables[:, None], variables[None, :]] = covariance[leaf, unit, :size, :size]
        weights.append(log_w)
        means.append(mean)
        covariances.append(cov)
    return torch.tensor(weights, dtype=torch.float64), torch.stack(means), torch.stack(covariances)


def mixture_log_prob(parts, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k N(x_O | m_k,O, S_k,OO)`` per example, its own pattern ``O``."""
    log_w, means, covariances = parts
    out = []
    for row, seen in zip(x, observed, strict=True):
        index = seen.nonzero().squeeze(1)
        if len(index) == 0:
            out.append(torch.tensor(0.0, dtype=torch.float64))
            continue
        block = covariances[:, index[:, None], index[None, :]]
        normal = MultivariateNormal(means[:, index], covariance_matrix=block)
        out.append(torch.logsumexp(log_w + normal.log_prob(row[index]), 0))
    return torch.stack(out)


def _randomise_layer(layer: MultivariateGaussianInput, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (layer.loc_unconstrained, layer.scale_tril_unconstrained):
            param.copy_(0.6 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


# ----------------------------------------------------------------------------------------
# The leaf values
# ----------------------------------------------------------------------------------------
def test_leaf_values_equal_multivariate_normal_of_the_observed_block():
    circuit = build(GRAPHS["sizes-2-1-3"](), channels=3)
    layer = circuit.inputs
    _randomise_layer(layer, 1)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    observed = torch.rand(40, 6, generator=generator) < 0.6
    observed[0] = True  # the fully observed path and the pattern path in one batch
    observed[1] = False
    x_nan = torch.where(observed, x, torch.nan)  # missing entries never read
    loc, covariance = layer.leaf_loc().detach(), layer.covariance_matrix.detach()
    with torch.no_grad():
        values = layer.region_log_values(x_nan, observed, "sum")
        peaks = layer.region_log_values(x_nan, observed, "max")
        full = layer.region_log_values(x, None, "sum")
    assert values.shape == (40, 3, 3)
    for leaf in range(3):
        size = int(layer.leaf_size[leaf])
        variables = layer.leaf_var[leaf, :size]
        for unit in range(3):
            mu, sigma = loc[leaf, unit, :size], covariance[leaf, unit, :size, :size]
            torch.testing.assert_close(
                full[:, leaf, unit], MultivariateNormal(mu, sigma).log_prob(x[:, variables])
            )
            for b in range(len(x)):
                seen = observed[b, variables]
                o, m = seen.nonzero().squeeze(1), (~seen).nonzero().squeeze(1)
                xo = x[b, variables][o]
                expected = torch.tensor(0.0, dtype=torch.float64)
                if len(o):
                    marginal = MultivariateNormal(mu[o], sigma[o[:, None], o[None, :]])
                    expected = marginal.log_prob(xo)
                torch.testing.assert_close(values[b, leaf, unit], expected)
                # max over the missing variables: the conditional Gaussian's peak
                peak = expected
                if len(m):
                    conditional = sigma[m[:, None], m[None, :]]
                    if len(o):
                        cross = sigma[m[:, None], o[None, :]]
                        conditional = conditional - cross @ torch.linalg.solve(
                            sigma[o[:, None], o[None, :]], cross.T
                        )
                    centre = torch.zeros(len(m), dtype=torch.float64)
                    peak = peak + MultivariateNormal(centre, conditional).log_prob(centre)
                torch.testing.assert_close(peaks[b, leaf, unit], peak)


def test_leaf_values_have_gradients_and_refuse_per_slot_use():
    circuit = build(GRAPHS["nested"]())
    x = torch.randn(5, 5, dtype=torch.float64)
    observed = torch.rand(5, 5) < 0.5
    circuit.log_prob(x, mask=observed).sum().backward()
    grad = circuit.inputs.scale_tril_unconstrained.grad
    assert torch.isfinite(grad).all()
    assert (grad.triu(1) == 0).all()  # entries above the diagonal are not parameters
    assert (grad[0, :, 2] == 0).all() and (grad[0, :, :, 2] == 0).all()  # padding of {0, 1}
    with pytest.raises(NotImplementedError, match="whole leaf regions"):
        circuit.inputs.log_values(x, None)
    with pytest.raises(ValueError, match="scale_floor"):
        UGMMCircuit(5, graph=GRAPHS["nested"](), inputs="multivariate", scale_floor=0.0)
    with pytest.raises(ValueError, match="multivariate"):
        UGMMCircuit(5, graph=GRAPHS["nested"](), inputs="wishart")


def _reference_leaf_values(layer, x, observed):
    """``log N(x_O | mu_O, Sigma_OO)`` per example, leaf and unit from
    ``torch.distributions.MultivariateNormal`` of each observed block, differentiable in the
    layer's parameters (through ``leaf_loc`` and ``covariance_matrix``)."""
    loc, covariance = layer.leaf_loc(), layer.covariance_matrix
    rows = []
    for b in range(len(x)):
        leaves = []
        for leaf in range(layer.num_leaves):
            variables = layer.leaf_var[leaf, : int(layer.leaf_size[leaf])]
            o = observed[b, variables].nonzero().squeeze(1)
            if not len(o):
                leaves.append(loc.new_zeros(loc.shape[1]))
                continue
            block = covariance[leaf][:, o[:, None], o[None, :]]
            normal = MultivariateNormal(loc[leaf][:, o], covariance_matrix=block)
            leaves.append(normal.log_prob(x[b, variables][o]))
        rows.append(torch.stack(leaves))
    return torch.stack(rows)


def test_leaf_values_and_gradients_for_every_missing_count_in_a_wide_leaf():
    """A 9-variable leaf seen with 0..9 of its variables missing (every block size of the
    grouped factorisations, and the fully observed and unobserved leaves); values and
    parameter gradients equal those of ``MultivariateNormal`` on each observed block."""
    circuit = build(RegionGraph.from_nested((list(range(9)), [9, 10])), channels=3)
    layer = circuit.inputs
    _randomise_layer(layer, 4)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(30, 11, generator=generator, dtype=torch.float64)
    observed = torch.ones(30, 11, dtype=torch.bool)
    for b in range(30):  # b % 10 of the wide leaf's variables missing, at random places
        observed[b, torch.randperm(9, generator=generator)[: b % 10]] = False
    observed[:, 9] = torch.rand(30, generator=generator) < 0.5
    weights = torch.randn(30, 2, 3, generator=generator, dtype=torch.float64)
    params = [layer.loc_unconstrained, layer.scale_tril_unconstrained]
    values = layer.region_log_values(torch.where(observed, x, torch.nan), observed, "sum")
    expected = _reference_leaf_values(layer, x, observed)
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad((weights * values).sum(), params)
    expected_grads = torch.autograd.grad((weights * expected).sum(), params)
    for grad, reference in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-10)
    # single precision agrees with double to float32 accuracy on a correlated leaf
    single = copy.deepcopy(layer).float()
    with torch.no_grad():
        low = single.region_log_values(x.float(), observed, "sum")
    torch.testing.assert_close(low.double(), values.detach(), rtol=1e-4, atol=1e-3)


def test_registry_moved_but_old_import_works():
    from ugmm_prob.circuits.circuit import INPUT_TYPES
    from ugmm_prob.circuits.inputs import INPUT_TYPES as old

    assert old is INPUT_TYPES and INPUT_TYPES["multivariate"] is MultivariateGaussianInput
    assert set(INPUT_TYPES) == {"gaussian", "categorical", "multivariate"}


# ----------------------------------------------------------------------------------------
# The circuit: densities, marginals, normalisation
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GRAPHS))
def test_log_prob_equals_the_explicit_mixture_with_missing_patterns(name):
    circuit = build(GRAPHS[name](), channels=3)
    parts = mixture(circuit)
    assert torch.logsumexp(parts[0], 0).abs() < 1e-12  # the mixture weights sum to 1
    generator = torch.Generator().manual_seed(3)
    d = circuit.in_features
    x = 1.5 * torch.randn(60, d, generator=generator, dtype=torch.float64)
    observed = torch.rand(60, d, generator=generator) < 0.55
    with torch.no_grad():
        full = circuit.log_prob(x)
        marginal = circuit.log_prob(x, mask=observed)
    torch.testing.assert_close(full, mixture_log_prob(parts, x, torch.ones_like(observed)))
    torch.testing.assert_close(marginal, mixture_log_prob(parts, x, observed))


def test_two_dimensional_circuit_integrates_to_one_by_quadrature():
    # the root mixes a bivariate leaf over {0, 1} with a product of leaves {0} and {1}
    circuit = build(RegionGraph.from_nested([([0, 1],), (0, 1)]), channels=2)
    grid = torch.linspace(-14, 14, 1201, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    with torch.no_grad():
        density = circuit.log_prob(points).exp()
        mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
        assert abs(float(mass) - 1) < 1e-6
        # marginal p(x_0) by masking equals the quadrature over x_1, and integrates to 1
        line = torch.stack([grid, torch.zeros_like(grid)], -1)
        first = torch.tensor([True, False])
        single = circuit.log_prob(line, mask=first).exp()
        torch.testing.assert_close(torch.trapezoid(density, grid, dim=1), single, atol=1e-9, rtol=0)
        assert abs(float(torch.trapezoid(single, grid)) - 1) < 1e-6


@pytest.mark.parametrize("name", list(GRAPHS))
def test_circuit_integrates_to_one_by_importance_sampling(name):
    circuit = build(GRAPHS[name]())
    d, draws = circuit.in_features, 400_000
    generator = torch.Generator().manual_seed(7)
    proposal = torch.distributions.Normal(
        torch.zeros(d, dtype=torch.float64), torch.full((d,), 3.0, dtype=torch.float64)
    )
    z = 3.0 * torch.randn(draws, d, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ratio = (circuit.log_prob(z) - proposal.log_prob(z).sum(-1)).exp()
    estimate, error = float(ratio.mean()), float(ratio.std() / math.sqrt(draws))
    assert error < 0.03, f"importance sampling too noisy to decide (standard error {error})"
    assert abs(estimate - 1) < 5 * error + 1e-3, (estimate, error)


@pytest.mark.parametrize("name", ["nested", "random-trees"])
def test_chain_of_marginals_by_quadrature(name):
    """``integral p(x_1..x_k) dx_k = p(x_1..x_{k-1})``: every prefix leaves a leaf partly
    observed at some ``k``, so every pattern path is integrated."""
    circuit = build(GRAPHS[name]())
    d = circuit.in_features
    grid = torch.linspace(-16, 16, 1601, dtype=torch.float64)
    torch.manual_seed(5)
    points = circuit.sample(3)[0]
    with torch.no_grad():
        for k in range(1, d + 1):
            upto = torch.arange(d) < k
            for point in points:
                line = point.expand(len(grid), -1).clone()
                line[:, k - 1] = grid
                integral = torch.trapezoid(circuit.log_prob(line, mask=upto).exp(), grid)
                before = circuit.log_prob(point, mask=torch.arange(d) < k - 1).exp()
                torch.testing.assert_close(integral, before, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Sampling, moments, imputation, MPE
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nested", "random-trees"])
def test_sample_mean_and_covariance_match_the_exact_moments(name):
    circuit = build(GRAPHS[name]())
    log_w, means, covariances = mixture(circuit)
    w = log_w.exp()
    mean = (w[:, None] * means).sum(0)
    second = (w[:, None, None] * (covariances + means[:, :, None] * means[:, None, :])).sum(0)
    covariance = second - mean[:, None] * mean[None, :]
    with torch.no_grad():
        exact_mean, exact_variance = circuit.moments()
    torch.testing.assert_close(exact_mean, mean)
    torch.testing.assert_close(exact_variance, covariance.diagonal())
    torch.manual_seed(2)
    n = 60_000
    samples = circuit.sample(n)[0]
    error = (covariance.diagonal() / n).sqrt()
    assert ((samples.mean(0) - mean).abs() < 5 * error).all()
    drawn = torch.cov(samples.T)
    # the standard error of a sample covariance: sqrt((S_ii S_jj + S_ij^2) / n) (Gaussian
    # bound, inflated for the mixture's heavier tails)
    bound = ((covariance.diagonal()[:, None] * covariance.diagonal()[None, :]) / n).sqrt()
    assert ((drawn - covariance).abs() < 8 * bound + 1e-9).all(), (drawn, covariance)


def test_conditional_samples_follow_the_conditional_from_log_prob():
    """Impute with leaf {2, 3, 4} partly observed and leaf {0, 1} half observed: every
    missing variable's samples against ``p(x_j | x_obs)`` by quadrature of ``log_prob``."""
    circuit = build(GRAPHS["nested"](), channels=3)
    torch.manual_seed(3)
    evidence = circuit.sample(1)[0][0]
    observed = torch.tensor([True, False, False, True, False])
    torch.manual_seed(4)
    imputed = circuit.impute(evidence.expand(4000, -1), observed)
    assert (imputed[:, observed] == evidence[observed]).all()
    grid = torch.linspace(-16, 16, 20001, dtype=torch.float64)
    with torch.no_grad():
        for j in (1, 2, 4):
            points = evidence.expand(len(grid), -1).clone()
            points[:, j] = grid
            with_j = observed.clone()
            with_j[j] = True
            density = circuit.log_prob(points, mask=with_j).exp()
            cdf = torch.cumulative_trapezoid(density, grid)
            cdf = (torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]).numpy()
            result = stats.kstest(
                imputed[:, j].numpy(), lambda v, cdf=cdf: np.interp(v, grid.numpy(), cdf)
            )
            assert result.pvalue > 1e-3, (j, result)
    # the pair (x_2, x_4) of one leaf: its conditional mean against the explicit mixture
    parts = mixture(circuit)
    log_w, means, covariances = parts
    o, m = observed.nonzero().squeeze(1), (~observed).nonzero().squeeze(1)
    normal = MultivariateNormal(means[:, o], covariances[:, o[:, None], o[None, :]])
    posterior = torch.softmax(log_w + normal.log_prob(evidence[o]), 0)
    gain = covariances[:, m[:, None], o[None, :]] @ torch.linalg.inv(
        covariances[:, o[:, None], o[None, :]]
    )
    centred = (evidence[o] - means[:, o])[..., None]
    conditional_means = means[:, m] + (gain @ centred).squeeze(-1)
    expected = (posterior[:, None] * conditional_means).sum(0)
    spread = imputed[:, m].std(0) / math.sqrt(len(imputed))
    assert ((imputed[:, m].mean(0) - expected).abs() < 5 * spread).all()


@pytest.mark.parametrize("name", ["nested", "random-trees"])
def test_mpe_equals_brute_force_maximisation_over_induced_trees(name):
    circuit = build(GRAPHS[name](), seed=4)
    log_w, means, covariances = mixture(circuit)
    d = circuit.in_features
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(4, d, generator=generator, dtype=torch.float64)
    masks = torch.ones(4, d, dtype=torch.bool)
    masks[0, [1, 3]] = False  # one missing in each leaf
    masks[1, [2, 3, 4]] = False  # a whole leaf missing
    masks[2, :] = False  # everything missing
    masks[3, [0]] = False
    completed, c, value = circuit.mpe(x, masks)
    assert (c == 0).all()
    for b in range(len(x)):
        m = (~masks[b]).nonzero().squeeze(1).numpy()
        best_value, best_x = -math.inf, None
        for k in range(len(log_w)):
            normal = MultivariateNormal(means[k], covariances[k])

            def negative(z, k=k, b=b, m=m, normal=normal):
                point = x[b].clone()
                point[m] = torch.as_tensor(z, dtype=torch.float64)
                return -float(normal.log_prob(point))

            found = optimize.minimize(negative, np.zeros(len(m)), method="BFGS", tol=1e-12)
            total = float(log_w[k]) - found.fun
            if total > best_value:
                point = x[b].clone()
                point[m] = torch.as_tensor(found.x, dtype=torch.float64)
                best_value, best_x = total, point
        assert abs(float(value[b]) - best_value) < 1e-7
        torch.testing.assert_close(completed[b], best_x, atol=1e-5, rtol=0)
    # an MPE query without missing variables returns x itself
    torch.testing.assert_close(circuit.mpe(x, torch.ones_like(masks))[0], x)


# ----------------------------------------------------------------------------------------
# EM
# ----------------------------------------------------------------------------------------
def _single_gaussian(d: int = 3, floor: float = 1e-3) -> UGMMCircuit:
    """One leaf over every variable, one unit: the circuit is one Gaussian."""
    graph = RegionGraph.from_nested((list(range(d)),))
    return UGMMCircuit(d, graph=graph, channels=1, inputs="multivariate", scale_floor=floor)


def _correlated(n: int, d: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    shift = torch.arange(d, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + shift


@pytest.mark.parametrize("nearly_singular", [False, True])
def test_statistics_with_missing_cells_equal_the_conditional_gaussian_expectations(
    nearly_singular,
):
    """Also for a unit whose covariance has condition number above 1e8 (x_1 ~ 100 x_0) and
    rows missing one cell: a Schur complement of ``Sigma^-1`` loses every digit there."""
    circuit = _single_gaussian(4).double()
    _randomise_layer(circuit.inputs, 5)
    x = _correlated(30, 4)
    generator = torch.Generator().manual_seed(6)
    observed = torch.rand(30, 4, generator=generator) < 0.6
    if nearly_singular:
        with torch.no_grad():
            circuit.inputs.scale_tril_unconstrained[0, 0, 1, 0] = 100.0
        sigma = circuit.inputs.covariance_matrix[0, 0].detach()
        assert torch.linalg.cond(sigma) > 1e8
        observed = torch.ones(30, 4, dtype=torch.bool)
        observed[torch.arange(30), torch.arange(30) % 4] = False
    observed[0] = False  # a row with nothing observed: the unit gets no statistics from it
    _, stats_ = expected_statistics(circuit, x, mask=observed)
    mu = circuit.inputs.leaf_loc()[0, 0].detach()
    sigma = circuit.inputs.covariance_matrix[0, 0].detach()
    first = torch.zeros(4, dtype=torch.float64)
    second = torch.zeros(4, 4, dtype=torch.float64)
    for row, seen in zip(x, observed, strict=True):  # textbook E-step, row by row
        o, m = seen.nonzero().squeeze(1), (~seen).nonzero().squeeze(1)
        if not len(o):
            continue  # nothing observed: log p(x_obs) = 0 does not depend on the unit
        mean, cov = row.clone(), torch.zeros(4, 4, dtype=torch.float64)
        gain = sigma[m[:, None], o[None, :]] @ torch.linalg.inv(sigma[o[:, None], o[None, :]])
        mean[m] = mu[m] + gain @ (row[o] - mu[o])
        cov[m[:, None], m[None, :]] = (
            sigma[m[:, None], m[None, :]] - gain @ sigma[o[:, None], m[None, :]]
        )
        first += mean
        second += cov + mean[:, None] * mean[None, :]
    observed_rows = float(observed.any(1).sum())
    torch.testing.assert_close(stats_["inputs.count"], torch.tensor([[observed_rows]]).double())
    torch.testing.assert_close(stats_["inputs.sum"][0, 0], first)
    if not nearly_singular:
        torch.testing.assert_close(stats_["inputs.sum_outer"][0, 0], second)
        return

    # the M-step reads the scatter about the mean: compare it in the unit's own metric,
    # L^-1 S L^-T (an error along the nearly singular direction would show there)
    def whitened_scatter(total, outer):
        centre = total / observed_rows
        scatter = outer - observed_rows * centre[:, None] * centre[None, :]
        tril = torch.linalg.cholesky(sigma)
        half = torch.linalg.solve_triangular(tril, scatter, upper=False)
        return torch.linalg.solve_triangular(tril, half.mT, upper=False)

    computed = whitened_scatter(stats_["inputs.sum"][0, 0], stats_["inputs.sum_outer"][0, 0])
    torch.testing.assert_close(computed, whitened_scatter(first, second), rtol=0, atol=1e-4)


def test_one_full_batch_step_recovers_the_sample_mean_and_covariance():
    circuit = _single_gaussian(3).double()
    _randomise_layer(circuit.inputs, 2)
    x = _correlated(500, 3)
    fit_em(
        circuit,
        x,
        online=False,
        epochs=1,
        pseudo_count=0.0,
        variance_pseudo_count=0.0,
        progress=False,
    )
    mean = x.mean(0)
    covariance = (x - mean).T @ (x - mean) / len(x)
    with torch.no_grad():
        torch.testing.assert_close(circuit.inputs.leaf_loc()[0, 0], mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            circuit.inputs.covariance_matrix[0, 0], covariance, rtol=1e-9, atol=1e-9
        )
        expected = MultivariateNormal(mean, covariance).log_prob(x)
        torch.testing.assert_close(circuit.log_prob(x), expected)


def test_one_step_with_missing_cells_is_one_textbook_em_step():
    """With missing cells the M-step is the textbook EM update of one Gaussian (mean and
    covariance of the completed statistics), and never lowers the observed likelihood."""
    circuit = _single_gaussian(3).double()
    _randomise_layer(circuit.inputs, 3)
    x = _correlated(200, 3, seed=4)
    observed = torch.rand(200, 3, generator=torch.Generator().manual_seed(8)) < 0.7
    before, stats_ = expected_statistics(circuit, x, mask=observed)
    maximise(circuit, stats_, pseudo_count=0.0, variance_pseudo_count=0.0)
    n = stats_["inputs.count"][0, 0]
    mean = stats_["inputs.sum"][0, 0] / n
    covariance = stats_["inputs.sum_outer"][0, 0] / n - mean[:, None] * mean[None, :]
    with torch.no_grad():
        torch.testing.assert_close(circuit.inputs.leaf_loc()[0, 0], mean)
        torch.testing.assert_close(circuit.inputs.covariance_matrix[0, 0], covariance)
        after = circuit.log_prob(x, mask=observed).sum()
    assert after > before


@pytest.mark.parametrize("name", list(GRAPHS))
def test_full_batch_em_never_lowers_the_likelihood(name):
    circuit = build(GRAPHS[name](), floor=0.05)
    torch.manual_seed(0)
    x = circuit.sample(300)[0]
    with torch.no_grad():  # start elsewhere: a circuit with other random parameters
        other = build(GRAPHS[name](), seed=11)
        circuit.load_state_dict(other.state_dict())
        start = float(circuit.log_prob(x).sum())
    history = fit_em(
        circuit,
        x,
        online=False,
        epochs=5,
        pseudo_count=0.0,
        variance_pseudo_count=1e-3,
        progress=False,
    )
    with torch.no_grad():
        final = float(circuit.log_prob(x).sum())
    totals = [-h["loss"] * len(x) * circuit.in_features for h in history] + [final]
    assert abs(totals[0] - start) < 1e-8 * abs(start)
    steps = torch.tensor(totals).diff()
    assert (steps >= -1e-9 * abs(totals[0])).all(), totals
    assert totals[-1] > totals[0] + 1.0


def test_full_batch_em_with_missing_cells_never_lowers_the_marginal_likelihood():
    circuit = build(GRAPHS["nested"](), channels=3)
    torch.manual_seed(1)
    x = circuit.sample(300)[0]
    observed = torch.rand(300, 5, generator=torch.Generator().manual_seed(2)) < 0.7
    history = []
    with torch.no_grad():
        circuit.load_state_dict(build(GRAPHS["nested"](), channels=3, seed=5).state_dict())
    for _ in range(5):
        total, stats_ = expected_statistics(circuit, x, mask=observed)
        history.append(float(total))
        maximise(circuit, stats_, pseudo_count=0.0, variance_pseudo_count=1e-3)
    steps = torch.tensor(history).diff()
    assert (steps >= -1e-9 * abs(history[0])).all(), history
    assert history[-1] > history[0]


def test_floored_m_step_is_the_constrained_maximiser():
    """``x_1 = 2 x_0 + 0.01 e_1`` (residual standard deviation below the floor) and ``x_2``
    depending on that residual: the maximiser over ``{L : L_jj >= floor'}`` keeps the least
    squares regressions of every ``x_j`` on ``x_<j`` and floors the residual standard
    deviations, ``L = (I - B)^-1 diag(max(d_j, floor))``, computed here by least squares."""
    floor = 0.1
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(400, 3, generator=generator, dtype=torch.float64)
    x0 = noise[:, 0]
    x1 = 2 * x0 + 0.01 * noise[:, 1]
    x2 = x0 + 30 * (x1 - 2 * x0) + 0.5 * noise[:, 2]
    x = torch.stack([x0, x1, x2], -1)
    circuit = _single_gaussian(3, floor=floor).double()
    fit_em(
        circuit,
        x,
        online=False,
        epochs=1,
        pseudo_count=0.0,
        variance_pseudo_count=0.0,
        progress=False,
    )
    centred = (x - x.mean(0)).numpy()
    coefficients = np.zeros((3, 3))
    residual_sd = np.zeros(3)
    for j in range(3):
        b = np.linalg.lstsq(centred[:, :j], centred[:, j], rcond=None)[0] if j else np.zeros(0)
        coefficients[j, :j] = b
        residual_sd[j] = np.sqrt(np.mean((centred[:, j] - centred[:, :j] @ b) ** 2))
    assert residual_sd[1] < floor < residual_sd[0] and residual_sd[2] > floor
    floor = floor * (1 + 1e-4)  # the M-step stays a hair above the floor (finite log(L - f))
    expected = np.linalg.inv(np.eye(3) - coefficients) @ np.diag(np.maximum(residual_sd, floor))
    tril = circuit.inputs.scale_tril[0, 0].detach()
    np.testing.assert_allclose(tril.numpy(), expected, rtol=1e-6, atol=1e-6 * floor)
    # no nearby point of the constraint set does better on these data
    mean = x.mean(0)
    best = float(MultivariateNormal(mean, scale_tril=tril).log_prob(x).sum())
    for _ in range(20):
        trial = tril + 1e-3 * torch.randn(3, 3, generator=generator, dtype=torch.float64).tril()
        diagonal = trial.diagonal().clamp_min(floor)
        trial = trial - torch.diag_embed(trial.diagonal()) + torch.diag_embed(diagonal)
        assert float(MultivariateNormal(mean, scale_tril=trial).log_prob(x).sum()) < best


# ----------------------------------------------------------------------------------------
# Initialisation, priors, checkpoints
# ----------------------------------------------------------------------------------------
def test_init_from_data_and_bayesian_bookkeeping(tmp_path):
    from ugmm_prob.bayes import make_bayesian
    from ugmm_prob.checkpoints import load_checkpoint, save_checkpoint

    circuit = build(GRAPHS["sizes-2-1-3"](), floor=0.05)
    x = _correlated(50, 6)
    circuit.init_from_data(x, generator=torch.Generator().manual_seed(0))
    layer = circuit.inputs
    # every unit's mean is one training row (per leaf) and its covariance spread^2 I
    loc = layer.leaf_loc().detach()
    for leaf in range(layer.num_leaves):
        size = int(layer.leaf_size[leaf])
        variables = layer.leaf_var[leaf, :size]
        for unit in range(layer.channels):
            assert (x[:, variables] == loc[leaf, unit, :size]).all(-1).any()
    covariance = layer.covariance_matrix.detach()
    spread = covariance.diagonal(dim1=-2, dim2=-1)[layer.real[:, None, :].expand_as(loc)]
    torch.testing.assert_close(spread, spread[:1].expand_as(spread))
    off = covariance - torch.diag_embed(covariance.diagonal(dim1=-2, dim2=-1))
    assert (off == 0).all()
    assert layer.prior_parameters == {"loc": "loc"}
    assert layer.prior_dims("loc") == ["slot", "input_channel"]
    bayesian = make_bayesian(circuit)
    assert "loc" in bayesian.inputs._pyro_samples
    assert torch.isfinite(bayesian.log_prob(x[:3])).all()
    path = save_checkpoint(tmp_path / "mvn.pt", circuit)
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x), circuit.log_prob(x))


def test_an_m_step_that_cannot_be_computed_is_a_divergence(monkeypatch):
    """A covariance update that is not positive semi-definite (rounding on a nearly singular
    unit) ends EM like a NaN: TrainingDivergedError, the model back in its state after the
    last completed epoch; the size search skips such a candidate with a warning."""
    from ugmm_prob.boundary import NonFiniteError
    from ugmm_prob.training import TrainingDivergedError

    pytest.importorskip("sklearn")
    from ugmm_prob.sklearn import UGMMCircuitDensity

    x = _correlated(60, 3)
    original = MultivariateGaussianInput.maximise
    calls = {"count": 0}

    def failing_third(self, stats, **options):
        calls["count"] += 1
        if calls["count"] == 3:
            raise NonFiniteError("a covariance update is not positive semi-definite")
        return original(self, stats, **options)

    monkeypatch.setattr(MultivariateGaussianInput, "maximise", failing_third)
    circuit = _single_gaussian(3).double()
    with pytest.raises(TrainingDivergedError, match="epoch 3 failed") as caught:
        fit_em(circuit, x, epochs=5, online=False, batch_size=60, progress=False)
    assert caught.value.epoch == 2
    monkeypatch.setattr(MultivariateGaussianInput, "maximise", original)
    reference = _single_gaussian(3).double()
    fit_em(reference, x, epochs=2, online=False, batch_size=60, progress=False)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(circuit.state_dict()[key], value)

    def failing_wide(self, stats, **options):  # every unit of a 4-channel circuit fails
        if self.loc.shape[1] == 4:
            raise NonFiniteError("a covariance update is not positive semi-definite")
        return original(self, stats, **options)

    monkeypatch.setattr(MultivariateGaussianInput, "maximise", failing_wide)
    options = {"depth": 0, "covariance_pooling": 0.0, "max_iter": 5, "random_state": 0}
    with pytest.warns(RuntimeWarning, match="diverged and is skipped"):
        density = UGMMCircuitDensity(channels=(1, 4), **options).fit(x.numpy())
    scores = {r["channels"]: r["validation_score"] for r in density.search_results_}
    assert math.isnan(scores[4]) and math.isfinite(scores[1])
    assert density.best_params_["channels"] == 1
    with pytest.raises(TrainingDivergedError):  # nothing to choose from: the error itself
        UGMMCircuitDensity(channels=4, **options).fit(x.numpy())
