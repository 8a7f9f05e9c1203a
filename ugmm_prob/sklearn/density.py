"""The density estimator :class:`UGMMCircuitDensity` (like ``GaussianMixture``; its size
searched on held-out rows), and what it shares with the circuit classifier: building and
training a circuit on rows with NaN cells, ``score_samples`` in the original units, exact
marginals of rows with NaN cells, sampling, imputation, BIC and AIC."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ugmm_prob.circuits import UGMMCircuit, fit_em
from ugmm_prob.circuits.circuit import IMPUTATION_METHODS
from ugmm_prob.sklearn import search
from ugmm_prob.sklearn.base import (
    _MIN_ROWS_FOR_VALIDATION,
    DensityMixin,
    _require_sklearn,
    _torch_device,
    _TorchEstimator,
    check_is_fitted,
    count_free_parameters,
)
from ugmm_prob.training import TrainingDivergedError

__all__ = ["UGMMCircuitDensity"]

_FIT_ATTRIBUTES = ("model_", "history_", "n_iter_", "best_iter_", "n_parameters_")
"""What one fit of a circuit sets (:meth:`_CircuitMixin._fit_circuit`)."""

_IMPUTATION_ALIASES = {"mode": "mpe"}
"""Former names of imputation methods that the estimators still take."""


class _CircuitMixin:
    """What the two circuit estimators share (``self.model_`` is a circuit): building and
    training the circuit, and the queries of its density."""

    # -- fitting ------------------------------------------------------------------------
    def _circuit_options(self) -> dict[str, Any]:
        depth = self.depth
        if depth is not None:  # at most log2(D) splits: every leaf region needs a column
            depth = min(int(depth), int(self.n_features_in_).bit_length() - 1)
        return {
            "depth": depth,
            "repetitions": self.repetitions,
            "channels": self.channels,
            "components": self.components,
            "scale_floor": self.scale_floor,
        }

    def _em(
        self,
        circuit,
        z,
        y,
        z_val,
        y_val,
        seed,
        *,
        epochs: int | None = None,
        online: bool = True,
        covariance_pooling: float = 0.0,
        patience: int | None = None,
    ) -> list[dict[str, Any]]:
        return fit_em(
            circuit,
            z,
            y,
            x_val=z_val,
            y_val=y_val,
            epochs=int(self.max_iter) if epochs is None else epochs,
            batch_size=int(self.batch_size),
            online=online,
            step_size=float(self.step_size),
            pseudo_count=float(self.pseudo_count),
            covariance_pooling=covariance_pooling,
            seed=seed,
            progress=bool(self.verbose),
            keep_best="nll" if z_val is not None else None,
            patience=patience if z_val is not None else None,
            device=_torch_device(self.device),
        )

    def _fit_circuit(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        seed: int,
        train: Callable[[UGMMCircuit], list[dict[str, Any]]],
        **options: Any,
    ) -> None:
        """Build the circuit from the training rows ``x`` (and classes ``y``)
        (:meth:`UGMMCircuit.from_data`, under the estimator's seed), in float64 on the data's
        device; ``train`` it; keep it (``model_``) and its history."""
        with self._rng():
            # Some of the circuit's parameters (the sum layers' weights) are drawn from
            # torch's global generator: seeding it here, inside the fork, makes a fixed
            # random_state give the same model in every process, and leaves the caller's
            # global generator as it was.
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            circuit = UGMMCircuit.from_data(
                x.cpu(),
                None if y is None else y.cpu(),
                seed=seed,
                generator=generator,
                **{**self._circuit_options(), **options},  # a candidate's sizes win
            )
            circuit = circuit.to(torch.float64).to(x.device)
            self.history_ = train(circuit)
        self.model_ = circuit.eval()
        self.n_iter_ = len(self.history_)
        self.best_iter_ = self.history_[-1].get("best_epoch") if self.history_ else None
        self.n_parameters_ = count_free_parameters(self.model_)

    # -- queries ------------------------------------------------------------------------
    def _log_jacobian(self, mask: torch.Tensor | None, n: int) -> np.ndarray:
        log_sd = np.log(self.scale_)
        if mask is None:
            return np.full(n, log_sd.sum())
        return mask.cpu().numpy() @ log_sd

    def _joint(self, X: np.ndarray) -> np.ndarray:
        """``log p(x_obs, c)`` in the original units, ``(n, C)``."""
        z, mask = self._to_z(X)
        with torch.no_grad():
            joint = self.model_.joint_log_prob(z, mask).cpu().numpy()
        return joint - self._log_jacobian(mask, len(X))[:, None]

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x)`` of each row in the units of ``X``, shape ``(n,)``; NaN cells are
        marginalised exactly (the log-density of the observed cells)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False, allow_nan=True)
        return self._density_score_samples(X)

    def _density_score_samples(self, X: np.ndarray) -> np.ndarray:
        """``log p(x_observed)`` of each row in the original units (no checks)."""
        joint = self._joint(X)
        top = joint.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]

    def _complete(
        self, X: Any, method: str, c: np.ndarray | None, num_samples: int | None = None
    ) -> np.ndarray:
        """``X`` with its NaN cells filled by :meth:`UGMMCircuit.impute` (``method``
        ``"mean"``, ``"mpe"`` (or its former name ``"mode"``) or ``"sample"``), given the
        classes ``c`` (``-1``: unknown) if any; ``(num_samples, n, D)`` draws with
        ``num_samples``."""
        check_is_fitted(self)
        method = _IMPUTATION_ALIASES.get(method, method)
        if method not in IMPUTATION_METHODS:
            raise ValueError(
                f"impute: method must be one of {', '.join(map(repr, IMPUTATION_METHODS))} "
                f"('mode' is 'mpe'), got {method!r}"
            )
        X = self._validate(X, reset=False, allow_nan=True)
        z, mask = self._to_z(X)
        if mask is None:
            return X.copy() if num_samples is None else np.tile(X, (num_samples, 1, 1))
        with self._rng(), torch.no_grad():
            torch.manual_seed(self._seed())
            classes = None if c is None else torch.as_tensor(c, device=z.device)
            filled = self.model_.impute(z, mask, c=classes, method=method, num_samples=num_samples)
        values = filled.cpu().numpy() * self.scale_ + self.mean_
        return np.where(np.isnan(X), values, X)

    def _draw(self, n_samples: int, c: Any) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
            raise ValueError(f"sample: n_samples must be an int >= 1, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"sample: n_samples must be >= 1, got {n_samples}")
        with self._rng(), torch.no_grad():
            torch.manual_seed(self._seed())
            z, classes = self.model_.sample(int(n_samples), c)
        return z.cpu().numpy() * self.scale_ + self.mean_, classes.cpu().numpy()

    def conditional_sample(self, X: Any, n_samples: int = 1) -> np.ndarray:
        """``n_samples`` exact draws of the NaN cells of every row given its observed cells.

        Returns an array ``(n_samples, n, n_features)``: ``draws[s]`` is ``X`` with its NaN
        cells filled by the ``s``-th draw (observed cells unchanged).
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
            raise ValueError(f"conditional_sample: n_samples must be an int, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"conditional_sample: n_samples must be >= 1, got {n_samples}")
        return self._complete(X, "sample", None, int(n_samples))

    def _bic_aic(self, X: Any, penalty: float) -> float:
        X = self._validate(X, reset=False, allow_nan=True)
        log_likelihood = float(self.score_samples(X).sum())
        return -2.0 * log_likelihood + penalty * self.n_parameters_

    def bic(self, X: Any) -> float:
        """Bayesian information criterion ``-2 log L + p log n`` of ``log p(x)`` on ``X``
        (lower is better)."""
        n = len(self._validate(X, reset=False, allow_nan=True))
        return self._bic_aic(X, math.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` of ``log p(x)`` on ``X`` (lower is
        better)."""
        return self._bic_aic(X, 2.0)


class UGMMCircuitDensity(_CircuitMixin, DensityMixin, _TorchEstimator):
    """A density estimator (like ``GaussianMixture``): the generative uGMM circuit.

    ``fit(X)`` standardises the columns, holds out ``validation_fraction`` of the rows and
    searches the circuit's size on them: for every combination of the candidate values of
    ``structure``, ``depth``, ``repetitions``, ``channels``, ``covariance_pooling`` and
    ``init_params`` (a list or tuple is searched, a single value fixed;
    :mod:`~ugmm_prob.sklearn.search`) it
    builds a circuit on a region graph chosen for the data (:meth:`UGMMCircuit.from_data`:
    correlated columns share regions; input units start at the centroids of k-means on
    the rows, ``init_params``), trains it by EM (:func:`~ugmm_prob.circuits.fit_em`) until
    ``n_iter_no_change`` epochs pass without a better held-out log-likelihood, and keeps
    the epoch with the best one. The best combination is then refitted on all rows for
    that many epochs (``refit=True``). ``X`` may have missing (NaN) cells: every row is
    used, with its observed cells (unlike ``GaussianMixture``, which cannot fit them).

    The defaults were chosen on the validation splits of ``benchmarks/tabular.py`` (five
    tables, docs/results.md): full-covariance Gaussian leaves (``inputs="multivariate"``),
    a data-driven tree of depth 0 (one leaf over all columns: the circuit is then a
    full-covariance Gaussian mixture of ``channels`` components) or 1 (two blocks of
    correlated columns, mixed over 4 repetitions), 1 to 8 channels, and covariance pooling
    0, 10 or 100 (pseudo-rows of the units' pooled covariance: from a full mixture towards
    a tied one), fitted by full-batch EM from k-means starts, each candidate stopped 20
    epochs after its best held-out epoch.

    Args:
        structure: ``"tree"`` (data-driven trees) or ``"hclt"`` (a hidden Chow-Liu tree
            with ``channels`` latent states per column), or a list of them.
        depth: splits of each tree (at most ``log2(n_features)``, lowered to that for
            narrow tables; ``None``: the circuit's default for the width), or a list.
        repetitions: trees mixed at the root (1 at depth 0), or a list.
        channels: sum units per region (and input units per column), or a list.
        inputs: ``"multivariate"`` (one full-covariance Gaussian per leaf region and
            channel) or ``"gaussian"`` (a univariate uGMM mixture per column).
        components: Gaussian components of each ``"gaussian"`` input unit.
        covariance_pooling: pseudo-rows of the pooled covariance in every covariance
            update (:func:`~ugmm_prob.circuits.fit_em`), or a list.
        scale_floor: lower bound of every input scale, in standard deviations.
        init_params: where EM starts the input units (as ``GaussianMixture``'s):
            ``"kmeans"`` (default: the centroids of k-means on the rows, one cluster per
            unit), ``"k-means++"`` (rows drawn by D^2 sampling) or ``"random_from_data"``
            (random rows) (:meth:`UGMMCircuit.init_from_data`), or a list of them to
            search (every size from every start). On validation rows carved
            from ``benchmarks/tabular.py``'s training splits the k-means start scored
            higher than random rows on four tables of five, by 0.1 to 3.6 nats per row,
            and 0.27 lower on iris (``benchmarks/density_defaults.py``,
            docs/results.md).
        n_init: starts per fit (as ``GaussianMixture``'s): every candidate, and the refit,
            is trained from ``n_init`` starts (seeds ``s``, ``s + 1``, ...) and the one with
            the highest training log-likelihood is kept; ``n_init`` times the cost. On the
            validation rows of ``benchmarks/density_defaults.py --part search``,
            ``n_init=3`` scored higher on diabetes, digits and iris (by 0.46, 0.35 and
            0.09 nats per row) and lower on wine and breast cancer (0.09, 0.01); 1 by default.
        selection: how the search chooses among the candidates: ``"best"`` (the highest
            held-out score) or ``"one_standard_error"`` (the one with the fewest parameters
            among those within one standard error of the highest: held-out differences
            smaller than their noise do not justify a larger circuit;
            :func:`~ugmm_prob.sklearn.search.select`). On the same validation rows it
            helped iris only (+0.10 nats per row; wine -0.21, breast cancer -1.51,
            diabetes -0.09, digits the same).
        max_iter: EM epochs (the most a candidate trains; the refit runs the kept number).
        n_iter_no_change: a candidate stops training once this many epochs pass without a
            better held-out likelihood (``None``: every candidate runs ``max_iter`` epochs).
            With the default 20, the searches on the training rows of
            ``benchmarks/tabular.py``'s splits (5 tables complete and 4 with 30% of cells
            missing, 3 seeds) trained 22-37% of the epochs and kept the same candidate and
            epoch in 24 of 27; the other three kept one whose held-out ``-log p`` per
            variable was 0.004, 0.092 and 0.137 higher (a curve that improved again more
            than 20 epochs after stalling; docs/performance.md).
        batch_size: rows per EM step (full-batch EM accumulates its statistics over them).
        online: stochastic online EM (an M-step per batch) instead of full-batch EM.
        step_size: online EM's step size.
        pseudo_count: Dirichlet pseudo-count added to every expected count.
        early_stopping: hold out ``validation_fraction`` of the rows (at least 10 rows
            needed) to choose the candidate and its epoch; needed to search.
        validation_fraction: share of the rows held out.
        cv: ``None`` (default): one held-out share chooses the candidate and its epoch; an
            int ``k >= 2``: every candidate is trained ``k`` times, each time holding out
            one of ``k`` folds, and scored by its mean held-out score; the chosen one is
            refitted on all rows for the median of its folds' kept epochs (``k`` times the
            cost; on the splits of ``benchmarks/tabular.py``, seeds 0-2, ``cv=5`` scored
            -1.900 / -17.793 / 35.370 / -31.210 / -120.147 per test row on iris / wine /
            breast cancer / diabetes / digits against -2.040 / -18.535 / 36.138 / -31.911 /
            -120.147 with one held-out fifth).
        refit: refit the chosen candidate on all rows for its kept number of epochs (else
            keep the candidate as trained on the other rows; with ``cv`` always refitted).
        random_state: seed (int), ``RandomState`` or None, for the region graph, the
            initialisation, the data order, the validation split and ``sample``/``impute``;
            an int gives bit-identical fits in every process (same machine, thread count).
        device: torch device (``"cpu"``, ``"cuda"``); default CPU.
        verbose: show progress bars while training.

    Attributes:
        model_: the fitted :class:`~ugmm_prob.circuits.UGMMCircuit` (on standardised columns).
        best_params_: the chosen value of every searched parameter.
        search_results_: one record per candidate: its values, ``validation_score`` (mean
            held-out ``log p(x)`` per row, original units; with ``cv``, the mean over the
            folds), ``validation_se`` (its standard error over the held-out rows), ``epoch``
            (epoch kept; with ``cv``, the folds' median) and ``n_parameters``.
        mean_, scale_: the standardisation (training rows' mean and standard deviation).
        n_parameters_: free parameters
            (:func:`~ugmm_prob.sklearn.base.count_free_parameters`), for ``bic``/``aic``.
        history_: per-epoch metrics of the final fit; n_iter_: its epochs; best_iter_:
            the epoch kept on the held-out rows (or None).
        n_features_in_, feature_names_in_: as in scikit-learn.
    """

    _allow_nan = True

    def __init__(
        self,
        *,
        structure: str | Sequence[str] = "tree",
        depth: int | Sequence[int | None] | None = (0, 1),
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
        self.structure = structure
        self.depth = depth
        self.repetitions = repetitions
        self.channels = channels
        self.inputs = inputs
        self.components = components
        self.covariance_pooling = covariance_pooling
        self.scale_floor = scale_floor
        self.init_params = init_params
        self.n_init = n_init
        self.selection = selection
        self.max_iter = max_iter
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.online = online
        self.step_size = step_size
        self.pseudo_count = pseudo_count
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.refit = refit
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _circuit_options(self) -> dict[str, Any]:
        # the searched sizes and start come with each candidate (search.SEARCHED)
        return {
            "inputs": self.inputs,
            "components": self.components,
            "scale_floor": self.scale_floor,
        }

    def fit(self, X: Any, y: Any = None) -> UGMMCircuitDensity:
        """Fit the circuit to the rows of ``X`` (``y`` is ignored); returns ``self``. Rows
        with NaN cells are used: their missing cells are marginalised (EM of
        ``log p(x_observed)``)."""
        _require_sklearn()
        X = self._validate(X, reset=True)
        self._check_common()
        self._check_training_rows(X)
        self._standardise_fit(X)
        seed = self._seed()
        z = self._tensor((X - self.mean_) / self.scale_)  # NaN cells stay NaN: missing
        params = {name: getattr(self, name) for name in search.SEARCHED}
        options = search.candidates(params, X.shape[1])
        search.check_selection(self.selection)
        splits = self._search_splits(len(X), seed)
        if len(options) > 1 and splits[0][1] is None:
            raise ValueError(
                f"{type(self).__name__}: {len(options)} candidate sizes need held-out rows "
                f"to choose among them: set early_stopping=True (and give at least "
                f"{_MIN_ROWS_FOR_VALIDATION} rows) or give one value per searched parameter"
            )

        def score(candidate: dict[str, Any]) -> search.Score:
            """Mean held-out score over the splits (its standard error over every held-out
            item), median kept epoch."""
            values, epochs = [], []
            for train, val in splits:
                try:
                    self._fit_candidate(z[train], None if val is None else z[val], seed, candidate)
                except TrainingDivergedError as error:
                    if len(options) == 1:
                        raise
                    warnings.warn(
                        f"{type(self).__name__}: candidate {candidate} diverged and is "
                        f"skipped ({error})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return search.Score(math.nan, math.nan, 0, 0)
                if val is None:
                    return search.Score(0.0, 0.0, self.n_iter_, self.n_parameters_)
                values.append(self._validation_items(X[val], seed))
                epochs.append(int(self.best_iter_ or self.n_iter_))
            items = np.concatenate(values)
            return search.Score(
                float(np.mean([v.mean() for v in values])),
                float(items.std() / math.sqrt(len(items))),
                int(np.median(epochs)),
                self.n_parameters_,
            )

        chosen, epoch, self.search_results_ = search.select(options, score, self.selection)
        self.best_params_ = {name: chosen[name] for name in search.SEARCHED}
        (train, val), *others = splits
        if val is not None and (self.refit or others):
            self._fit_candidate(z, None, seed, chosen, epochs=max(epoch, 1))
            self.best_iter_ = epoch
        elif len(options) > 1:  # the last candidate fitted is not the chosen one
            self._fit_candidate(z[train], z[val], seed, chosen)
        return self

    def _patience(self) -> int | None:
        """``n_iter_no_change``, checked."""
        value = self.n_iter_no_change
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: n_iter_no_change must be None or an int >= 1, got "
                f"{value!r}"
            )
        return None if value is None else int(value)

    def _search_splits(self, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The (training rows, held-out rows) the search scores each candidate on: one
        held-out share (``cv=None``; no held-out rows without early stopping) or the ``k``
        folds of a seeded random partition (``cv=k``)."""
        if self.cv is None:
            return [self._split(n, seed)]
        folds = int(self.cv)
        if isinstance(self.cv, bool) or folds != self.cv or not 2 <= folds <= n // 2:
            raise ValueError(
                f"{type(self).__name__}: cv must be None or an int from 2 to n_rows / 2 "
                f"({n // 2}), got {self.cv!r}"
            )
        parts = np.array_split(np.random.RandomState(seed).permutation(n), folds)
        return [(np.setdiff1d(np.arange(n), part), np.sort(part)) for part in parts]

    def _validation_items(self, X_val: np.ndarray, seed: int) -> np.ndarray:
        """What the size search maximises, per held-out item (here a row): its
        ``log p(x_observed)`` in the original units."""
        return self._density_score_samples(X_val)

    def _fit_candidate(
        self,
        z: torch.Tensor,
        z_val: torch.Tensor | None,
        seed: int,
        candidate: dict[str, Any],
        epochs: int | None = None,
    ) -> None:
        """Build the candidate's circuit from the rows ``z`` and train it by EM (keeping
        the best epoch on ``z_val`` if given, else ``epochs`` epochs), from ``n_init``
        starts (seeds ``seed``, ``seed + 1``, ...): the fit with the highest training
        ``log p(x)`` is kept, as ``GaussianMixture`` keeps its best initialisation."""
        options = dict(candidate)
        pooling = float(options.pop("covariance_pooling"))
        options["seeding"] = options.pop("init_params")
        starts, patience = self._n_init(), self._patience()
        best: tuple[float, dict[str, Any]] | None = None
        for start_seed in range(seed, seed + starts):
            self._fit_circuit(
                z,
                None,
                start_seed,
                lambda circuit, start_seed=start_seed: self._em(
                    circuit,
                    z,
                    None,
                    z_val,
                    None,
                    start_seed,
                    epochs=epochs,
                    online=bool(self.online),
                    covariance_pooling=pooling,
                    patience=patience,
                ),
                **options,
            )
            if starts > 1:  # one start: nothing to compare, the fit stays as it is
                score = self._training_score(z)
                if best is None or score > best[0]:
                    best = (score, {name: getattr(self, name) for name in _FIT_ATTRIBUTES})
        if best is not None:
            for name, value in best[1].items():
                setattr(self, name, value)

    def _training_score(self, z: torch.Tensor) -> float:
        """Mean ``log p(z_observed)`` per row of the standardised training rows ``z`` (NaN:
        missing); ``-inf`` for a non-finite value."""
        observed = ~torch.isnan(z)
        with torch.no_grad():
            value = float(self.model_.log_prob(torch.where(observed, z, 0.0), mask=observed).mean())
        return value if math.isfinite(value) else -math.inf

    def _n_init(self) -> int:
        """``n_init``, checked."""
        value = self.n_init
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{type(self).__name__}: n_init must be an int >= 1, got {value!r}")
        return int(value)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean ``log p(x)`` per row (``y`` is ignored)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact samples ``(X, y)``: ``X`` ``(n_samples, n_features)`` in the original units.

        Like ``GaussianMixture.sample`` a pair is returned; ``y`` is all zeros (the circuit
        is one density, not a flat mixture with a component label per sample). With an int
        ``random_state`` every call returns the same draws.
        """
        return self._draw(n_samples, None)

    def impute(self, X: Any, method: str = "sample") -> np.ndarray:
        """``X`` with its NaN cells filled (observed cells unchanged).

        ``method="mean"``: the exact conditional mean ``E[x_missing | x_observed]`` (the
        best fill in squared error); ``"sample"``: one exact draw from
        ``p(x_missing | x_observed)`` (several: :meth:`conditional_sample`); ``"mpe"`` (or
        ``"mode"``): the max-product completion (:meth:`UGMMCircuit.mpe`).
        """
        return self._complete(X, method, None)
