"""Data, model and settings shared by the distributed test and its worker processes."""

import torch

from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.datasets import iris_split, standardize
from ugmm_prob.networks import Classifier, UGMMClassifier

# An odd global batch, so the two ranks' shares differ in size (8 and 7 examples).
SETTINGS = dict(epochs=3, batch_size=15, lr=1e-2, seed=5, progress=False)


def iris_data() -> tuple[torch.Tensor, torch.Tensor]:
    split = iris_split()
    x_train, _ = standardize(split.x_train, split.x_test)
    return x_train, split.y_train


def make_model(kind: str = "fit") -> Classifier:
    """A dropout-free uGMM-NN, or (``kind="circuit"``) a hybrid-objective circuit."""
    torch.manual_seed(11)
    if kind == "circuit":
        return UGMMCircuit(4, num_classes=3, repetitions=2, channels=3, likelihood_weight=0.5)
    return UGMMClassifier(
        4, hidden=(8,), num_classes=3, layer_norm=True, dropout=0.0, backend="eager"
    )
