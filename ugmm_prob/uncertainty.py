"""Predictive uncertainty from posterior draws: the entropy decomposition.

For class probabilities ``p_s(c | x)`` under ``S`` posterior draws, with the predictive
``p̄ = mean_s p_s``:

- total uncertainty ``H[p̄]``;
- aleatoric (expected entropy) ``mean_s H[p_s]``;
- epistemic (mutual information between the label and the parameters)
  ``H[p̄] - mean_s H[p_s] >= 0`` (Jensen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["UncertaintyDecomposition", "decompose_uncertainty", "entropy"]


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (``0 log 0 = 0``)."""
    return -torch.special.xlogy(probs, probs).sum(dim)


@dataclass(frozen=True)
class UncertaintyDecomposition:
    """Per-example total, aleatoric and epistemic uncertainty (nats), and ``p̄``."""

    predictive: torch.Tensor
    total: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor


def decompose_uncertainty(draws: torch.Tensor) -> UncertaintyDecomposition:
    """Split the predictive entropy of ``draws`` ``(S, n, C)`` into its two parts."""
    if draws.dim() != 3:
        raise ValueError(f"expected draws of shape (S, n, C), got {tuple(draws.shape)}")
    predictive = draws.mean(0)
    total = entropy(predictive)
    aleatoric = entropy(draws).mean(0)
    # Jensen gives total >= aleatoric exactly; rounding can leave -1e-16.
    epistemic = (total - aleatoric).clamp_min(0)
    return UncertaintyDecomposition(predictive, total, aleatoric, epistemic)
