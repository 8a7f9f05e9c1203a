"""Data, model and settings shared by the distributed test and its worker processes."""

import torch

from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.datasets import iris_split, standardize
from ugmm_prob.networks import Classifier, UGMMClassifier

# An odd global batch, so the two ranks' shares differ in size (8 and 7 examples).
SETTINGS = dict(epochs=3, batch_size=15, lr=1e-2, seed=5, progress=False)
# Online EM with an odd batch, and full-batch EM (statistics summed over ranks and batches).
EM_SETTINGS = dict(epochs=3, batch_size=15, step_size=0.3, seed=5, progress=False)


def iris_data() -> tuple[torch.Tensor, torch.Tensor]:
    split = iris_split()
    x_train, _ = standardize(split.x_train, split.x_test)
    return x_train, split.y_train


def incomplete_iris_data() -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`iris_data` with every 7th cell missing (NaN) and every 5th label unknown (-1)."""
    x, y = iris_data()
    x = x.clone().flatten()
    x[::7] = torch.nan
    y = y.clone()
    y[::5] = -1
    return x.reshape(-1, 4), y


def make_model(kind: str = "fit") -> Classifier:
    """A dropout-free uGMM-NN, or (``kind="circuit"``) a hybrid-objective circuit."""
    torch.manual_seed(11)
    if kind == "circuit":
        return UGMMCircuit(4, num_classes=3, repetitions=2, channels=3, likelihood_weight=0.5)
    if kind == "em-missing":  # full-covariance leaves (the missing cells' marginals), float64
        circuit = UGMMCircuit(4, num_classes=3, repetitions=2, channels=3, inputs="multivariate")
        return circuit.double()
    return UGMMClassifier(
        4, hidden=(8,), num_classes=3, layer_norm=True, dropout=0.0, backend="eager"
    )
