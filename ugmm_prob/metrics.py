"""Metrics of probabilistic classifiers: accuracy, negative log-likelihood, calibration.

Every function takes predicted class probabilities ``probs`` of shape ``(n, C)`` (rows sum
to 1) and integer labels ``y`` of shape ``(n,)``, so any model of the library that answers
``predict_proba`` can be scored the same way.
"""

from __future__ import annotations

import torch

__all__ = [
    "accuracy",
    "classification_metrics",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability",
]


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose most probable class is the label."""
    return float((probs.argmax(-1) == y).double().mean())


def negative_log_likelihood(probs: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-12) -> float:
    """Mean ``-log p(y | x)`` in nats; probabilities are clamped at ``eps`` to stay finite."""
    picked = probs.gather(-1, y[:, None]).squeeze(-1)
    return float(-picked.clamp_min(eps).log().double().mean())


def reliability(
    probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean confidence, accuracy and count over equal-width confidence bins.

    Confidence is the top class probability; bin ``i`` holds ``(i/bins, (i+1)/bins]`` (the
    first bin includes 0). Empty bins report confidence and accuracy 0 with count 0.
    """
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).double()
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe = count.clamp_min(1)
    return conf_sum / safe, acc_sum / safe, count


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15) -> float:
    """``ECE = sum_i (n_i / n) |acc_i - conf_i|`` over equal-width confidence bins."""
    confidence, acc, count = reliability(probs, y, bins=bins)
    return float((count / count.sum() * (acc - confidence).abs()).sum())


def classification_metrics(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL (nats) and ECE of predicted class probabilities ``probs`` ``(n, C)``."""
    return {
        "accuracy": accuracy(probs, y),
        "nll": negative_log_likelihood(probs, y),
        "ece": expected_calibration_error(probs, y),
    }
