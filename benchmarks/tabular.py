"""Generative quality on small tabular data: the uGMM circuit beside Gaussian mixtures.

Data sets (all shipped with a package, nothing downloaded):

- ``iris``: the paper's 80/20 split with seed 42 (``ugmm_prob.experiments.load_data``;
  the raw features of the same rows come from ``ugmm_prob.datasets.iris_split``), 120/30;
- ``wine`` and ``breast-cancer``: scikit-learn's ``load_wine`` (13 features, 3 classes) and
  ``load_breast_cancer`` (30 features, 2 classes), a stratified 80/20 split with
  ``--split-seed`` (default 0).

Every model sees the same data: the features standardised with the training split's mean and
(population) standard deviation. Test log-likelihoods are reported per example in the
ORIGINAL units of the features, ``log p(x) = log p_z(z) - sum_d log sd_d`` (the exact
Jacobian of the standardisation); the table also gives the standardised-space value, which is
what ``benchmarks/generative.py`` reports for Iris.

Models:

- scikit-learn ``GaussianMixture`` for each covariance type (full, tied, diag, spherical),
  the number of components chosen by BIC on the training data (record ``<data>-bic-gmm``:
  the lowest BIC of the four). With scikit-learn's default ``reg_covar`` and several
  ``n_init``, BIC can pick mixtures whose components have collapsed onto a few tied rows
  (Iris is measured to 0.1 cm), so ``best-gmm`` is chosen like the circuit instead:
  covariance type and components by validation log-likelihood on the circuit's validation
  split, refitted on all training rows. The test data plays no part in either choice;
- generative classifiers: ``GaussianNB``, per-class ``GaussianMixture`` (covariance type and
  components chosen by BIC per class on its training rows, class prior = training
  frequencies, argmax posterior) and, for reference, ``LogisticRegression``;
- the class-conditional ``UGMMCircuit(D, num_classes=C, ...)`` trained by maximum likelihood of
  ``(x, c)`` (``likelihood_weight=1``). Every choice (the builder of ``MODEL_FACTORIES``,
  depth, repetitions, channels, components, scale floor, learning rate and number of epochs)
  is made on a validation split carved from the training data only (``--val-fraction``,
  stratified, ``--val-seed``), with one search seed, by validation log p(x) per example. The
  number of epochs is the epoch of best validation log p(x): training runs in chunks through
  ``fit(..., checkpoint_path=..., resume=True)``, which continues exactly (optimiser state
  included), and the validation likelihood is read after each chunk. (``fit``'s own
  ``keep_best="nll"`` selects on the *conditional* NLL ``-log p(c | x)``, a classification
  criterion, not the density's.) The chosen settings are then refitted on the full training
  set for the chosen number of epochs, once per circuit seed (``--seeds``), and each refitted
  circuit is evaluated once on the test split: test log p(x) per example (marginal over the
  class) and the accuracy of ``argmax p(c | x)``, mean and sd over seeds;
- the same circuit search on PCA-whitened inputs (``<data>-circuit-whitened``): the
  standardised features rotated onto the principal axes of the training split's covariance
  and scaled to unit variance, an exact linear map whose log-Jacobian is added back. The
  circuit's input units are univariate, so correlations between variables come only from
  its mixtures; whitening removes the linear part of them (what a tied-covariance GMM
  shares). Scratch runs on the Iris validation split found it worth 0.24 nats there; in the
  documented run it wins on breast cancer and loses on Iris and wine (docs/results.md).

Records go to docs/results.json (``<data>-circuit``: ``test_loglik``, ``test_accuracy``;
``<data>-best-gmm`` and ``<data>-bic-gmm``: ``test_loglik``; plus the baselines'
accuracies; with seeds, split, command and units), the table to
docs/results.md between ``tabular`` markers. ``--quick`` runs a tiny grid with one seed and
few epochs (seconds); ``--no-write`` prints only. The last line printed is ``RESULT {json}``
with every number, for tests.

    pip install -e ".[bench]"             # scikit-learn
    python benchmarks/tabular.py          # the documented run (27 min on one shared thread)
    python benchmarks/tabular.py --quick --no-write
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import pathlib
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from _results import machine, replace_block, update_results

from ugmm_prob.circuits import UGMMCircuit, fit_em
from ugmm_prob.experiments import load_data
from ugmm_prob.training import TrainingDivergedError, fit

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
DATASETS = ("iris", "wine", "breast-cancer")


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TabularData:
    """A train/test split in the original units (float64) and how it was made."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    split: str

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are ``0..C-1``)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


@dataclasses.dataclass(frozen=True)
class Standardiser:
    """``z = (x - mean) / sd`` with the training split's mean and population sd."""

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def from_train(cls, x: np.ndarray) -> Standardiser:
        """Statistics of the training rows (a constant column keeps sd 1)."""
        sd = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(sd > 0, sd, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.sd

    @property
    def log_jacobian(self) -> float:
        """``log |dz/dx| = -sum_d log sd_d``: add it to ``log p(z)`` to get ``log p(x)``."""
        return float(-np.log(self.sd).sum())


@dataclasses.dataclass(frozen=True)
class Whitener:
    """PCA whitening of standardised features, ``u = z V / sqrt(lambda)``, with the training
    split's covariance ``V diag(lambda) V^T`` (population); an exact linear map, so
    ``log p(z) = log p(u) + log_jacobian``."""

    rotation: np.ndarray
    eigenvalues: np.ndarray

    @classmethod
    def from_train(cls, z: np.ndarray) -> Whitener:
        """Eigenvectors and eigenvalues of the covariance of the training rows."""
        eigenvalues, rotation = np.linalg.eigh(np.cov(z, rowvar=False, bias=True))
        return cls(rotation, np.maximum(eigenvalues, 1e-12))

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return z @ self.rotation / np.sqrt(self.eigenvalues)

    @property
    def log_jacobian(self) -> float:
        """``log |du/dz| = -sum log sqrt(lambda)``."""
        return float(-0.5 * np.log(self.eigenvalues).sum())


def load_iris_paper() -> TabularData:
    """Iris with the paper's split (80/20, seed 42), the rows of ``load_data("iris")``."""
    from ugmm_prob.datasets import iris_split

    raw = iris_split(seed=42, test_fraction=0.2, dtype=torch.float64)
    data = TabularData(
        "iris",
        raw.x_train.numpy(),
        raw.y_train.numpy(),
        raw.x_test.numpy(),
        raw.y_test.numpy(),
        "paper's 80/20 split, seed 42 (ugmm_prob.experiments.load_data('iris'))",
    )
    # The same rows, and the same standardisation, as the package's Iris (float32 there).
    paper = load_data("iris")
    scale = Standardiser.from_train(data.x_train)
    if not (
        np.array_equal(data.y_train, paper.y_train.numpy())
        and np.allclose(scale(data.x_train), paper.x_train.double().numpy(), atol=1e-5)
        and np.allclose(scale(data.x_test), paper.x_test.double().numpy(), atol=1e-5)
    ):
        raise RuntimeError("iris_split(seed=42) no longer gives the rows of load_data('iris')")
    return data


def load_sklearn(name: str, split_seed: int) -> TabularData:
    """scikit-learn's shipped ``wine`` or ``breast-cancer``, stratified 80/20 split."""
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.model_selection import train_test_split

    loader = {"wine": load_wine, "breast-cancer": load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float64), y, test_size=0.2, stratify=y, random_state=split_seed
    )
    split = f"stratified 80/20 split, train_test_split(random_state={split_seed})"
    return TabularData(name, x_train, y_train, x_test, y_test, split)


def load_tabular(name: str, split_seed: int = 0) -> TabularData:
    """One of :data:`DATASETS`."""
    return load_iris_paper() if name == "iris" else load_sklearn(name, split_seed)


# ------------------------------------------------------------------------------------------
# Baselines (scikit-learn)
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GMMSettings:
    """How the Gaussian mixtures are fitted and chosen."""

    max_components: int = 10
    n_init: int = 5
    max_iter: int = 2000
    seed: int = 0


def validation_split(
    y_train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training split used for fitting and for validation (stratified, seeded);
    the same rows for the circuit's search and the validation-selected GMM."""
    from sklearn.model_selection import train_test_split

    fit_rows, val_rows = train_test_split(
        np.arange(len(y_train)), test_size=fraction, stratify=y_train, random_state=seed
    )
    return fit_rows, val_rows


def _gmm(components: int, covariance_type: str, settings: GMMSettings) -> Any:
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        components,
        covariance_type=covariance_type,
        n_init=settings.n_init,
        max_iter=settings.max_iter,
        random_state=settings.seed,
    )


def _quiet_fit(gmm: Any, x: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is reported through converged_
        return gmm.fit(x)


def validated_gmm(
    z_train: np.ndarray, val_rows: tuple[np.ndarray, np.ndarray], settings: GMMSettings
) -> tuple[Any, float]:
    """The GaussianMixture chosen like the circuit: covariance type and components by
    validation log-likelihood (fitted on the other training rows), refitted on all of them.

    Returns the refitted mixture and its validation log p(z) per row.
    """
    fit_rows, held_out = val_rows
    best, best_value = ("full", 1), -math.inf
    for cov in COVARIANCE_TYPES:
        for k in range(1, min(settings.max_components, len(fit_rows)) + 1):
            value = float(
                _quiet_fit(_gmm(k, cov, settings), z_train[fit_rows]).score(z_train[held_out])
            )
            if value > best_value:
                best, best_value = (cov, k), value
    return _quiet_fit(_gmm(best[1], best[0], settings), z_train), best_value


def bic_gmm(x: np.ndarray, covariance_type: str, settings: GMMSettings) -> Any:
    """The ``GaussianMixture`` with the lowest BIC on ``x`` over 1..max components."""
    best, best_bic = None, math.inf
    for k in range(1, min(settings.max_components, len(x)) + 1):
        gmm = _quiet_fit(_gmm(k, covariance_type, settings), x)
        bic = gmm.bic(x)
        if bic < best_bic:
            best, best_bic = gmm, bic
    return best


def smallest_sd(gmm: Any) -> float:
    """Smallest standard deviation along any principal axis of any component (standardised
    units): near 0 flags a component collapsed onto a few (tied or collinear) rows, whose
    likelihood is large on the training data but says little about new data."""
    cov, kind = np.asarray(gmm.covariances_), gmm.covariance_type
    if kind in ("full", "tied"):  # (k, d, d) or (d, d)
        variances = np.linalg.eigvalsh(cov)
    else:  # diag (k, d) or spherical (k,): the entries are the variances
        variances = cov
    return float(np.sqrt(np.min(variances)))


def gmm_baselines(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    log_jacobian: float,
    settings: GMMSettings,
    val_rows: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """Density GMMs per covariance type (BIC), the validation-selected GMM (``best_gmm``),
    and the generative/discriminative classifiers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    out: dict[str, Any] = {"gmm": {}}
    for cov in COVARIANCE_TYPES:
        gmm = bic_gmm(z_train, cov, settings)
        out["gmm"][cov] = {
            "components": int(gmm.n_components),
            "train_bic": float(gmm.bic(z_train)),
            "converged": bool(gmm.converged_),
            "min_sd": smallest_sd(gmm),
            "test_loglik": float(gmm.score(z_test)) + log_jacobian,
        }
    lowest = min(out["gmm"], key=lambda cov: out["gmm"][cov]["train_bic"])
    out["bic_gmm"] = {"covariance_type": lowest, **out["gmm"][lowest]}
    gmm, val_value = validated_gmm(z_train, val_rows, settings)
    out["best_gmm"] = {
        "covariance_type": gmm.covariance_type,
        "components": int(gmm.n_components),
        "val_loglik_z": val_value,
        "converged": bool(gmm.converged_),
        "min_sd": smallest_sd(gmm),
        "test_loglik": float(gmm.score(z_test)) + log_jacobian,
    }

    classes = np.unique(y_train)
    log_prior = np.log(np.bincount(y_train) / len(y_train))
    per_class, scores = [], []
    for c in classes:
        rows = z_train[y_train == c]
        candidates = [bic_gmm(rows, cov, settings) for cov in COVARIANCE_TYPES]
        gmm = min(candidates, key=lambda g: g.bic(rows))
        per_class.append(f"{gmm.covariance_type} x{gmm.n_components}")
        scores.append(gmm.score_samples(z_test) + log_prior[c])
    predicted = classes[np.argmax(np.stack(scores, axis=1), axis=1)]
    out["per_class_gmm"] = {
        "test_accuracy": float((predicted == y_test).mean()),
        "chosen": per_class,
    }
    nb = GaussianNB().fit(z_train, y_train)
    out["gaussian_nb"] = {"test_accuracy": float(nb.score(z_test, y_test))}
    logistic = LogisticRegression(max_iter=5000).fit(z_train, y_train)
    out["logistic"] = {"test_accuracy": float(logistic.score(z_test, y_test))}
    return out


# ------------------------------------------------------------------------------------------
# The circuit
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CircuitSettings:
    """One point of the circuit's search grid (``builder`` names a ``MODEL_FACTORIES`` entry)."""

    builder: str = "random-trees"
    depth: int = 1
    repetitions: int = 4
    channels: int = 4
    components: int = 2
    scale_floor: float = 0.05
    lr: float = 1e-2
    batch_size: int = 16
    trainer: str = "adam"  # or "em": online EM (fit_em) with step size `step_size`
    step_size: float = 0.2

    def label(self) -> str:
        """Short description for tables."""
        how = f"lr {self.lr:g}" if self.trainer == "adam" else f"EM step {self.step_size:g}"
        return (
            f"{self.builder}, depth {self.depth}, {self.repetitions} rep, "
            f"{self.channels} ch, K={self.components}, floor {self.scale_floor:g}, {how}"
        )


ModelFactory = Callable[[CircuitSettings, torch.Tensor, torch.Tensor, int, int], UGMMCircuit]


def _random_trees(
    settings: CircuitSettings, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> UGMMCircuit:
    circuit = UGMMCircuit(
        x.shape[1],
        num_classes=num_classes,
        depth=settings.depth,
        repetitions=settings.repetitions,
        channels=settings.channels,
        components=settings.components,
        scale_floor=settings.scale_floor,
        likelihood_weight=1.0,
        seed=seed,
    )
    return circuit


def random_trees_prototypes(
    settings: CircuitSettings, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> UGMMCircuit:
    """Random binary trees (RAT-SPN style); input units start at training examples of the
    class their repetition is given to (``init_from_data(x, y)``)."""
    circuit = _random_trees(settings, x, y, num_classes, seed)
    circuit.init_from_data(x, y, generator=torch.Generator().manual_seed(seed))
    return circuit


def random_trees_leaves(
    settings: CircuitSettings, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> UGMMCircuit:
    """Random binary trees; input means at random data values, scales at the data's sd
    (``init_leaves_from_data``)."""
    circuit = _random_trees(settings, x, y, num_classes, seed)
    circuit.init_leaves_from_data(x, generator=torch.Generator().manual_seed(seed))
    return circuit


def data_tree_prototypes(
    settings: CircuitSettings, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> UGMMCircuit:
    """``UGMMCircuit.from_data``: a data-driven region graph (strongly correlated columns in
    one region), input units started at training examples of their repetition's class."""
    return UGMMCircuit.from_data(
        x,
        y,
        num_classes,
        depth=settings.depth,
        repetitions=settings.repetitions,
        channels=settings.channels,
        components=settings.components,
        scale_floor=settings.scale_floor,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
    )


# Named circuit builders: ``(settings, x_train, y_train, num_classes, seed) -> circuit``. The
# one place to add constructors (e.g. ``UGMMCircuit.from_data`` with a data-driven region
# graph); a grid picks among them through ``CircuitSettings.builder``.
MODEL_FACTORIES: dict[str, ModelFactory] = {
    "random-trees": random_trees_prototypes,
    "random-trees-leaves": random_trees_leaves,
    "data-tree": data_tree_prototypes,
}


def train(
    circuit: UGMMCircuit,
    settings: CircuitSettings,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    **loop: Any,
) -> None:
    """Maximum likelihood of ``(x, y)`` for ``epochs`` epochs by the settings' trainer
    (``fit`` with Adam, or online EM); ``loop`` goes to the training loop (checkpoints)."""
    common = {"epochs": epochs, "batch_size": settings.batch_size, "seed": seed, "progress": False}
    if settings.trainer == "em":
        fit_em(circuit, x, y, step_size=settings.step_size, **common, **loop)
    else:
        fit(circuit, x, y, lr=settings.lr, **common, **loop)


def build_circuit(
    settings: CircuitSettings, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> UGMMCircuit:
    """A fresh circuit from ``MODEL_FACTORIES[settings.builder]``, parameters seeded."""
    torch.manual_seed(seed)
    return MODEL_FACTORIES[settings.builder](settings, x, y, num_classes, seed)


@torch.no_grad()
def mean_log_px(circuit: UGMMCircuit, x: torch.Tensor) -> float:
    """Mean ``log p(x)`` (marginal over the class) per row, in the units of ``x``."""
    circuit.eval()
    return float(circuit.log_prob(x).mean())


def train_selecting_epoch(
    circuit: UGMMCircuit,
    settings: CircuitSettings,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    epochs: int,
    chunk: int,
    seed: int,
) -> tuple[int, float]:
    """Train by maximum likelihood, keeping the epoch of best validation ``log p(x)``.

    Runs ``fit`` in chunks of ``chunk`` epochs, each resuming the previous one exactly from a
    temporary checkpoint. Ends with the best chunk's parameters; returns its epoch and
    validation log-likelihood per row (``-inf`` if training diverged before any chunk).
    """
    best_epoch, best_value, best_state = 0, -math.inf, None
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "circuit.pt"
        for end in range(chunk, epochs + 1, chunk):
            try:
                train(
                    circuit,
                    settings,
                    x,
                    y,
                    epochs=end,
                    seed=seed,
                    x_val=x_val,
                    y_val=y_val,
                    checkpoint_path=path,
                    resume=True,
                )
            except TrainingDivergedError:
                break
            value = mean_log_px(circuit, x_val)
            if value > best_value:
                best_epoch, best_value = end, value
                best_state = copy.deepcopy(circuit.state_dict())
    if best_state is not None:
        circuit.load_state_dict(best_state)
    return best_epoch, best_value


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The circuit's grid and schedule (grid: settings tried on the validation split)."""

    grid: tuple[CircuitSettings, ...]
    epochs: int
    chunk: int
    seeds: tuple[int, ...]
    val_fraction: float = 0.2
    val_seed: int = 0
    search_seed: int = 0


def circuit_grid(
    in_features: int, num_rows: int, quick: bool, trainers: tuple[str, ...] = ("adam",)
) -> tuple[CircuitSettings, ...]:
    """Settings tried for a data set with ``in_features`` features and ``num_rows`` search rows.

    Both builders of :data:`MODEL_FACTORIES`; depth 0 (one leaf region over all variables:
    per class a mixture of products of univariate mixtures) and the deepest default split;
    4 repetitions x 4 channels or 16 x 8; 1 or 3 components per input unit (16 settings), or
    2 components above 16 variables (8 settings: a 30-variable circuit of 16 x 8 takes about
    a minute per setting on one shared thread); scale floor 0.05, Adam lr 3e-3 (scratch runs
    on the Iris validation split: lr 1e-2 peaked within the first 10 epochs; floors 0.2 and
    0.5 were worse, 0.02 and 0.1 alike). Batch 16 below 200 rows per search, else 64.

    With ``"em"`` in ``trainers``: online EM (step size 0.2) over every builder (the
    data-driven tree too), depth 1 or the deepest default, 4 x 4, 8 x 2 or 16 x 8, and 1 or 2
    components (EM steps are cheap, so this grid is wider).
    """
    deep = min(4, max(0, (in_features // 2).bit_length() - 1))
    batch = 16 if num_rows < 200 else 64
    components = (1, 3) if in_features <= 16 else (2,)
    if quick:
        return (
            CircuitSettings(
                depth=deep, repetitions=4, channels=4, components=2, lr=3e-2, batch_size=batch
            ),
        )
    grid = []
    if "em" in trainers:
        for builder, depth, (reps, channels), comps in itertools.product(
            MODEL_FACTORIES, sorted({1, deep}), ((4, 4), (8, 2), (16, 8)), (1, 2)
        ):
            grid.append(
                CircuitSettings(
                    builder=builder,
                    depth=depth,
                    repetitions=reps,
                    channels=channels,
                    components=comps,
                    scale_floor=0.05,
                    batch_size=batch,
                    trainer="em",
                )
            )
    if "adam" not in trainers:
        return tuple(grid)
    for builder, depth, (reps, channels), comps in itertools.product(
        ("random-trees", "random-trees-leaves"), sorted({0, deep}), ((4, 4), (16, 8)), components
    ):
        grid.append(
            CircuitSettings(
                builder=builder,
                depth=depth,
                repetitions=reps,
                channels=channels,
                components=comps,
                scale_floor=0.05,
                lr=3e-3,
                batch_size=batch,
            )
        )
    return tuple(grid)


def circuit_benchmark(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    log_jacobian: float,
    search: SearchSettings,
    log: Callable[[str], None],
    input_log_jacobian: float = 0.0,
) -> dict[str, Any]:
    """Grid search on a validation split of the training data, refit, one test evaluation.

    ``log_jacobian`` takes the circuit's input space to the original units;
    ``input_log_jacobian`` (its part from standardised to input space) puts the reported
    validation values in standardised units whatever the inputs.
    """
    num_classes = int(y_train.max()) + 1
    x_all = torch.from_numpy(z_train).float()
    y_all = torch.from_numpy(y_train).long()
    fit_rows, val_rows = validation_split(y_train, search.val_fraction, search.val_seed)
    x_fit, y_fit = x_all[fit_rows], y_all[fit_rows]
    x_val, y_val = x_all[val_rows], y_all[val_rows]
    tried = []
    for settings in search.grid:
        started = time.perf_counter()
        circuit = build_circuit(settings, x_fit, y_fit, num_classes, search.search_seed)
        epoch, value = train_selecting_epoch(
            circuit,
            settings,
            x_fit,
            y_fit,
            x_val,
            y_val,
            epochs=search.epochs,
            chunk=search.chunk,
            seed=search.search_seed,
        )
        value += input_log_jacobian
        tried.append({"settings": settings, "epoch": epoch, "val_loglik": value})
        log(
            f"  {settings.label()}: best epoch {epoch}, val log p(z) {value:.3f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    chosen = max(tried, key=lambda t: t["val_loglik"])
    settings, epochs = chosen["settings"], max(chosen["epoch"], 1)
    log(f"  chosen: {settings.label()}, {epochs} epochs; refit on all training rows")
    x_test = torch.from_numpy(z_test).float()
    runs = []
    for seed in search.seeds:
        circuit = build_circuit(settings, x_all, y_all, num_classes, seed)
        train(circuit, settings, x_all, y_all, epochs=epochs, seed=seed)
        loglik = mean_log_px(circuit, x_test) + log_jacobian
        with torch.no_grad():
            predicted = circuit.predict_proba(x_test).argmax(-1).numpy()
        runs.append(
            {
                "seed": seed,
                "test_loglik": loglik,
                "test_accuracy": float((predicted == y_test).mean()),
            }
        )
        log(f"  seed {seed}: test log p(x) {loglik:.3f}, accuracy {runs[-1]['test_accuracy']:.3f}")
    return {
        "settings": dataclasses.asdict(settings),
        "label": settings.label(),
        "epochs": epochs,
        "val_loglik_z": chosen["val_loglik"],
        "grid": [
            {"label": t["settings"].label(), "epoch": t["epoch"], "val_loglik_z": t["val_loglik"]}
            for t in tried
        ],
        "runs": runs,
        **_mean_sd(runs, "test_loglik"),
        **_mean_sd(runs, "test_accuracy"),
        "validation": f"{search.val_fraction:g} of the training rows, stratified, "
        f"random_state={search.val_seed}",
    }


def _mean_sd(runs: Sequence[dict], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {f"{key}_mean": statistics.fmean(values), f"{key}_sd": sd}


# ------------------------------------------------------------------------------------------
# One data set, the table, the records
# ------------------------------------------------------------------------------------------
def run_dataset(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every model on one data set; the numbers in original units."""
    started = time.perf_counter()
    data = load_tabular(name, args.split_seed)
    scale = Standardiser.from_train(data.x_train)
    z_train, z_test = scale(data.x_train), scale(data.x_test)
    log(
        f"{name}: {len(z_train)} train / {len(z_test)} test rows, {z_train.shape[1]} features, "
        f"{data.num_classes} classes; log Jacobian -sum(log sd) = {scale.log_jacobian:.4f}"
    )
    gmm = GMMSettings(max_components=args.max_components, n_init=args.n_init, seed=args.gmm_seed)
    rows = validation_split(data.y_train, args.val_fraction, args.val_seed)
    baselines = gmm_baselines(
        z_train, data.y_train, z_test, data.y_test, scale.log_jacobian, gmm, rows
    )
    for cov, row in baselines["gmm"].items():
        log(f"  GMM {cov}: {row['components']} components, test log p(x) {row['test_loglik']:.3f}")
    best = baselines["best_gmm"]
    log(
        f"  GMM by validation: {best['covariance_type']} x{best['components']}, "
        f"test log p(x) {best['test_loglik']:.3f}"
    )
    search = SearchSettings(
        grid=circuit_grid(
            z_train.shape[1],
            round(len(z_train) * (1 - args.val_fraction)),
            args.quick,
            tuple(args.trainers),
        ),
        epochs=args.epochs,
        chunk=args.chunk,
        seeds=tuple(args.seeds),
        val_fraction=args.val_fraction,
        val_seed=args.val_seed,
    )
    circuit = circuit_benchmark(
        z_train, data.y_train, z_test, data.y_test, scale.log_jacobian, search, log
    )
    whiten = Whitener.from_train(z_train)
    log(f"  whitened inputs (log Jacobian of the whitening {whiten.log_jacobian:.4f}):")
    whitened = circuit_benchmark(
        whiten(z_train),
        data.y_train,
        whiten(z_test),
        data.y_test,
        scale.log_jacobian + whiten.log_jacobian,
        search,
        log,
        input_log_jacobian=whiten.log_jacobian,
    )
    return {
        "name": name,
        "split": data.split,
        "train_rows": len(z_train),
        "test_rows": len(z_test),
        "features": int(z_train.shape[1]),
        "classes": data.num_classes,
        "log_jacobian": scale.log_jacobian,
        "log_jacobian_whitened": scale.log_jacobian + whiten.log_jacobian,
        "gmm_settings": dataclasses.asdict(gmm),
        **baselines,
        "circuit": circuit,
        "circuit_whitened": whitened,
        "seconds": time.perf_counter() - started,
    }


def records(result: dict[str, Any], command: str) -> list[dict]:
    """``docs/results.json`` records of one data set (values rounded as elsewhere)."""
    name, circuit = result["name"], result["circuit"]
    seeds = [r["seed"] for r in circuit["runs"]]
    common = {"paper": None, "split": result["split"], "command": command}
    best, lowest = result["best_gmm"], result["bic_gmm"]
    most = result["gmm_settings"]["max_components"]
    gmm_note = (
        f"{best['covariance_type']} covariance, {best['components']} components: the highest "
        f"validation log-likelihood over 4 covariance types x 1..{most} components (the "
        "circuit's validation split), refitted on all training rows"
    )
    bic_note = (
        f"{lowest['covariance_type']} covariance, {lowest['components']} components: lowest "
        f"training BIC over 4 covariance types x 1..{most} components"
    )
    out = [
        {
            "experiment": f"{name}-circuit",
            "metric": "test_loglik",
            "value": round(circuit["test_loglik_mean"], 4),
            "sd": round(circuit["test_loglik_sd"], 4),
            "seeds": seeds,
            "units": "nats per example, original feature units",
            **common,
        },
        {
            "experiment": f"{name}-circuit",
            "metric": "test_accuracy",
            "value": round(100 * circuit["test_accuracy_mean"], 2),
            "sd": round(100 * circuit["test_accuracy_sd"], 2),
            "seeds": seeds,
            **common,
        },
        {
            "experiment": f"{name}-best-gmm",
            "metric": "test_loglik",
            "value": round(best["test_loglik"], 4),
            "model": gmm_note,
            "seeds": [result["gmm_settings"]["seed"]],
            "units": "nats per example, original feature units",
            **common,
        },
        {
            "experiment": f"{name}-bic-gmm",
            "metric": "test_loglik",
            "value": round(lowest["test_loglik"], 4),
            "model": bic_note,
            "seeds": [result["gmm_settings"]["seed"]],
            "units": "nats per example, original feature units",
            **common,
        },
    ]
    whitened = result["circuit_whitened"]
    for metric, scale in (("test_loglik", 1), ("test_accuracy", 100)):
        out.append(
            {
                "experiment": f"{name}-circuit-whitened",
                "metric": metric,
                "value": round(scale * whitened[f"{metric}_mean"], 4 if scale == 1 else 2),
                "sd": round(scale * whitened[f"{metric}_sd"], 4 if scale == 1 else 2),
                "seeds": [r["seed"] for r in whitened["runs"]],
                "model": "the same search on PCA-whitened inputs (exact linear Jacobian)",
                **({"units": "nats per example, original feature units"} if scale == 1 else {}),
                **common,
            }
        )
    for key, label in (("per_class_gmm", "per-class-gmm"), ("gaussian_nb", "gaussian-nb")):
        out.append(
            {
                "experiment": f"{name}-{label}",
                "metric": "test_accuracy",
                "value": round(100 * result[key]["test_accuracy"], 2),
                **common,
            }
        )
    return out


def _circuit_row(name: str, c: dict[str, Any], seeds: str, jac: float) -> str:
    return (
        f"| {name} ({c['label']}; {c['epochs']} epochs; seeds {seeds}) "
        f"| **{c['test_loglik_mean']:.3f} ± {c['test_loglik_sd']:.3f}** "
        f"| {c['test_loglik_mean'] - jac:.3f} "
        f"| {100 * c['test_accuracy_mean']:.1f} ± {100 * c['test_accuracy_sd']:.1f}% |"
    )


def table(results: Sequence[dict[str, Any]], command: str, seconds: float) -> str:
    """The markdown block for docs/results.md."""
    lines = [
        "## Tabular density estimation (`benchmarks/tabular.py`)",
        "",
        f"Command: `{command}`; wall time {seconds / 60:.1f} min "
        "(one thread, on a 2-core machine shared with other jobs).",
        "",
        "Test log-likelihood per example in the ORIGINAL units of the features: every model "
        "is fitted to features standardised with the training split's mean and sd, and "
        "`log p(x) = log p(z) - sum_d log sd_d` (the exact Jacobian, in the header of each "
        "table); the `log p(z)` column is the standardised-space value (what "
        "`benchmarks/generative.py` reports for Iris). One GaussianMixture per covariance type "
        "with its components chosen by training BIC (n_init and max_iter in the JSON records, "
        "reg_covar 1e-6, scikit-learn's default; 'smallest sd' is the smallest principal sd of "
        "any component in standardised units: 0.001 = sqrt(reg_covar) means a component has "
        "collapsed onto tied or collinear rows). **Best GMM**: covariance type and components "
        "chosen exactly like the circuit, by log-likelihood on a stratified 20% validation "
        "split of the training rows, then refitted on all of them. The circuit "
        "(class-conditional, maximum likelihood) is chosen on the same validation split (one "
        "search seed, epoch of best validation log p(x)), then refitted on all training rows "
        "for that many epochs, once per seed; mean ± sd over seeds. The same search is run a "
        "second time on PCA-whitened inputs (the training split's covariance; an exact "
        "linear map whose Jacobian is added back). Accuracy: argmax of the model's p(c | x) "
        "on the test split.",
    ]
    for r in results:
        c, w = r["circuit"], r["circuit_whitened"]
        jac = r["log_jacobian"]
        seeds = ", ".join(str(run["seed"]) for run in c["runs"])
        lines += [
            "",
            f"### {r['name']} ({r['features']} features, {r['classes']} classes, "
            f"{r['train_rows']}/{r['test_rows']} rows; {r['split']}; "
            f"-sum log sd = {jac:.3f}; {r['seconds'] / 60:.1f} min)",
            "",
            "| model | test log p(x) | test log p(z) | test accuracy |",
            "|---|---:|---:|---:|",
            _circuit_row("uGMM circuit", c, seeds, jac),
            _circuit_row("uGMM circuit on PCA-whitened inputs", w, seeds, jac),
        ]
        lowest = r["bic_gmm"]["covariance_type"]
        best = r["best_gmm"]
        strongest = max(g["test_loglik"] for g in [*r["gmm"].values(), best])
        lines.append(
            f"| **best GMM**: {best['covariance_type']}, {best['components']} components "
            f"(validation log p(z) {best['val_loglik_z']:.3f}); smallest sd {best['min_sd']:.3g} "
            f"| **{best['test_loglik']:.3f}** | {best['test_loglik'] - jac:.3f} | |"
        )
        for cov, g in r["gmm"].items():
            mark = " (lowest BIC of the four)" if cov == lowest else ""
            converged = "" if g["converged"] else ", not converged"
            lines.append(
                f"| GaussianMixture {cov}, {g['components']} components{mark}{converged}; "
                f"smallest sd {g['min_sd']:.3g} | {g['test_loglik']:.3f} "
                f"| {g['test_loglik'] - jac:.3f} | |"
            )
        chosen = "; ".join(r["per_class_gmm"]["chosen"])
        lines += [
            f"| per-class GaussianMixture ({chosen}) | | "
            f"| {100 * r['per_class_gmm']['test_accuracy']:.1f}% |",
            f"| GaussianNB | | | {100 * r['gaussian_nb']['test_accuracy']:.1f}% |",
            f"| LogisticRegression (discriminative, reference) | | "
            f"| {100 * r['logistic']['test_accuracy']:.1f}% |",
            "",
            f"Circuit grid ({len(c['grid'])} settings, validation log p(z) per example, "
            f"{c['validation']}): best {c['val_loglik_z']:.3f}, worst "
            f"{min(t['val_loglik_z'] for t in c['grid']):.3f}; on whitened inputs: best "
            f"{w['val_loglik_z']:.3f}, worst {min(t['val_loglik_z'] for t in w['grid']):.3f}.",
            "",
        ]
        for label, model in (("Circuit", c), ("Circuit on whitened inputs", w)):
            lines.append(
                f"{label} minus best GMM: {model['test_loglik_mean'] - best['test_loglik']:+.3f} "
                f"nats per example; minus the lowest-BIC GMM: "
                f"{model['test_loglik_mean'] - r['bic_gmm']['test_loglik']:+.3f}; minus the "
                f"highest GMM row (picked on the test split, in hindsight): "
                f"{model['test_loglik_mean'] - strongest:+.3f}.  "
            )
        lines[-1] = lines[-1].rstrip()
    lines += ["", f"Machine: {machine()}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and prints as ``RESULT {json}``) every number."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--quick", action="store_true", help="tiny grid, 1 seed, few epochs")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="circuit seeds")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs in the search")
    parser.add_argument("--chunk", type=int, default=None, help="epochs between validations")
    parser.add_argument("--split-seed", type=int, default=0, help="wine/breast-cancer split")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--val-seed", type=int, default=0)
    parser.add_argument("--max-components", type=int, default=None)
    parser.add_argument("--n-init", type=int, default=None)
    parser.add_argument("--gmm-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--trainers",
        nargs="*",
        default=["adam"],
        choices=["adam", "em"],
        help="circuit trainers in the search grid",
    )
    args = parser.parse_args(argv)
    quick_defaults = {"seeds": [0], "epochs": 20, "chunk": 10, "max_components": 3, "n_init": 1}
    full_defaults = {
        "seeds": [0, 1, 2],
        "epochs": 200,
        "chunk": 2,
        "max_components": 10,
        "n_init": 5,
    }
    for key, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/tabular.py " + " ".join(argv if argv is not None else sys.argv[1:])
    command = command.strip()

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"machine: {machine()}")
    started = time.perf_counter()
    results = [run_dataset(name, args, log) for name in args.datasets]
    seconds = time.perf_counter() - started
    block = table(results, command, seconds)
    log(block)
    if args.no_write:
        log("nothing written (--no-write)")
    else:
        update_results([rec for r in results for rec in records(r, command)])
        replace_block("tabular", block)
    summary = {"command": command, "seconds": seconds, "datasets": results}
    log("RESULT " + json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
