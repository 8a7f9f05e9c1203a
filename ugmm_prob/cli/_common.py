"""What every ``ugmm-prob`` subcommand shares: the usage error, checks of paths and devices
given on the command line, and saving a figure."""

from __future__ import annotations

import pathlib

import torch
from matplotlib.figure import Figure

from ..training import DeviceUnavailableError, resolve_device

__all__ = ["UsageError", "check_device", "check_file", "check_folder", "save_figure"]


class UsageError(ValueError):
    """A command-line value that cannot work, found before any training starts."""


def check_folder(option: str, value: str) -> pathlib.Path:
    """``value`` as a folder path; an existing file there is a usage error."""
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {value}: is an existing file, expected a folder")
    return path


def check_file(option: str, value: str | None) -> None:
    """An existing folder where a file name is expected is a usage error."""
    if value is not None and pathlib.Path(value).is_dir():
        raise UsageError(f"{option} {value}: is a folder, expected a file name")


def check_device(device: str | None) -> None:
    """A device string torch does not know is a usage error; one this machine lacks is a
    :class:`~ugmm_prob.training.DeviceUnavailableError`."""
    if device is None:
        return
    try:
        resolve_device(device, torch.nn.Linear(1, 1))
    except RuntimeError as error:  # torch's own: unknown device string
        if isinstance(error, DeviceUnavailableError):
            raise
        raise UsageError(f"--device {device}: not a device ({error})") from error


def save_figure(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` (its folder created if needed) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
