"""Pyro distributions of the library: the uGMM neuron's own mixture.

A uGMM neuron ``j`` owns means ``mu[j, :]``, scales ``sigma[j, :]`` and mixing logits
``l[j, :]``. Its distribution over a latent scalar ``y`` is the univariate mixture

.. math::

    P_j(y) = \\sum_k \\pi_{jk}\\, \\mathcal N(y \\mid \\mu_{jk}, \\sigma_{jk}^2),
    \\qquad \\pi_j = \\operatorname{softmax}(l_j),

a proper density (it integrates to 1) that can be sampled. A layer's neurons form one
:class:`pyro.distributions.MixtureSameFamily` with batch shape ``(J,)``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

__all__ = ["neuron_mixture"]


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
