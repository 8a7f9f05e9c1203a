"""Training: the epoch loop, point-estimate training, metrics logging, NaN guard, resumption.

:func:`train_loop` is the one loop every kind of training runs through (a :class:`Trainer`
supplies the update step): data order, minibatches split across ``torchrun`` ranks,
progress bars, per-epoch metrics files, atomic checkpoints, resumption and the NaN guard.
:func:`fit` trains point estimates of any model of the library through one small
interface: the model's ``training_loss(x, y)`` (a scalar to minimise), ``predict_proba(x)``
for the per-epoch metrics, ``num_classes`` and ``config`` (for checkpoints);
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
from .metrics import accuracy, expected_calibration_error, negative_log_likelihood
from .networks import Classifier

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
def evaluate(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, negative log-likelihood (nats) and expected calibration error on ``(x, y)``."""
    device = resolve_device(None, model)
    return classification_metrics(model.predict_proba(x.to(device)).cpu(), y.cpu())


def classification_metrics(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL (nats) and ECE of predicted class probabilities ``probs`` ``(n, C)``."""
    return {
        "accuracy": accuracy(probs, y),
        "nll": negative_log_likelihood(probs, y),
        "ece": expected_calibration_error(probs, y),
    }


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


def checked_data(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check training and validation data; the validation pair (training data if omitted)."""
    check_classification_data(x, y, model.num_classes, name="training data")
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    if x_val is None:
        return x, y
    check_classification_data(x_val, y_val, model.num_classes, name="validation data")
    return x_val, y_val


def _make_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


SELECTION_METRICS = ("nll", "accuracy", "ece")
"""Validation metrics ``keep_best`` can select the returned epoch by."""


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

    def check(self, x_val: torch.Tensor | None) -> None:
        """Reject settings no training loop can run with, naming what was expected."""
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(
                f"expected epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_path")
        if self.keep_best is None:
            return
        if self.keep_best not in SELECTION_METRICS:
            raise ValueError(
                f"keep_best must be one of {SELECTION_METRICS} or None, got {self.keep_best!r}"
            )
        if x_val is None:
            raise ValueError(
                "keep_best selects an epoch on held-out data: give x_val and y_val (selecting "
                "on the training data would pick the most overfitted epoch)"
            )


def prepare_training(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    settings: LoopSettings,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """What every training routine does before its loop: check the data and the settings,
    then move ``model`` to its device.

    Returns:
        The validation pair (the training data if none was given) and the device.
    """
    settings.check(x_val)
    x_val, y_val = checked_data(model, x, y, x_val, y_val)
    device = resolve_device(device, model)
    model.to(device)
    return x_val, y_val, device


class _BestEpoch:
    """The epoch with the best validation metric so far, and the trainer's state after it."""

    def __init__(self, metric: str) -> None:
        self.metric, self.sign = metric, -1.0 if metric == "accuracy" else 1.0
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

    model: Classifier
    loss_name: str

    def step(self, x: torch.Tensor, y: torch.Tensor, *, weight: float, num_data: int) -> float:
        """One update on this rank's share ``(x, y)`` of a global minibatch.

        ``weight`` is ``len(x) * world_size / global_batch``: the factor that makes the
        average over ranks of this rank's gradient equal the gradient of the global batch.
        Returns the global batch's mean loss, identical on every rank; when it is not
        finite the update must not have been kept.
        """

    def end_epoch(self) -> dict[str, Any]:
        """Called after each epoch's steps; returns extra fields of the history row."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities for the per-epoch metrics."""

    def snapshot(self) -> Any:
        """A copy of everything an update changes, for :meth:`restore`."""

    def restore(self, snapshot: Any) -> None:
        """Return to a :meth:`snapshot`."""

    def checkpoint_model(self) -> Classifier:
        """The point-estimate model written into checkpoints."""

    def training_state(self) -> dict[str, Any]:
        """Optimiser state (tensors and plain values) for checkpoints."""

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint written by this kind of training."""


def _check_resumable(checkpoint: Checkpoint, model: Classifier, path: Any) -> None:
    if type(checkpoint.model) is not type(model) or checkpoint.model.config != model.config:
        raise ValueError(
            f"{path} holds a {type(checkpoint.model).__name__} with config "
            f"{checkpoint.model.config}, not this {type(model).__name__} with {model.config}"
        )


def train_loop(
    trainer: Trainer,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    settings: LoopSettings,
    device: torch.device,
) -> list[dict[str, Any]]:
    """The epoch loop shared by every kind of training (see :class:`Trainer`).

    Epoch ``e`` visits the data in the order of a permutation drawn from ``seed + e``, in
    global minibatches of ``batch_size``; under ``torchrun`` each of the ``W`` ranks takes
    every ``W``-th example of each global minibatch, so the updates equal those of one
    process with the same global batch. Only rank 0 shows progress and writes files.

    With ``keep_best`` (a validation metric: ``"nll"``, ``"accuracy"`` or ``"ece"``) the
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
            loss = trainer.step(x[local].to(device), y[local].to(device), weight=weight, num_data=n)
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
        probs = ctx.gather_rows(
            trainer.predict_proba(x_val[local_val].to(device)).cpu(), len(x_val)
        )
        row = {
            "epoch": epoch + 1,
            trainer.loss_name: total / max(n, 1),
            **classification_metrics(probs, y_val.cpu()),
            **extra,
            "seconds": time.perf_counter() - started,
        }
        if best is not None:
            best.update(row, trainer)
            row["best_epoch"] = best.epoch
        history.append(row)
        writer.write(row)
        epoch_bar.set_postfix(loss=f"{row[trainer.loss_name]:.4f}", acc=f"{row['accuracy']:.4f}")
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

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(x, y)


class _PointEstimateTrainer:
    """:class:`Trainer` for gradient descent on a model's parameters (:func:`fit`)."""

    loss_name = "loss"

    def __init__(
        self,
        model: Classifier,
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

    def step(self, x: torch.Tensor, y: torch.Tensor, *, weight: float, num_data: int) -> float:
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

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x)

    def snapshot(self) -> Any:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())

    def restore(self, snapshot: Any) -> None:
        self.model.load_state_dict(snapshot[0])
        self.optimizer.load_state_dict(snapshot[1])

    def checkpoint_model(self) -> Classifier:
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
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
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
        model: a model of the library (e.g. :class:`~ugmm_prob.networks.UGMMClassifier`).
        x, y: training inputs ``(n, ...)`` and integer labels ``(n,)``.
        x_val, y_val: data for the per-epoch metrics (accuracy, NLL, ECE); the training
            data when omitted.
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
        keep_best: ``"nll"``, ``"accuracy"`` or ``"ece"``: end with the parameters of the
            epoch with the best value of that metric on ``(x_val, y_val)`` (early stopping
            without stopping; needs held-out validation data). The checkpoint file keeps
            the last epoch so that training can resume.

    Returns:
        The per-epoch history: dicts with ``epoch``, ``loss``, ``accuracy``, ``nll``,
        ``ece``, ``lr`` and ``seconds`` (and ``best_epoch`` with ``keep_best``).

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
