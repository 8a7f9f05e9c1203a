"""Fitted estimators as digest-verified checkpoints (:mod:`ugmm_prob.checkpoints`), no pickle:
:func:`save_estimator` and :func:`load_estimator`."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
import torch

from ugmm_prob.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ugmm_prob.sklearn.base import (
    _model_classes,
    _torch_device,
    _TorchEstimator,
    check_is_fitted,
)
from ugmm_prob.sklearn.classifiers import UGMMCircuitClassifier
from ugmm_prob.sklearn.density import UGMMCircuitDensity
from ugmm_prob.sklearn.net import UGMMNetClassifier

__all__ = ["load_estimator", "save_estimator"]

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
    checkpoint = load_checkpoint(path, extra_classes=_model_classes())
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
