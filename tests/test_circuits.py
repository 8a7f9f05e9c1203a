"""The generative circuit against quadrature, Pyro's enumeration, brute force and KS tests."""

import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy import stats

from tests.benchmark_scripts import import_benchmark
from ugmm_prob.circuits import CircuitDistribution, UGMMCircuit, random_binary_trees
from ugmm_prob.circuits.layers import region_products, weighted_logsumexp
from ugmm_prob.training import fit


def make(in_features, num_classes=2, *, seed=0, **kwargs):
    torch.manual_seed(seed)
    options = {"repetitions": 2, "channels": 3, "components": 2, **kwargs}
    circuit = UGMMCircuit(in_features, num_classes=num_classes, **options).double()
    with torch.no_grad():  # spread the parameters away from their symmetric start
        circuit.inputs.loc_unconstrained.normal_(0, 1.5)
        circuit.inputs.scale_unconstrained.uniform_(-0.5, 0.3)
        circuit.inputs.logits_unconstrained.normal_(0, 1)
        for name, param in circuit.named_parameters():
            if not name.startswith("inputs."):  # sum, root and class logits
                param.normal_(0, 1)
    return circuit


def grid(lo=-9.0, hi=9.0, points=1201):
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def test_region_graph_splits_disjointly_and_covers():
    graph = random_binary_trees(11, depth=2, repetitions=3, seed=1)
    repetition = graph.root_partition_of_leaves()
    assert graph.depth == 2 and graph.repetitions == 3 and graph.is_tree()
    for r in range(3):
        pairs = zip(graph.leaves, repetition.tolist(), strict=True)
        leaves = [graph.regions[leaf] for leaf, own in pairs if own == r]
        variables = sorted(v for leaf in leaves for v in leaf)
        assert variables == list(range(11))  # each variable in exactly one leaf region
        assert sorted(len(leaf) for leaf in leaves) == [2, 3, 3, 3]  # balanced halves
    with pytest.raises(ValueError, match="more than the 3 variables"):
        random_binary_trees(3, depth=2, repetitions=1)


def test_integrates_to_one_in_one_dimension():
    circuit = make(1, 3)
    x = grid()
    density = circuit.log_prob(x[:, None]).exp().detach()
    assert abs(float(torch.trapezoid(density, x)) - 1) < 1e-3
    for c in range(3):  # and every class-conditional density
        conditional = (
            (circuit.log_prob(x[:, None], torch.full((len(x),), c)) - circuit.class_log_prior()[c])
            .exp()
            .detach()
        )
        assert abs(float(torch.trapezoid(conditional, x)) - 1) < 1e-3


def test_integrates_to_one_in_two_dimensions():
    circuit = make(2, 2, depth=1)
    x = grid(points=601)
    x1, x2 = torch.meshgrid(x, x, indexing="ij")
    points = torch.stack([x1, x2], -1)
    with torch.no_grad():
        density = circuit.log_prob(points).exp()  # leading batch shape (601, 601)
    mass = torch.trapezoid(torch.trapezoid(density, x, dim=1), x)
    assert abs(float(mass) - 1) < 1e-3


def test_marginal_equals_integral_of_the_joint():
    circuit = make(2, 2, depth=1)
    x = grid(points=2001)
    observed = torch.tensor([[0.7, float("nan")], [-1.3, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([True, False])
    marginal = circuit.log_prob(observed, mask=mask).exp().detach()
    for row in range(2):
        points = torch.stack([torch.full_like(x, float(observed[row, 0])), x], -1)
        integral = torch.trapezoid(circuit.log_prob(points).exp().detach(), x)
        assert abs(float(marginal[row]) - float(integral)) < 1e-6
    conditional = circuit.conditional_log_prob(
        torch.tensor([0.7, 0.2], dtype=torch.float64), torch.tensor([False, True]), mask
    )
    joint = circuit.log_prob(torch.tensor([0.7, 0.2], dtype=torch.float64))
    torch.testing.assert_close(
        conditional,
        joint - circuit.log_prob(torch.tensor([0.7, 0.2], dtype=torch.float64), mask=mask),
    )


def test_predict_proba_equals_pyro_enumeration():
    circuit = make(3, 4)
    x = torch.randn(6, 3, dtype=torch.float64)
    marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
        circuit.model, lambda x: None, x
    )
    enumerated = marginals["y"].log_prob(torch.arange(4)[:, None]).exp().T
    torch.testing.assert_close(enumerated, circuit.predict_proba(x), atol=1e-10, rtol=0)
    joint = circuit.joint_log_prob(x)
    torch.testing.assert_close(circuit.predict_proba(x), torch.softmax(joint, -1))


def test_is_a_pyro_distribution_site_under_plate():
    circuit = make(3, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    trace = pyro.poutine.trace(circuit.model).get_trace(x, y)
    trace.compute_log_prob()
    torch.testing.assert_close(
        trace.nodes["x"]["log_prob"] + trace.nodes["y"]["log_prob"], circuit.log_prob(x, y)
    )
    d = circuit(torch.tensor([[0], [1]]))  # an enumerated class: batch (2, 1)
    assert isinstance(d, CircuitDistribution) and d.batch_shape == (2, 1)
    assert d.event_shape == (3,) and d.log_prob(x).shape == (2, 5)
    assert circuit().sample((4,)).shape == (4, 3)
    assert d.expand((2, 5)).log_prob(x).shape == (2, 5)


def test_sampler_passes_kolmogorov_smirnov_in_one_dimension():
    circuit = make(1, 2)
    x = grid(points=20001)
    cdf_values = torch.cumulative_trapezoid(circuit.log_prob(x[:, None]).exp(), x)
    cdf_values = torch.cat([cdf_values.new_zeros(1), cdf_values]).detach().numpy()
    samples, _ = circuit.sample(4000)
    result = stats.kstest(samples[:, 0].numpy(), lambda v: np.interp(v, x.numpy(), cdf_values))
    assert result.pvalue > 1e-3


def test_exact_moments_match_quadrature_and_samples():
    circuit = make(1, 2)
    x = grid(-25, 25, points=100_001)
    density = circuit.log_prob(x[:, None]).exp().detach()
    mean_q = torch.trapezoid(density * x, x)
    var_q = torch.trapezoid(density * (x - mean_q) ** 2, x)
    mean, variance = (m.detach() for m in circuit.moments())
    assert abs(float(mean[0] - mean_q)) < 1e-6 and abs(float(variance[0] - var_q)) < 1e-6

    four = make(4, 3, depth=1)
    mean, variance = four.moments()
    samples, _ = four.sample(100_000)
    se = (variance / len(samples)).sqrt()
    assert ((samples.mean(0) - mean).abs() < 5 * se).all()
    assert ((samples.var(0) - variance).abs() < 0.03 * variance).all()
    class_mean, _ = four.moments(1)
    conditional, _ = four.sample(50_000, c=1)
    se = (four(torch.tensor(1)).variance / len(conditional)).sqrt()
    assert ((conditional.mean(0) - class_mean).abs() < 5 * se).all()


def test_conditional_samples_respect_evidence_and_follow_the_conditional():
    circuit = make(2, 2, depth=1)
    evidence = torch.tensor([[0.4, float("nan")]], dtype=torch.float64).expand(3000, 2)
    mask = torch.tensor([True, False])
    imputed = circuit.impute(evidence, mask)
    assert (imputed[:, 0] == 0.4).all() and torch.isfinite(imputed).all()
    x = grid(points=20001)
    points = torch.stack([torch.full_like(x, 0.4), x], -1)
    conditional = circuit.log_prob(points).exp().detach()
    cdf = torch.cumulative_trapezoid(conditional, x)
    cdf = torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]
    result = stats.kstest(imputed[:, 1].numpy(), lambda v: np.interp(v, x.numpy(), cdf.numpy()))
    assert result.pvalue > 1e-3


@torch.no_grad()
def _induced_tree_values(circuit, x, mask):
    """Brute force for depth-1 circuits: every class, root child, leaf channel, component."""
    log_prior = circuit.class_log_prior()
    root = torch.log_softmax(circuit.root.logits[0], -1)  # (C, R * I * I)
    inputs, graph, compiled = circuit.inputs, circuit.graph, circuit.compiled
    w = torch.log_softmax(inputs.logits, -1)
    loc, scale = inputs.loc, inputs.scale  # (N, I, K)
    width = inputs.channels
    best = -math.inf
    for c, j in itertools.product(range(circuit.num_classes), range(root.shape[1])):
        r, q = divmod(j, width * width)
        channels = (q // width, q % width)
        value = float(log_prior[c] + root[c, j])
        children = graph.partitions[graph.region_partitions[graph.root][r]][1]
        for side, leaf in enumerate(children):
            position = compiled.leaves.index(leaf)
            for n in (compiled.slot_leaf == position).nonzero()[:, 0].tolist():
                d, i = int(inputs.slot_var[n]), channels[side]
                options = []
                for k in range(loc.shape[-1]):
                    at = x[d] if mask[d] else loc[n, i, k]
                    normal = torch.distributions.Normal(loc[n, i, k], scale[n, i, k])
                    options.append(float(w[n, i, k] + normal.log_prob(at)))
                value += max(options)
        best = max(best, value)
    return best


@pytest.mark.parametrize("observed", [(False, False), (True, False)])
def test_max_product_equals_brute_force_over_induced_trees(observed):
    circuit = make(2, 2, depth=1, repetitions=2, channels=2, components=2, seed=3)
    x = torch.tensor([0.3, float("nan")], dtype=torch.float64)
    mask = torch.tensor(observed)
    completed, _, log_value = circuit.mpe(x, mask)
    assert abs(float(log_value) - _induced_tree_values(circuit, x, mask)) < 1e-9
    assert torch.isfinite(completed).all()
    if observed[0]:
        assert completed[0] == 0.3


def test_mpe_point_against_a_fine_grid_mode():
    circuit = make(2, 1, depth=1, repetitions=1, channels=2, components=1, seed=4)
    completed, _, _ = circuit.mpe(
        torch.full((2,), float("nan"), dtype=torch.float64), torch.tensor([False, False])
    )
    x = grid(-6, 6, 1201)
    points = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)
    log_density = circuit.log_prob(points).detach()
    mode_value = float(log_density.max())
    mpe_value = float(circuit.log_prob(completed).detach())
    # max-product is an approximation: its point cannot beat the mode and should be close
    assert mpe_value <= mode_value + 1e-6
    assert mode_value - mpe_value < 1.0


def test_leading_batch_shape_and_no_grad():
    circuit = make(3, 2)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        assert circuit.joint_log_prob(x).shape == (2, 4, 2)
        assert circuit.log_prob(x).shape == (2, 4)
        assert circuit.impute(x, torch.tensor([True, False, True])).shape == (2, 4, 3)
        completed, c, value = circuit.mpe(x, torch.tensor([True, False, False]))
        assert completed.shape == (2, 4, 3) and c.shape == value.shape == (2, 4)


def test_bad_inputs():
    circuit = make(3, 2)
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 3\)"):
        circuit.log_prob(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="pass mask="):
        circuit.log_prob(torch.tensor([[0.0, float("nan"), 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="disjoint"):
        circuit.conditional_log_prob(
            torch.zeros(3, dtype=torch.float64),
            torch.tensor([True, False, False]),
            torch.tensor([True, True, False]),
        )


def test_maximum_likelihood_and_hybrid_training_with_fit():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(150, 4) * 0.5 - 1, torch.randn(150, 4) * 0.5 + 1])
    y = torch.cat([torch.zeros(150), torch.ones(150)]).long()
    for weight in (1.0, 0.5):
        circuit = UGMMCircuit(
            4, num_classes=2, depth=1, repetitions=2, channels=3, likelihood_weight=weight
        )
        circuit.init_leaves_from_data(x)
        before = float(-circuit.log_prob(x, y).mean().detach())
        fit(circuit, x, y, epochs=20, batch_size=50, lr=3e-2, progress=False)
        after = float(-circuit.log_prob(x, y).mean().detach())
        assert after < before - 1.0
        assert (circuit.predict(x) == y).double().mean() > 0.95
        assert (circuit.inputs.scale >= circuit.config["scale_floor"]).all()


def test_checkpoint_round_trip(tmp_path):
    from ugmm_prob.checkpoints import load_checkpoint, save_checkpoint

    circuit = make(5, 2, depth=2).float()
    path = save_checkpoint(tmp_path / "circuit.pt", circuit, epoch=1)
    loaded = load_checkpoint(path).model
    assert type(loaded) is UGMMCircuit and loaded.config == circuit.config
    x = torch.randn(4, 5)
    torch.testing.assert_close(loaded.log_prob(x), circuit.log_prob(x))


def test_init_leaves_from_data_uses_data_values_and_spread():
    x = torch.randn(500, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([0.0, 10.0, -2.0])
    circuit = UGMMCircuit(3, num_classes=1, repetitions=2, channels=2, components=3)
    circuit.init_leaves_from_data(x, generator=torch.Generator().manual_seed(0))
    inputs = circuit.inputs
    loc, scale = inputs.loc.detach(), inputs.scale.detach()  # (N, I, K)
    for d in range(3):
        mine = inputs.slot_var == d
        assert set(loc[mine].flatten().tolist()) <= set(x[:, d].tolist())
        torch.testing.assert_close(scale[mine], x.std(0)[d].expand(scale[mine].shape))


def _straightforward_circuit_class():
    """The benchmark's straightforward circuit (materialised input, product and sum tensors)."""
    return import_benchmark("generative").MaterialisedCircuit


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fast_paths_equal_the_straightforward_circuit(depth):
    """Fused leaf regions (C++ on CPU) and sums of products that are never formed give the
    straightforward implementation's loss and gradients (SPFlow's rule: speed work does not
    change outputs)."""
    fast = make(13, 3, depth=depth, repetitions=3, channels=4, seed=depth)
    plain = _straightforward_circuit_class()(
        13, num_classes=3, depth=depth, repetitions=3, channels=4
    )
    plain = plain.double()
    assert plain.graph.to_config() == fast.graph.to_config()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(37, 13, dtype=torch.float64)
    y = torch.randint(0, 3, (37,))
    losses = [c.training_loss(x, y) for c in (fast, plain)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    grads = [
        torch.autograd.grad(loss, list(c.parameters()))
        for loss, c in zip(losses, (fast, plain), strict=True)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_layer_operations_equal_their_straightforward_definitions():
    """The fused input layer and the matrix-product region layer against plain versions."""
    circuit = make(7, 2, depth=2)
    x = torch.randn(6, 7, dtype=torch.float64)
    plain_leaves = circuit.inputs.mixture.log_prob(x[:, circuit.inputs.slot_var, None])
    torch.testing.assert_close(circuit.inputs.log_density(x), plain_leaves)
    inputs = circuit.inputs
    leaf = torch.randn(6, inputs.num_slots, 3, dtype=torch.float64)
    gathered = torch.stack(
        [
            leaf[:, (inputs.slot_leaf == position).nonzero()[:, 0]].sum(1)
            for position in range(inputs.num_leaves)
        ],
        1,
    )
    torch.testing.assert_close(region_products(leaf, inputs.leaf_slots), gathered)
    values, log_w = torch.randn(6, 4, 9, dtype=torch.float64), torch.randn(4, 3, 9).double()
    log_w = torch.log_softmax(log_w, -1)
    torch.testing.assert_close(
        weighted_logsumexp(values, log_w),
        torch.logsumexp(values[:, :, None, :] + log_w, dim=-1),
    )


def test_init_from_data_gives_each_class_its_repetitions_and_whole_examples():
    torch.manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 4) * 0.5 + 3.0 * y[:, None]  # class c sits near 3c
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=6, channels=2, components=2)
    before = circuit.root.logits.detach().clone()
    circuit.init_from_data(x, y, generator=torch.Generator().manual_seed(1), class_bias=5.0)
    loc = circuit.inputs.loc.detach().reshape(6, 4, 2, 2)  # slots (R, D): (R, D, I, K)
    rows = {tuple(row.tolist()): int(label) for row, label in zip(x, y, strict=True)}
    for r in range(6):
        for i in range(2):
            for k in range(2):
                # one whole training example of class r mod 3 per channel and component
                assert rows[tuple(loc[r, :, i, k].tolist())] == r % 3
    within = (x - torch.stack([x[y == c].mean(0) for c in range(3)])[y]).pow(2).mean(0).sqrt()
    scale = circuit.inputs.scale.detach()
    torch.testing.assert_close(scale, within.median().expand(scale.shape))
    shift = (circuit.root.logits.detach() - before).reshape(3, 6, -1)
    for c in range(3):
        for r in range(6):
            assert torch.all(shift[c, r] == (5.0 if r % 3 == c else 0.0))
    # the prototypes already classify the well-separated classes
    assert (circuit.predict(x) == y).double().mean() > 0.95
    with pytest.raises(ValueError, match="labels"):
        circuit.init_from_data(x, y + 3)
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 4\)"):
        circuit.init_from_data(x[:, :3], y)


def test_kmeans_seeding_starts_the_units_at_a_k_means_fixed_point():
    """``seeding="kmeans"``: each unit of a depth-0 full-covariance circuit starts at the
    centroid of the rows nearest to it (in column standard deviations): a fixed point of
    Lloyd's iteration, computed here with NumPy; on three well-separated clusters, their
    means."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 6.0, -3.0]])
    label = rng.integers(0, 3, 150)
    x = centres[label] + rng.normal(size=(150, 3)) * np.array([0.8, 0.5, 0.6])
    truth = np.array(sorted(np.stack([x[label == c].mean(0) for c in range(3)]).tolist()))
    recovered = 0
    for seed in range(10):
        circuit = UGMMCircuit.from_data(
            torch.from_numpy(x),
            depth=0,
            channels=3,
            inputs="multivariate",
            seeding="kmeans",
            generator=torch.Generator().manual_seed(seed),
        )
        start = circuit.inputs.leaf_loc().detach().double()[0].numpy()  # (3 units, 3 columns)
        scale = x.std(0, ddof=1)
        nearest = (((x / scale)[:, None, :] - (start / scale)[None]) ** 2).sum(-1).argmin(1)
        for unit in range(3):
            # float32: the circuit's dtype
            np.testing.assert_allclose(start[unit], x[nearest == unit].mean(0), atol=1e-5)
        found = np.array(sorted(start.tolist()))
        recovered += bool(np.allclose(found, truth, atol=1e-5))
    # D^2 seeding usually puts one seed in each cluster (a seed pair inside one cluster
    # leaves Lloyd's iteration in a local optimum)
    assert recovered >= 7  # 9 of these 10 seeds
    with pytest.raises(ValueError, match="seeding must be one of"):
        UGMMCircuit.from_data(torch.from_numpy(x), depth=0, seeding="lloyd")


def test_kmeans_plus_plus_draws_rows_by_squared_distance():
    """``seeding="k-means++"`` (D^2 sampling): the first row uniformly, the second with
    probability proportional to its squared distance to the first; the pairs drawn over
    many seeds against those probabilities (chi-square)."""
    from ugmm_prob.circuits.circuit import _spread_starts

    values = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    counts = np.zeros((4, 4))
    for seed in range(4000):
        drawn = _spread_starts(values, 2, torch.Generator().manual_seed(seed), "k-means++")
        first, second = (int((values[:, 0] == v).nonzero()) for v in drawn[:, 0])
        counts[first, second] += 1
    squared = (values - values.T).pow(2).numpy()
    expected = 4000 * 0.25 * squared / squared.sum(1, keepdims=True)
    assert np.all(counts[expected == 0] == 0)  # never the same row twice
    used = expected > 0
    assert stats.chisquare(counts[used], expected[used]).pvalue > 1e-3


def test_separate_structure_gives_each_class_its_own_repetitions():
    from ugmm_prob.circuits import fit_em

    circuit = make(2, 2, depth=1, repetitions=4, shared_structure=False)
    x = grid(points=601)
    points = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)
    with torch.no_grad():
        mass = torch.trapezoid(torch.trapezoid(circuit.log_prob(points).exp(), x, dim=1), x)
    assert abs(float(mass) - 1) < 1e-3
    data = torch.randn(50, 2, dtype=torch.float64)
    before = circuit.log_prob(data, torch.zeros(50, dtype=torch.long)).detach()
    with torch.no_grad():  # repetitions 1 and 3 serve class 1 only; moved far away, their
        loc = circuit.inputs.loc_unconstrained  # slots (R, D) first
        loc.view(4, 2, *loc.shape[1:])[1::2] -= 200.0  # values must not swamp class 0's
    after = circuit.log_prob(data, torch.zeros(50, dtype=torch.long)).detach()
    torch.testing.assert_close(after, before)
    assert not torch.allclose(circuit.log_prob(data, torch.ones(50, dtype=torch.long)), before)
    labels = (data[:, 0] > 0).long()
    fit_em(circuit, data, labels, epochs=3, batch_size=25, progress=False)
    weights = circuit.root.log_weights().exp()[0].reshape(2, 4, -1)  # (C, R, Q)
    assert (weights[0, 1::2] == 0).all() and (weights[1, 0::2] == 0).all()
    torch.testing.assert_close(weights.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot serve 3 classes"):
        UGMMCircuit(2, num_classes=3, depth=1, repetitions=2, shared_structure=False)


def test_structure_options_of_the_constructors():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator).cumsum(1)  # a random walk: a chain of columns
    y = (x[:, 0] > 0).long()
    circuit = UGMMCircuit.from_data(x, y, structure="hclt", channels=3, components=2)
    assert circuit.graph.kind == "hclt" and circuit.graph.is_tree()
    assert {group.kind for group in circuit.compiled.products} == {"hadamard"}
    # one root partition for two classes: no class owns it, so examples come from all rows
    # and the roots keep their random start
    rows = {tuple(row.tolist()) for row in x}
    loc = circuit.inputs.loc.detach()  # (N, I, K), one slot per variable
    for i in range(3):
        for k in range(2):
            assert tuple(loc[:, i, k].tolist()) in rows  # whole training rows
    assert circuit.root.logits.detach().abs().max() < 1.0
    images = UGMMCircuit.for_images(4, 4, 2, structure="quad_graph", channels=2)
    assert images.graph.kind == "quad_graph" and not images.graph.is_tree()
    with pytest.raises(ValueError, match="structure must be 'tree' or 'hclt'"):
        UGMMCircuit.from_data(x, structure="chow-liu")
    with pytest.raises(ValueError, match="structure must be 'quad_tree' or 'quad_graph'"):
        UGMMCircuit.for_images(4, 4, structure="tree")
