"""The imputer :class:`UGMMCircuitImputer`: missing cells filled from a circuit fitted to the
incomplete table itself (a drop-in for scikit-learn's ``SimpleImputer``, ``KNNImputer`` and
``IterativeImputer`` in a ``Pipeline``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ugmm_prob.circuits.circuit import IMPUTATION_METHODS
from ugmm_prob.sklearn.base import (
    OneToOneFeatureMixin,
    TransformerMixin,
    _TorchEstimator,
    check_is_fitted,
)
from ugmm_prob.sklearn.density import _CircuitMixin

__all__ = ["UGMMCircuitImputer"]


class UGMMCircuitImputer(OneToOneFeatureMixin, TransformerMixin, _CircuitMixin, _TorchEstimator):
    """Fill missing (NaN) cells from a circuit fitted to the rows, missing cells included.

    ``fit(X)`` fits the density of :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`
    to ``X`` as it is (EM of ``log p(x_observed)``: rows with NaN cells are used, not
    dropped); ``transform(X)`` returns ``X`` with every NaN cell filled given the row's
    observed cells, and observed cells unchanged:

    - ``strategy="mean"`` (default): the exact conditional mean ``E[x_missing |
      x_observed]``, the best fill in squared error;
    - ``"mpe"``: the max-product completion (the most probable induced tree's peak);
    - ``"sample"``: one exact draw from ``p(x_missing | x_observed)`` (fixed by an int
      ``random_state``). For multiple imputation, :meth:`conditional_sample` gives ``k``
      draws at once.

    Args:
        strategy: ``"mean"``, ``"mpe"`` or ``"sample"``.
        **others: ``depth``, ``repetitions``, ``channels``, ``components``,
            ``scale_floor``, ``max_iter``, ``batch_size``, ``step_size``, ``pseudo_count``,
            ``early_stopping``, ``validation_fraction``, ``random_state``, ``device`` and
            ``verbose`` are as for :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.

    Attributes:
        model_: the fitted :class:`~ugmm_prob.circuits.UGMMCircuit` (on standardised columns);
            ``mean_``, ``scale_``, ``n_parameters_``, ``history_``, ``n_iter_``,
            ``best_iter_``, ``n_features_in_`` and ``feature_names_in_`` are as for
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`.
    """

    _allow_nan = True

    def __init__(
        self,
        *,
        strategy: str = "mean",
        depth: int | None = 1,
        repetitions: int = 8,
        channels: int = 2,
        components: int = 2,
        scale_floor: float = 1e-2,
        max_iter: int = 100,
        batch_size: int = 256,
        step_size: float = 0.1,
        pseudo_count: float = 1e-2,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.strategy = strategy
        self.depth = depth
        self.repetitions = repetitions
        self.channels = channels
        self.components = components
        self.scale_floor = scale_floor
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.step_size = step_size
        self.pseudo_count = pseudo_count
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _check_strategy(self) -> None:
        if self.strategy not in IMPUTATION_METHODS:
            raise ValueError(
                f"UGMMCircuitImputer: strategy must be one of "
                f"{', '.join(map(repr, IMPUTATION_METHODS))}, got {self.strategy!r}"
            )

    def fit(self, X: Any, y: Any = None) -> UGMMCircuitImputer:
        """Fit the circuit to the rows of ``X``, NaN cells marginalised (``y`` is ignored);
        returns ``self``."""
        self._check_strategy()
        self._fit_density(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``X`` with its NaN cells filled by ``strategy``, shape ``(n, n_features)``."""
        check_is_fitted(self)
        self._check_strategy()
        return self._complete(X, self.strategy, None)
