"""Predictive uncertainty from posterior draws: the entropy decomposition.

For class probabilities ``p_s(c | x)`` under ``S`` posterior draws, with the predictive
``p̄ = mean_s p_s``:

- total uncertainty ``H[p̄]``;
- aleatoric (expected entropy) ``mean_s H[p_s]``;
- epistemic (mutual information between the label and the parameters)
  ``H[p̄] - mean_s H[p_s] >= 0`` (Jensen).

Also: out-of-distribution AUROC and selective-prediction (accuracy against coverage) curves;
calibration (ECE, reliability) is in :mod:`ugmm_prob.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "UncertaintyDecomposition",
    "accuracy_coverage",
    "auroc",
    "decompose_uncertainty",
    "entropy",
]


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


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``values`` with ties given their average rank."""
    order = values.argsort()
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(average[inverse])
    ranks[order] = average[inverse]
    return ranks


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve for telling ``out_scores`` (positives) from ``in_scores``.

    The probability that a random out-of-distribution score exceeds a random
    in-distribution one (ties count one half): the Mann-Whitney statistic.
    """
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("auroc needs at least one in- and one out-of-distribution score")
    scores = torch.cat([in_scores.double().flatten(), out_scores.double().flatten()])
    ranks = _average_ranks(scores)
    n_in, n_out = in_scores.numel(), out_scores.numel()
    rank_sum = ranks[n_in:].sum()
    return float((rank_sum - n_out * (n_out + 1) / 2) / (n_in * n_out))


def accuracy_coverage(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective prediction: accuracy on the ``k`` most confident examples against ``k / n``.

    Returns ``(coverage, accuracy)``, both ``(n,)``, coverage increasing to 1.
    """
    confidence, predicted = probs.max(-1)
    order = confidence.argsort(descending=True)
    correct = (predicted[order] == y[order]).double()
    kept = torch.arange(1, len(y) + 1, dtype=torch.float64)
    return kept / len(y), correct.cumsum(0) / kept
