"""Training of point estimates: minibatch loops, metrics logging, NaN guard, resumption.

:func:`fit` trains any model of the library through one small interface: the model's
``training_loss(x, y)`` (a scalar to minimise), ``predict_proba(x)`` for the per-epoch
metrics, ``num_classes`` and ``config`` (for checkpoints).

Determinism: the data order of epoch ``e`` is a permutation drawn from ``seed + e``, and
checkpoints store the optimiser, the learning-rate schedule and the global RNG state (which
drives dropout), so a run resumed from a checkpoint continues exactly as if it had never
stopped (on CPU; GPU kernels may not be bitwise deterministic).
"""

from __future__ import annotations

import collections
import copy
import csv
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, save_checkpoint
from .datasets import check_classification_data
from .metrics import accuracy, expected_calibration_error, negative_log_likelihood
from .networks import Classifier

__all__ = [
    "DeviceUnavailableError",
    "TrainingDivergedError",
    "evaluate",
    "fit",
    "resolve_device",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good state."""


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine (or this torch build) does not have."""


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """The device to train on: ``device`` if given (checked to exist), else the model's."""
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
    probs = model.predict_proba(x.to(device)).cpu()
    y = y.cpu()
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
) -> list[dict[str, Any]]:
    """Train ``model`` by minibatch gradient descent on ``model.training_loss``.

    Args:
        model: a model of the library (e.g. :class:`~ugmm_prob.networks.UGMMClassifier`).
        x, y: training inputs ``(n, ...)`` and integer labels ``(n,)``.
        x_val, y_val: data for the per-epoch metrics (accuracy, NLL, ECE); the training
            data when omitted.
        epochs: total number of epochs (including those already done when resuming).
        batch_size: minibatch size; the last minibatch of an epoch may be smaller.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``); ``lr``, ``weight_decay``.
        milestones, gamma: ``MultiStepLR`` schedule (the paper: ``(20, 45, 60)``, ``0.1``).
        device: where to train (``"cpu"``, ``"cuda"``, ...); default: where the model is.
        seed: seeds the data order and the global RNG (dropout).
        progress: show tqdm progress bars.
        metrics_path: ``.csv`` or ``.jsonl`` file receiving one row per epoch.
        checkpoint_path: checkpoint written atomically after every epoch.
        resume: continue from ``checkpoint_path`` if it exists.

    Returns:
        The per-epoch history: dicts with ``epoch``, ``loss``, ``accuracy``, ``nll``,
        ``ece``, ``lr`` and ``seconds``.

    Raises:
        TrainingDivergedError: the loss became NaN/inf. The model (and optimiser) are
            restored to the end of the last completed epoch, which is also what the
            checkpoint file holds.
    """
    x_val, y_val = checked_data(model, x, y, x_val, y_val)
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"expected epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")

    device = resolve_device(device, model)
    model.to(device)
    params = list(model.parameters())
    opt = _make_optimizer(optimizer, params, lr, weight_decay, momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)

    start_epoch, history = 0, []
    resuming = resume and pathlib.Path(checkpoint_path).exists()
    if resuming:
        state = load_checkpoint(checkpoint_path)
        if type(state.model) is not type(model) or state.model.config != model.config:
            raise ValueError(
                f"{checkpoint_path} holds a {type(state.model).__name__} with config "
                f"{state.model.config}, not this {type(model).__name__} with {model.config}"
            )
        model.load_state_dict(state.model.state_dict())
        opt.load_state_dict(state.training_state["optimizer"])
        _load_scheduler_state(scheduler, state.training_state["scheduler"])
        torch.set_rng_state(state.training_state["rng_state"])
        start_epoch, history = state.epoch, state.history
    else:
        torch.manual_seed(seed)
    writer = _MetricsWriter(metrics_path, append=resuming)

    n = len(x)
    last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    epoch_bar = tqdm(
        range(start_epoch, epochs),
        desc="epochs",
        disable=not progress,
        initial=start_epoch,
        total=epochs,
    )
    for epoch in epoch_bar:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        total, seen = 0.0, 0
        batches = tqdm(
            range(0, n, batch_size),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not progress,
        )
        for step, begin in enumerate(batches):
            index = order[begin : begin + batch_size]
            xb, yb = x[index].to(device), y[index].to(device)
            loss = model.training_loss(xb, yb)
            if not torch.isfinite(loss):
                model.load_state_dict(last_good[0])
                opt.load_state_dict(last_good[1])
                where = f"{checkpoint_path}" if checkpoint_path else "no checkpoint file"
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; the "
                    f"model was restored to its state after epoch {epoch} ({where} holds "
                    "the same); try a lower learning rate or a larger scale_floor"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(index)
            seen += len(index)
        scheduler.step()
        metrics = evaluate(model, x_val, y_val)
        row = {
            "epoch": epoch + 1,
            "loss": total / max(seen, 1),
            **metrics,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        writer.write(row)
        epoch_bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.4f}")
        last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                model,
                epoch=epoch + 1,
                history=history,
                training_state={
                    "optimizer": opt.state_dict(),
                    "scheduler": _scheduler_state(scheduler),
                    "rng_state": torch.get_rng_state(),
                    "seed": seed,
                },
            )
    return history
