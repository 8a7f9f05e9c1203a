"""The NaN guard: recognising divergence, and the error a diverged run ends with.

Divergence is recognised by type, never by an error's message: a non-finite loss, a
:class:`~ugmm_prob.boundary.NonFiniteError` raised by the library's own checks on values
computed inside a model, or any ``ValueError`` raised while a trained tensor is not finite
(see :func:`diverged`). The loop then restores the trainer's state after the last completed
epoch and raises :class:`TrainingDivergedError`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from typing import Any

import torch

from ..boundary import NonFiniteError

__all__ = ["NonFiniteError", "TrainingDivergedError", "diverged", "trained_tensors"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good state.

    Attributes:
        epoch: the last completed epoch, whose state the model was restored to.
        checkpoint: the checkpoint file holding that state, or None when none was written
            (no checkpoint path, or no epoch completed and nothing was resumed).
    """

    def __init__(
        self, message: str, *, epoch: int = 0, checkpoint: pathlib.Path | None = None
    ) -> None:
        super().__init__(message)
        self.epoch, self.checkpoint = epoch, checkpoint


def diverged(error: ValueError, parameters: Iterable[torch.Tensor] = ()) -> bool:
    """Whether ``error`` means training diverged rather than that the input was bad.

    Weights that have gone NaN or infinite surface as a ``ValueError`` before any loss
    exists: a uGMM layer or a classifier refusing non-finite activations or logits (the
    library's :class:`~ugmm_prob.boundary.NonFiniteError`), or torch's distribution
    validation refusing parameters computed from NaN weights. The training loops treat
    these like a NaN loss. Recognised by type, never by message: a ``NonFiniteError``, or
    any ``ValueError`` while one of ``parameters`` is not finite.
    (The chain of causes is searched, since Pyro re-raises errors of its sites as plain
    ``ValueError``.) Training data is checked
    to be finite before training, so neither can come from the input.
    """
    cause: BaseException | None = error
    while cause is not None:  # Pyro re-raises distribution errors as a plain ValueError
        if isinstance(cause, NonFiniteError):
            return True
        cause = cause.__cause__ or cause.__context__
    return any(not bool(torch.isfinite(p).all()) for p in parameters)


def trained_tensors(trainer: Any) -> list[torch.Tensor]:
    """The tensors an update of ``trainer`` changes, for :func:`diverged`: its
    ``parameters()`` if it has them, else its model's."""
    parameters = getattr(trainer, "parameters", None)
    if callable(parameters):
        return list(parameters())
    return list(trainer.model.parameters())
