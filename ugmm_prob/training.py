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
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from .datasets import check_classification_data
from .metrics import classification_metrics
from .roles import Model

__all__ = [
    "DeviceUnavailableError",
    "LoopSettings",
    "Trainer",
    "TrainingDivergedError",
    "checked_data",
    "classification_metrics",
    "evaluate",
    "fit",
    "prepare_training",
    "resolve_device",
    "train_loop",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good state."""


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
    """Appends one row per epoch to a ``.csv`` or ``.jsonl`` file."""

    def __init__(self, path: str | os.PathLike | None, *, append: bool) -> None:
        self.path = None if path is None else pathlib.Path(path)
        if self.path is None:
            return
        if self.path.suffix not in (".csv", ".jsonl", ".json"):
            raise ValueError(f"metrics_path must end in .csv or .jsonl, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append and self.path.exists():
            self.path.unlink()

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

    The arguments of the same names of :func:`fit` and :func:`ugmm_prob.bayes.fit_svi`.
    """

    epochs: int
    batch_size: int
    seed: int = 0
    progress: bool = True
    metrics_path: str | os.PathLike | None = None
    checkpoint_path: str | os.PathLike | None = None
    resume: bool = False
    keep_best: str | None = None

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


def _check_resumable(checkpoint: Checkpoint, model: Model, path: Any) -> None:
    if type(checkpoint.model) is not type(model) or checkpoint.model.config != model.config:
        raise ValueError(
            f"{path} holds a {type(checkpoint.model).__name__} with config "
            f"{checkpoint.model.config}, not this {type(model).__name__} with {model.config}"
        )


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
    resuming = settings.resume and pathlib.Path(checkpoint_path).exists()
    if resuming:
        state = load_checkpoint(checkpoint_path)
        _check_resumable(state, trainer.model, checkpoint_path)
        trainer.load_training_state(state)
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
    writer = _MetricsWriter(settings.metrics_path if ctx.is_main else None, append=resuming)
    show = settings.progress and ctx.is_main

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
                trainer.restore(last_good)
                where = f"{checkpoint_path}" if checkpoint_path else "no checkpoint file"
                raise TrainingDivergedError(
                    f"{trainer.loss_name} became {loss} at epoch {epoch + 1}, step {step + 1}; "
                    f"the model was restored to its state after epoch {epoch} ({where} holds "
                    "the same); try a lower learning rate or a larger scale_floor"
                )
            total += loss * len(index)
        extra = trainer.end_epoch()
        local_val = ctx.shard(torch.arange(len(x_val)))
        outputs = {
            key: ctx.gather_rows(value.cpu(), len(x_val))
            for key, value in trainer.validation_outputs(x_val[local_val].to(device)).items()
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
                save_checkpoint(
                    checkpoint_path,
                    trainer.checkpoint_model(),
                    epoch=epoch + 1,
                    history=history,
                    training_state={
                        **trainer.training_state(),
                        "rng_state": torch.get_rng_state(),
                        "seed": seed,
                        "world_size": ctx.world_size,
                        **({} if best is None else {"best": best.state()}),
                    },
                )
            ctx.barrier()
    if best is not None and best.snapshot is not None:
        trainer.restore(best.snapshot)
    return history


def diverged(error: ValueError, parameters: Iterable[torch.Tensor] = ()) -> bool:
    """Whether ``error`` means training diverged rather than that the input was bad.

    Weights that have gone NaN or infinite surface as a ``ValueError`` before any loss
    exists: torch's distribution validation refusing ``Categorical(logits=nan)``, or a uGMM
    layer refusing the non-finite activations of the layer below. The training loops treat
    these like a NaN loss: any parameter non-finite, or the error naming invalid or
    non-finite values.
    """
    message = str(error)
    if "invalid values" in message or "NaN or inf" in message:
        return True
    return any(not bool(torch.isfinite(p).all()) for p in parameters)


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
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
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
        resume: continue from ``checkpoint_path`` if it exists.
        keep_best: a validation metric of the model (``"nll"``, ``"accuracy"``, ``"ece"``;
            a density model's ``"nll"`` is its held-out ``-log p(x[, y])``): end with the
            parameters of the epoch with the best value of that metric on ``x_val`` (early
            stopping without stopping; needs held-out validation data). The checkpoint file
            keeps the last epoch so that training can resume.

    Returns:
        The per-epoch history: dicts with ``epoch``, ``loss``, the validation metrics,
        ``lr`` and ``seconds`` (and ``best_epoch`` with ``keep_best``).

    Raises:
        TrainingDivergedError: the loss became NaN/inf. The model (and optimiser) are
            restored to the end of the last completed epoch, which is also what the
            checkpoint file holds.
    """
    settings = LoopSettings(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        metrics_path=metrics_path,
        checkpoint_path=checkpoint_path,
        resume=resume,
        keep_best=keep_best,
    )
    x_val, y_val, device = prepare_training(model, x, y, x_val, y_val, settings, device)
    opt = _make_optimizer(optimizer, list(model.parameters()), lr, weight_decay, momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    trainer = _PointEstimateTrainer(model, opt, scheduler, device)
    return train_loop(trainer, x, y, x_val, y_val, settings, device)
