"""Matplotlib figures. Every function returns a ``Figure``; saving is the caller's choice.

Nothing here changes global matplotlib state, so the functions work with any backend
(scripts and tests use the non-interactive ``Agg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure

from .layers import UGMMLayer

__all__ = ["plot_history", "plot_neuron_mixtures", "plot_posteriors"]


@torch.no_grad()
def plot_neuron_mixtures(
    layer: UGMMLayer,
    neurons: Sequence[int] | None = None,
    *,
    points: int = 600,
    ax: Any = None,
) -> Figure:
    """The densities ``P_j(y)`` of some neurons of a layer (default: up to 8 of them)."""
    neurons = list(range(min(layer.out_features, 8))) if neurons is None else list(neurons)
    mixture = layer.mixture
    loc, scale = layer.loc.detach()[neurons], layer.scale.detach()[neurons]
    # Frame the components that carry weight; negligible ones may sit far away.
    weight = torch.softmax(layer.logits.detach()[neurons], -1)
    visible = weight >= 0.01 * weight.max(-1, keepdim=True).values
    lo = float((loc - 4 * scale)[visible].min())
    hi = float((loc + 4 * scale)[visible].max())
    grid = torch.linspace(lo, hi, points, dtype=loc.dtype, device=loc.device)
    density = mixture.log_prob(grid[:, None]).exp().cpu()
    if ax is None:
        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    for j in neurons:
        ax.plot(grid.cpu(), density[:, j], label=f"neuron {j}")
    ax.set_xlabel("y")
    ax.set_ylabel("P_j(y)")
    ax.set_title(f"mixtures of {layer.label}")
    ax.legend(fontsize="small")
    return fig


def plot_posteriors(
    probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """Stacked bars of ``p(c | x)`` per example; true labels marked when given."""
    probs = probs.detach().cpu()
    n, classes = probs.shape
    names = list(class_names) if class_names is not None else [str(c) for c in range(classes)]
    if ax is None:
        fig = Figure(figsize=(max(6, 0.25 * n), 3.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    bottom = torch.zeros(n)
    for c in range(classes):
        ax.bar(range(n), probs[:, c], bottom=bottom, label=names[c], width=0.85)
        bottom += probs[:, c]
    if labels is not None:
        labels = labels.detach().cpu()
        wrong = probs.argmax(-1) != labels
        ax.scatter(
            torch.arange(n)[wrong],
            torch.full((int(wrong.sum()),), 1.03),
            marker="x",
            color="k",
            label="misclassified",
        )
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("example")
    ax.set_ylabel("p(c | x)")
    ax.legend(fontsize="small", ncol=classes + 1, loc="lower right")
    return fig


def plot_history(history: Sequence[dict[str, float]], *, ax: Any = None) -> Figure:
    """Training loss and accuracy per epoch, from :func:`ugmm_prob.training.fit`'s history."""
    if ax is None:
        fig = Figure(figsize=(7, 3.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss"] for row in history], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot(epochs, [row["accuracy"] for row in history], color="tab:orange")
    twin.set_ylabel("accuracy", color="tab:orange")
    return fig
