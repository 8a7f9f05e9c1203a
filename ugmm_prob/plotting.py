"""Matplotlib figures. Every function returns a ``Figure``; saving is the caller's choice.

Nothing here changes global matplotlib state, so the functions work with any backend
(scripts and tests use the non-interactive ``Agg``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from .distributions import neuron_mixture
from .layers import UGMMLayer

__all__ = [
    "figure_grid",
    "plot_accuracy_coverage",
    "plot_entropy_histograms",
    "plot_history",
    "plot_neuron_mixtures",
    "plot_neuron_posterior",
    "plot_posteriors",
    "plot_region_graph",
    "plot_reliability",
]


def _figure(size: tuple[float, float]) -> Figure:
    # constrained layout: titles, axis labels and legends are placed so none overprints another
    return Figure(figsize=size, layout="constrained")


def figure_grid(rows: int, cols: int, *, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure of ``rows x cols`` panels and its ``(rows, cols)`` array of axes, laid out so
    that no panel's title, axis labels or legend overprints another's (matplotlib's
    constrained layout); pass the axes to the ``plot_*`` functions as ``ax=``."""
    fig = _figure(size)
    return fig, fig.subplots(rows, cols, squeeze=False)


@torch.no_grad()
def plot_neuron_mixtures(
    layer: UGMMLayer,
    neurons: Sequence[int] | None = None,
    *,
    points: int = 600,
    ax: Any = None,
) -> Figure:
    """The densities ``P_j(y)`` of some neurons of a layer (default: up to 8 of them).

    The title names the layer and, when not every neuron is drawn, which ones are (``neurons
    0-7 of 10``).
    """
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
        fig = _figure((7, 4))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    for j in neurons:
        ax.plot(grid.cpu().numpy(), density[:, j].numpy(), label=f"neuron {j}")
    ax.set_xlabel("y")
    ax.set_ylabel("P_j(y)")
    shown = "" if sorted(neurons) == list(range(layer.out_features)) else _which(neurons)
    ax.set_title(
        f"mixtures of {layer.label}"
        + (f": neurons {shown} of {layer.out_features}" if shown else "")
    )
    ax.legend(fontsize="small")
    return fig


def _which(neurons: Sequence[int]) -> str:
    """``0-7`` for a run of consecutive indices, else ``1, 4, 5``."""
    if len(neurons) > 2 and list(neurons) == list(range(neurons[0], neurons[-1] + 1)):
        return f"{neurons[0]}-{neurons[-1]}"
    return ", ".join(str(j) for j in neurons)


def plot_posteriors(
    probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """Stacked bars of ``p(c | x)`` per example; true labels marked when given.

    The legend stands to the right of the axes, clear of the bars.
    """
    probs = probs.detach().cpu()
    n, classes = probs.shape
    names = list(class_names) if class_names is not None else [str(c) for c in range(classes)]
    if ax is None:
        fig = _figure((max(6, 0.25 * n), 3.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    bottom = torch.zeros(n)
    for c in range(classes):
        ax.bar(range(n), probs[:, c].numpy(), bottom=bottom.numpy(), label=names[c], width=0.85)
        bottom += probs[:, c]
    if labels is not None:
        labels = labels.detach().cpu()
        wrong = probs.argmax(-1) != labels
        errors = int(wrong.sum())
        ax.scatter(
            torch.arange(n)[wrong].numpy(),
            torch.full((errors,), 1.03).numpy(),
            marker="x",
            color="k",
            label="misclassified" if errors else "misclassified (none)",
        )
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("example")
    ax.set_ylabel("p(c | x)")
    ax.set_xlim(-0.6, n - 0.4)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def plot_history(
    history: Sequence[dict[str, float]],
    *,
    held_out: str = "held-out data",
    kept_epoch: int | None = None,
    ax: Any = None,
) -> Figure:
    """Per epoch, from :func:`ugmm_prob.training.fit`'s history: the training loss and,
    where the history has them, the NLL per example on the held-out data (left axis, blue)
    and the accuracy there (right axis, orange); the epoch whose model was kept is marked.

    Args:
        history: rows with ``epoch`` and ``loss``, and optionally ``nll``, ``accuracy``
            (metrics on the validation data given to ``fit``) and ``best_epoch``.
        held_out: what the metrics were computed on, for the labels (e.g. ``"held-out
            training flowers"``, ``"test images"``).
        kept_epoch: the epoch marked as kept (default: the last row's ``best_epoch``, the
            epoch ``fit(..., keep_best=...)`` restored; none marked without it).

    The legend stands below the axes, clear of the lines.
    """
    if ax is None:
        fig = _figure((7, 3.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    epochs = [row["epoch"] for row in history]
    handles = ax.plot(
        epochs, [row["loss"] for row in history], color="tab:blue", label="training loss"
    )
    has_nll = bool(history) and all("nll" in row for row in history)
    if has_nll:
        handles += ax.plot(
            epochs,
            [row["nll"] for row in history],
            color="tab:blue",
            ls="--",
            label=f"NLL on {held_out}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss and NLL per example" if has_nll else "training loss", color="tab:blue")
    if history and all("accuracy" in row for row in history):
        twin = ax.twinx()
        handles += twin.plot(
            epochs,
            [row["accuracy"] for row in history],
            color="tab:orange",
            label=f"accuracy on {held_out}",
        )
        twin.set_ylabel(f"accuracy on {held_out}", color="tab:orange")
    if kept_epoch is None and history:
        kept_epoch = history[-1].get("best_epoch")
    if kept_epoch is not None:
        handles.append(
            ax.axvline(kept_epoch, color="0.3", ls=":", label=f"epoch kept ({kept_epoch})")
        )
    # Below the x-axis label (a fixed distance in points, whatever the panel's size).
    below = ax.transAxes + ScaledTranslation(0, -30 / 72, fig.dpi_scale_trans)
    ax.legend(
        handles=handles,
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=below,
        ncol=min(len(handles), 2),
        frameon=False,
    )
    return fig


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = _figure(size)
    return fig, fig.add_subplot()


def plot_reliability(
    probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15, ax: Any = None
) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal and ECE."""
    from .metrics import expected_calibration_error, reliability

    confidence, acc, count = reliability(probs.detach().cpu(), y.cpu(), bins=bins)
    fig, ax = _axes(ax, (4.5, 4.5))
    centres = (torch.arange(bins) + 0.5) / bins
    used = count > 0
    ax.bar(
        centres[used].numpy(),
        acc[used].numpy(),
        width=1 / bins,
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.plot(
        confidence[used].numpy(), acc[used].numpy(), "o", color="tab:red", label="mean confidence"
    )
    ece = expected_calibration_error(probs.detach().cpu(), y.cpu(), bins=bins)
    ax.set_title(f"reliability (ECE {ece:.4f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
    return fig


def plot_entropy_histograms(
    in_entropy: torch.Tensor,
    out_entropy: dict[str, torch.Tensor],
    *,
    ax: Any = None,
) -> Figure:
    """Histograms of predictive entropy in distribution against out-of-distribution sets."""
    fig, ax = _axes(ax, (6, 4))
    ax.hist(in_entropy.cpu().numpy(), bins=40, density=True, alpha=0.6, label="in distribution")
    for name, values in out_entropy.items():
        ax.hist(values.cpu().numpy(), bins=40, density=True, alpha=0.5, label=name)
    ax.set_xlabel("predictive entropy (nats)")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return fig


def plot_accuracy_coverage(
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]], *, ax: Any = None
) -> Figure:
    """Selective prediction: accuracy against coverage, one line per model."""
    fig, ax = _axes(ax, (5, 4))
    for name, (coverage, acc) in curves.items():
        ax.plot(coverage.cpu().numpy(), acc.cpu().numpy(), label=name)
    ax.set_xlabel("coverage (fraction predicted)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
    return fig


def _layer_draws(
    model: Any, layer: UGMMLayer, draws: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``loc``, ``scale``, ``logits`` of ``layer`` per draw, ``(S, J, N)`` each."""
    from .bayes import prior_sites

    count = len(next(iter(draws.values())))
    names = {(owner, attribute): name for name, (owner, attribute) in prior_sites(model).items()}
    out = {}
    for kind in ("loc", "scale", "logits"):
        name = names.get((layer, kind))
        if name is None:  # a point estimate: the same value in every draw
            value = getattr(layer, kind).detach()
            out[kind] = value.expand(count, *value.shape)
        else:
            out[kind] = draws[name].detach()
    return out


def _densities_per_draw(
    loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor, points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A grid framing a typical draw and the mixture density of each draw on it, ``(G, S)``."""
    weight = torch.softmax(logits, -1)
    visible = weight >= 0.01 * weight.amax(-1, keepdim=True)
    # Frame a typical draw: the median over draws of each draw's +-4 sigma range of its
    # weighted components (a few draws with huge scales would squash the plot).
    inf = torch.full_like(loc, float("inf"))
    lo = float(torch.where(visible, loc - 4 * scale, inf).amin(-1).median())
    hi = float(torch.where(visible, loc + 4 * scale, -inf).amax(-1).median())
    grid = torch.linspace(lo, hi, points, dtype=loc.dtype, device=loc.device)
    return grid, neuron_mixture(loc, scale, logits).log_prob(grid[:, None]).exp().cpu()


@torch.no_grad()
def plot_neuron_posterior(
    model: Any,
    layer: UGMMLayer | str,
    neuron: int,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    guide_args: tuple = (),
    num_samples: int = 200,
    band: tuple[float, float] = (0.05, 0.95),
    points: int = 400,
    ax: Any = None,
) -> Figure:
    """A neuron's mixture density ``P_j(y)`` under the posterior, with a credible band.

    For draws ``theta_s`` (from a fitted ``guide``, run with ``guide_args``, or MCMC
    ``posterior_samples``) the density
    ``P_j(y | theta_s) = sum_k softmax(l_j^s)_k N(y | mu_jk^s, sigma_jk^s)`` is evaluated on
    a grid; the figure shows the posterior mean density ``(1/S) sum_s P_j(y | theta_s)``
    (the posterior predictive density of ``y``) and the pointwise ``band`` quantiles across
    draws (default 5-95%).

    Args:
        model: a model from :func:`ugmm_prob.bayes.make_bayesian`.
        layer: one of its :class:`~ugmm_prob.layers.UGMMLayer`\\ s, or its attribute path
            (e.g. ``"stack.layers.0"``).
        neuron: the neuron ``j`` of that layer.
    """
    from .bayes import sample_posterior

    if isinstance(layer, str):
        layer = model.get_submodule(layer)
    if not isinstance(layer, UGMMLayer):
        raise TypeError(f"layer must be a UGMMLayer or its path, got {type(layer).__name__}")
    if not 0 <= neuron < layer.out_features:
        raise ValueError(
            f"neuron must be in [0, {layer.out_features - 1}] for {layer.label}, got {neuron}"
        )
    if not 0.0 <= band[0] < band[1] <= 1.0:
        raise ValueError(f"band must be two quantiles 0 <= low < high <= 1, got {band}")
    draws = sample_posterior(
        model,
        *guide_args,
        guide=guide,
        posterior_samples=posterior_samples,
        num_samples=num_samples,
    )
    params = _layer_draws(model, layer, draws)
    loc, scale, logits = (params[kind][:, neuron] for kind in ("loc", "scale", "logits"))
    grid, density = _densities_per_draw(loc, scale, logits, points)
    low, high = torch.quantile(density.double(), torch.tensor(band, dtype=torch.float64), dim=1)
    fig, ax = _axes(ax, (6, 4))
    xs = grid.cpu().numpy()
    ax.fill_between(
        xs,
        low.numpy(),
        high.numpy(),
        alpha=0.3,
        label=f"{100 * band[0]:g}-{100 * band[1]:g}% band",
    )
    ax.plot(xs, density.mean(1).numpy(), color="tab:blue", label="posterior mean density")
    ax.set_xlabel("y")
    ax.set_ylabel("P_j(y)")
    ax.set_title(f"neuron {neuron} of {layer.label}, {density.shape[1]} draws")
    ax.legend(fontsize="small")
    return fig


def plot_region_graph(
    graph: Any, *, ax: Any = None, labels: bool | None = None, title: str | None = None
) -> Figure:
    """A region graph drawn by level: regions as circles (leaves at the bottom, the root at
    the top), each partition as a small square joined to its region above and its children
    below, so a region shared by several partitions (a quad-graph) shows several parents.

    Args:
        graph: a :class:`~ugmm_prob.circuits.region_graphs.RegionGraph`.
        ax: axes to draw on (a new figure otherwise).
        labels: write each region's variables in it (default: when every region has at
            most four variables or the graph has at most 40 regions).
        title: the axes' title (default: the graph's kind and size).
    """
    levels = graph.levels
    if labels is None:
        labels = len(graph.regions) <= 40
    fig, ax = _axes(ax, (8, 4.5))
    rows: dict[int, list[int]] = {}
    for region in graph.bottom_up():  # children before parents: a stable left-to-right order
        rows.setdefault(levels[region], []).append(region)
    top = max(rows)
    position: dict[int, tuple[float, float]] = {}
    for level in sorted(rows):  # leaves in their variables' order, the rest over their children
        members = rows[level]
        if level == 0:
            members.sort(key=lambda r: (graph.regions[r][0], len(graph.regions[r])))
        else:
            members.sort(key=lambda r: _mean_child_x(graph, r, position))
        for i, region in enumerate(members):
            position[region] = ((i + 0.5) / len(members), 2.0 * level)
    for parent, children in graph.partitions:
        px, py = position[parent]
        cx = sum(position[c][0] for c in children) / len(children)
        square = (0.5 * (px + cx), py - 1.0)
        ax.plot([px, square[0]], [py, square[1]], color="0.55", lw=0.8, zorder=1)
        for child in children:
            ax.plot(
                [square[0], position[child][0]],
                [square[1], position[child][1]],
                color="0.75",
                lw=0.6,
                zorder=1,
            )
        ax.scatter(*square, marker="s", s=28, color="tab:orange", zorder=2)
    leaves = set(graph.leaves)
    for region, (x, y) in position.items():
        colour = "tab:green" if region in leaves else "tab:blue"
        ax.scatter(x, y, s=260 if labels else 60, color=colour, alpha=0.85, zorder=3)
        if labels:
            text = ",".join(str(v) for v in graph.regions[region][:4])
            text += "…" if len(graph.regions[region]) > 4 else ""
            ax.annotate(text, (x, y), ha="center", va="center", fontsize=6, zorder=4)
    ax.set_ylim(-1.0, 2.0 * top + 1.0)
    ax.set_xlim(-0.02, 1.02)
    ax.axis("off")
    ax.set_title(
        title
        or f"{graph.kind} region graph: {len(graph.regions)} regions, "
        f"{len(graph.partitions)} partitions, {top} levels"
    )
    handles = [
        ax.scatter([], [], color="tab:green", label="leaf region (input units)"),
        ax.scatter([], [], color="tab:blue", label="region (sum units)"),
        ax.scatter([], [], marker="s", color="tab:orange", label="partition (product units)"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    return fig


def _mean_child_x(graph: Any, region: int, position: dict[int, tuple[float, float]]) -> float:
    """The mean horizontal position of a region's children (drawn already)."""
    xs = [
        position[c][0]
        for p in graph.region_partitions[region]
        for c in graph.partitions[p][1]
        if c in position
    ]
    return sum(xs) / len(xs) if xs else 0.5
