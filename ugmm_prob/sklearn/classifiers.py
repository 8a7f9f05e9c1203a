"""The classifiers: :class:`UGMMCircuitClassifier` (generative, exact ``p(c | x)``, also for
rows with NaN cells) and :class:`UGMMNetClassifier` (the paper's discriminative uGMM-NN)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.networks import UGMMClassifier
from ugmm_prob.sklearn.base import (
    ClassifierMixin,
    _require_sklearn,
    _TorchEstimator,
    check_classification_targets,
    check_is_fitted,
)
from ugmm_prob.sklearn.density import _CircuitMixin
from ugmm_prob.training import fit

__all__ = ["UGMMCircuitClassifier", "UGMMNetClassifier"]


class _ClassifierBase(ClassifierMixin, _TorchEstimator):
    """Labels: ``classes_`` (any labels, strings too) mapped to ``0..C-1``."""

    def _encode(self, y: np.ndarray) -> np.ndarray:
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        return encoded.reshape(-1)

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

    def encode_labels(self, y: Any) -> np.ndarray:
        """Labels of ``classes_`` as indices ``0..C-1`` (a ``ValueError`` names unknown ones)."""
        check_is_fitted(self)
        y = np.asarray(y)
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
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
    (marginalised). With ``likelihood_weight=1`` (default) the circuit is fitted by maximum
    likelihood of ``(x, c)`` with EM; with ``likelihood_weight < 1`` the hybrid objective
    ``lambda * NLL / D + (1 - lambda) * cross-entropy of p(c | x)`` is minimised with Adam
    (:func:`~ugmm_prob.training.fit`, ``learning_rate``), keeping the epoch with the best
    held-out class NLL.

    Args:
        likelihood_weight: ``lambda`` in ``[0, 1]``.
        learning_rate: Adam's learning rate (hybrid objective only).
        **others: ``depth``, ``repetitions``, ``channels``, ``components``,
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
        repetitions: int = 8,
        channels: int = 2,
        components: int = 2,
        scale_floor: float = 1e-2,
        max_iter: int = 100,
        batch_size: int = 256,
        step_size: float = 0.1,
        pseudo_count: float = 1e-2,
        learning_rate: float = 1e-2,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.likelihood_weight = likelihood_weight
        self.depth = depth
        self.repetitions = repetitions
        self.channels = channels
        self.components = components
        self.scale_floor = scale_floor
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.step_size = step_size
        self.pseudo_count = pseudo_count
        self.learning_rate = learning_rate
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
        X, encoded = self._complete_rows(X, encoded)
        data = self._training_data(X, encoded)
        with self._rng():
            generator = torch.Generator().manual_seed(data["seed"])
            circuit = UGMMCircuit.from_data(
                data["x"].cpu(),
                data["y"].cpu(),
                len(self.classes_),
                seed=data["seed"],
                generator=generator,
                likelihood_weight=float(self.likelihood_weight),
                **self._circuit_options(),
            )
            circuit = circuit.to(torch.float64).to(data["x"].device)
            self.history_ = self._train(circuit, data)
        self.model_ = circuit.eval()
        self._record_history()
        return self

    def _train(self, circuit: UGMMCircuit, data: dict[str, Any]) -> list[dict[str, Any]]:
        """EM for maximum likelihood (``likelihood_weight=1``), else Adam on the hybrid
        objective, keeping the epoch with the best held-out class NLL."""
        x, y, x_val, y_val, seed = (data[k] for k in ("x", "y", "x_val", "y_val", "seed"))
        if float(self.likelihood_weight) == 1.0:
            return self._em(circuit, x, y, x_val, y_val, seed)
        keep = None
        if x_val is not None:
            keep = "class_nll" if len(self.classes_) > 1 else "nll"
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
        """``X`` with its NaN cells filled, given the class ``y`` of each row if known.

        Without ``y`` the class is drawn from ``p(c | x_observed)`` (``"sample"``) or chosen
        with the cells (``"mode"``, max-product); see
        :meth:`~ugmm_prob.sklearn.density.UGMMCircuitDensity.impute`.
        """
        c = None if y is None else self.encode_labels(y)
        if c is not None and method == "mode":
            raise ValueError("impute: method='mode' chooses the class itself; pass y=None")
        return self._complete(X, method, c)


class UGMMNetClassifier(_ClassifierBase):
    """The paper's uGMM-NN (:class:`~ugmm_prob.networks.UGMMClassifier`) as a classifier.

    A discriminative network of uGMM neurons: ``predict_proba`` is the softmax of the output
    neurons' activations. Trained with Adam on the cross-entropy, starting from prototypes
    of the training rows; with ``early_stopping`` the epoch with the best held-out NLL is
    kept, which together with ``weight_decay`` keeps small tables from overconfidence.

    Args:
        hidden: widths of the hidden uGMM layers.
        layer_norm: LayerNorm after each hidden layer.
        dropout: component dropout of the hidden layers.
        scale_floor: lower bound of every neuron scale.
        max_iter: epochs; batch_size: rows per step; learning_rate, weight_decay: Adam's.
        early_stopping, validation_fraction, random_state, device, verbose: as for
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.

    Attributes:
        classes_, model_, mean_, scale_, history_, n_iter_, best_iter_: as for
            :class:`UGMMCircuitClassifier` (``model_`` is a ``UGMMClassifier``).
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (16,),
        layer_norm: bool = False,
        dropout: float = 0.0,
        scale_floor: float = 1e-3,
        max_iter: int = 200,
        batch_size: int = 32,
        learning_rate: float = 1e-2,
        weight_decay: float = 1e-4,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.scale_floor = scale_floor
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> UGMMNetClassifier:
        """Train the network on rows ``X`` and labels ``y``; returns ``self``."""
        _require_sklearn()
        X, y = self._validate(X, y, reset=True, allow_nan=True)
        self._refuse_missing(X, "fit")
        self._check_common()
        encoded = self._encode(y)
        if len(X) < 2:
            raise ValueError(f"UGMMNetClassifier.fit: expected n_samples >= 2, got {len(X)} sample")
        data = self._training_data(X, encoded)
        with self._rng():
            torch.manual_seed(data["seed"])
            net = UGMMClassifier(
                X.shape[1],
                tuple(int(h) for h in self.hidden),
                len(self.classes_),
                layer_norm=bool(self.layer_norm),
                dropout=float(self.dropout),
                scale_floor=float(self.scale_floor),
            ).to(torch.float64)
            generator = torch.Generator().manual_seed(data["seed"])
            net.init_from_data(data["x"].cpu(), generator=generator)
            net = net.to(data["x"].device)
            self.history_ = fit(
                net,
                data["x"],
                data["y"],
                x_val=data["x_val"],
                y_val=data["y_val"],
                epochs=int(self.max_iter),
                batch_size=int(self.batch_size),
                lr=float(self.learning_rate),
                weight_decay=float(self.weight_decay),
                seed=data["seed"],
                progress=bool(self.verbose),
                keep_best="nll" if data["x_val"] is not None else None,
                device=data["x"].device,
            )
        self.model_ = net.eval()
        self.n_iter_ = len(self.history_)
        self.best_iter_ = self.history_[-1].get("best_epoch") if self.history_ else None
        return self

    def _refuse_missing(self, X: np.ndarray, method: str) -> None:
        """A ``ValueError`` naming the rows with NaN cells, and what to do instead."""
        rows = np.isnan(X).any(axis=1)
        if rows.any():
            raise ValueError(
                f"UGMMNetClassifier.{method}: X has missing (NaN) cells in {int(rows.sum())} of "
                f"{len(X)} rows (the first: row {int(np.argmax(rows))}); the uGMM-NN cannot "
                "marginalise missing inputs. Use UGMMCircuitClassifier, which marginalises "
                "them exactly, fill them first (UGMMCircuitDensity().fit(X).impute(X), or "
                "SimpleImputer in a Pipeline), or drop those rows"
            )

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p(c | x)`` of the network, shape ``(n, n_classes)`` (rows with NaN cells are
        refused: see :meth:`fit`)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False, allow_nan=True)
        self._refuse_missing(X, "predict_proba")
        z, _ = self._to_z(X)
        with torch.no_grad():
            return self.model_.predict_proba(z).cpu().numpy().astype(np.float64)
