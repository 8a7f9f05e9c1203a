"""Checkpoints: model weights with the configuration that rebuilds the model.

A checkpoint file is a short header and a ``torch.save`` payload holding only tensors and
plain Python values::

    ugmm-prob-checkpoint/2\n
    sha256:<64 hex digits of the payload>\n
    <payload bytes>

Loading checks the header and the payload's SHA-256 digest before anything is unpickled,
so *every* byte of the file is covered: a damaged file (a flipped bit, a truncation) is a
:class:`CheckpointError` naming the file, never a model with altered weights. The payload
is then read with ``torch.load(..., weights_only=True)``, so loading never runs pickled
code. (A digest stored *inside* a ``torch.save`` zip file would not do: its reader ignores
alignment padding and some header fields, so flips there would load unnoticed.)

The model class is recorded as ``module:qualname`` and rebuilt only from the allow-list
:data:`LOADABLE_MODEL_CLASSES` (imported when named, so a circuit
loads in a process that never imported :mod:`ugmm_prob.circuits`), plus classes the caller
passes as ``extra_classes``. Files of format 1 (a bare ``torch.save`` of the payload, no
digest) are still read, with a warning that they cannot be verified.

A checkpoint is written to a temporary file ``.NAME.*.tmp`` beside the target and renamed
over it, so a crash mid-write never leaves a truncated checkpoint under the real name; the
temporary file is removed on every exit path, and stale ones left by a killed process are
removed by the next save.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pathlib
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._deprecation import with_current_names
from ._version import __version__
from .roles import Model

__all__ = [
    "LOADABLE_MODEL_CLASSES",
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "model_class_path",
    "remove_stale_temporaries",
    "resolve_model_class",
    "save_checkpoint",
]

FORMAT = "ugmm-prob-checkpoint/2"
LEGACY_FORMAT = "ugmm-prob-checkpoint/1"
_MAGIC = FORMAT.encode() + b"\n"
_DIGEST_PREFIX = b"sha256:"
_HEADER_SIZE = len(_MAGIC) + len(_DIGEST_PREFIX) + 64 + 1


LOADABLE_MODEL_CLASSES: tuple[str, ...] = (
    "ugmm_prob.networks:UGMMClassifier",
    "ugmm_prob.networks:MLPClassifier",
    "ugmm_prob.networks:CNNClassifier",
    "ugmm_prob.networks:ConvUGMMClassifier",
    "ugmm_prob.networks:JointScoreModel",
    "ugmm_prob.circuits.circuit:UGMMCircuit",
)
"""The model classes checkpoints may rebuild, as ``module:qualname`` (the allow-list of
:func:`resolve_model_class`); each is imported only when a checkpoint names it."""


def model_class_path(cls: type) -> str:
    """``module:qualname`` of a class, as checkpoints record it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_model_class(name: str, *, extra: Sequence[type] = ()) -> type[Model]:
    """The model class a checkpoint names, imported lazily from an allow-list.

    Args:
        name: ``module:qualname`` (see :func:`model_class_path`), or a bare class name as
            checkpoints of format 1 recorded it.
        extra: further classes the caller allows (their own model classes, e.g.
            :class:`~ugmm_prob.networks.Classifier` subclasses); only
            :data:`LOADABLE_MODEL_CLASSES` are allowed otherwise.

    Raises:
        ValueError: ``name`` is not on the allow-list (nothing is imported then).
    """
    allowed = {model_class_path(cls): cls for cls in extra}
    allowed.update(dict.fromkeys(LOADABLE_MODEL_CLASSES))
    if ":" not in name:  # format 1: the bare class name
        matches = [path for path in allowed if path.rpartition(":")[2] == name]
        if len(matches) != 1:
            raise ValueError(f"unknown model class {name!r}; expected one of {sorted(allowed)}")
        name = matches[0]
    if name not in allowed:
        raise ValueError(f"model class {name!r} is not loadable; expected one of {sorted(allowed)}")
    if allowed[name] is not None:
        return allowed[name]
    module_name, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def build_model(name: str, config: dict[str, Any]) -> Model:
    """Rebuild a model from its class (``module:qualname`` of :data:`LOADABLE_MODEL_CLASSES`,
    or a bare class name of that list) and ``config`` (as stored in checkpoints).

    A ``config`` stored under argument names the library has since renamed (``num_vars``,
    ``num_features``: now ``in_features``) is read under the current names.
    """
    model_class = resolve_model_class(name)
    return model_class(**with_current_names(model_class, config))


class CheckpointError(ValueError):
    """A file is not a readable ugmm-prob checkpoint (missing, corrupt or incompatible)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the rebuilt model and the training state."""

    model: Model
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    training_state: dict[str, Any] = field(default_factory=dict)
    version: str = ""


def save_checkpoint(
    path: str | os.PathLike,
    model: Model,
    *,
    epoch: int = 0,
    history: list[dict[str, Any]] | None = None,
    training_state: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``model`` (weights, class and config) and optional training state atomically.

    Args:
        path: destination file; its folder is created if needed.
        model: any model of the library (a classifier, a circuit).
        epoch: number of completed epochs.
        history: per-epoch metrics so far.
        training_state: optimiser, scheduler and RNG state for resuming (tensors and plain
            values only).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": __version__,
        "model_class": model_class_path(type(model)),
        "config": model.config,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "history": list(history or []),
        "training_state": training_state or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = _MAGIC + _DIGEST_PREFIX + hashlib.sha256(body).hexdigest().encode() + b"\n"
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    finally:  # also on KeyboardInterrupt: no temporary file outlives the call
        pathlib.Path(tmp_name).unlink(missing_ok=True)
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Delete the temporary files ``.NAME.*.tmp`` that interrupted saves of ``path`` left.

    A process killed mid-save (``kill -9``, power loss) cannot remove its temporary file;
    :func:`save_checkpoint` calls this before writing. Returns the files removed.
    """
    path = pathlib.Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        removed.append(stale)
    return removed


def _read_payload(path: pathlib.Path, data: bytes, map_location: Any = "cpu") -> Any:
    """Verify the header and digest of checkpoint bytes and unpickle the payload safely."""
    if data.startswith(_MAGIC):
        header, body = data[:_HEADER_SIZE], data[_HEADER_SIZE:]
        digest = header[len(_MAGIC) + len(_DIGEST_PREFIX) : -1]
        if (
            len(header) != _HEADER_SIZE
            or header[len(_MAGIC) : len(_MAGIC) + len(_DIGEST_PREFIX)] != _DIGEST_PREFIX
            or header[-1:] != b"\n"
        ):
            raise CheckpointError(f"{path}: damaged checkpoint header (corrupt or truncated)")
        actual = hashlib.sha256(body).hexdigest().encode()
        if digest != actual:
            raise CheckpointError(
                f"{path}: checkpoint is corrupt: SHA-256 of its payload is "
                f"{actual.decode()}, the header records {digest.decode(errors='replace')}"
            )
        source: Any = io.BytesIO(body)
    elif data.startswith(b"PK\x03\x04"):  # format 1: a bare torch.save zip file
        source = io.BytesIO(data)
    else:
        raise CheckpointError(
            f"{path}: not a readable ugmm-prob checkpoint (expected a file starting with "
            f"{FORMAT!r}, found {data[:24]!r})"
        )
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path}: not a readable ugmm-prob checkpoint ({type(error).__name__}: {error})"
        ) from error


def _checked_payload(path: pathlib.Path, map_location: Any) -> dict[str, Any]:
    """The verified payload of the checkpoint file ``path``, with the keys a model needs."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from error
    payload = _read_payload(path, data, map_location)
    expected = FORMAT if data.startswith(_MAGIC) else LEGACY_FORMAT
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {expected!r} checkpoint, found {found!r}")
    if expected == LEGACY_FORMAT:
        warnings.warn(
            f"{path} is a {LEGACY_FORMAT} checkpoint without a digest: its integrity cannot "
            "be verified; save it again to upgrade it",
            stacklevel=3,
        )
    missing = {"model_class", "config", "model_state"} - payload.keys()
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {sorted(missing)}")
    return payload


def _rebuilt_model(
    path: pathlib.Path, payload: dict[str, Any], extra_classes: Sequence[type]
) -> Model:
    """The payload's model: its class (from the allow-list), config and weights."""
    try:
        model_class = resolve_model_class(str(payload["model_class"]), extra=extra_classes)
    except (ValueError, ImportError, AttributeError) as error:
        raise CheckpointError(f"{path}: {error}") from error
    try:
        # Building draws initial values from the global RNG: leave it as the caller had it.
        with torch.random.fork_rng(devices=[]):
            model = model_class(**with_current_names(model_class, payload["config"]))
        # A model saved in float64 (say) comes back in float64, not in the default dtype.
        dtypes = {v.dtype for v in payload["model_state"].values() if v.is_floating_point()}
        if len(dtypes) == 1:
            model.to(dtypes.pop())
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{path}: cannot rebuild {payload['model_class']} from its stored config and "
            f"weights ({type(error).__name__}: {error})"
        ) from error
    return model


def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    extra_classes: Sequence[type] = (),
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and rebuild its model.

    Verifies the payload's SHA-256 digest, then loads it with ``weights_only=True``; the
    model class must be on :data:`LOADABLE_MODEL_CLASSES` or among
    ``extra_classes`` (your own :class:`~ugmm_prob.networks.Classifier` subclasses).

    Raises:
        CheckpointError: naming the file, when it is missing, not a checkpoint, corrupt
            (digest mismatch, truncation), names a class that is not allowed, or does not
            match its model class.
    """
    path = pathlib.Path(path)
    payload = _checked_payload(path, map_location)
    version = str(payload.get("version", ""))
    if version != __version__:
        warnings.warn(
            f"{path} was written by ugmm-prob {version}; this is {__version__}",
            stacklevel=2,
        )
    model = _rebuilt_model(path, payload, extra_classes)
    return Checkpoint(
        model=model.to(map_location),
        epoch=int(payload.get("epoch", 0)),
        history=list(payload.get("history", [])),
        training_state=dict(payload.get("training_state", {})),
        version=version,
    )
