"""Resuming a run from its checkpoint: the run's identity and the check that it matches.

A checkpoint records the run's settings (seed, batch size, ``keep_best``, the trainer's own
settings) and a fingerprint of its training and validation data (:func:`data_fingerprint`).
Resuming with anything else is a :class:`ResumeMismatchError` naming both values; ``epochs``
may change (that is what resuming is for), the learning rate only with ``override_lr=True``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checkpoints import Checkpoint
from ..roles import Model

__all__ = ["ResumeMismatchError", "check_resumable", "data_fingerprint"]


class ResumeMismatchError(ValueError):
    """A run asked to resume from a checkpoint written with different settings or data."""


def data_fingerprint(x: torch.Tensor, y: torch.Tensor | None) -> dict[str, Any]:
    """Shapes, dtype and two order-sensitive sums of a data set, to recognise it cheaply.

    Stored in checkpoints so that resuming on other data (another subset, split or seed of
    the split) is an error rather than a silently different run.
    """
    flat = x.detach().reshape(len(x), -1)
    rows = flat.sum(1, dtype=torch.float64)
    weights = torch.arange(1, len(x) + 1, dtype=torch.float64, device=rows.device)
    return {
        "x_shape": list(x.shape),
        "x_dtype": str(x.dtype).removeprefix("torch."),
        "y_shape": None if y is None else list(y.shape),
        "x_sum": float(rows.sum()),
        "x_weighted_sum": float((rows * weights).sum()),
        "y_weighted_sum": None
        if y is None
        else float((y.detach().to(torch.float64) * weights.to(y.device)).sum()),
    }


def _same(recorded: Any, current: Any) -> bool:
    if isinstance(recorded, float) or isinstance(current, float):
        try:
            return math.isclose(float(recorded), float(current), rel_tol=1e-7, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(recorded, dict) and isinstance(current, dict):
        return recorded.keys() == current.keys() and all(
            _same(recorded[key], current[key]) for key in recorded
        )
    if isinstance(recorded, list | tuple) and isinstance(current, list | tuple):
        return len(recorded) == len(current) and all(map(_same, recorded, current))
    return recorded == current


def _recorded_run(checkpoint: Checkpoint) -> dict[str, Any]:
    recorded = checkpoint.training_state.get("run")
    if recorded is not None:
        return recorded
    # checkpoints written before run settings were recorded
    state = checkpoint.training_state
    return {"seed": state["seed"]} if "seed" in state else {}


def check_resumable(
    checkpoint: Checkpoint, model: Model, run: dict[str, Any], path: Any, override_lr: bool
) -> float | None:
    """Raise :class:`ResumeMismatchError` if this run differs from the checkpoint's.

    Returns the new learning rate when it differs and ``override_lr`` allows it.
    """
    if type(checkpoint.model) is not type(model) or checkpoint.model.config != model.config:
        raise ResumeMismatchError(
            f"cannot resume from {path}: it holds a {type(checkpoint.model).__name__} with "
            f"config {checkpoint.model.config}, but this run trains a {type(model).__name__} "
            f"with config {model.config}"
        )
    recorded = _recorded_run(checkpoint)
    if "training" in recorded and "training" in run and recorded["training"] != run["training"]:
        raise ResumeMismatchError(
            f"cannot resume from {path}: it was not written by {run['training']} (it was "
            f"written by {recorded['training']})"
        )
    new_lr = None
    for key, value in recorded.items():
        if key not in run or _same(value, run[key]):
            continue
        if key == "lr" and override_lr:
            new_lr = float(run["lr"])
            continue
        if key == "lr":
            raise ResumeMismatchError(
                f"cannot resume from {path}: it was trained with lr {value}, this run asks for "
                f"lr {run['lr']}; pass override_lr=True (--override-lr) to continue with the "
                "new learning rate, or drop the new one"
            )
        raise ResumeMismatchError(
            f"cannot resume from {path}: {key} was {value} when it was written, this run has "
            f"{run[key]}; resume with the same {key}, or start a new run without resuming"
        )
    return new_lr
