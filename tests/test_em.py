"""EM for circuits: the M-step against the closed form, monotone full-batch steps at every
depth, online EM reaching the full-batch fixed point, and fit_em's loop (resume, guards)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.circuit_cases import GRAPHS, INPUTS, build
from ugmm_prob.circuits import UGMMCircuit, fit_em
from ugmm_prob.circuits.em import expected_statistics, maximise


def _single_mixture(components: int = 3) -> UGMMCircuit:
    """A depth-0 circuit with one variable, repetition and channel: one Gaussian mixture."""
    torch.manual_seed(0)
    circuit = UGMMCircuit(
        1,
        num_classes=1,
        depth=0,
        repetitions=1,
        channels=1,
        components=components,
        scale_floor=1e-3,
    ).double()
    with torch.no_grad():
        circuit.inputs.loc_unconstrained.normal_(0, 2)
        circuit.inputs.logits_unconstrained.normal_()
    return circuit


def _two_clusters(n: int = 500) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    first = torch.randn(2 * n // 5, generator=generator) * 0.5 - 2
    second = torch.randn(n - len(first), generator=generator) + 1.5
    return torch.cat([first, second]).double()[:, None]


def test_m_step_equals_the_closed_form_for_one_gaussian_mixture():
    circuit = _single_mixture()
    x = _two_clusters()
    loc = circuit.inputs.loc[0, 0].detach()
    scale = circuit.inputs.scale[0, 0].detach()
    weights = torch.softmax(circuit.inputs.logits[0, 0], -1).detach()
    # textbook EM for a univariate mixture
    r = torch.softmax(torch.distributions.Normal(loc, scale).log_prob(x) + weights.log(), -1)
    count = r.sum(0)
    mean = (r * x).sum(0) / count
    variance = (r * (x - mean) ** 2).sum(0) / count
    total, stats = expected_statistics(circuit, x)
    torch.testing.assert_close(
        total,
        torch.logsumexp(
            torch.distributions.Normal(loc, scale).log_prob(x) + weights.log(), -1
        ).sum(),
    )
    torch.testing.assert_close(stats["inputs.count"][0, 0], count)
    maximise(circuit, stats, pseudo_count=0.0, variance_pseudo_count=0.0)
    torch.testing.assert_close(circuit.inputs.loc[0, 0].detach(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        circuit.inputs.scale[0, 0].detach() ** 2, variance, rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        torch.softmax(circuit.inputs.logits[0, 0], -1).detach(), count / count.sum()
    )


def test_m_step_keeps_a_component_whose_statistics_are_rounding():
    # float32 E-step statistics of a component nobody reaches: a count that is rounding of
    # the unit's flow (1e-9 of it) and a mean statistic of the same size.
    # Divided by such a count the mean would land anywhere; the M-step keeps it instead.
    circuit = _single_mixture().float()
    before_loc = circuit.inputs.loc.detach().clone()
    before_scale = circuit.inputs.scale.detach().clone()
    x = _two_clusters().float()
    _, stats = expected_statistics(circuit, x)
    count = stats["inputs.count"][0, 0]
    stats["inputs.count"][0, 0, 2] = 1e-9 * count.sum()
    stats["inputs.sum"][0, 0, 2] = 3e-7 * count.sum()
    stats["inputs.sum_sq"][0, 0, 2] = 1e-7 * count.sum()
    maximise(circuit, stats, pseudo_count=1e-2, variance_pseudo_count=1e-2)
    assert torch.equal(circuit.inputs.loc[0, 0, 2], before_loc[0, 0, 2])
    assert torch.equal(circuit.inputs.scale[0, 0, 2], before_scale[0, 0, 2])
    # the reached components still move to their closed-form means
    reached = stats["inputs.sum"][0, 0, :2] / stats["inputs.count"][0, 0, :2]
    torch.testing.assert_close(circuit.inputs.loc[0, 0, :2].detach(), reached)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_full_batch_em_never_lowers_the_likelihood(depth, graph, inputs):
    circuit = build(graph, depth, inputs, seed=depth)
    torch.manual_seed(0)
    x, y = circuit.sample(200)
    labels = None if depth % 2 else y  # both log p(x, y) and log p(x)
    history = []
    for _ in range(4):
        total, stats = expected_statistics(circuit, x, labels)
        history.append(float(total))
        maximise(circuit, stats, pseudo_count=0.0, variance_pseudo_count=1e-3)
    with torch.no_grad():
        final = float(circuit.log_likelihood_from_logits(circuit.joint_log_prob(x), labels).sum())
    history.append(final)
    steps = torch.tensor(history).diff()
    assert (steps >= -1e-8 * abs(history[0])).all(), history
    assert history[-1] > history[0]


def test_online_em_reaches_the_full_batch_fixed_point():
    x = _two_clusters(400)
    full = _single_mixture(components=2)
    online = _single_mixture(components=2)
    fit_em(
        full,
        x,
        epochs=300,
        batch_size=len(x),
        online=False,
        pseudo_count=0.0,
        variance_pseudo_count=0.0,
        progress=False,
    )
    fit_em(
        online,
        x,
        epochs=150,
        batch_size=40,
        online=True,
        step_size=1.0,
        step_decay=0.6,
        pseudo_count=0.0,
        variance_pseudo_count=0.0,
        progress=False,
    )
    for name in ("loc", "scale"):
        torch.testing.assert_close(
            getattr(online.inputs, name).detach(),
            getattr(full.inputs, name).detach(),
            atol=0.03,
            rtol=0,
        )
    with torch.no_grad():
        full_ll = float(full.log_prob(x).mean())
        assert abs(float(online.log_prob(x).mean()) - full_ll) < 2e-3
    # and the fixed point is a stationary point of the likelihood
    full.zero_grad()
    (-full.log_prob(x).mean()).backward()
    assert max(float(p.grad.abs().max()) for p in full.parameters()) < 1e-4


def test_fit_em_resumes_exactly_and_checks_its_inputs(tmp_path):
    circuit = build("data", 2, "gaussian", seed=0).float()
    torch.manual_seed(0)
    x, y = circuit.sample(120)
    state = {k: v.clone() for k, v in circuit.state_dict().items()}

    def fresh():
        copy = build("data", 2, "gaussian", seed=0).float()
        copy.load_state_dict(state)
        return copy

    straight = fresh()
    fit_em(straight, x, y, epochs=4, batch_size=32, progress=False)
    path = tmp_path / "em.pt"
    first = fresh()
    fit_em(first, x, y, epochs=2, batch_size=32, progress=False, checkpoint_path=path)
    resumed = fresh()
    history = fit_em(
        resumed, x, y, epochs=4, batch_size=32, progress=False, checkpoint_path=path, resume=True
    )
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    hybrid = UGMMCircuit(4, num_classes=2, likelihood_weight=0.5)
    with pytest.raises(ValueError, match="likelihood_weight"):
        fit_em(hybrid, x, y, progress=False)
    with pytest.raises(ValueError, match="step_size"):
        fit_em(circuit, x, y, step_size=0.0, progress=False)
    with pytest.raises(TypeError, match="UGMMCircuit"):
        fit_em(torch.nn.Linear(2, 2), x, y, progress=False)


def _labelled_and_unlabelled(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, UGMMCircuit]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, -1, -1, 1, -1, 0, 2, -1, -1, 1])
    torch.manual_seed(seed)
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=3, channels=2).double()
    circuit.init_from_data(x, y)
    return x, y, circuit


def test_row_weights_count_rows_as_often_as_their_integer_weight():
    """Weights 0, 1 and 2 give the statistics of the batch without the row, as it is, and
    with the row twice: every statistic (classes, sums, inputs) and the total."""
    x, y, circuit = _labelled_and_unlabelled()
    weights = torch.tensor([1, 2, 0, 2, 1, 0, 1, 1, 2, 0, 1, 1], dtype=torch.float64)
    total, weighted = expected_statistics(circuit, x, y, weights=weights)
    rows = torch.repeat_interleave(torch.arange(len(x)), weights.long())
    repeated_total, repeated = expected_statistics(circuit, x[rows], y[rows])
    torch.testing.assert_close(total, repeated_total)
    assert weighted.keys() == repeated.keys()
    for key, value in weighted.items():
        torch.testing.assert_close(value, repeated[key], msg=key)


def test_unlabelled_weight_zero_is_em_on_the_labelled_rows_alone():
    x, y, circuit = _labelled_and_unlabelled()
    labelled_only = copy.deepcopy(circuit)
    half = copy.deepcopy(circuit)
    options = {"epochs": 2, "online": False, "progress": False, "batch_size": 5}
    fit_em(circuit, x, y, unlabelled_weight=0.0, **options)
    fit_em(labelled_only, x[y >= 0], y[y >= 0], **options)
    for (name, value), other in zip(
        circuit.state_dict().items(), labelled_only.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, other, msg=name)
    fit_em(half, x, y, unlabelled_weight=0.5, **options)  # and a weight in between differs
    assert not torch.allclose(half.inputs.loc, circuit.inputs.loc)
    with pytest.raises(ValueError, match="unlabelled_weight"):
        fit_em(half, x, y, unlabelled_weight=-1.0, **options)
