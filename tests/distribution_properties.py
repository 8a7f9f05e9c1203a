"""Property checks every univariate distribution of the library goes through.

Each check compares the distribution against an independent truth: numerical quadrature
for normalisation, exact moments and CDFs computed by the caller from a plain formula, and a
Kolmogorov-Smirnov goodness-of-fit test for sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import stats


def check_shapes(d: torch.distributions.Distribution) -> None:
    batch = d.batch_shape
    assert d.event_shape == torch.Size([])
    assert d.sample().shape == batch
    draws = d.sample((7,))
    assert draws.shape == (7, *batch)
    assert d.log_prob(draws).shape == (7, *batch)


def check_expand(d: torch.distributions.Distribution) -> None:
    new_batch = torch.Size([3, *d.batch_shape])
    expanded = d.expand(new_batch)
    assert expanded.batch_shape == new_batch
    values = d.sample((4,))
    expected = d.log_prob(values)[:, None].expand(4, *new_batch)
    torch.testing.assert_close(expanded.log_prob(values[:, None]), expected)


def check_normalisation(
    d: torch.distributions.Distribution, lo: float, hi: float, *, points: int = 400_001
) -> None:
    """Trapezoidal quadrature of the density over [lo, hi] equals 1 for every batch entry."""
    grid = torch.linspace(lo, hi, points, dtype=torch.float64)
    density = d.log_prob(grid.reshape(-1, *([1] * len(d.batch_shape)))).exp()
    mass = torch.trapezoid(density, grid, dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-6, rtol=0)


def check_moments(
    d: torch.distributions.Distribution,
    mean: torch.Tensor,
    variance: torch.Tensor,
    *,
    draws: int = 200_000,
) -> None:
    """Sample mean and variance agree with the exact ones within 5 standard errors."""
    samples = d.sample((draws,)).double()
    standard_error = (variance / draws).sqrt()
    assert ((samples.mean(0) - mean).abs() <= 5 * standard_error).all()
    # Var of the sample variance is about (m4 - var^2) / n; bound m4 through the samples.
    m4 = ((samples - mean) ** 4).mean(0)
    variance_error = ((m4 - variance**2).clamp_min(0) / draws).sqrt()
    assert ((samples.var(0) - variance).abs() <= 5 * variance_error + 1e-12).all()


def check_goodness_of_fit(
    d: torch.distributions.Distribution,
    cdf: Callable[[np.ndarray], np.ndarray],
    *,
    draws: int = 5_000,
    alpha: float = 1e-3,
) -> None:
    """Kolmogorov-Smirnov test of samples of a scalar distribution against its exact CDF."""
    assert d.batch_shape == torch.Size([])
    samples = d.sample((draws,)).double().numpy()
    result = stats.kstest(samples, cdf)
    assert result.pvalue > alpha, f"KS test rejects the sampler (p = {result.pvalue:.2e})"
