"""What every ``ugmm-prob`` subcommand shares: the usage error, checks of paths and devices
given on the command line, loading a preset's data with errors in the command's terms, and
saving a figure."""

from __future__ import annotations

import pathlib

import torch
from matplotlib.figure import Figure

from ..datasets import MNIST_ENV, DatasetNotFoundError
from ..experiments import DataSplits, load_data
from ..training import DeviceUnavailableError, resolve_device

__all__ = [
    "UsageError",
    "check_device",
    "check_file",
    "check_folder",
    "load_preset_data",
    "save_figure",
]

_MNIST_PLACES = {"root": "--mnist-dir", "env": f"${MNIST_ENV}", "cache": "default folder"}


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


def load_preset_data(name: str, mnist_dir: str | None) -> DataSplits:
    """The data set ``name`` of a preset (:func:`~ugmm_prob.experiments.load_data`); MNIST
    not found is a :class:`~ugmm_prob.datasets.DatasetNotFoundError` whose message names
    the places looked at and the fix in the command's terms (``--mnist-dir``), not the
    loader's Python arguments."""
    try:
        return load_data(name, mnist_root=mnist_dir)
    except DatasetNotFoundError as error:
        if not error.looked_in:
            raise
        places = [
            f"{_MNIST_PLACES.get(source, source)} {folder}: {problem}"
            for source, folder, problem in error.looked_in
        ]
        if not any(source == "env" for source, _, _ in error.looked_in):
            places.append(f"${MNIST_ENV} is not set")
        raise DatasetNotFoundError(
            f"MNIST IDX files not found (looked in: {'; '.join(places)}). Pass --mnist-dir "
            "FOLDER, the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each raw or .gz), or set "
            f"{MNIST_ENV}=FOLDER",
            looked_in=error.looked_in,
        ) from error


def save_figure(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` (its folder created if needed) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
