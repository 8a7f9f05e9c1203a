"""Point estimates by gradient descent: :func:`fit`, and :func:`evaluate`.

:func:`fit` trains any model of the library through its role (:mod:`ugmm_prob.roles`):
``training_loss(x, y)`` (a scalar to minimise; ``y`` is None for a density model fitted
without labels), ``validation_outputs`` and ``validation_metrics`` for the per-epoch
metrics, ``config`` (for checkpoints). Its :class:`~ugmm_prob.training.Trainer` runs Adam or
SGD with a ``MultiStepLR`` schedule, under ``torchrun`` through ``DistributedDataParallel``.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pyro.distributions
import torch

from .. import distributed
from ..checkpoints import Checkpoint
from ..roles import Model
from .checks import has_missing_cells, prepare_training, resolve_device
from .divergence import diverged
from .loop import train_loop
from .settings import LoopSettings

__all__ = ["evaluate", "fit"]


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


def _make_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        params = list(params)
        # The fused kernel (one call per step for every parameter, CPU and CUDA) is the same
        # update; for a small network it takes a quarter of the foreach version's step time.
        devices = {p.device.type for p in params}
        fused = devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
        return torch.optim.Adam(
            params, lr=lr, weight_decay=weight_decay, fused=fused or None, foreach=not fused
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


@contextlib.contextmanager
def _distribution_checks(flag: bool) -> Iterator[None]:
    """Pyro's (and torch's) distribution argument checks set to ``flag`` in the block."""
    previous = pyro.distributions.is_validation_enabled()
    pyro.distributions.enable_validation(flag)
    try:
        yield
    finally:
        pyro.distributions.enable_validation(previous)


def _clone_tree(value: Any) -> Any:
    """A copy of nested dicts, lists and tuples whose tensors are cloned (a state dict's
    ``_metadata`` kept): what ``copy.deepcopy`` gives for state dicts, at a fraction of its
    cost, which the loop pays once or twice per epoch."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        copied = type(value)((key, _clone_tree(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):
            copied._metadata = value._metadata
        return copied
    if isinstance(value, list | tuple):
        return type(value)(_clone_tree(item) for item in value)
    return value  # numbers, strings, None: immutable


class _LossModule(torch.nn.Module):
    """``model.training_loss`` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:  # the only call a model that cannot marginalise ever sees
            return self.model.training_loss(x, y)
        return self.model.training_loss(x, y, mask=mask)


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
        missing: bool = False,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.settings = dict(settings or {})
        # the data have NaN cells (checked once before the loop, so that a step needs no
        # host synchronisation to know): each step marginalises its minibatch's
        self.missing = missing
        self.ctx = distributed.context()
        self.loss = _LossModule(model)
        if self.ctx.enabled:
            # DDP broadcasts rank 0's parameters now and averages gradients in backward().
            self.loss = torch.nn.parallel.DistributedDataParallel(
                self.loss, device_ids=[device.index] if device.type == "cuda" else None
            )

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, *, weight: float, num_data: int
    ) -> torch.Tensor:
        try:
            # The data were checked before the loop, which runs the steps without the
            # library's checks (no host synchronisation per layer); nor Pyro's distribution
            # checks here: a NaN shows in the loss instead.
            mask = torch.isnan(x).logical_not_() if self.missing else None
            with _distribution_checks(False):
                loss = self.loss(x, y, mask)
        except ValueError as error:
            if not diverged(error, self.model.parameters()):
                raise
            return torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
        # Every rank needs the global loss anyway (for the history), identical on all of
        # them, so they agree to stop when any sees NaN. It stays on the device: the loop
        # reads the epoch's losses at once. A NaN step's update is undone with its epoch.
        global_loss = self.ctx.sum(loss.detach() * weight).double() / self.ctx.world_size
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
        return _clone_tree(self.model.state_dict()), _clone_tree(self.optimizer.state_dict())

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
    patience: int | None = None,
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
            (e.g. a circuit) may be fitted to ``x`` alone, and takes incomplete data
            (``model.accepts_missing_cells``, ``model.accepts_unlabelled_rows``): NaN cells
            of ``x`` are missing (a row's loss is that of ``log p(x_observed[, y])``) and a
            label ``-1`` (:data:`~ugmm_prob.roles.UNLABELLED`) marks a row of unknown class
            (it contributes ``log p(x) = logsumexp_c log p(x, c)``: semi-supervised).
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
        patience: with ``keep_best``, stop once ``patience`` epochs have passed without a
            better value of its metric (early stopping; ``None``: run every epoch).

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
    trainer = _PointEstimateTrainer(
        model, opt, scheduler, device, run_settings, missing=has_missing_cells(model, x)
    )
    return train_loop(trainer, x, y, x_val, y_val, settings, device)
