"""The generative classifier :class:`UGMMCircuitClassifier` (exact ``p(c | x)``, also for rows
with NaN cells) and what every classifier of the package shares (labels of any kind mapped to
``0..C-1``, ``predict``, ``predict_log_proba``); the uGMM-NN is in
:mod:`~ugmm_prob.sklearn.net`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.roles import UNLABELLED
from ugmm_prob.sklearn.base import (
    ClassifierMixin,
    _require_sklearn,
    _TorchEstimator,
    check_classification_targets,
    check_is_fitted,
)
from ugmm_prob.sklearn.density import _CircuitMixin
from ugmm_prob.training import fit

__all__ = ["UGMMCircuitClassifier"]


def _unlabelled_rows(y: np.ndarray, marker: Any) -> np.ndarray:
    """The rows labelled ``marker`` (``None``: none), comparing numbers with numbers and
    strings with strings (a string ``"-1"`` is not the number ``-1``)."""
    y = np.asarray(y)
    if marker is None:
        return np.zeros(len(y), dtype=bool)
    number = _is_number(marker)
    return np.array(
        [_is_number(label) == number and label == marker for label in y.tolist()], dtype=bool
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


class _ClassifierBase(ClassifierMixin, _TorchEstimator):
    """Labels: ``classes_`` (any labels, strings too) mapped to ``0..C-1``."""

    def _unlabelled_marker(self) -> Any:
        """The label of a row of unknown class (the circuit's ``unlabelled_label``), or None:
        every label is a class."""
        return getattr(self, "unlabelled_label", None)

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """``classes_`` and the labels as ``0..C-1`` (``-1`` for the rows labelled with the
        unlabelled marker, where the estimator has one)."""
        marker = self._unlabelled_marker()
        unlabelled = _unlabelled_rows(y, marker)
        known = np.unique(y[~unlabelled]) if (~unlabelled).any() else []
        if unlabelled.any() and len(known) < 2:
            raise ValueError(
                f"{type(self).__name__}.fit: {int(unlabelled.sum())} row(s) are labelled "
                f"{marker!r} (unlabelled_label: unknown class), which leaves {len(known)} "
                f"class(es) {[str(k) for k in known]}; expected at least 2 labelled classes"
            )
        check_classification_targets(y[~unlabelled])
        self.classes_, encoded = np.unique(y[~unlabelled], return_inverse=True)
        labels = np.full(len(y), UNLABELLED, dtype=np.int64)
        labels[~unlabelled] = encoded.reshape(-1)
        return labels

    def _training_data(self, X: np.ndarray, encoded: np.ndarray) -> dict[str, Any]:
        """Standardise (fitting ``mean_``, ``scale_``) and split: tensors of the training
        and validation rows (the latter None without early stopping) and the seed."""
        self._standardise_fit(X)
        seed = self._seed()
        train, val = self._split(len(X), seed)
        z = self._tensor((X - self.mean_) / self.scale_)
        labels = self._tensor(encoded, torch.long)
        return {
            "x": z[train],
            "y": labels[train],
            "x_val": None if val is None else z[val],
            "y_val": None if val is None else labels[val],
            "seed": seed,
        }

    def encode_labels(self, y: Any, *, unlabelled: bool = False) -> np.ndarray:
        """Labels of ``classes_`` as indices ``0..C-1`` (a ``ValueError`` names unknown ones;
        with ``unlabelled``, the estimator's ``unlabelled_label`` and None become ``-1``: a
        row of unknown class)."""
        check_is_fitted(self)
        y = np.asarray(y)
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        if unlabelled:
            marker = _unlabelled_rows(y, self._unlabelled_marker())
            marker |= np.array([label is None for label in y.tolist()], dtype=bool)
            index = {**dict.fromkeys(y[marker].tolist(), UNLABELLED), **index}
        try:
            return np.array([index[label] for label in y.tolist()], dtype=np.int64)
        except KeyError as error:
            raise ValueError(
                f"unknown class label {error.args[0]!r}; the fitted classes are "
                f"{self.classes_.tolist()}"
            ) from None

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label of every row, shape ``(n,)``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log p(c | x)``, shape ``(n, n_classes)``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class UGMMCircuitClassifier(_CircuitMixin, _ClassifierBase):
    """A generative classifier: the circuit models ``p(x, c)``, ``predict_proba`` is exact.

    ``p(c | x) = p(x, c) / sum_c' p(x, c')``, computed exactly, also for rows with NaN cells
    (marginalised). ``fit`` takes incomplete data: rows with NaN cells (their observed cells
    count, ``log p(x_observed, c)``) and, with ``unlabelled_label`` set (``-1``:
    scikit-learn's semi-supervised convention), rows of unknown class labelled with it,
    which contribute ``log p(x) = logsumexp_c log p(x, c)`` (semi-supervised learning; the
    classes are the other labels). With
    ``likelihood_weight=1`` (default) the circuit is fitted by maximum
    likelihood of ``(x, c)`` with EM; with ``likelihood_weight < 1`` the hybrid objective
    ``lambda * NLL / D + (1 - lambda) * cross-entropy of p(c | x)`` is minimised with Adam
    (:func:`~ugmm_prob.training.fit`, ``learning_rate``), keeping the epoch with the best
    held-out class NLL.

    Args:
        likelihood_weight: ``lambda`` in ``[0, 1]``.
        repetitions: trees of the region graph; ``None`` (default): the smallest multiple
            of the number of classes that is at least 8, so that every class starts with
            the same number of repetitions of its own (``init_from_data`` gives repetition
            ``r`` to class ``r mod C``: with fewer repetitions than classes, some classes
            would start with none).
        shared_structure: whether every class's root may mix every repetition (True), or
            only its own (False, default: ``p(x | c)`` is then a circuit of its own per
            class; on a 10-class table, digits, 89% test accuracy against 76% shared).
        learning_rate: Adam's learning rate (hybrid objective only).
        unlabelled_label: the label that marks a training row of unknown class, e.g.
            ``-1`` as scikit-learn's semi-supervised estimators (``LabelSpreading``,
            ``SelfTrainingClassifier``) read it; None (default): every label is a class
            (so binary labels ``{-1, 1}`` keep working). In :meth:`impute` it marks rows
            whose class is not given.
        **others: (single values: the classifier does not search its size) ``depth``,
            ``channels``, ``components``,
            ``scale_floor``, ``max_iter``, ``batch_size``, ``step_size``, ``pseudo_count``,
            ``early_stopping``, ``validation_fraction``, ``random_state``, ``device`` and
            ``verbose`` are as for :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.

    Attributes:
        classes_: the labels, sorted; column ``k`` of ``predict_proba`` is ``classes_[k]``.
        model_, mean_, scale_, n_parameters_, history_, n_iter_, best_iter_: as for
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.
    """

    _allow_nan = True

    def __init__(
        self,
        *,
        likelihood_weight: float = 1.0,
        depth: int | None = 1,
        repetitions: int | None = None,
        shared_structure: bool = False,
        channels: int = 2,
        components: int = 2,
        scale_floor: float = 1e-2,
        max_iter: int = 100,
        batch_size: int = 256,
        step_size: float = 0.1,
        pseudo_count: float = 1e-2,
        learning_rate: float = 1e-2,
        unlabelled_label: Any = None,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.likelihood_weight = likelihood_weight
        self.depth = depth
        self.repetitions = repetitions
        self.shared_structure = shared_structure
        self.channels = channels
        self.components = components
        self.scale_floor = scale_floor
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.step_size = step_size
        self.pseudo_count = pseudo_count
        self.learning_rate = learning_rate
        self.unlabelled_label = unlabelled_label
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> UGMMCircuitClassifier:
        """Fit ``p(x, c)`` to rows ``X`` and labels ``y``; returns ``self``."""
        _require_sklearn()
        X, y = self._validate(X, y, reset=True)
        self._check_common()
        if not 0.0 <= float(self.likelihood_weight) <= 1.0:
            raise ValueError(
                f"UGMMCircuitClassifier: likelihood_weight must be in [0, 1], got "
                f"{self.likelihood_weight!r}"
            )
        encoded = self._encode(y)
        self._check_training_rows(X)
        data = self._training_data(X, encoded)
        self._fit_circuit(
            data["x"],
            data["y"],
            data["seed"],
            lambda circuit: self._train(circuit, data),
            num_classes=len(self.classes_),
            likelihood_weight=float(self.likelihood_weight),
        )
        return self

    def _circuit_options(self) -> dict[str, Any]:
        options = super()._circuit_options()
        if options["repetitions"] is None:
            classes = len(self.classes_)
            options["repetitions"] = classes * math.ceil(8 / classes)
        return {**options, "shared_structure": bool(self.shared_structure)}

    def _train(self, circuit: UGMMCircuit, data: dict[str, Any]) -> list[dict[str, Any]]:
        """EM for maximum likelihood (``likelihood_weight=1``), else Adam on the hybrid
        objective, keeping the epoch with the best held-out class NLL."""
        x, y, x_val, y_val, seed = (data[k] for k in ("x", "y", "x_val", "y_val", "seed"))
        if float(self.likelihood_weight) == 1.0:
            return self._em(circuit, x, y, x_val, y_val, seed)
        keep = None
        if x_val is not None:
            labelled = bool((y_val != UNLABELLED).any())  # class metrics need labelled rows
            keep = "class_nll" if len(self.classes_) > 1 and labelled else "nll"
        return fit(
            circuit,
            x,
            y,
            x_val=x_val,
            y_val=y_val,
            epochs=int(self.max_iter),
            batch_size=int(self.batch_size),
            lr=float(self.learning_rate),
            seed=seed,
            progress=bool(self.verbose),
            keep_best=keep,
            device=x.device,
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """The exact class posterior ``p(c | x)``, shape ``(n, n_classes)``; NaN cells are
        marginalised."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        joint = self._joint(X)
        joint = joint - joint.max(axis=1, keepdims=True)
        proba = np.exp(joint)
        return proba / proba.sum(axis=1, keepdims=True)

    def sample(self, n_samples: int = 1, c: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact samples ``(X, y)`` of ``p(x, c)``; ``c`` (a label of ``classes_``) fixes the
        class, else classes are drawn from the fitted prior. ``y`` holds labels."""
        index = None if c is None else int(self.encode_labels([c])[0])
        X, classes = self._draw(n_samples, index)
        return X, self.classes_[classes]

    def impute(self, X: Any, y: Any = None, method: str = "sample") -> np.ndarray:
        """``X`` with its NaN cells filled, given the class ``y`` of each row if known
        (``unlabelled_label`` or None: unknown).

        Where the class is unknown it is marginalised (``"mean"``), drawn from
        ``p(c | x_observed)`` (``"sample"``) or chosen with the cells (``"mpe"``, max-product);
        see :meth:`~ugmm_prob.sklearn.density.UGMMCircuitDensity.impute`.
        """
        c = None if y is None else self.encode_labels(y, unlabelled=True)
        return self._complete(X, method, c)
