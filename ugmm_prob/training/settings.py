"""How a training loop runs, whatever the trainer: :class:`LoopSettings`.

The schedule (epochs, batch size, seed), the files (metrics, checkpoints, resumption) and the
epoch selection (``keep_best``, ``patience``) shared by :func:`~ugmm_prob.training.fit`,
:func:`ugmm_prob.bayes.fit_svi` and :func:`ugmm_prob.circuits.fit_em`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["LoopSettings"]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How :func:`~ugmm_prob.training.train_loop` runs, whatever the trainer: schedule,
    files and selection.

    The arguments of the same names of :func:`~ugmm_prob.training.fit`,
    :func:`ugmm_prob.bayes.fit_svi` and :func:`ugmm_prob.circuits.fit_em`; each builds it
    with :meth:`from_arguments`.
    """

    epochs: int
    batch_size: int
    seed: int = 0
    progress: bool = True
    metrics_path: str | os.PathLike | None = None
    checkpoint_path: str | os.PathLike | None = None
    resume: bool = False
    keep_best: str | None = None
    patience: int | None = None
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
        patience = self.patience
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ValueError(f"patience must be None or an int >= 1, got {self.patience!r}")
        if self.keep_best is None:
            if self.patience is not None:
                raise ValueError(
                    "patience stops when the keep_best metric has not improved for that many "
                    "epochs: give keep_best (and held-out x_val) too"
                )
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
