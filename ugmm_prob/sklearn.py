"""scikit-learn estimators: the library's models on your own tables.

Three estimators follow scikit-learn's conventions (the constructor stores its parameters,
``fit`` returns ``self``, fitted attributes end in ``_``, NumPy arrays or pandas frames in and
NumPy arrays out, ``random_state``, ``get_params``/``set_params``, ``clone``, ``pickle``), so
they work inside ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``:

- :class:`UGMMCircuitDensity`: a density estimator like ``GaussianMixture``, the generative
  circuit (:class:`~ugmm_prob.circuits.UGMMCircuit`) on a region graph chosen for the data,
  trained by EM; exact ``score_samples`` (``log p(x)`` in the original units), ``sample``,
  ``bic``/``aic``, missing values (NaN) marginalised exactly, ``impute`` by exact conditional
  sampling or the max-product mode;
- :class:`UGMMCircuitClassifier`: the same circuit with one root per class, a generative
  classifier whose ``predict_proba`` is the exact ``p(c | x)``, also for rows with NaN cells;
- :class:`UGMMNetClassifier`: the paper's uGMM-NN (:class:`~ugmm_prob.networks.UGMMClassifier`),
  a discriminative classifier.

Each standardises the columns inside (with the training rows' mean and standard deviation)
and reports densities in the original units: ``log p(x) = log p_z(z) - sum_d log sd_d`` over
the observed columns (the exact Jacobian of the standardisation). With ``early_stopping``
(default) a ``validation_fraction`` of the training rows is held out and the parameters of
the epoch with the best held-out negative log-likelihood are kept (``keep_best="nll"``).
Training rows with missing cells are left out of training (with a warning); missing cells
are marginalised exactly at prediction.

A pickled estimator holds its model's class path, configuration and weights (never a torch
module), so the model rebuilt on unpickling gets a Pyro name of its own.
:func:`save_estimator` and :func:`load_estimator` write and read a fitted estimator as a
digest-verified checkpoint (:mod:`ugmm_prob.checkpoints`).

scikit-learn is an optional dependency (``pip install "scikit-learn>=1.3"``): this module
imports without it, and fitting an estimator then raises an ``ImportError`` saying so.
"""

from __future__ import annotations

import inspect
import math
import os
import pathlib
import warnings
from typing import Any

import numpy as np
import torch

from .checkpoints import load_checkpoint, model_class_path, resolve_model_class, save_checkpoint
from .circuits import UGMMCircuit, fit_em
from .networks import UGMMClassifier
from .training import fit

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, DensityMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_array, check_is_fitted

    _SKLEARN_ERROR: ImportError | None = None
except ImportError as _error:  # pragma: no cover - exercised only without scikit-learn
    _SKLEARN_ERROR = _error

    class BaseEstimator:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class ClassifierMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class DensityMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""


__all__ = [
    "UGMMCircuitClassifier",
    "UGMMCircuitDensity",
    "UGMMNetClassifier",
    "count_free_parameters",
    "load_estimator",
    "save_estimator",
]

_MIN_ROWS_FOR_VALIDATION = 10


def _require_sklearn() -> None:
    if _SKLEARN_ERROR is not None:
        raise ImportError(
            "ugmm_prob.sklearn needs scikit-learn, which is not installed: "
            'pip install "scikit-learn>=1.3"'
        ) from _SKLEARN_ERROR


def _sklearn_version() -> tuple[int, int]:
    major, minor = sklearn.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _finite_option(allow_nan: bool) -> dict[str, Any]:
    """``ensure_all_finite`` (scikit-learn >= 1.6) or ``force_all_finite`` (older)."""
    value: Any = "allow-nan" if allow_nan else True
    if "ensure_all_finite" in inspect.signature(check_array).parameters:
        return {"ensure_all_finite": value}
    return {"force_all_finite": value}


def count_free_parameters(model: torch.nn.Module) -> int:
    """Free parameters of a circuit (or any model of the library), for BIC and AIC.

    Every parameter counts once per entry, except mixing logits (names ending in
    ``logits``: sum-unit weights, mixture-component weights, categories, the class prior),
    which are normalised by a softmax over their last dimension and so have ``K - 1`` free
    values per distribution of ``K``.
    """
    total = 0
    for name, parameter in model.named_parameters():
        if name.split(".")[-1].removesuffix("_unconstrained").endswith("logits"):
            total += parameter.numel() - parameter.numel() // max(parameter.shape[-1], 1)
        else:
            total += parameter.numel()
    return int(total)


def _model_payload(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "model_class": model_class_path(type(model)),
        "config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _rebuild_model(payload: dict[str, Any], device: Any) -> torch.nn.Module:
    cls = resolve_model_class(payload["model_class"])
    with torch.random.fork_rng(devices=[]):
        model = cls(**payload["config"])  # a fresh Pyro name of its own
    model.to(torch.float64)
    model.load_state_dict(payload["state_dict"])
    return model.to(_torch_device(device)).eval()


def _torch_device(device: Any) -> torch.device:
    return torch.device("cpu" if device is None else device)


class _TorchEstimator(BaseEstimator):
    """Shared machinery: validation, standardisation, seeds, pickling."""

    _allow_nan = False

    # -- scikit-learn plumbing --------------------------------------------------------
    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._allow_nan
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"allow_nan": self._allow_nan}

    def _validate(
        self, X: Any, y: Any = "no_validation", *, reset: bool, allow_nan: bool | None = None
    ):
        _require_sklearn()
        allow = self._allow_nan if allow_nan is None else allow_nan
        options = {"dtype": np.float64, **_finite_option(allow)}
        try:
            from sklearn.utils.validation import validate_data
        except ImportError:  # scikit-learn < 1.6
            if isinstance(y, str) and y == "no_validation":
                return self._validate_data(X, reset=reset, **options)
            return self._validate_data(X, y, reset=reset, **options)
        if isinstance(y, str) and y == "no_validation":
            return validate_data(self, X, reset=reset, **options)
        return validate_data(self, X, y, reset=reset, **options)

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _rng(self):
        devices = [] if _torch_device(self.device).type == "cpu" else [_torch_device(self.device)]
        return torch.random.fork_rng(devices=devices)

    def _check_common(self) -> None:
        for name in ("max_iter", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(
                    f"{type(self).__name__}: {name} must be an int >= 1, got {value!r}"
                )
        if not 0.0 < float(self.validation_fraction) < 1.0:
            raise ValueError(
                f"{type(self).__name__}: validation_fraction must be in (0, 1), got "
                f"{self.validation_fraction!r}"
            )

    # -- data ---------------------------------------------------------------------------
    def _complete_rows(self, X: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Training rows without missing cells (a warning says how many were left out)."""
        keep = ~np.isnan(X).any(axis=1)
        if not keep.all():
            warnings.warn(
                f"{type(self).__name__}.fit: {int((~keep).sum())} of {len(X)} training rows "
                "have missing (NaN) cells and are left out of training; missing cells are "
                "marginalised exactly at prediction",
                UserWarning,
                stacklevel=3,
            )
        if keep.sum() < 2:
            raise ValueError(
                f"{type(self).__name__}.fit: expected at least 2 complete rows (n_samples >= 2 "
                f"without NaN), got {int(keep.sum())} sample(s)"
            )
        return (X[keep], *(a[keep] for a in arrays))

    def _standardise_fit(self, X: np.ndarray) -> None:
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)

    def _to_z(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardised tensor with NaN cells set to 0, and the mask (None: all observed)."""
        observed = ~np.isnan(X)
        z = np.where(observed, (X - self.mean_) / self.scale_, 0.0)
        device = _torch_device(self.device)
        tensor = torch.tensor(z, dtype=torch.float64, device=device)
        if observed.all():
            return tensor, None
        return tensor, torch.tensor(observed, device=device)

    def _split(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Training and validation row indices (no validation rows without early stopping)."""
        rows = np.arange(n)
        if not self.early_stopping or n < _MIN_ROWS_FOR_VALIDATION:
            return rows, None
        order = np.random.RandomState(seed).permutation(n)
        n_val = max(1, round(float(self.validation_fraction) * n))
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def _tensor(self, array: np.ndarray, dtype=torch.float64) -> torch.Tensor:
        return torch.tensor(array, dtype=dtype, device=_torch_device(self.device))

    # -- pickling -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        if isinstance(state.get("model_"), torch.nn.Module):
            state["model_"] = {"__ugmm_prob_model__": _model_payload(state["model_"])}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        stored = state.get("model_")
        if isinstance(stored, dict) and "__ugmm_prob_model__" in stored:
            state["model_"] = _rebuild_model(stored["__ugmm_prob_model__"], state.get("device"))
        super().__setstate__(state)

    def _fitted_attributes(self) -> dict[str, Any]:
        """Fitted attributes other than the model, as plain Python values."""
        values: dict[str, Any] = {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_") or key == "model_":
                continue
            if isinstance(value, np.ndarray):
                values[key] = {"__array__": value.tolist(), "dtype": str(value.dtype)}
            elif isinstance(value, list | int | float | str | bool | type(None)):
                values[key] = value
        return values


class _CircuitMixin:
    """Queries shared by the two circuit estimators (``self.model_`` is a circuit)."""

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
        joint = self._joint(X)
        top = joint.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]

    def _complete(self, X: Any, method: str, c: np.ndarray | None) -> np.ndarray:
        check_is_fitted(self)
        if method not in ("sample", "mode"):
            raise ValueError(f"impute: method must be 'sample' or 'mode', got {method!r}")
        X = self._validate(X, reset=False, allow_nan=True)
        z, mask = self._to_z(X)
        if mask is None:
            return X.copy()
        with self._rng(), torch.no_grad():
            torch.manual_seed(self._seed())
            if method == "mode":
                filled = self.model_.mpe(z, mask)[0]
            else:
                classes = None if c is None else torch.as_tensor(c, device=z.device)
                filled = self.model_.impute(z, mask, c=classes)
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
        check_is_fitted(self)
        X = self._validate(X, reset=False, allow_nan=True)
        if n_samples < 1:
            raise ValueError(f"conditional_sample: n_samples must be >= 1, got {n_samples}")
        repeated = np.tile(X, (int(n_samples), 1))
        return self._complete(repeated, "sample", None).reshape(n_samples, *X.shape)

    def _bic_aic(self, X: Any, penalty: float) -> float:
        X = self._validate(X, reset=False, allow_nan=True)
        log_likelihood = float(self.score_samples(X).sum())
        return -2.0 * log_likelihood + penalty * self.n_parameters_


class UGMMCircuitDensity(_CircuitMixin, DensityMixin, _TorchEstimator):
    """A density estimator (like ``GaussianMixture``): the generative uGMM circuit.

    ``fit(X)`` standardises the columns, builds a circuit on a region graph chosen for the
    data (:meth:`UGMMCircuit.from_data`: correlated columns share regions; input units start
    at training rows) and trains it by maximum likelihood with online EM
    (:func:`~ugmm_prob.circuits.fit_em`).

    Args:
        depth: splits of each region-graph tree (at most ``log2(n_features)``, lowered to
            that for narrow tables; ``None``: the circuit's default for the width).
        repetitions: trees (repetitions) of the region graph.
        channels: sum units per region (and input units per column).
        components: Gaussian components of each input unit (a univariate mixture).
        scale_floor: lower bound of every input scale, in standard deviations.
        max_iter: EM epochs.
        batch_size: rows per online-EM step.
        step_size: online EM's step size.
        pseudo_count: Dirichlet pseudo-count added to every expected count.
        early_stopping: hold out ``validation_fraction`` of the rows (at least
            10 rows needed) and keep the epoch with the best held-out log-likelihood.
        validation_fraction: share of the rows held out for ``early_stopping``.
        random_state: seed (int), ``RandomState`` or None, for the region graph, the
            initialisation, the data order, the validation split and ``sample``/``impute``.
        device: torch device (``"cpu"``, ``"cuda"``); default CPU.
        verbose: show progress bars while training.

    Attributes:
        model_: the fitted :class:`~ugmm_prob.circuits.UGMMCircuit` (on standardised columns).
        mean_, scale_: the standardisation (training rows' mean and standard deviation).
        n_parameters_: free parameters (:func:`count_free_parameters`), for ``bic``/``aic``.
        history_: per-epoch metrics; n_iter_: epochs run; best_iter_: epoch kept (or None).
        n_features_in_, feature_names_in_: as in scikit-learn.
    """

    _allow_nan = True

    def __init__(
        self,
        *,
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

    def _em(self, circuit, z, y, z_val, y_val, seed) -> list[dict[str, Any]]:
        return fit_em(
            circuit,
            z,
            y,
            x_val=z_val,
            y_val=y_val,
            epochs=int(self.max_iter),
            batch_size=int(self.batch_size),
            step_size=float(self.step_size),
            pseudo_count=float(self.pseudo_count),
            seed=seed,
            progress=bool(self.verbose),
            keep_best="nll" if z_val is not None else None,
            device=_torch_device(self.device),
        )

    def fit(self, X: Any, y: Any = None) -> UGMMCircuitDensity:
        """Fit the circuit to the rows of ``X`` (``y`` is ignored); returns ``self``."""
        _require_sklearn()
        X = self._validate(X, reset=True)
        self._check_common()
        (X,) = self._complete_rows(X)
        self._standardise_fit(X)
        seed = self._seed()
        train, val = self._split(len(X), seed)
        z = self._tensor((X - self.mean_) / self.scale_)
        z_val = None if val is None else z[val]
        with self._rng():
            generator = torch.Generator().manual_seed(seed)
            circuit = UGMMCircuit.from_data(
                z[train].cpu(), seed=seed, generator=generator, **self._circuit_options()
            )
            circuit = circuit.to(torch.float64).to(z.device)
            self.history_ = self._em(circuit, z[train], None, z_val, None, seed)
        self.model_ = circuit.eval()
        self._record_history()
        return self

    def _record_history(self) -> None:
        self.n_iter_ = len(self.history_)
        self.best_iter_ = self.history_[-1].get("best_epoch") if self.history_ else None
        self.n_parameters_ = count_free_parameters(self.model_)

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
        """``X`` with its NaN cells filled.

        ``method="sample"``: one exact draw from ``p(x_missing | x_observed)``; ``"mode"``:
        the max-product completion (:meth:`UGMMCircuit.mpe`). Observed cells are unchanged.
        """
        return self._complete(X, method, None)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion ``-2 log L + p log n`` on ``X`` (lower is better)."""
        n = len(self._validate(X, reset=False, allow_nan=True))
        return self._bic_aic(X, math.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` on ``X`` (lower is better)."""
        return self._bic_aic(X, 2.0)


class _ClassifierBase(ClassifierMixin, _TorchEstimator):
    """Labels: ``classes_`` (any labels, strings too) mapped to ``0..C-1``."""

    def _encode(self, y: np.ndarray) -> np.ndarray:
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        return encoded.reshape(-1)

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
            ``verbose`` are as for :class:`UGMMCircuitDensity`.

    Attributes:
        classes_: the labels, sorted; column ``k`` of ``predict_proba`` is ``classes_[k]``.
        model_, mean_, scale_, n_parameters_, history_, n_iter_, best_iter_: as for
            :class:`UGMMCircuitDensity`.
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

    _circuit_options = UGMMCircuitDensity._circuit_options
    _em = UGMMCircuitDensity._em
    _record_history = UGMMCircuitDensity._record_history

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
        self._standardise_fit(X)
        seed = self._seed()
        train, val = self._split(len(X), seed)
        z = self._tensor((X - self.mean_) / self.scale_)
        labels = self._tensor(encoded, torch.long)
        z_val, y_val = (None, None) if val is None else (z[val], labels[val])
        classes = len(self.classes_)
        with self._rng():
            generator = torch.Generator().manual_seed(seed)
            circuit = UGMMCircuit.from_data(
                z[train].cpu(),
                labels[train].cpu(),
                classes,
                seed=seed,
                generator=generator,
                likelihood_weight=float(self.likelihood_weight),
                **self._circuit_options(),
            )
            circuit = circuit.to(torch.float64).to(z.device)
            if float(self.likelihood_weight) == 1.0:
                self.history_ = self._em(circuit, z[train], labels[train], z_val, y_val, seed)
            else:
                keep = None
                if z_val is not None:
                    keep = "class_nll" if classes > 1 else "nll"
                self.history_ = fit(
                    circuit,
                    z[train],
                    labels[train],
                    x_val=z_val,
                    y_val=y_val,
                    epochs=int(self.max_iter),
                    batch_size=int(self.batch_size),
                    lr=float(self.learning_rate),
                    seed=seed,
                    progress=bool(self.verbose),
                    keep_best=keep,
                    device=z.device,
                )
        self.model_ = circuit.eval()
        self._record_history()
        return self

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
        with the cells (``"mode"``, max-product); see :meth:`UGMMCircuitDensity.impute`.
        """
        c = None if y is None else self.encode_labels(y)
        if c is not None and method == "mode":
            raise ValueError("impute: method='mode' chooses the class itself; pass y=None")
        return self._complete(X, method, c)

    def bic(self, X: Any) -> float:
        """BIC of ``log p(x)`` on ``X`` (lower is better)."""
        n = len(self._validate(X, reset=False, allow_nan=True))
        return self._bic_aic(X, math.log(n))

    def aic(self, X: Any) -> float:
        """AIC of ``log p(x)`` on ``X`` (lower is better)."""
        return self._bic_aic(X, 2.0)


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
            :class:`UGMMCircuitDensity`.

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
        X, y = self._validate(X, y, reset=True)
        self._check_common()
        encoded = self._encode(y)
        if len(X) < 2:
            raise ValueError(f"UGMMNetClassifier.fit: expected n_samples >= 2, got {len(X)} sample")
        self._standardise_fit(X)
        seed = self._seed()
        train, val = self._split(len(X), seed)
        z = self._tensor((X - self.mean_) / self.scale_)
        labels = self._tensor(encoded, torch.long)
        z_val, y_val = (None, None) if val is None else (z[val], labels[val])
        with self._rng():
            torch.manual_seed(seed)
            net = UGMMClassifier(
                X.shape[1],
                tuple(int(h) for h in self.hidden),
                len(self.classes_),
                layer_norm=bool(self.layer_norm),
                dropout=float(self.dropout),
                scale_floor=float(self.scale_floor),
            ).to(torch.float64)
            net.init_from_data(z[train].cpu(), generator=torch.Generator().manual_seed(seed))
            net = net.to(z.device)
            self.history_ = fit(
                net,
                z[train],
                labels[train],
                x_val=z_val,
                y_val=y_val,
                epochs=int(self.max_iter),
                batch_size=int(self.batch_size),
                lr=float(self.learning_rate),
                weight_decay=float(self.weight_decay),
                seed=seed,
                progress=bool(self.verbose),
                keep_best="nll" if z_val is not None else None,
                device=z.device,
            )
        self.model_ = net.eval()
        self.n_iter_ = len(self.history_)
        self.best_iter_ = self.history_[-1].get("best_epoch") if self.history_ else None
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``p(c | x)`` of the network, shape ``(n, n_classes)``."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        z, _ = self._to_z(X)
        with torch.no_grad():
            return self.model_.predict_proba(z).cpu().numpy().astype(np.float64)


_ESTIMATORS = {
    cls.__name__: cls for cls in (UGMMCircuitDensity, UGMMCircuitClassifier, UGMMNetClassifier)
}


def save_estimator(
    estimator: _TorchEstimator,
    path: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write a fitted estimator as a digest-verified checkpoint (no pickle).

    The checkpoint holds the model's weights and configuration, the estimator's parameters
    and fitted attributes (standardisation, classes) and ``extra`` (plain values: lists,
    strings, numbers), all readable with ``weights_only=True``.
    """
    check_is_fitted(estimator)
    params = {k: v for k, v in estimator.get_params().items() if k != "random_state"}
    params["random_state"] = (
        estimator.random_state if isinstance(estimator.random_state, int) else None
    )
    if "hidden" in params:
        params["hidden"] = list(params["hidden"])
    state = {
        "estimator": type(estimator).__name__,
        "params": params,
        "fitted": estimator._fitted_attributes(),
        "extra": extra or {},
    }
    return save_checkpoint(
        path,
        estimator.model_,
        epoch=getattr(estimator, "n_iter_", 0),
        history=list(getattr(estimator, "history_", [])),
        training_state={"sklearn_estimator": state},
    )


def load_estimator(path: str | os.PathLike) -> tuple[_TorchEstimator, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_estimator`: ``(estimator, extra)``.

    Raises:
        CheckpointError: the file is not a checkpoint, is corrupt, or holds no estimator.
    """
    from .checkpoints import CheckpointError

    checkpoint = load_checkpoint(path)
    state = checkpoint.training_state.get("sklearn_estimator")
    if not isinstance(state, dict) or state.get("estimator") not in _ESTIMATORS:
        raise CheckpointError(f"{path}: holds a model but no scikit-learn estimator")
    params = dict(state["params"])
    if "hidden" in params:
        params["hidden"] = tuple(params["hidden"])
    estimator = _ESTIMATORS[state["estimator"]](**params)
    for key, value in state["fitted"].items():
        if isinstance(value, dict) and "__array__" in value:
            value = np.asarray(value["__array__"], dtype=value["dtype"])
        setattr(estimator, key, value)
    estimator.model_ = checkpoint.model.to(torch.float64).to(_torch_device(params.get("device")))
    estimator.model_.eval()
    estimator.history_ = checkpoint.history
    return estimator, dict(state.get("extra", {}))
