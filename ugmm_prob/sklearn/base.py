"""Shared machinery of the scikit-learn estimators: input validation, standardisation, the
validation split for early stopping, seeds and pickling (a model travels as its class path,
configuration and weights, never as a torch module).

scikit-learn is imported here, by absolute import, and only here; without it this module
still imports and fitting raises an ``ImportError`` saying how to install it.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ugmm_prob.checkpoints import model_class_path, resolve_model_class

try:
    from sklearn.base import (
        BaseEstimator,
        ClassifierMixin,
        DensityMixin,
        OneToOneFeatureMixin,
        TransformerMixin,
    )
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets  # noqa: F401 (used by
    from sklearn.utils.validation import check_array, check_is_fitted  # noqa: F401 the others)

    _SKLEARN_ERROR: ImportError | None = None
except ImportError as _error:  # pragma: no cover - exercised only without scikit-learn
    _SKLEARN_ERROR = _error

    class BaseEstimator:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class ClassifierMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class DensityMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class OneToOneFeatureMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""

    class TransformerMixin:  # type: ignore[no-redef]
        """Stand-in used when scikit-learn is not installed."""


__all__ = ["count_free_parameters"]

_MIN_ROWS_FOR_VALIDATION = 10


def _require_sklearn() -> None:
    if _SKLEARN_ERROR is not None:
        raise ImportError(
            "ugmm_prob.sklearn needs scikit-learn, which is not installed: "
            'pip install "scikit-learn>=1.3"'
        ) from _SKLEARN_ERROR


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


def _model_classes() -> tuple[type, ...]:
    """The package's own model classes, which checkpoints and pickles may rebuild."""
    from ugmm_prob.sklearn.net import UGMMNetCommittee

    return (UGMMNetCommittee,)


def _rebuild_model(payload: dict[str, Any], device: Any) -> torch.nn.Module:
    cls = resolve_model_class(payload["model_class"], extra=_model_classes())
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
    def _check_training_rows(self, X: np.ndarray) -> None:
        """Training rows may have missing (NaN) cells, which the circuits' trainers
        marginalise exactly; refuse what no fit can use: fewer than 2 rows, or a column
        with no observed cell (nothing to standardise it by)."""
        if len(X) < 2:
            raise ValueError(
                f"{type(self).__name__}.fit: expected at least 2 rows (n_samples >= 2), got "
                f"{len(X)} sample(s)"
            )
        empty = np.flatnonzero(np.isnan(X).all(axis=0))
        if len(empty):
            raise ValueError(
                f"{type(self).__name__}.fit: column(s) {empty.tolist()} have no observed "
                "value (every cell NaN); expected at least one observed cell per column"
            )

    def _standardise_fit(self, X: np.ndarray) -> None:
        """``mean_``, ``scale_``: each column's mean and standard deviation over its observed
        (not NaN) cells."""
        self.mean_ = np.nanmean(X, axis=0)
        scale = np.nanstd(X, axis=0)
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
