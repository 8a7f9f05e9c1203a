"""The epoch loop every kind of training runs through, and the :class:`Trainer` it drives.

:func:`train_loop` owns what is common to gradient descent (:func:`~ugmm_prob.training.fit`),
SVI (:func:`ugmm_prob.bayes.fit_svi`) and EM (:func:`ugmm_prob.circuits.fit_em`): the data
order, minibatches split across ``torchrun`` ranks, progress bars, per-epoch validation
metrics and metrics files, atomic checkpoints, resumption, ``keep_best``, the NaN guard and
torch's thread count (:mod:`ugmm_prob.threads`). A :class:`Trainer` supplies the update
step and its own state.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import time
import warnings
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from ..roles import Model
from ..threads import adaptive_threads
from ..validation import validation_enabled
from .divergence import TrainingDivergedError, diverged, trained_tensors
from .history import BestEpoch, MetricsWriter
from .resume import check_resumable, data_fingerprint
from .settings import LoopSettings

__all__ = ["PROGRESS_DELAY_S", "PROGRESS_INTERVAL_S", "Trainer", "train_loop"]

PROGRESS_INTERVAL_S = 0.25
"""Progress bars redraw at most this often (seconds), whatever the number of steps."""

PROGRESS_DELAY_S = 1.0
"""An epoch's own bar (minibatches) appears only once the epoch has run this long, so short
epochs draw one bar, the epochs'."""


class Trainer(Protocol):
    """One kind of training, as :func:`train_loop` drives it.

    :func:`~ugmm_prob.training.fit` (gradient descent on point estimates) and
    :func:`ugmm_prob.bayes.fit_svi` (stochastic variational inference) each implement it,
    so both share the epoch loop, progress bars, metrics files, checkpoints, resumption,
    the NaN guard and distribution across processes.
    """

    model: Model
    loss_name: str

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, *, weight: float, num_data: int
    ) -> float | torch.Tensor:
        """One update on this rank's share ``(x, y)`` of a global minibatch.

        ``weight`` is ``len(x) * world_size / global_batch``: the factor that makes the
        average over ranks of this rank's gradient equal the gradient of the global batch.
        Returns the global batch's mean loss, identical on every rank: a float (checked at
        once; when it is not finite the update must not have been kept), or a 0-dimensional
        tensor, which the loop reads at the epoch's end without a host synchronisation per
        step (a non-finite one then undoes the whole epoch).
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
    # learning rate under "lr"; set_lr(lr) -> None applies a new base learning rate;
    # keeps_checks = True: its steps run with validation as the caller set it (otherwise
    # disabled: the data were checked before the loop).


class _EpochLoop:
    """One run of :func:`train_loop`: its settings, state and history, epoch by epoch."""

    def __init__(
        self,
        trainer: Trainer,
        data: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None],
        settings: LoopSettings,
        device: torch.device,
    ) -> None:
        self.trainer, self.settings, self.device = trainer, settings, device
        self.x, self.y, self.x_val, self.y_val = data
        self.ctx = distributed.context()
        self.start_epoch, self.history = 0, []
        self.run = {
            "seed": settings.seed,
            "batch_size": settings.batch_size,
            "keep_best": settings.keep_best,
            "data": data_fingerprint(self.x, self.y),
            "validation": data_fingerprint(self.x_val, self.y_val),
            **(getattr(trainer, "run_settings", dict)()),
        }
        path = settings.checkpoint_path
        resuming = settings.resume and pathlib.Path(path).exists()
        state = self._resume() if resuming else None
        if state is None:
            torch.manual_seed(settings.seed + self.ctx.rank)
        self.best = None if settings.keep_best is None else BestEpoch(settings.keep_best)
        if self.best is not None and state is not None and "best" in state.training_state:
            self.best.load(state.training_state["best"])
        self.writer = MetricsWriter(
            settings.metrics_path if self.ctx.is_main else None,
            keep_epochs=self.start_epoch if resuming else None,
        )
        self.show = settings.progress and self.ctx.is_main
        # the file holding the state after the last completed epoch, once there is one
        self.saved = pathlib.Path(path) if resuming else None
        self.last_good = trainer.snapshot()
        # torch's thread count follows the cores other processes leave free (ticked every
        # step): parallel operations stall beside a busy process otherwise
        self.governor = adaptive_threads()

    def _resume(self) -> Checkpoint:
        """Continue from the checkpoint: trainer state, RNG, epoch count and history."""
        path, settings = self.settings.checkpoint_path, self.settings
        state = load_checkpoint(path)
        new_lr = check_resumable(state, self.trainer.model, self.run, path, settings.override_lr)
        self.trainer.load_training_state(state)
        if new_lr is not None:
            self.trainer.set_lr(new_lr)
            if self.ctx.is_main:
                warnings.warn(
                    f"resuming {path} with lr {new_lr} instead of "
                    f"{state.training_state['run']['lr']} (override_lr=True)",
                    stacklevel=5,
                )
        torch.set_rng_state(state.training_state["rng_state"])
        if self.ctx.rank > 0:
            # Only rank 0's generator is stored; the others continue from distinct seeds.
            torch.manual_seed(settings.seed + self.ctx.rank * 1_000_003 + state.epoch)
        self.start_epoch, self.history = state.epoch, state.history
        return state

    @contextlib.contextmanager
    def divergence_guard(self, what: str, epoch: int):
        """A ``ValueError`` inside that means divergence (:func:`diverged`: raised on values
        computed from diverged parameters) becomes :meth:`diverge`'s error, ``what`` and the
        error named; any other ``ValueError`` (bad input) passes through."""
        try:
            yield
        except ValueError as error:
            if not diverged(error, trained_tensors(self.trainer)):
                raise
            raise self.diverge(f"{what} ({type(error).__name__}: {error})", epoch) from error

    def diverge(self, what: str, epoch: int) -> TrainingDivergedError:
        """Restore the state after the last completed epoch; the error to raise."""
        self.trainer.restore(self.last_good)
        saved = self.saved
        where = f"{saved} holds the same" if saved is not None else "no checkpoint was written"
        return TrainingDivergedError(
            f"{what}; the model was restored to its state after epoch {epoch} ({where}); "
            "try a lower learning rate or a larger scale_floor",
            epoch=epoch,
            checkpoint=saved,
        )

    def train_epoch(self, epoch: int) -> float:
        """The epoch's updates; returns the sum over examples of the minibatch losses.

        Losses a trainer returns as tensors stay on the device until the epoch's end, where
        one transfer reads them all: the first non-finite one stops the run as if it had been
        seen at its step (the updates after it are undone with the rest of the epoch).
        """
        n, batch_size = len(self.x), self.settings.batch_size
        self.trainer.model.train()
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(self.settings.seed + epoch)
        )
        losses: list[tuple[int, float | torch.Tensor, int]] = []
        batches = tqdm(
            range(0, n, batch_size),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not self.show,
            delay=PROGRESS_DELAY_S,
            mininterval=PROGRESS_INTERVAL_S,
        )
        keep = getattr(self.trainer, "keeps_checks", False)
        with contextlib.nullcontext() if keep else validation_enabled(False):
            for step, begin in enumerate(batches):
                index = order[begin : begin + batch_size]
                loss = self._step(index)
                if not isinstance(loss, torch.Tensor):
                    self._check_finite(loss, epoch, step)
                losses.append((step, loss, len(index)))
                self.governor.tick()
        return self._epoch_total(losses, epoch)

    def _step(self, index: torch.Tensor) -> float | torch.Tensor:
        """One update on the global minibatch ``index``; the trainer's loss for it."""
        ctx = self.ctx
        local = ctx.shard(index)
        if len(local) == 0:
            # fewer examples than ranks: this rank joins the collectives with a
            # zero-weighted copy of the batch's first example.
            local, weight = index[:1], 0.0
        else:
            weight = len(local) * ctx.world_size / len(index)
        labels = None if self.y is None else self.y[local].to(self.device)
        return self.trainer.step(
            self.x[local].to(self.device), labels, weight=weight, num_data=len(self.x)
        )

    def _check_finite(self, loss: float, epoch: int, step: int) -> None:
        if not math.isfinite(loss):
            raise self.diverge(
                f"{self.trainer.loss_name} became {loss} at epoch {epoch + 1}, step {step + 1}",
                epoch,
            )

    def _epoch_total(
        self, losses: list[tuple[int, float | torch.Tensor, int]], epoch: int
    ) -> float:
        """The sum of loss times batch size over the epoch's steps, in order (the NaN guard
        for losses that stayed on the device)."""
        pending = [loss for _, loss, _ in losses if isinstance(loss, torch.Tensor)]
        values = iter(torch.stack(pending).tolist() if pending else [])
        total = 0.0
        for step, loss, size in losses:
            value = next(values) if isinstance(loss, torch.Tensor) else loss
            self._check_finite(value, epoch, step)
            total += value * size
        return total

    def validate(self, epoch: int) -> dict[str, float]:
        """The model's validation metrics after ``epoch`` (gathered over ranks)."""
        ctx, x_val = self.ctx, self.x_val
        local_val = ctx.shard(torch.arange(len(x_val)))
        with self.divergence_guard(
            f"the evaluation after epoch {epoch + 1} failed on non-finite values", epoch
        ):
            local_outputs = self.trainer.validation_outputs(x_val[local_val].to(self.device))
        if not all(bool(torch.isfinite(value).all()) for value in local_outputs.values()):
            raise self.diverge(
                f"the validation outputs after epoch {epoch + 1} are not finite", epoch
            )
        outputs = {
            key: ctx.gather_rows(value.cpu(), len(x_val)) for key, value in local_outputs.items()
        }
        labels = None if self.y_val is None else self.y_val.cpu()
        return self.trainer.model.validation_metrics(outputs, labels)

    def save(self, epoch: int) -> None:
        """Write the checkpoint of the state after ``epoch`` (rank 0; the others wait)."""
        path = self.settings.checkpoint_path
        if self.ctx.is_main:
            arguments = dict(
                epoch=epoch + 1,
                history=self.history,
                training_state={
                    **self.trainer.training_state(),
                    "rng_state": torch.get_rng_state(),
                    "seed": self.settings.seed,
                    "world_size": self.ctx.world_size,
                    "run": self.run,
                    **({} if self.best is None else {"best": self.best.state()}),
                },
            )
            model = self.trainer.checkpoint_model()
            try:
                save_checkpoint(path, model, **arguments)
            except KeyboardInterrupt:
                # Ctrl-C mid-save: finish saving the completed epoch, then stop.
                save_checkpoint(path, model, **arguments)
                raise
            self.saved = pathlib.Path(path)
        self.ctx.barrier()

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train, validate, record and checkpoint one epoch; its history row."""
        started = time.perf_counter()
        with self.divergence_guard(f"an update in epoch {epoch + 1} failed", epoch):
            total = self.train_epoch(epoch)
            extra = self.trainer.end_epoch()
        row = {
            "epoch": epoch + 1,
            self.trainer.loss_name: total / max(len(self.x), 1),
            **self.validate(epoch),
            **extra,
            "seconds": time.perf_counter() - started,
        }
        if self.best is not None:
            self.best.update(row, self.trainer.snapshot)
            row["best_epoch"] = self.best.epoch
        self.history.append(row)
        self.writer.write(row)
        self.last_good = self.trainer.snapshot()
        if self.settings.checkpoint_path is not None:
            self.save(epoch)
        return row

    def run_all(self) -> list[dict[str, Any]]:
        """Every remaining epoch (or until ``patience`` epochs pass without a better
        ``keep_best`` metric); ends in the best epoch's state with ``keep_best``."""
        epochs = self.settings.epochs
        epoch_bar = tqdm(
            range(self.start_epoch, epochs),
            desc="epochs",
            disable=not self.show,
            initial=self.start_epoch,
            total=epochs,
            mininterval=PROGRESS_INTERVAL_S,
        )
        patience = self.settings.patience
        with self.governor:
            for epoch in epoch_bar:
                row = self.run_epoch(epoch)
                if patience is not None and row["epoch"] - self.best.epoch >= patience:
                    epoch_bar.close()  # the metric has not improved for `patience` epochs
                    break
                shown = "accuracy" if "accuracy" in row else "nll"
                epoch_bar.set_postfix(  # drawn with the bar's next update, not now
                    loss=f"{row[self.trainer.loss_name]:.4f}",
                    **{shown: f"{row[shown]:.4f}"},
                    refresh=False,
                )
        if self.best is not None and self.best.snapshot is not None:
            self.trainer.restore(self.best.snapshot)
        return self.history


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
    each history row then has ``best_epoch``. With ``patience`` too, training stops after
    the first epoch that ends ``patience`` epochs without a better value (early stopping).
    Checkpoints still hold the last epoch, so training can resume, with the best state so
    far inside them.
    """
    return _EpochLoop(trainer, (x, y, x_val, y_val), settings, device).run_all()
