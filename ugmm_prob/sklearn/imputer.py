"""The imputer :class:`UGMMCircuitImputer`: missing cells filled from a circuit fitted to the
incomplete table itself (a drop-in for scikit-learn's ``SimpleImputer``, ``KNNImputer`` and
``IterativeImputer`` in a ``Pipeline``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ugmm_prob.circuits.circuit import IMPUTATION_METHODS
from ugmm_prob.sklearn.base import OneToOneFeatureMixin, TransformerMixin, check_is_fitted
from ugmm_prob.sklearn.density import UGMMCircuitDensity

__all__ = ["VALIDATION_CELLS", "UGMMCircuitImputer"]

VALIDATION_CELLS = 20_000
"""The most held-out cells the imputer's size search hides and imputes per candidate
(:meth:`UGMMCircuitImputer._validation_items`)."""


class UGMMCircuitImputer(OneToOneFeatureMixin, TransformerMixin, UGMMCircuitDensity):
    """Fill missing (NaN) cells from a circuit fitted to the rows, missing cells included.

    A :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity` (the same parameters, defaults,
    size search and queries) that is also a transformer: ``fit(X)`` fits the density to
    ``X`` as it is (EM of ``log p(x_observed)``: rows with NaN cells are used, not
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
        **others: every parameter of
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`, with its defaults.

    The size search differs in what it maximises: among the candidate sizes, the one whose
    conditional mean best fills the held-out rows' cells, each hidden in turn (the lowest
    squared error), not the likeliest one. And it searches depth 0 only by default (one
    full-covariance leaf over every column: a Gaussian mixture of ``channels`` components,
    whose conditional means use every correlation): on the validation rows of
    ``benchmarks/density_defaults.py --part imputer-depth`` it imputed as well as or better
    than depths 0 and 1 searched, in half the time (docs/results.md). On a very small table
    it can be worse: on scikit-learn's linnerud (20 rows x 6 columns, 10/20/30% of cells
    removed, seeds 0-4) depth 0 imputed with RMSE 1.225/1.531/1.329 against 1.178/1.347/1.328
    with ``depth=(0, 1)``, the 4 held-out rows choosing up to 8 full covariances for 16 rows:
    give ``depth=(0, 1)`` or fewer ``channels`` there.

    Attributes:
        model_: the fitted :class:`~ugmm_prob.circuits.UGMMCircuit` (on standardised
            columns); ``best_params_``, ``mean_``, ``scale_``, ``n_parameters_``,
            ``history_``, ``n_iter_``, ``best_iter_``, ``n_features_in_`` and
            ``feature_names_in_`` are as for
            :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`; ``search_results_`` too,
            with ``validation_score`` minus the held-out imputation's mean squared error (in
            training standard deviations).
    """

    _allow_nan = True

    def __init__(
        self,
        *,
        strategy: str = "mean",
        structure: str | Sequence[str] = "tree",
        depth: int | Sequence[int | None] | None = 0,
        repetitions: int | Sequence[int] = 4,
        channels: int | Sequence[int] = (1, 2, 4, 8),
        inputs: str = "multivariate",
        components: int = 2,
        covariance_pooling: float | Sequence[float] = (0.0, 10.0, 100.0),
        scale_floor: float = 1e-2,
        init_params: str = "kmeans",
        n_init: int = 1,
        selection: str = "best",
        max_iter: int = 100,
        n_iter_no_change: int | None = 20,
        batch_size: int = 256,
        online: bool = False,
        step_size: float = 0.1,
        pseudo_count: float = 1e-2,
        early_stopping: bool = True,
        validation_fraction: float = 0.2,
        cv: int | None = None,
        refit: bool = True,
        random_state: Any = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            structure=structure,
            depth=depth,
            repetitions=repetitions,
            channels=channels,
            inputs=inputs,
            components=components,
            covariance_pooling=covariance_pooling,
            scale_floor=scale_floor,
            init_params=init_params,
            n_init=n_init,
            selection=selection,
            max_iter=max_iter,
            n_iter_no_change=n_iter_no_change,
            batch_size=batch_size,
            online=online,
            step_size=step_size,
            pseudo_count=pseudo_count,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            cv=cv,
            refit=refit,
            random_state=random_state,
            device=device,
            verbose=verbose,
        )
        self.strategy = strategy

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
        return super().fit(X)

    def _validation_items(self, X_val: np.ndarray, seed: int) -> np.ndarray:
        """What the size search maximises, per held-out item (here a cell): minus the
        squared error, in training standard deviations, of the conditional mean of every
        observed cell of the held-out rows given the rest of its row (each cell hidden in
        turn: one row copy per cell; at most :data:`VALIDATION_CELLS` cells, drawn at random
        beyond): the imputer chooses its size by what it is used for. The two criteria can
        disagree: on breast cancer with 10% of cells missing (seed 0 of
        ``benchmarks/missing.py``), the likeliest size imputed the test cells with RMSE 0.298
        and a single full Gaussian with 0.266."""
        row, column = np.nonzero(~np.isnan(X_val))
        if len(row) > VALIDATION_CELLS:
            keep = np.random.RandomState(seed).choice(len(row), VALIDATION_CELLS, replace=False)
            row, column = row[keep], column[keep]
        if not len(row):  # nothing observed to hide: fall back to the held-out likelihood
            return super()._validation_items(X_val, seed)
        copies = X_val[row].copy()
        copies[np.arange(len(row)), column] = np.nan
        filled = self._complete(copies, "mean", None)[np.arange(len(row)), column]
        error = (filled - X_val[row, column]) / self.scale_[column]
        return -(error**2)

    def transform(self, X: Any) -> np.ndarray:
        """``X`` with its NaN cells filled by ``strategy``, shape ``(n, n_features)``."""
        check_is_fitted(self)
        self._check_strategy()
        return self._complete(X, self.strategy, None)
