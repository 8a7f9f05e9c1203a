"""Training: the epoch loop, point-estimate training, metrics logging, NaN guard, resumption.

:func:`train_loop` is the one loop every kind of training runs through (a :class:`Trainer`
supplies the update step): data order, minibatches split across ``torchrun`` ranks,
progress bars, per-epoch metrics files, atomic checkpoints, resumption and the NaN guard.
:func:`fit` trains point estimates of any model of the library through its role
(:mod:`ugmm_prob.roles`): ``training_loss(x, y)`` (a scalar to minimise; ``y`` is None for a
density model fitted without labels), ``validation_outputs`` and ``validation_metrics`` for
the per-epoch metrics, ``config`` (for checkpoints);
:func:`ugmm_prob.bayes.fit_svi` runs variational inference through the same loop.

Determinism: the data order of epoch ``e`` is a permutation drawn from ``seed + e``, and
checkpoints store the optimiser, the learning-rate schedule and the global RNG state (which
drives dropout), so a run resumed from a checkpoint continues exactly as if it had never
stopped (on CPU; GPU kernels may not be bitwise deterministic).

Resuming checks the run against the checkpoint: a different seed, batch size, training or
validation data (shape and a content fingerprint), ``keep_best``, model class or config, or
optimiser settings is a :class:`ResumeMismatchError` naming both values. ``epochs`` may
change (that is what resuming is for); the learning rate only with ``override_lr=True``.
Metrics files are cut back to the checkpoint's epoch on resume, so no row is duplicated.
"""

from __future__ import annotations

import collections
import copy
import csv
import dataclasses
import json
import math
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from . import distributed
from .boundary import NonFiniteError
from .checkpoints import Checkpoint, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .datasets import check_classification_data
from .metrics import classification_metrics
from .roles import Model

__all__ = [
    "DeviceUnavailableError",
    "LoopSettings",
    "NonFiniteError",
    "ResumeMismatchError",
    "Trainer",
    "TrainingDivergedError",
    "checked_data",
    "classification_metrics",
    "data_fingerprint",
    "diverged",
    "evaluate",
    "fit",
    "prepare_training",
    "resolve_device",
    "train_loop",
]


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


class ResumeMismatchError(ValueError):
    """A run asked to resume from a checkpoint written with different settings or data."""


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


@torch.no_grad()
def evaluate(model: Model, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
    """The model's validation metrics on ``(x, y)`` in evaluation mode.

    A classifier: accuracy, negative log-likelihood of ``y`` (nats) and expected calibration
    error. A density model: ``nll`` (nats per example of ``-log p(x, y)``, or ``-log p(x)``
    without labels) and ``bits_per_dim``, plus the class posterior's ``accuracy``,
    ``class_nll`` and ``ece`` with labels.
    """
    device = resolve_device(None, model)
    was_training = model.training
    model.eval()
    try:
        outputs = model.validation_outputs(x.to(device))
    finally:
        model.train(was_training)
    return model.validation_metrics(
        {k: v.cpu() for k, v in outputs.items()}, None if y is None else y.cpu()
    )


class _MetricsWriter:
    """Appends one row per epoch to a ``.csv`` or ``.jsonl`` file.

    Resuming (``keep_epochs`` given) keeps the rows of epochs ``1..keep_epochs`` and drops
    later or damaged ones: a run killed after writing an epoch's row but before its
    checkpoint would otherwise repeat that row.
    """

    def __init__(self, path: str | os.PathLike | None, *, keep_epochs: int | None) -> None:
        self.path = None if path is None else pathlib.Path(path)
        if self.path is None:
            return
        if self.path.suffix not in (".csv", ".jsonl", ".json"):
            raise ValueError(f"metrics_path must end in .csv or .jsonl, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)  # left by a run killed while cutting the file
        if keep_epochs is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._truncate(keep_epochs)

    def _truncate(self, keep_epochs: int) -> None:
        assert self.path is not None
        text = self.path.read_text()
        if self.path.suffix == ".csv":
            lines = text.splitlines(keepends=True)
            kept = lines[:1]
            fields = next(csv.reader(lines[:1]), [])
            for line in lines[1:]:
                row = next(csv.reader([line]), [])
                if len(row) == len(fields) and line.endswith("\n") and _epoch(row[0]) is not None:
                    if _epoch(row[0]) <= keep_epochs:
                        kept.append(line)
        else:
            kept = []
            for line in text.splitlines(keepends=True):
                try:
                    epoch = _epoch(json.loads(line).get("epoch"))
                except (ValueError, AttributeError):
                    continue
                if line.endswith("\n") and epoch is not None and epoch <= keep_epochs:
                    kept.append(line)
        if "".join(kept) == text:
            return
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                handle.write("".join(kept))
            os.replace(tmp, self.path)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self.path.suffix == ".csv":
            new = not self.path.exists()
            with self.path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        else:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def _epoch(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR) -> dict[str, Any]:
    # MultiStepLR keeps its milestones in a Counter, which weights_only loading refuses.
    state = scheduler.state_dict()
    state["milestones"] = sorted(state["milestones"].items())
    return state


def _load_scheduler_state(
    scheduler: torch.optim.lr_scheduler.MultiStepLR, state: dict[str, Any]
) -> None:
    state = dict(state)
    state["milestones"] = collections.Counter(
        dict((int(k), int(v)) for k, v in state["milestones"])
    )
    scheduler.load_state_dict(state)


def check_unlabelled_data(x: torch.Tensor, *, name: str = "data") -> None:
    """Check inputs without labels: a floating tensor ``(n >= 1, ...)`` of finite values."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        found = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: x must be a floating tensor, got {found}")
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"{name}: x must have shape (n >= 1, features...), got {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(
            f"{name}: x has {int(x.numel() - finite.sum())} non-finite value(s) out of {x.numel()}"
        )


def _check_pair(model: Model, x: torch.Tensor, y: torch.Tensor | None, name: str) -> None:
    if y is not None:
        check_classification_data(x, y, model.num_classes, name=name)
    elif model.requires_labels:
        raise ValueError(f"{name}: {type(model).__name__} needs labels y to train")
    else:
        check_unlabelled_data(x, name=name)


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


def _make_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


MAXIMISED_METRICS = ("accuracy",)
"""Validation metrics where larger is better (``keep_best`` minimises all others)."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How :func:`train_loop` runs, whatever the trainer: schedule, files and selection.

    The arguments of the same names of :func:`fit`, :func:`ugmm_prob.bayes.fit_svi` and
    :func:`ugmm_prob.circuits.fit_em`; each builds it with :meth:`from_arguments`.
    """

    epochs: int
    batch_size: int
    seed: int = 0
    progress: bool = True
    metrics_path: str | os.PathLike | None = None
    checkpoint_path: str | os.PathLike | None = None
    resume: bool = False
    keep_best: str | None = None
    override_lr: bool = False

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> LoopSettings:
        """The settings among a training function's arguments (``locals()``), by name; the
        ones it does not take keep their defaults."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in arguments.items() if key in names})

    def check(self, x_val: torch.Tensor | None, metrics: Sequence[str]) -> None:
        """Reject settings no training loop can run with, naming what was expected.

        ``metrics`` are the validation metrics the model reports (``keep_best`` must be one).
        """
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(
                f"expected epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_path")
        if self.keep_best is None:
            return
        if self.keep_best not in metrics:
            raise ValueError(
                f"keep_best must be one of {tuple(metrics)} or None, got {self.keep_best!r}"
            )
        if x_val is None:
            raise ValueError(
                "keep_best selects an epoch on held-out data: give x_val and y_val (x_val "
                "alone for a density model fitted without labels; selecting on the training "
                "data would pick the most overfitted epoch)"
            )


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


class _BestEpoch:
    """The epoch with the best validation metric so far, and the trainer's state after it."""

    def __init__(self, metric: str) -> None:
        self.metric, self.sign = metric, -1.0 if metric in MAXIMISED_METRICS else 1.0
        self.epoch, self.value, self.snapshot = 0, math.inf, None

    def update(self, row: dict[str, Any], trainer: Trainer) -> None:
        value = self.sign * row[self.metric]
        if value < self.value:  # ties keep the earlier epoch
            self.epoch, self.value, self.snapshot = row["epoch"], value, trainer.snapshot()

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "value": self.value, "snapshot": self.snapshot}

    def load(self, state: dict[str, Any]) -> None:
        self.epoch, self.value, self.snapshot = state["epoch"], state["value"], state["snapshot"]


class Trainer(Protocol):
    """One kind of training, as :func:`train_loop` drives it.

    :func:`fit` (gradient descent on point estimates) and :func:`ugmm_prob.bayes.fit_svi`
    (stochastic variational inference) each implement it, so both share the epoch loop,
    progress bars, metrics files, checkpoints, resumption, the NaN guard and distribution
    across processes.
    """

    model: Model
    loss_name: str

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, *, weight: float, num_data: int
    ) -> float:
        """One update on this rank's share ``(x, y)`` of a global minibatch.

        ``weight`` is ``len(x) * world_size / global_batch``: the factor that makes the
        average over ranks of this rank's gradient equal the gradient of the global batch.
        Returns the global batch's mean loss, identical on every rank; when it is not
        finite the update must not have been kept.
        """

    def end_epoch(self) -> dict[str, Any]:
        """Called after each epoch's steps; returns extra fields of the history row."""

    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example outputs for the model's ``validation_metrics``."""

    def snapshot(self) -> Any:
        """A copy of everything an update changes, for :meth:`restore`."""

    def restore(self, snapshot: Any) -> None:
        """Return to a :meth:`snapshot`."""

    def checkpoint_model(self) -> Model:
        """The point-estimate model written into checkpoints."""

    def training_state(self) -> dict[str, Any]:
        """Optimiser state (tensors and plain values) for checkpoints."""

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint written by this kind of training."""

    # Optional (checked with getattr, so older trainers keep working):
    # run_settings() -> dict of plain values that must not change across a resume, with the
    # learning rate under "lr"; set_lr(lr) -> None applies a new base learning rate.


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


def _check_resumable(
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
    recorded = checkpoint.training_state.get("run")
    if recorded is None:  # checkpoints written before run settings were recorded
        recorded = (
            {"seed": checkpoint.training_state["seed"]}
            if ("seed" in checkpoint.training_state)
            else {}
        )
    if "training" in recorded and "training" in run and recorded["training"] != run["training"]:
        raise ResumeMismatchError(
            f"cannot resume from {path}: it was not written by {run['training']} (it was "
            f"written by {recorded['training']})"
        )
    new_lr = None
    for key, value in recorded.items():
        if key not in run or _same(value, run[key]):
            continue
        if key == "lr":
            if override_lr:
                new_lr = float(run["lr"])
                continue
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


def train_loop(
    trainer: Trainer,
    x: torch.Tensor,
    y: torch.Tensor | None,
    x_val: torch.Tensor,
    y_val: torch.Tensor | None,
    settings: LoopSettings,
    device: torch.device,
) -> list[dict[str, Any]]:
    """The epoch loop shared by every kind of training (see :class:`Trainer`).

    Epoch ``e`` visits the data in the order of a permutation drawn from ``seed + e``, in
    global minibatches of ``batch_size``; under ``torchrun`` each of the ``W`` ranks takes
    every ``W``-th example of each global minibatch, so the updates equal those of one
    process with the same global batch. Only rank 0 shows progress and writes files.

    With ``keep_best`` (a validation metric of the model, e.g. ``"nll"``) the
    trainer ends in its state after the epoch with the best value (the earliest on ties);
    each history row then has ``best_epoch``. Checkpoints still hold the last epoch, so
    training can resume, with the best state so far inside them.
    """
    epochs, batch_size, seed = settings.epochs, settings.batch_size, settings.seed
    checkpoint_path, keep_best = settings.checkpoint_path, settings.keep_best
    ctx = distributed.context()
    start_epoch, history = 0, []
    run = {
        "seed": seed,
        "batch_size": batch_size,
        "keep_best": keep_best,
        "data": data_fingerprint(x, y),
        "validation": data_fingerprint(x_val, y_val),
        **(getattr(trainer, "run_settings", dict)()),
    }
    resuming = settings.resume and pathlib.Path(checkpoint_path).exists()
    if resuming:
        state = load_checkpoint(checkpoint_path)
        new_lr = _check_resumable(state, trainer.model, run, checkpoint_path, settings.override_lr)
        trainer.load_training_state(state)
        if new_lr is not None:
            trainer.set_lr(new_lr)
            if ctx.is_main:
                warnings.warn(
                    f"resuming {checkpoint_path} with lr {new_lr} instead of "
                    f"{state.training_state['run']['lr']} (override_lr=True)",
                    stacklevel=3,
                )
        torch.set_rng_state(state.training_state["rng_state"])
        if ctx.rank > 0:
            # Only rank 0's generator is stored; the others continue from distinct seeds.
            torch.manual_seed(seed + ctx.rank * 1_000_003 + state.epoch)
        start_epoch, history = state.epoch, state.history
    else:
        torch.manual_seed(seed + ctx.rank)
    best = None if keep_best is None else _BestEpoch(keep_best)
    if best is not None and resuming and "best" in state.training_state:
        best.load(state.training_state["best"])
    writer = _MetricsWriter(
        settings.metrics_path if ctx.is_main else None,
        keep_epochs=start_epoch if resuming else None,
    )
    show = settings.progress and ctx.is_main
    # the file holding the state after the last completed epoch, once there is one
    saved = pathlib.Path(checkpoint_path) if resuming else None

    def diverge(what: str, epoch: int) -> TrainingDivergedError:
        trainer.restore(last_good)
        where = f"{saved} holds the same" if saved is not None else "no checkpoint was written"
        return TrainingDivergedError(
            f"{what}; the model was restored to its state after epoch {epoch} ({where}); "
            "try a lower learning rate or a larger scale_floor",
            epoch=epoch,
            checkpoint=saved,
        )

    n = len(x)
    last_good = trainer.snapshot()
    epoch_bar = tqdm(
        range(start_epoch, epochs),
        desc="epochs",
        disable=not show,
        initial=start_epoch,
        total=epochs,
    )
    for epoch in epoch_bar:
        started = time.perf_counter()
        trainer.model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        batches = tqdm(
            range(0, n, batch_size), desc=f"epoch {epoch + 1}", leave=False, disable=not show
        )
        for step, begin in enumerate(batches):
            index = order[begin : begin + batch_size]
            local = ctx.shard(index)
            if len(local) == 0:
                # fewer examples than ranks: this rank joins the collectives with a
                # zero-weighted copy of the batch's first example.
                local, weight = index[:1], 0.0
            else:
                weight = len(local) * ctx.world_size / len(index)
            labels = None if y is None else y[local].to(device)
            loss = trainer.step(x[local].to(device), labels, weight=weight, num_data=n)
            if not math.isfinite(loss):
                raise diverge(
                    f"{trainer.loss_name} became {loss} at epoch {epoch + 1}, step {step + 1}",
                    epoch,
                )
            total += loss * len(index)
        extra = trainer.end_epoch()
        local_val = ctx.shard(torch.arange(len(x_val)))
        try:
            local_outputs = trainer.validation_outputs(x_val[local_val].to(device))
        except ValueError as error:
            if not diverged(error, _trainable(trainer)):
                raise
            raise diverge(
                f"the evaluation after epoch {epoch + 1} failed on non-finite values "
                f"({type(error).__name__}: {error})",
                epoch,
            ) from error
        if not all(bool(torch.isfinite(value).all()) for value in local_outputs.values()):
            raise diverge(f"the validation outputs after epoch {epoch + 1} are not finite", epoch)
        outputs = {
            key: ctx.gather_rows(value.cpu(), len(x_val)) for key, value in local_outputs.items()
        }
        row = {
            "epoch": epoch + 1,
            trainer.loss_name: total / max(n, 1),
            **trainer.model.validation_metrics(outputs, None if y_val is None else y_val.cpu()),
            **extra,
            "seconds": time.perf_counter() - started,
        }
        if best is not None:
            best.update(row, trainer)
            row["best_epoch"] = best.epoch
        history.append(row)
        writer.write(row)
        shown = "accuracy" if "accuracy" in row else "nll"
        epoch_bar.set_postfix(loss=f"{row[trainer.loss_name]:.4f}", **{shown: f"{row[shown]:.4f}"})
        last_good = trainer.snapshot()
        if checkpoint_path is not None:
            if ctx.is_main:
                arguments = dict(
                    epoch=epoch + 1,
                    history=history,
                    training_state={
                        **trainer.training_state(),
                        "rng_state": torch.get_rng_state(),
                        "seed": seed,
                        "world_size": ctx.world_size,
                        "run": run,
                        **({} if best is None else {"best": best.state()}),
                    },
                )
                try:
                    save_checkpoint(checkpoint_path, trainer.checkpoint_model(), **arguments)
                except KeyboardInterrupt:
                    # Ctrl-C mid-save: finish saving the completed epoch, then stop.
                    save_checkpoint(checkpoint_path, trainer.checkpoint_model(), **arguments)
                    raise
                saved = pathlib.Path(checkpoint_path)
            ctx.barrier()
    if best is not None and best.snapshot is not None:
        trainer.restore(best.snapshot)
    return history


def diverged(error: ValueError, parameters: Iterable[torch.Tensor] = ()) -> bool:
    """Whether ``error`` means training diverged rather than that the input was bad.

    Weights that have gone NaN or infinite surface as a ``ValueError`` before any loss
    exists: a uGMM layer or a classifier refusing non-finite activations or logits (the
    library's :class:`~ugmm_prob.layers.NonFiniteError`), or torch's distribution
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


def _trainable(trainer: Trainer) -> list[torch.Tensor]:
    """The tensors an update changes, for :func:`diverged`."""
    parameters = getattr(trainer, "parameters", None)
    if callable(parameters):
        return list(parameters())
    return list(trainer.model.parameters())


class _LossModule(torch.nn.Module):
    """``model.training_loss`` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.model.training_loss(x, y)


class _PointEstimateTrainer:
    """:class:`Trainer` for gradient descent on a model's parameters (:func:`fit`)."""

    loss_name = "loss"

    def __init__(
        self,
        model: Model,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.MultiStepLR,
        device: torch.device,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.settings = dict(settings or {})
        self.ctx = distributed.context()
        self.loss = _LossModule(model)
        if self.ctx.enabled:
            # DDP broadcasts rank 0's parameters now and averages gradients in backward().
            self.loss = torch.nn.parallel.DistributedDataParallel(
                self.loss, device_ids=[device.index] if device.type == "cuda" else None
            )

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, *, weight: float, num_data: int
    ) -> float:
        try:
            loss = self.loss(x, y)
        except ValueError as error:
            if not diverged(error, self.model.parameters()):
                raise
            loss = torch.tensor(float("nan"), device=x.device)
        # Every rank needs the global loss anyway (for the history); reducing it before
        # backward() also lets all ranks agree to stop when any of them sees NaN.
        global_loss = float(self.ctx.sum(loss.detach() * weight)) / self.ctx.world_size
        if not math.isfinite(global_loss):
            return global_loss
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        self.optimizer.step()
        return global_loss

    def end_epoch(self) -> dict[str, Any]:
        self.scheduler.step()
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.validation_outputs(x)
        finally:
            self.model.train(was_training)

    def snapshot(self) -> Any:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())

    def restore(self, snapshot: Any) -> None:
        self.model.load_state_dict(snapshot[0])
        self.optimizer.load_state_dict(snapshot[1])

    def checkpoint_model(self) -> Model:
        return self.model

    def training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _scheduler_state(self.scheduler),
        }

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        self.model.load_state_dict(checkpoint.model.state_dict())
        self.optimizer.load_state_dict(checkpoint.training_state["optimizer"])
        _load_scheduler_state(self.scheduler, checkpoint.training_state["scheduler"])

    def run_settings(self) -> dict[str, Any]:
        return self.settings

    def set_lr(self, lr: float) -> None:
        # The schedule continues from the new base rate: lr * gamma ** (milestones passed).
        factor = self.scheduler.gamma ** sum(
            count
            for milestone, count in self.scheduler.milestones.items()
            if milestone <= self.scheduler.last_epoch
        )
        self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def fit(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    metrics_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    keep_best: str | None = None,
    override_lr: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` by minibatch gradient descent on ``model.training_loss``.

    Under ``torchrun`` (after :func:`ugmm_prob.distributed.init_distributed`) every rank
    computes the loss on its share of each global minibatch of ``batch_size`` and
    ``DistributedDataParallel`` averages the gradients, so the parameters follow the same
    path as in one process; only rank 0 shows progress and writes files.

    Args:
        model: a model of the library (e.g. :class:`~ugmm_prob.networks.UGMMClassifier`,
            :class:`~ugmm_prob.circuits.UGMMCircuit`).
        x, y: training inputs ``(n, ...)`` and integer labels ``(n,)``; a density model
            (e.g. a circuit) may be fitted to ``x`` alone.
        x_val, y_val: data for the per-epoch metrics (a classifier's accuracy, NLL, ECE; a
            density model's NLL and bits per dimension, with labels also accuracy, class
            NLL and ECE); the training data when omitted.
        epochs: total number of epochs (including those already done when resuming).
        batch_size: global minibatch size; the last minibatch of an epoch may be smaller.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``); ``lr``, ``weight_decay``.
        milestones, gamma: ``MultiStepLR`` schedule (the paper: ``(20, 45, 60)``, ``0.1``).
        device: where to train (``"cpu"``, ``"cuda"``, ...); default: where the model is,
            or this rank's GPU under NCCL.
        seed: seeds the data order and the global RNG (dropout).
        progress: show tqdm progress bars.
        metrics_path: ``.csv`` or ``.jsonl`` file receiving one row per epoch.
        checkpoint_path: checkpoint written atomically after every epoch.
        resume: continue from ``checkpoint_path`` if it exists. The run must match the
            checkpoint's (seed, batch size, data, validation data, model, optimiser and
            schedule, ``keep_best``), else :class:`ResumeMismatchError`; ``epochs`` may
            differ.
        override_lr: when resuming, continue with this call's ``lr`` (the schedule
            continues from it) instead of refusing a learning rate that differs from the
            checkpoint's.
        keep_best: a validation metric of the model (``"nll"``, ``"accuracy"``, ``"ece"``;
            a density model's ``"nll"`` is its held-out ``-log p(x[, y])``): end with the
            parameters of the epoch with the best value of that metric on ``x_val`` (early
            stopping without stopping; needs held-out validation data). The checkpoint file
            keeps the last epoch so that training can resume.

    Returns:
        The per-epoch history: dicts with ``epoch``, ``loss``, the validation metrics,
        ``lr`` and ``seconds`` (and ``best_epoch`` with ``keep_best``).

    Raises:
        TrainingDivergedError: the loss (or the per-epoch evaluation) became NaN/inf. The
            model (and optimiser) are restored to the end of the last completed epoch,
            which is also what the checkpoint file holds, if one was written.
        ResumeMismatchError: ``resume`` with settings or data other than the checkpoint's.
    """
    settings = LoopSettings.from_arguments(locals())
    x_val, y_val, device = prepare_training(model, x, y, x_val, y_val, settings, device)
    opt = _make_optimizer(optimizer, list(model.parameters()), lr, weight_decay, momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    run_settings = {
        "training": "fit",
        "optimizer": optimizer,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "milestones": sorted(int(m) for m in milestones),
        "gamma": float(gamma),
        **({"momentum": float(momentum)} if optimizer == "sgd" else {}),
    }
    trainer = _PointEstimateTrainer(model, opt, scheduler, device, run_settings)
    return train_loop(trainer, x, y, x_val, y_val, settings, device)
