"""The paper's uGMM-NN as a scikit-learn classifier: :class:`UGMMNetClassifier`, a committee
of networks (:class:`UGMMNetCommittee`), each early-stopped on its own held-out rows.

Why a committee: on small tables a single network's early stopping selects the epoch on a
handful of held-out rows, and the epoch it keeps is often sharper than the data warrant
(test NLL 1.6-2.8 times logistic regression's on wine). Members that hold out different
rows and average their probabilities use every training row, select on more held-out rows
in all, and soften where they disagree (docs/results.md, "Your own data").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pyro.nn import PyroModule
from torch import nn

from ugmm_prob._deprecation import accepts_old_spellings
from ugmm_prob.kernels import Backend
from ugmm_prob.networks import Classifier, UGMMClassifier, constructor_config
from ugmm_prob.sklearn.base import _MIN_ROWS_FOR_VALIDATION, _require_sklearn, check_is_fitted
from ugmm_prob.sklearn.classifiers import _ClassifierBase
from ugmm_prob.training import fit

__all__ = ["UGMMNetClassifier", "UGMMNetCommittee"]


class UGMMNetCommittee(Classifier):
    """``members`` uGMM-NNs (:class:`~ugmm_prob.networks.UGMMClassifier`) of one shape;
    ``p(c | x)`` is the average of theirs.

    ``logits`` returns ``log mean_m p_m(c | x)``, so ``predict_proba`` (their softmax) is
    the members' average. Train the members (``committee.members[m]``) one by one, e.g.
    with :func:`~ugmm_prob.training.fit`; training the committee as a whole would fit the
    averaged probabilities instead. Checkpoints rebuild it when
    :func:`~ugmm_prob.checkpoints.load_checkpoint` is given it in ``extra_classes`` (as
    :func:`~ugmm_prob.sklearn.persistence.load_estimator` does).

    Args:
        in_features, hidden, num_classes, layer_norm, dropout, scale_floor, backend: as
            for :class:`~ugmm_prob.networks.UGMMClassifier`, for every member.
        members: number of networks, at least 1.
    """

    @accepts_old_spellings(formerly_positional=("hidden", "num_classes"))
    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (16,),
        num_classes: int = 2,
        members: int = 5,
        layer_norm: bool = False,
        dropout: float = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"UGMMNetCommittee: members must be an int >= 1, got {members!r}")
        self.in_features, self.num_classes = in_features, num_classes
        self.config = config
        options = {
            "hidden": hidden,
            "num_classes": num_classes,
            "layer_norm": layer_norm,
            "dropout": dropout,
            "scale_floor": scale_floor,
            "backend": backend,
        }
        self.members = PyroModule[nn.ModuleList](
            [UGMMClassifier(in_features, **options) for _ in range(members)]
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log`` of the members' mean ``p(c | x)``, shape ``(n, num_classes)``."""
        x = self._batch(x, "logits")
        log_probs = torch.stack([torch.log_softmax(m.logits(x), -1) for m in self.members])
        return torch.logsumexp(log_probs, 0) - math.log(len(self.members))


def _stratified_order(y: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """The rows in an order that spreads every class evenly, so that any run of consecutive
    rows holds the classes in (about) their overall proportions."""
    key = np.empty(len(y))
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        key[rows] = (np.arange(len(rows)) + rng.uniform()) / len(rows)
    return np.argsort(key, kind="stable")


class UGMMNetClassifier(_ClassifierBase):
    """The paper's uGMM-NN (:class:`~ugmm_prob.networks.UGMMClassifier`) as a classifier.

    A committee of ``n_members`` discriminative networks of uGMM neurons
    (:class:`UGMMNetCommittee`); ``predict_proba`` is the average of the members' softmax
    of their output neurons' activations. Each member starts from prototypes of the
    training rows and is trained with Adam on the cross-entropy. With ``early_stopping``
    (default) member ``m`` holds out its own stratified block of ``validation_fraction`` of
    the rows, the ``m``-th of a stratified shuffle (with the defaults, 5 x 0.2: the folds of
    a stratified 5-fold cross-validation, so every row trains four members and validates
    one), and keeps the epoch with the best held-out NLL. Without it (or with fewer than 10
    rows) every member trains on all rows for ``max_iter`` epochs from its own seed.

    Missing (NaN) cells are refused in ``fit`` and ``predict``: the network cannot
    marginalise them (:class:`~ugmm_prob.sklearn.classifiers.UGMMCircuitClassifier` can).

    Args:
        hidden: widths of the hidden uGMM layers.
        n_members: networks in the committee (1: a single network).
        layer_norm: LayerNorm after each hidden layer.
        dropout: component dropout of the hidden layers.
        scale_floor: lower bound of every neuron scale.
        max_iter: epochs per member; batch_size: rows per step; learning_rate,
            weight_decay: Adam's.
        early_stopping, validation_fraction: as above.
        random_state, device, verbose: as for
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.

    Attributes:
        classes_, mean_, scale_: as for
            :class:`~ugmm_prob.sklearn.classifiers.UGMMCircuitClassifier`.
        model_: the fitted :class:`UGMMNetCommittee` (on standardised columns).
        history_: per-epoch metrics of every member (rows carry ``member``); n_iter_:
            epochs run per member; best_iter_: the epoch each member kept (None without
            early stopping).
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (16,),
        n_members: int = 5,
        layer_norm: bool = False,
        dropout: float = 0.0,
        scale_floor: float = 1e-3,
        max_iter: int = 200,
        batch_size: int = 32,
        learning_rate: float = 1e-2,
        weight_decay: float = 1e-4,
        early_stopping: bool = True,
        validation_fraction: float = 0.2,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.n_members = n_members
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
        """Train the committee on rows ``X`` and labels ``y``; returns ``self``."""
        _require_sklearn()
        X, y = self._validate(X, y, reset=True, allow_nan=True)
        self._refuse_missing(X, "fit")
        self._check_common()
        members = self.n_members
        if isinstance(members, bool) or not isinstance(members, int | np.integer) or members < 1:
            raise ValueError(f"UGMMNetClassifier: n_members must be an int >= 1, got {members!r}")
        encoded = self._encode(y)
        if len(X) < 2:
            raise ValueError(f"UGMMNetClassifier.fit: expected n_samples >= 2, got {len(X)} sample")
        self._standardise_fit(X)
        seed = self._seed()
        z = self._tensor((X - self.mean_) / self.scale_)
        labels = self._tensor(encoded, torch.long)
        with self._rng():
            torch.manual_seed(seed)
            committee = UGMMNetCommittee(
                X.shape[1],
                hidden=tuple(int(h) for h in self.hidden),
                num_classes=len(self.classes_),
                members=int(members),
                layer_norm=bool(self.layer_norm),
                dropout=float(self.dropout),
                scale_floor=float(self.scale_floor),
            ).to(torch.float64)
            self.history_, self.best_iter_ = [], []
            for m, val in enumerate(self._member_validation(encoded, seed)):
                self._train_member(committee.members[m], m, z, labels, val, seed + m)
        self.model_ = committee.eval()
        self.n_iter_ = int(self.max_iter)
        return self

    def _member_validation(self, encoded: np.ndarray, seed: int) -> list[np.ndarray | None]:
        """Each member's held-out rows: consecutive blocks of ``validation_fraction`` of a
        stratified shuffle (None for all: no early stopping, or too few rows)."""
        n, members = len(encoded), int(self.n_members)
        if not self.early_stopping or n < _MIN_ROWS_FOR_VALIDATION:
            return [None] * members
        order = _stratified_order(encoded, np.random.RandomState(seed))
        size = max(1, round(float(self.validation_fraction) * n))
        starts = [round(m * n / members) for m in range(members)]
        return [np.sort(order[(start + np.arange(size)) % n]) for start in starts]

    def _train_member(self, net, m: int, z, labels, val: np.ndarray | None, seed: int) -> None:
        """Prototype initialisation and Adam for member ``m``; records its history."""
        held_out = np.zeros(len(z), dtype=bool)
        if val is not None:
            held_out[val] = True
        train = torch.as_tensor(np.flatnonzero(~held_out), device=z.device)
        x_val = y_val = None
        if val is not None:
            index = torch.as_tensor(val, device=z.device)
            x_val, y_val = z[index], labels[index]
        torch.manual_seed(seed)
        net.init_from_data(z[train].cpu(), generator=torch.Generator().manual_seed(seed))
        history = fit(
            net.to(z.device),
            z[train],
            labels[train],
            x_val=x_val,
            y_val=y_val,
            epochs=int(self.max_iter),
            batch_size=int(self.batch_size),
            lr=float(self.learning_rate),
            weight_decay=float(self.weight_decay),
            seed=seed,
            progress=bool(self.verbose),
            keep_best="nll" if x_val is not None else None,
            device=z.device,
        )
        self.history_ += [{"member": m, **row} for row in history]
        self.best_iter_.append(history[-1].get("best_epoch") if history else None)

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
        """``p(c | x)``, the members' average, shape ``(n, n_classes)`` (rows with NaN cells
        are refused: see the class notes)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False, allow_nan=True)
        self._refuse_missing(X, "predict_proba")
        z, _ = self._to_z(X)
        with torch.no_grad():
            return self.model_.predict_proba(z).cpu().numpy().astype(np.float64)
