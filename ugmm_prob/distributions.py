"""Pyro distributions of the library: the uGMM neuron's own mixture.

A uGMM neuron ``j`` owns means ``mu[j, :]``, scales ``sigma[j, :]`` and mixing logits
``l[j, :]``. Its distribution over a latent scalar ``y`` is the univariate mixture

.. math::

    P_j(y) = \\sum_k \\pi_{jk}\\, \\mathcal N(y \\mid \\mu_{jk}, \\sigma_{jk}^2),
    \\qquad \\pi_j = \\operatorname{softmax}(l_j),

a proper density (it integrates to 1) that can be sampled. A layer's neurons form one
:class:`pyro.distributions.MixtureSameFamily` with batch shape ``(J,)``.

:func:`logit_pixels` carries a density of logit-space data (e.g. a circuit's) back to
pixel intensities in ``(0, 1)`` with the exact change-of-variables term.
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .boundary import NonFiniteError

__all__ = ["FlooredLogNormal", "logit_pixels", "neuron_mixture", "pixel_logit_transform"]


def neuron_mixture(
    loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor
) -> dist.MixtureSameFamily:
    """The neurons' univariate Gaussian mixtures ``P_j(y)``, batched over neurons.

    Args:
        loc: component means, shape ``(..., J, K)``.
        scale: component standard deviations (positive), same shape.
        logits: mixing logits, same shape; ``-inf`` removes a component.

    Returns:
        ``MixtureSameFamily(Categorical(logits), Normal(loc, scale))`` with batch shape
        ``(..., J)`` and event shape ``()``.
    """
    if not (loc.shape == scale.shape == logits.shape):
        raise ValueError(
            "neuron_mixture: expected loc, scale and logits of one shape, got "
            f"{tuple(loc.shape)}, {tuple(scale.shape)}, {tuple(logits.shape)}"
        )
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale))


class FlooredLogNormal(dist.TransformedDistribution):
    """``floor + LogNormal(loc, scale)``: a prior for scales that must stay above ``floor``.

    Its support is declared as ``greater_than(floor)`` (an affine shift alone would leave
    torch to report the whole real line), so guides and initialisation respect the floor.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc, scale, floor: float, validate_args=None) -> None:
        self.loc, self.scale, self.floor = loc, scale, float(floor)
        base = dist.LogNormal(loc, scale)
        shift = dist.transforms.AffineTransform(self.floor, 1.0)
        super().__init__(base, shift, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        """``greater_than(floor)``."""
        return constraints.greater_than(self.floor)

    def _validate_sample(self, value: torch.Tensor) -> None:
        # A draw at the floor or not finite means exp() of its log over- or underflowed:
        # the numbers have broken down (a diverging guide), which the training loops
        # recognise by the type NonFiniteError.
        try:
            super()._validate_sample(value)
        except ValueError as error:
            broken = ~torch.isfinite(value) | (value <= self.floor)
            if bool(broken.any()):
                raise NonFiniteError(
                    f"FlooredLogNormal(floor={self.floor}): {int(broken.sum())} value(s) are "
                    "not finite or not above the floor (exp over- or underflowed)"
                ) from error
            raise

    def expand(self, batch_shape, _instance=None):
        """The same distribution with ``loc`` and ``scale`` expanded to ``batch_shape``."""
        batch_shape = torch.Size(batch_shape)
        return FlooredLogNormal(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.floor
        )


def pixel_logit_transform(alpha: float = 1e-6) -> dist.transforms.Transform:
    """The bijection ``z -> x = (sigmoid(z) - alpha) / (1 - 2 alpha)`` from logits to pixels.

    Its inverse ``z = logit(alpha + (1 - 2 alpha) x)`` maps dequantised pixels in
    ``[0, 1]`` to the real line (the logit space of RealNVP and MAF); ``alpha`` keeps the
    ends finite. Use ``transform.inv(x)`` to move data there.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"pixel_logit_transform: alpha must be in (0, 0.5), got {alpha}")
    return dist.transforms.ComposeTransform(
        [
            dist.transforms.SigmoidTransform(),
            dist.transforms.AffineTransform(-alpha / (1 - 2 * alpha), 1 / (1 - 2 * alpha)),
        ]
    )


def logit_pixels(base: dist.Distribution, alpha: float = 1e-6) -> dist.TransformedDistribution:
    """The density of pixels ``x`` whose logits ``z = logit(alpha + (1 - 2 alpha) x)`` follow
    ``base``.

    .. math::

        \\log p_x(x) = \\log p_z(z) + \\sum_d \\log \\frac{1 - 2\\alpha}{y_d (1 - y_d)},
        \\qquad y = \\alpha + (1 - 2\\alpha) x .

    For a model fitted to logit-space data (``pixel_logit_transform(alpha).inv(x)``) this is
    its exact density on the pixels, so bits per dimension compare with models fitted to
    pixels directly; ``sample()`` returns pixels. ``base`` may have event shape ``(D,)``
    (e.g. a :class:`~ugmm_prob.circuits.UGMMCircuit`'s distribution) or ``()``.
    """
    transform = pixel_logit_transform(alpha)
    if base.event_shape:
        transform = dist.transforms.IndependentTransform(transform, len(base.event_shape))
    return dist.TransformedDistribution(base, [transform])
