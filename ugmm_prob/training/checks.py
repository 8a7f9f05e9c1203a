"""What every training routine does before its loop: check the data and the settings, and
choose the device (:func:`prepare_training`).

The data are checked once here, at the API boundary (when validation is enabled, see
:mod:`ugmm_prob.validation`); the loop's steps then run without them (but for
trainers that keep them, as SVI's).
"""

from __future__ import annotations

import torch

from .. import distributed
from ..datasets import check_classification_data, check_finite_cells
from ..roles import Model
from ..validation import is_validation_enabled
from .settings import LoopSettings

__all__ = [
    "DeviceUnavailableError",
    "check_unlabelled_data",
    "checked_data",
    "has_missing_cells",
    "prepare_training",
    "resolve_device",
]


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine (or this torch build) does not have."""


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """The device to train on: ``device`` if given (checked to exist), else the model's.

    Under ``torchrun`` with NCCL, ``None`` and a bare ``"cuda"`` mean this rank's own GPU.
    """
    ctx = distributed.context()
    if ctx.enabled and ctx.device().type == "cuda" and (device is None or str(device) == "cuda"):
        return ctx.device()
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={str(device)!r} was asked for, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of torch"
        )
    return device


def check_unlabelled_data(
    x: torch.Tensor, *, name: str = "data", allow_missing: bool = False, model: str | None = None
) -> None:
    """Check inputs without labels: a floating tensor ``(n >= 1, ...)`` of finite values,
    or NaN (missing) cells with ``allow_missing`` (the values only while validation is
    enabled, :mod:`ugmm_prob.validation`)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        found = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: x must be a floating tensor, got {found}")
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"{name}: x must have shape (n >= 1, features...), got {tuple(x.shape)}")
    if is_validation_enabled():
        check_finite_cells(x, name=name, allow_missing=allow_missing, model=model)


def has_missing_cells(model: Model, x: torch.Tensor) -> bool:
    """Whether training data ``x`` have NaN cells that ``model`` must marginalise (checked
    once per data set, so that the steps of a loop need no host synchronisation to know)."""
    return model.accepts_missing_cells and bool(torch.isnan(x).any())


def _check_pair(model: Model, x: torch.Tensor, y: torch.Tensor | None, name: str) -> None:
    options = {
        "name": name,
        "allow_missing": model.accepts_missing_cells,
        "model": type(model).__name__,
    }
    if y is not None:
        check_classification_data(
            x, y, model.num_classes, allow_unlabelled=model.accepts_unlabelled_rows, **options
        )
    elif model.requires_labels:
        raise ValueError(f"{name}: {type(model).__name__} needs labels y to train")
    else:
        check_unlabelled_data(x, **options)


def checked_data(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check training and validation data; the validation pair (training data if omitted).

    Labels are optional for density models (``model.requires_labels`` False); when the
    training data have labels, so must the validation data, and the other way round.
    """
    _check_pair(model, x, y, "training data")
    if x_val is None:
        if y_val is not None:
            raise ValueError("y_val was given without x_val")
        return x, y
    if (y is None) != (y_val is None):
        raise ValueError(
            "give labels for both the training and the validation data, or for neither"
        )
    _check_pair(model, x_val, y_val, "validation data")
    return x_val, y_val


def prepare_training(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    settings: LoopSettings,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.device]:
    """What every training routine does before its loop: check the data and the settings,
    then move ``model`` to its device.

    Returns:
        The validation pair (the training data if none was given) and the device.
    """
    settings.check(x_val, model.metric_names(labelled=y is not None))
    x_val, y_val = checked_data(model, x, y, x_val, y_val)
    device = resolve_device(device, model)
    model.to(device)
    return x_val, y_val, device
