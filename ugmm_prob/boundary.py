"""The input boundary of the models' public entry points.

Every public method of the classifiers and the joint-score model that takes data
(``predict_proba``, ``predict``, ``log_prob``, ``logits``, ``posterior``, ``score``) passes
its inputs through :func:`as_batch` (and labels through :func:`check_labels`) first, so each
one accepts the same kinds of input and refuses bad input with the same messages:

- tensors, NumPy arrays and (nested) lists are accepted; integer and double data are
  converted to the model's floating dtype and moved to its device;
- dimension 0 indexes examples and the remaining dimensions hold the ``in_features``
  values of one example (images ``(n, 1, 28, 28)`` and flat ``(n, 784)`` are both
  ``784`` features); the result is flat, ``(n, in_features)``;
- **a 1-D ``x`` is refused**, naming the expected shape: a vector of length ``D`` could be
  one example of ``D`` features or ``D`` examples of one feature, so the caller says which
  (``x[None]`` or ``x.reshape(1, -1)`` for one example);
- an empty batch ``(0, in_features)`` is valid; the methods answer it with empty results
  of the right shape;
- NaN and infinite values are refused with their count, and labels out of range with the
  range, while validation is enabled (:mod:`ugmm_prob.validation`; the default). Disabled,
  only the conversions and their type and shape checks remain.

:class:`NonFiniteError` is the other side of the boundary: values computed *inside* a
model (activations, logits, parameter draws) that stop being finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._deprecation import accepts_old_spellings
from .validation import is_validation_enabled

__all__ = ["NonFiniteError", "as_batch", "check_labels", "to_tensor"]


class NonFiniteError(ValueError):
    """A value computed inside a model (an activation, a logit) is NaN or infinite, or an
    update cannot be computed from it (a covariance update that is not positive
    semi-definite).

    Raised by the library's own checks when the numbers a model computes stop being finite
    or valid, which with finite, checked inputs means its parameters have diverged. The
    training loops recognise divergence by this type (see
    :func:`ugmm_prob.training.diverged`); bad *input* is refused with a plain ``ValueError``
    instead.
    """


def to_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` as a tensor (tensors pass through; NumPy arrays and lists are converted),
    or a ``TypeError`` naming ``name`` and what came."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | list | tuple) or np.isscalar(value):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:  # ragged lists, object arrays, strings
            raise TypeError(
                f"{name}: expected numbers (a tensor, NumPy array or list), got "
                f"{type(value).__name__} that does not convert ({error})"
            ) from error
    raise TypeError(f"{name}: expected a tensor, NumPy array or list, got {type(value).__name__}")


@accepts_old_spellings(renamed={"num_features": "in_features"})
def as_batch(
    x: Any,
    *,
    in_features: int,
    name: str = "x",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``x`` as a checked batch of examples, shape ``(n, in_features)``.

    Args:
        x: a tensor, NumPy array or list of shape ``(n, ...)`` whose trailing dimensions
            hold ``in_features`` values per example; ``n`` may be 0.
        in_features: values per example the model expects.
        name: how errors name the input (e.g. ``"UGMMClassifier.predict_proba: x"``).
        dtype: floating dtype to convert to (default: ``x``'s own if floating, else torch's
            default dtype).
        device: device to move to (default: ``x``'s).

    Returns:
        A floating tensor ``(n, in_features)`` on ``device``.

    Raises:
        TypeError: ``x`` is not numeric (or ``dtype`` is not floating).
        ValueError: ``x`` is 0-D or 1-D, its examples do not hold ``in_features`` values,
            or it contains NaN or infinite values (their count is given).
    """
    x = to_tensor(x, name)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating dtype to convert to, got {dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"{name}: expected a batch of shape (n, {in_features}), got shape "
            f"{tuple(x.shape)}; for a single example pass x[None] (shape (1, {in_features}))"
        )
    per_example = int(np.prod(x.shape[1:]))
    if per_example != in_features:
        raise ValueError(
            f"{name}: expected {in_features} features per example, shape (n, "
            f"{in_features}), got shape {tuple(x.shape)} ({per_example} per example)"
        )
    x = x.to(device=device if device is not None else x.device, dtype=dtype)
    x = x.reshape(len(x), in_features)
    if not is_validation_enabled():
        return x
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{name}: expected finite values, got {bad} NaN or infinite value(s) in an input "
            f"of shape {tuple(x.shape)}"
        )
    return x


def check_labels(
    y: Any,
    num_classes: int,
    *,
    num_examples: int | None = None,
    name: str = "y",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``y`` as checked integer class labels, shape ``(n,)``, dtype ``int64``.

    Args:
        y: a tensor, NumPy array or list of integer labels (floats holding whole numbers
            are accepted), shape ``(n,)``.
        num_classes: labels must lie in ``[0, num_classes)``.
        num_examples: when given, ``n`` must equal it (the batch the labels belong to).
        name: how errors name the input.
        device: device to move to (default: ``y``'s).

    Raises:
        TypeError: ``y`` is not numeric, or holds non-integer values.
        ValueError: wrong shape, length other than ``num_examples``, or labels out of range.
    """
    y = to_tensor(y, name)
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{name}: expected labels of shape (n,), got shape {tuple(y.shape)}")
    if num_examples is not None and len(y) != num_examples:
        raise ValueError(f"{name}: expected {num_examples} labels (one per example), got {len(y)}")
    if y.is_floating_point() and is_validation_enabled():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise TypeError(f"{name}: expected integer class labels, got non-integer values")
    y = y.to(device=device if device is not None else y.device, dtype=torch.long)
    if len(y) and is_validation_enabled():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name}: expected labels in [0, {num_classes - 1}] for {num_classes} "
                f"classes, got min {low} and max {high}"
            )
    return y
