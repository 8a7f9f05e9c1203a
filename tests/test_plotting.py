"""Every plotting function returns a figure that saves as a PNG (Agg backend)."""

import torch

from ugmm_prob import UGMMLayer
from ugmm_prob.plotting import (
    plot_accuracy_coverage,
    plot_entropy_histograms,
    plot_history,
    plot_neuron_mixtures,
    plot_posteriors,
    plot_reliability,
)
from ugmm_prob.uncertainty import accuracy_coverage


def _saves(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_all_plots_render(tmp_path):
    probs = torch.softmax(torch.randn(50, 3), -1)
    y = torch.randint(0, 3, (50,))
    figures = {
        "mixtures": plot_neuron_mixtures(UGMMLayer(4, 3)),
        "posteriors": plot_posteriors(probs[:10], y[:10], class_names=["a", "b", "c"]),
        "history": plot_history(
            [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}, {"epoch": 2, "loss": 0.5, "accuracy": 0.7}]
        ),
        "reliability": plot_reliability(probs, y),
        "entropy": plot_entropy_histograms(torch.rand(50), {"noise": torch.rand(50) + 0.5}),
        "coverage": plot_accuracy_coverage({"model": accuracy_coverage(probs, y)}),
    }
    for name, fig in figures.items():
        _saves(fig, tmp_path, name)
