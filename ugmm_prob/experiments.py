"""The paper's experiments as named presets: model, data and training set-up.

One table serves the command line (``ugmm-prob train --experiment NAME``) and the
reproduction script (``benchmarks/reproduce_paper.py``), so both run exactly the same thing.
The names are those of ``docs/results.json``.

Protocol: every preset computes its per-epoch metrics on a validation split carved from its
training data (:func:`validation_split`), never on the test split, which is scored once,
after training, by the caller. MNIST presets hold out the last :data:`MNIST_VALIDATION_ROWS`
training images (a fixed split, the one ``benchmarks/generative.py`` uses), train on the
others and keep the last epoch of their fixed schedule, as the paper does; ``iris-joint``
holds out a fifth of every class and keeps the epoch with the best validation NLL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .datasets import Split, holdout_split, iris_split, load_mnist, standardize
from .networks import (
    Classifier,
    CNNClassifier,
    ConvUGMMClassifier,
    JointScoreModel,
    MLPClassifier,
    UGMMClassifier,
)
from .training import fit

__all__ = [
    "EXPERIMENTS",
    "INITIALISATIONS",
    "MNIST_VALIDATION_ROWS",
    "DataSplits",
    "Experiment",
    "load_data",
    "train_experiment",
    "validation_split",
]

INITIALISATIONS = ("paper", "data")
"""Initialisations an experiment can use: the paper's ``N(0, 1)`` means, or prototypes."""

MNIST_VALIDATION_ROWS = 5000
"""The MNIST presets' validation split: the last 5,000 of the 60,000 training images
(rows 55,000-59,999 of the IDX file, fixed, not drawn), the first 55,000 being trained on.
``benchmarks/generative.py`` holds out the same images (its ``--val-rows`` default)."""


@dataclass(frozen=True)
class DataSplits:
    """Training and test tensors of one data set (features float32, labels int64)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(name: str, *, mnist_root: str | os.PathLike | None = None) -> DataSplits:
    """``"iris"`` (the paper's 80/20 split, seed 42, standardised on the training part) or
    ``"mnist"`` (60,000/10,000 images, pixels in [0, 1], flat)."""
    if name == "iris":
        split = iris_split(seed=42, test_fraction=0.2)
        x_train, x_test = standardize(split.x_train, split.x_test)
        return DataSplits("iris", x_train, split.y_train, x_test, split.y_test)
    if name == "mnist":
        x_train, y_train = load_mnist("train", root=mnist_root)
        x_test, y_test = load_mnist("test", root=mnist_root)
        return DataSplits("mnist", x_train, y_train, x_test, y_test)
    raise ValueError(f"unknown data set {name!r}; expected 'iris' or 'mnist'")


@dataclass(frozen=True)
class Experiment:
    """A row of the paper's table: how to build the model, train it and validate it.

    Every experiment carves a validation split from its training data
    (:func:`validation_split`): exactly one of ``validation`` (a fraction of every class,
    held out at random rows, seeded) or ``validation_rows`` (the last rows of the training
    data, a fixed split) is set. The per-epoch metrics are computed on that split; with
    ``keep_best`` the model of the epoch with the best value of that validation metric is
    kept (``fit``'s ``keep_best``), without it the last epoch of the schedule.
    """

    name: str
    data: str
    build: Callable[[], Classifier]
    paper: float | None  # the paper's test accuracy in percent, if it gives one
    description: str
    training: dict[str, Any] = field(default_factory=dict)  # keyword arguments of fit()
    # "paper": the paper's N(0, 1) initialisation; "data": prototype initialisation from the
    # training data (Classifier.init_from_data), which learns much faster on MNIST.
    init: str = "paper"
    # Fraction of every class of the training data held out (seeded by the run's seed).
    validation: float = 0.0
    # Or: the number of last training rows held out (a fixed split, the same for every seed).
    validation_rows: int = 0
    # A validation metric ("nll", "accuracy", "ece"): keep the epoch with its best value;
    # None keeps the last epoch.
    keep_best: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation < 1.0 or self.validation_rows < 0:
            raise ValueError(
                f"{self.name}: validation must be in [0, 1) and validation_rows >= 0, got "
                f"{self.validation} and {self.validation_rows}"
            )
        if (self.validation > 0) == (self.validation_rows > 0):
            raise ValueError(
                f"{self.name}: set exactly one of validation (a fraction) and validation_rows "
                "(the last rows): the per-epoch metrics need a split of the training data"
            )


_MNIST_UGMM_TRAINING = {
    "epochs": 100,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 1e-2,
    "milestones": (20, 45, 60),
    "gamma": 0.1,
}

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "mnist-ugmm-ln",
            "mnist",
            lambda: UGMMClassifier(
                784, hidden=(128, 64), num_classes=10, layer_norm=True, dropout=0.3
            ),
            98.34,
            "uGMM-NN 784-128-64-10 with LayerNorm, component dropout 0.3 on the first layer",
            _MNIST_UGMM_TRAINING,
            # From prototypes: 97.53% after 15 epochs, 98.20% after 40; from the paper's
            # N(0, 1) means: 91.09% after 10 (docs/results.md; test-split figures, from
            # before the validation protocol).
            init="data",
            validation_rows=MNIST_VALIDATION_ROWS,
        ),
        Experiment(
            "mnist-ugmm",
            "mnist",
            lambda: UGMMClassifier(
                784, hidden=(128, 64), num_classes=10, layer_norm=False, dropout=0.3
            ),
            97.8,
            "uGMM-NN 784-128-64-10 without LayerNorm (the paper: plateaus near 97.8%)",
            _MNIST_UGMM_TRAINING,
            # From prototypes: 97.61% after 40 epochs; 92.87% after 5 from N(0, 1) means
            # (test-split figures, from before the validation protocol).
            init="data",
            validation_rows=MNIST_VALIDATION_ROWS,
        ),
        Experiment(
            "mnist-mlp",
            "mnist",
            lambda: MLPClassifier(784, hidden=(128, 64), num_classes=10, dropout=0.2),
            98.15,
            "MLP 784-128-64-10, ReLU and dropout 0.2",
            {"epochs": 100, "batch_size": 128, "lr": 1e-3, "milestones": (20, 45, 60)},
            validation_rows=MNIST_VALIDATION_ROWS,
        ),
        Experiment(
            "mnist-cnn",
            "mnist",
            lambda: CNNClassifier(10),
            99.35,
            "CNN: two conv/ReLU/max-pool blocks, dense 128, dropout, dense head",
            {"epochs": 20, "batch_size": 128, "lr": 1e-3, "milestones": (10, 15)},
            validation_rows=MNIST_VALIDATION_ROWS,
        ),
        Experiment(
            "mnist-cnn-ugmm",
            "mnist",
            lambda: ConvUGMMClassifier(10, head_hidden=(64,)),
            99.12,
            "the same CNN features with a uGMM head 128-64-10 (LayerNorm)",
            {"epochs": 20, "batch_size": 128, "lr": 1e-3, "milestones": (10, 15)},
            # 99.25% from a prototype-initialised head against 98.81% from N(0, 1) means
            # (test-split figures, from before the validation protocol).
            init="data",
            validation_rows=MNIST_VALIDATION_ROWS,
        ),
        Experiment(
            "iris-joint",
            "iris",
            lambda: JointScoreModel(
                4, num_classes=3, hidden=(10, 5), objective="conditional", layer_norm=True
            ),
            100.0,
            "joint-score uGMM-NN 5-10-5-1 (label as fifth input, LayerNorm), exact posterior",
            {"epochs": 300, "batch_size": 16, "lr": 3e-2, "milestones": (100, 200)},
            init="data",
            # Keep the epoch with the best NLL on 20% of the training flowers: in 5-fold
            # cross-validation on the training flowers alone this halves the errors of
            # keeping the last epoch (benchmarks/iris_selection.py, docs/results.md).
            validation=0.2,
            keep_best="nll",
        ),
    ]
}
"""The paper's experiments by name (the names of ``docs/results.json``)."""


def validation_split(
    experiment: Experiment, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0
) -> Split:
    """Carve the experiment's validation split from its training data ``(x, y)``.

    With ``validation_rows`` (the MNIST presets): the last that many rows are held out and
    the others are trained on, both in their original order; the split does not depend on
    ``seed``. With ``validation`` (``iris-joint``): that fraction of every class, at random
    rows drawn with ``seed`` (:func:`~ugmm_prob.datasets.holdout_split`).

    Returns:
        ``Split(x_fit, y_fit, x_val, y_val)``: the rows to train on, then the validation
        rows; the test split is not involved.
    """
    if experiment.validation_rows:
        rows = experiment.validation_rows
        if len(x) <= rows:
            raise ValueError(
                f"{experiment.name}: the training data has {len(x)} rows; holding out the last "
                f"{rows} for validation leaves none to train on"
            )
        return Split(x[:-rows], y[:-rows], x[-rows:], y[-rows:])
    return holdout_split(x, y, fraction=experiment.validation, seed=seed)


def _training_settings(
    experiment: Experiment,
    epochs: int | None,
    scale_milestones: bool,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """The preset's ``fit`` settings with a changed number of epochs and ``overrides``."""
    settings = dict(experiment.training)
    if epochs is not None:
        if scale_milestones:
            factor = epochs / settings["epochs"]
            settings["milestones"] = tuple(
                max(1, round(m * factor)) for m in settings.get("milestones", ())
            )
        settings["epochs"] = epochs
    settings.update(overrides or {})
    return settings


def train_experiment(
    experiment: Experiment,
    data: DataSplits,
    *,
    seed: int = 0,
    epochs: int | None = None,
    scale_milestones: bool = False,
    overrides: dict[str, Any] | None = None,
    init: str | None = None,
    train_rows: int | None = None,
    **run_options: Any,
) -> tuple[Classifier, list[dict[str, Any]], dict[str, Any]]:
    """Build the experiment's model (seeded) and train it on ``data`` with its set-up.

    The per-epoch metrics (and the epoch kept, with the preset's ``keep_best``) are on the
    validation split of :func:`validation_split`; the test split never reaches ``fit``.

    Args:
        experiment, data: what to train, on what.
        epochs: run this many epochs instead of the preset's.
        scale_milestones: with ``epochs``, scale the MultiStepLR milestones by the same
            factor (so a shortened run keeps the schedule's shape).
        overrides: replace preset training settings (``lr``, ``batch_size``, ...).
        init: ``"paper"`` or ``"data"`` (prototype initialisation from the rows trained on);
            default: the preset's. A resumed run takes its parameters from the checkpoint.
        train_rows: train on the first ``train_rows`` of the rows left after the validation
            split is carved (a quick run); the validation split stays the same.
        run_options: passed to :func:`~ugmm_prob.training.fit` (``device``, ``progress``,
            ``checkpoint_path``, ...).

    Returns:
        The trained model (that of the last epoch, or with ``keep_best`` that of the epoch
        with the best validation metric), its history (metrics on the validation split)
        and the training settings used (with ``validation`` or ``validation_rows``, and
        ``keep_best`` where the preset sets it).
    """
    settings = _training_settings(experiment, epochs, scale_milestones, overrides)
    init = init or experiment.init
    if init not in INITIALISATIONS:
        raise ValueError(f"init must be one of {INITIALISATIONS}, got {init!r}")
    if train_rows is not None and train_rows < 1:
        raise ValueError(f"train_rows must be >= 1, got {train_rows}")
    torch.manual_seed(seed)
    model = experiment.build()
    x_fit, y_fit, x_val, y_val = validation_split(experiment, data.x_train, data.y_train, seed=seed)
    x_fit, y_fit = x_fit[:train_rows], y_fit[:train_rows]
    if init == "data":
        model.init_from_data(x_fit, y_fit, generator=torch.Generator().manual_seed(seed))
    fit_settings = dict(settings)
    if experiment.validation_rows:
        settings["validation_rows"] = experiment.validation_rows
    else:
        settings["validation"] = experiment.validation
    if experiment.keep_best is not None:
        settings["keep_best"] = fit_settings["keep_best"] = experiment.keep_best
    settings["init"] = init
    history = fit(
        model, x_fit, y_fit, x_val=x_val, y_val=y_val, seed=seed, **fit_settings, **run_options
    )
    return model, history, settings
