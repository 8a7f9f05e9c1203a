"""The neuron mixture ``P_j(y)`` against closed forms, quadrature and a KS test."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, stats

from tests.distribution_properties import (
    check_expand,
    check_goodness_of_fit,
    check_moments,
    check_normalisation,
    check_shapes,
)
from ugmm_prob.distributions import logit_pixels, neuron_mixture, pixel_logit_transform


def _parameters(neurons=3, components=4):
    generator = torch.Generator().manual_seed(1)
    loc = torch.randn(neurons, components, generator=generator, dtype=torch.float64) * 2
    scale = 0.2 + torch.rand(neurons, components, generator=generator, dtype=torch.float64)
    logits = torch.randn(neurons, components, generator=generator, dtype=torch.float64)
    return loc, scale, logits


def test_is_a_pyro_mixture_with_neuron_batch_shape():
    mixture = neuron_mixture(*_parameters())
    assert type(mixture).__module__.startswith("pyro.distributions")
    assert mixture.batch_shape == (3,)
    check_shapes(mixture)
    check_expand(mixture)


def test_log_prob_matches_the_plain_mixture_formula():
    loc, scale, logits = _parameters()
    y = torch.linspace(-4, 4, 17, dtype=torch.float64)[:, None]
    pi = torch.softmax(logits, -1)
    plain = (
        (pi * torch.exp(-0.5 * ((y[..., None] - loc) / scale) ** 2) / (scale * np.sqrt(2 * np.pi)))
        .sum(-1)
        .log()
    )
    torch.testing.assert_close(neuron_mixture(loc, scale, logits).log_prob(y), plain)


def test_integrates_to_one():
    loc, scale, _ = _parameters()
    check_normalisation(
        neuron_mixture(*_parameters()),
        float(loc.min() - 12 * scale.max()),
        float(loc.max() + 12 * scale.max()),
    )


def test_sample_moments_match_exact_moments():
    loc, scale, logits = _parameters()
    pi = torch.softmax(logits, -1)
    mean = (pi * loc).sum(-1)
    variance = (pi * (scale**2 + loc**2)).sum(-1) - mean**2
    check_moments(neuron_mixture(loc, scale, logits), mean, variance)


@pytest.mark.parametrize("neuron", [0, 1, 2])
def test_sampler_passes_kolmogorov_smirnov(neuron):
    loc, scale, logits = (p[neuron] for p in _parameters())
    pi = torch.softmax(logits, -1).numpy()

    def cdf(y):
        return (pi * stats.norm.cdf((y[:, None] - loc.numpy()) / scale.numpy())).sum(-1)

    check_goodness_of_fit(neuron_mixture(loc, scale, logits), cdf)


def test_rejects_mismatched_shapes():
    loc, scale, logits = _parameters()
    with pytest.raises(ValueError, match="one shape"):
        neuron_mixture(loc, scale[:, :2], logits)


def test_logit_pixels_is_the_change_of_variables_density():
    alpha = 1e-3
    base = dist.Normal(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0).double())
    pixels = logit_pixels(base, alpha)
    # integrates to 1 over its support (slightly wider than [0, 1] because of alpha)
    edge = alpha / (1 - 2 * alpha)
    mass, _ = integrate.quad(
        lambda u: float(pixels.log_prob(torch.tensor(u, dtype=torch.float64)).exp()),
        -edge,
        1 + edge,
        limit=400,
        points=[0.0, 1.0],
    )
    assert mass == pytest.approx(1.0, abs=1e-6)
    # event shape (D,): the plain formula log p(z) + sum_d log dz/dx
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    x = torch.rand(5, 3)
    y = alpha + (1 - 2 * alpha) * x
    z = torch.log(y) - torch.log1p(-y)
    jacobian = (math.log(1 - 2 * alpha) - torch.log(y) - torch.log1p(-y)).sum(-1)
    torch.testing.assert_close(logit_pixels(base, alpha).log_prob(x), base.log_prob(z) + jacobian)
    torch.testing.assert_close(pixel_logit_transform(alpha).inv(x), z)
    draws = logit_pixels(base, alpha).sample((1000,))
    assert draws.shape == (1000, 3) and bool(((draws > -edge) & (draws < 1 + edge)).all())
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 0.5\)"):
        pixel_logit_transform(0.5)


def test_floored_log_normal_goes_through_the_shared_property_checks():
    from ugmm_prob.distributions import FlooredLogNormal

    loc, scale, floor = torch.tensor([-0.5, 0.2]).double(), torch.tensor([0.4, 0.7]).double(), 0.3
    d = FlooredLogNormal(loc, scale, floor)
    check_shapes(d)
    check_expand(d)
    above, below = torch.tensor(floor + 1e-3).double(), torch.tensor(floor - 1e-3).double()
    assert bool(d.support.check(above)) and not bool(d.support.check(below))
    # the density of floor + LogNormal, written out
    y = torch.tensor([0.5, 1.7], dtype=torch.float64)
    plain = -torch.log((y - floor) * scale * math.sqrt(2 * math.pi)) - (
        torch.log(y - floor) - loc
    ) ** 2 / (2 * scale**2)
    torch.testing.assert_close(d.log_prob(y), plain)
    # mass below 40 (the tails beyond hold < 1e-7 of it for these parameters)
    grid = torch.linspace(floor, 40.0, 400_001, dtype=torch.float64)[1:]
    density = d.log_prob(grid[:, None]).exp()
    mass = torch.trapezoid(density, grid, dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    mean = floor + torch.exp(loc + scale**2 / 2)
    variance = (torch.exp(scale**2) - 1) * torch.exp(2 * loc + scale**2)
    check_moments(d, mean, variance)
    single = FlooredLogNormal(loc[1], scale[1], floor)
    check_goodness_of_fit(
        single,
        lambda v: stats.lognorm.cdf(v - floor, s=float(scale[1]), scale=math.exp(float(loc[1]))),
    )


def test_logit_pixels_of_a_normal_goes_through_the_shared_property_checks():
    base = dist.Normal(torch.tensor([0.3, -1.0]).double(), torch.tensor([1.2, 0.5]).double())
    pixels = logit_pixels(base, 1e-3)
    check_shapes(pixels)
    check_normalisation(pixels, 0.0, 1.0, points=400_001)
