"""Every model family of the library, tiny, with what each can and cannot do.

``tests/test_model_families.py`` runs each family through the same checks. A family that
legitimately cannot do something says so through a named capability flag, and the checks
then assert that the library refuses it plainly, so nothing is skipped in silence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ugmm_prob import (
    CNNClassifier,
    ConvUGMMClassifier,
    JointScoreModel,
    MLPClassifier,
    UGMMCircuit,
    UGMMClassifier,
)
from ugmm_prob.roles import Model

ROWS = 7
"""Examples per test batch: with 3 classes the labels cannot be balanced, so the gradient of
a circuit's class prior (zero at the empirical class frequencies) is not zero."""
CLASSES = 3


def _table(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, 4, generator=generator)


def _images(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(rows, 1, 28, 28, generator=generator)


def _categories(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 5, (rows, 4), generator=generator).float()


@dataclass(frozen=True)
class ModelFamily:
    """One family: how to build a tiny member and feed it, and its capabilities."""

    name: str
    build: Callable[[], Model]
    inputs: Callable[[int, torch.Generator], torch.Tensor]
    """``inputs(rows, generator)``: a batch the model takes (a table or images)."""
    density: bool
    """It models ``x`` itself: ``log_prob(x)`` is a normalised log-density ``log p(x)`` and
    it draws samples of ``x``. Classifiers model ``p(y | x)`` only and have no ``sample``."""
    bayesian: bool
    """:func:`~ugmm_prob.bayes.make_bayesian` has parameters to put priors on (uGMM layers,
    circuit units), so SVI and the ArviZ export apply. The MLP and CNN baselines have none,
    and ``make_bayesian`` refuses them."""


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "UGMMClassifier",
        lambda: UGMMClassifier(4, hidden=(3,), num_classes=CLASSES, layer_norm=True),
        _table,
        density=False,
        bayesian=True,
    ),
    ModelFamily(
        "MLPClassifier",
        lambda: MLPClassifier(4, hidden=(3,), num_classes=CLASSES, dropout=0.1),
        _table,
        density=False,
        bayesian=False,
    ),
    ModelFamily(
        "JointScoreModel",
        lambda: JointScoreModel(4, num_classes=CLASSES, hidden=(3,), objective="conditional"),
        _table,
        density=False,
        bayesian=True,
    ),
    ModelFamily(
        "CNNClassifier",
        lambda: CNNClassifier(CLASSES, features=8),
        _images,
        density=False,
        bayesian=False,
    ),
    ModelFamily(
        "ConvUGMMClassifier",
        lambda: ConvUGMMClassifier(CLASSES, features=8, head_hidden=(4,)),
        _images,
        density=False,
        bayesian=True,
    ),
    ModelFamily(
        "UGMMCircuit(gaussian)",
        lambda: UGMMCircuit(4, num_classes=CLASSES, depth=1, repetitions=2, channels=2),
        _table,
        density=True,
        bayesian=True,
    ),
    ModelFamily(
        "UGMMCircuit(categorical)",
        lambda: UGMMCircuit(
            4,
            num_classes=CLASSES,
            depth=1,
            repetitions=2,
            channels=2,
            inputs="categorical",
            num_values=5,
        ),
        _categories,
        density=True,
        bayesian=True,
    ),
)
"""Every model family: the uGMM-NN, the joint-score model, the baselines, the convolutional
uGMM head and the generative circuit with either kind of input unit."""


def tiny_batch(family: ModelFamily, seed: int = 0) -> tuple[Model, torch.Tensor, torch.Tensor]:
    """A freshly built member of ``family`` and ``ROWS`` examples ``(x, y)`` for it."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = family.build()
    x = family.inputs(ROWS, generator)
    y = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    return model, x, y
