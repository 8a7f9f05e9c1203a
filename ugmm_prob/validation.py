"""One switch for the library's checks of argument and computed values, in the manner of
``pyro.enable_validation``.

With validation enabled (the default), the public entry points check what they are given
(finite inputs, labels in range, kernel arguments that agree in shape, dtype and device) and
the models check what they compute (finite activations and logits, raising
:class:`~ugmm_prob.boundary.NonFiniteError`). Disabled, those checks are skipped: no pass
over the data and no host synchronisation for them, at the price of NaNs travelling on
instead of an error naming their source. Conversions that make an input usable (to a tensor,
to the model's dtype and device, to the flat shape) always happen, with their type and shape
errors.

The training loops (:func:`ugmm_prob.training.fit`, :func:`ugmm_prob.circuits.fit_em`)
check their data once, before the first step, and run their steps with validation disabled;
the NaN guard works on the loss, not on these checks. (:func:`ugmm_prob.bayes.fit_svi`
keeps them on: there they are how a diverged model reports itself to Pyro's sites.)

Example:
    >>> from ugmm_prob.validation import is_validation_enabled, validation_enabled
    >>> with validation_enabled(False):
    ...     is_validation_enabled()
    False
    >>> is_validation_enabled()
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["enable_validation", "is_validation_enabled", "validation_enabled"]

_VALIDATION_ENABLED = True


def enable_validation(flag: bool = True) -> None:
    """Turn the library's value checks on (``True``, the default) or off, process-wide."""
    global _VALIDATION_ENABLED
    _VALIDATION_ENABLED = bool(flag)


def is_validation_enabled() -> bool:
    """Whether the library's value checks are on."""
    return _VALIDATION_ENABLED


@contextlib.contextmanager
def validation_enabled(flag: bool = True) -> Iterator[None]:
    """Within the ``with`` block, validation is ``flag``; the previous setting returns after
    it (also when the block raises)."""
    previous = _VALIDATION_ENABLED
    enable_validation(flag)
    try:
        yield
    finally:
        enable_validation(previous)
