"""Checkpoints: model weights with the configuration that rebuilds the model.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values, so it
loads with ``torch.load(..., weights_only=True)`` and loading never runs pickled code. It is
written to a temporary file beside the target and renamed over it, so a crash mid-write
never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .networks import Classifier, build_model

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "ugmm-prob-checkpoint/1"


class CheckpointError(ValueError):
    """A file is not a readable ugmm-prob checkpoint (missing, corrupt or incompatible)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the rebuilt model and the training state."""

    model: Classifier
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    training_state: dict[str, Any] = field(default_factory=dict)
    version: str = ""


def _library_version() -> str:
    from . import __version__

    return __version__


def save_checkpoint(
    path: str | os.PathLike,
    model: Classifier,
    *,
    epoch: int = 0,
    history: list[dict[str, Any]] | None = None,
    training_state: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``model`` (weights, class and config) and optional training state atomically.

    Args:
        path: destination file; its folder is created if needed.
        model: any :class:`~ugmm_prob.networks.Classifier` of the library.
        epoch: number of completed epochs.
        history: per-epoch metrics so far.
        training_state: optimiser, scheduler and RNG state for resuming (tensors and plain
            values only).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": _library_version(),
        "model_class": type(model).__name__,
        "config": model.config,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "history": list(history or []),
        "training_state": training_state or {},
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    finally:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and rebuild its model.

    Loads with ``weights_only=True``. Raises :class:`CheckpointError` naming the file when it
    is missing, not a checkpoint, corrupt, or does not match its model class.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path}: not a readable ugmm-prob checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {FORMAT!r} checkpoint, found {found!r}")
    missing = {"model_class", "config", "model_state"} - payload.keys()
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {sorted(missing)}")
    version = str(payload.get("version", ""))
    if version != _library_version():
        warnings.warn(
            f"{path} was written by ugmm-prob {version}; this is {_library_version()}",
            stacklevel=2,
        )
    try:
        model = build_model(payload["model_class"], payload["config"])
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{path}: cannot rebuild {payload['model_class']} from its stored config and "
            f"weights ({type(error).__name__}: {error})"
        ) from error
    return Checkpoint(
        model=model.to(map_location),
        epoch=int(payload.get("epoch", 0)),
        history=list(payload.get("history", [])),
        training_state=dict(payload.get("training_state", {})),
        version=version,
    )
