"""The figures show what they are given: plotted data against independent computations,
axis labels and titles present, and panels that do not overprint each other."""

import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ugmm_prob.layers import UGMMLayer
from ugmm_prob.plotting import (
    figure_grid,
    plot_accuracy_coverage,
    plot_entropy_histograms,
    plot_history,
    plot_neuron_mixtures,
    plot_posteriors,
    plot_region_graph,
    plot_reliability,
)
from ugmm_prob.uncertainty import accuracy_coverage


def _texts(ax):
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel()


def test_neuron_mixture_lines_are_the_neurons_densities():
    layer = UGMMLayer(4, 3)
    fig = plot_neuron_mixtures(layer)
    (ax,) = fig.axes
    loc, scale = layer.loc.detach().double(), layer.scale.detach().double()
    weight = torch.softmax(layer.logits.detach().double(), -1)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["neuron 0", "neuron 1", "neuron 2"]
    for j, line in enumerate(lines):
        y, density = (np.asarray(v, dtype=float) for v in line.get_data())
        # P_j(y) = sum_k pi_jk N(y | mu_jk, sigma_jk^2), written out
        z = (y[:, None] - loc[j].numpy()) / scale[j].numpy()
        expected = (
            weight[j].numpy() * np.exp(-0.5 * z**2) / (scale[j].numpy() * math.sqrt(2 * math.pi))
        ).sum(-1)
        np.testing.assert_allclose(density, expected, rtol=1e-4, atol=1e-7)
    assert _texts(ax) == (f"mixtures of {layer.label}", "y", "P_j(y)")


def test_posterior_bars_stack_the_probabilities_and_mark_the_errors():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 1])  # the third is misclassified
    fig = plot_posteriors(probs, labels, class_names=["a", "b", "c"])
    (ax,) = fig.axes
    bottoms = np.zeros(3)
    for c, bars in enumerate(ax.containers):
        assert bars.get_label() == "abc"[c]
        np.testing.assert_allclose([bar.get_height() for bar in bars], probs[:, c], rtol=1e-6)
        np.testing.assert_allclose([bar.get_y() for bar in bars], bottoms, atol=1e-6)
        bottoms += probs[:, c].numpy()
    (marks,) = ax.collections
    assert marks.get_offsets()[:, 0].tolist() == [2.0]
    assert _texts(ax)[1:] == ("example", "p(c | x)")


def test_history_lines_are_the_history():
    history = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    fig = plot_history(history)
    ax, twin = fig.axes
    (loss,) = ax.get_lines()
    (acc,) = twin.get_lines()
    assert list(loss.get_xdata()) == [1, 2, 3] and list(loss.get_ydata()) == [1.0, 0.5, 1 / 3]
    np.testing.assert_allclose(acc.get_ydata(), [0.6, 0.7, 0.8])
    assert (ax.get_xlabel(), ax.get_ylabel(), twin.get_ylabel()) == (
        "epoch",
        "training loss",
        "accuracy on held-out data",
    )


def test_history_labels_what_each_metric_is_on_and_marks_the_kept_epoch():
    history = [
        {"epoch": e, "loss": 1.0 / e, "nll": 0.2 * e, "accuracy": 0.9, "best_epoch": 2}
        for e in (1, 2, 3, 4)
    ]
    fig = plot_history(history, held_out="held-out flowers")
    ax, twin = fig.axes
    _, nll, kept = ax.get_lines()
    np.testing.assert_allclose(nll.get_ydata(), [0.2, 0.4, 0.6, 0.8])
    assert list(kept.get_xdata()) == [2, 2]  # the vertical line at the kept epoch
    assert ax.get_ylabel() == "loss and NLL per example"
    assert twin.get_ylabel() == "accuracy on held-out flowers"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "training loss",
        "NLL on held-out flowers",
        "accuracy on held-out flowers",
        "epoch kept (2)",
    ]
    # an explicit epoch wins; a history without accuracy has no right axis
    fig = plot_history(
        [{k: v for k, v in r.items() if k != "accuracy"} for r in history], kept_epoch=3
    )
    (ax,) = fig.axes
    assert list(ax.get_lines()[-1].get_xdata()) == [3, 3]


def test_the_mixture_panel_says_which_neurons_it_shows():
    layer = UGMMLayer(5, 10)
    (ax,) = plot_neuron_mixtures(layer).axes
    assert ax.get_title() == f"mixtures of {layer.label}: neurons 0-7 of 10"
    assert len(ax.get_lines()) == 8
    (ax,) = plot_neuron_mixtures(layer, [1, 4, 5]).axes
    assert ax.get_title() == f"mixtures of {layer.label}: neurons 1, 4, 5 of 10"
    (ax,) = plot_neuron_mixtures(layer, range(10)).axes
    assert ax.get_title() == f"mixtures of {layer.label}"


def test_reliability_bars_are_the_per_bin_accuracies_and_the_title_the_ece():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    y = torch.tensor([0, 1, 0, 1, 1])
    fig = plot_reliability(probs, y, bins=2)
    (ax,) = fig.axes
    # bins (0, 0.5] and (0.5, 1]: every confidence is above 0.5, accuracy 3/5 there
    (bar,) = ax.patches
    assert bar.get_height() == pytest.approx(3 / 5)
    confidence = (0.95 + 0.9 + 0.6 + 0.55 + 0.8) / 5
    assert ax.get_title() == f"reliability (ECE {abs(3 / 5 - confidence):.4f})"
    assert _texts(ax)[1:] == ("confidence", "accuracy")


def test_entropy_histograms_are_the_densities_of_each_set():
    inside, outside = torch.rand(200), torch.rand(100) + 0.5
    fig = plot_entropy_histograms(inside, {"noise": outside})
    (ax,) = fig.axes
    heights = np.array([patch.get_height() for patch in ax.patches])
    for values, drawn in ((inside, heights[:40]), (outside, heights[40:])):
        expected, _ = np.histogram(values.numpy(), bins=40, density=True)
        np.testing.assert_allclose(drawn, expected, rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["in distribution", "noise"]


def test_accuracy_coverage_line_is_the_curve():
    probs = torch.softmax(torch.randn(30, 3), -1)
    y = torch.randint(0, 3, (30,))
    coverage, acc = accuracy_coverage(probs, y)
    fig = plot_accuracy_coverage({"model": (coverage, acc)})
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), coverage)
    np.testing.assert_allclose(line.get_ydata(), acc)


def _overlap(a, b) -> bool:
    return a.width > 0 and b.width > 0 and a.overlaps(b)


def test_panels_of_a_grid_do_not_overprint_each_other():
    """The demo's layout: titles, axis labels and legends stay clear of each other, and the
    legends of the posterior and training panels stay clear of the plotted data."""
    fig, axes = figure_grid(2, 2, size=(12, 7.5))
    probs = torch.softmax(torch.randn(30, 3), -1)
    plot_posteriors(probs, torch.randint(0, 3, (30,)), ax=axes[0, 0])
    axes[0, 0].set_title("exact p(c | x) on the 30 test flowers")
    history = [
        {"epoch": e, "loss": 1.0 / e, "nll": 0.5, "accuracy": 0.5, "best_epoch": 2}
        for e in (1, 2, 3)
    ]
    plot_history(history, held_out="held-out training flowers", ax=axes[0, 1])
    axes[0, 1].set_title("training: loss on the training flowers, metrics on held-out ones")
    plot_neuron_mixtures(UGMMLayer(5, 10), ax=axes[1, 0])
    plot_neuron_mixtures(UGMMLayer(10, 5), ax=axes[1, 1])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [
        artist.get_window_extent(renderer)
        for ax in fig.axes
        for artist in (ax.title, ax.xaxis.label, ax.yaxis.label)
        if artist.get_text()
    ]
    assert len(texts) >= 12
    legends = [axes[0, 0].get_legend(), axes[0, 1].get_legend()]
    boxes = texts + [legend.get_window_extent(renderer) for legend in legends]
    clashes = [(i, j) for i in range(len(boxes)) for j in range(i) if _overlap(boxes[i], boxes[j])]
    assert clashes == []
    for ax, legend in zip(axes[0], legends, strict=True):
        assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))


def test_region_graph_figure_draws_every_region_and_partition_with_their_edges():
    from ugmm_prob.circuits import RegionGraph

    # a DAG: the region {1, 2} is shared by two partitions of the root
    partitions = [
        ((0, 1, 2), [(0,), (1, 2)]),
        ((0, 1, 2), [(0, 1), (2,)]),
        ((1, 2), [(1,), (2,)]),
        ((0, 1), [(0,), (1,)]),
    ]
    graph = RegionGraph.from_partitions(3, partitions)
    fig = plot_region_graph(graph)
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    squares = [c for c in points if c.get_offsets()[0][1] % 2 == 1]  # partitions sit between levels
    assert len(squares) == len(graph.partitions)
    assert len(points) - len(squares) == len(graph.regions)
    edges = sum(1 + len(children) for _, children in graph.partitions)
    assert len(ax.lines) == edges
    assert ax.get_title() == "custom region graph: 6 regions, 4 partitions, 2 levels"
    FigureCanvasAgg(fig).draw()
