"""Training: the epoch loop, point-estimate training, metrics logging, NaN guard, resumption.

Where things live:

- :mod:`~ugmm_prob.training.loop`: :func:`train_loop`, the one loop every kind of training
  runs through (a :class:`Trainer` supplies the update step): data order, minibatches split
  across ``torchrun`` ranks, progress bars, per-epoch metrics, checkpoints, ``keep_best``;
- :mod:`~ugmm_prob.training.point`: :func:`fit`, point estimates of any model of the library
  by gradient descent on its ``training_loss``, and :func:`evaluate`;
- :mod:`~ugmm_prob.training.settings`: :class:`LoopSettings`, the arguments every training
  function shares (:func:`ugmm_prob.bayes.fit_svi` and :func:`ugmm_prob.circuits.fit_em`
  run through the same loop);
- :mod:`~ugmm_prob.training.checks`: the data and device checks before a loop starts;
- :mod:`~ugmm_prob.training.history`: metrics files and the epoch kept by ``keep_best``;
- :mod:`~ugmm_prob.training.divergence`: the NaN guard (:class:`TrainingDivergedError`);
- :mod:`~ugmm_prob.training.resume`: what a checkpoint records of its run, and the check
  that a resumed run matches it.

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

from ..boundary import NonFiniteError
from ..metrics import classification_metrics
from .checks import DeviceUnavailableError, checked_data, prepare_training, resolve_device
from .checks import check_unlabelled_data as check_unlabelled_data
from .divergence import TrainingDivergedError, diverged
from .history import MAXIMISED_METRICS as MAXIMISED_METRICS
from .loop import Trainer, train_loop
from .point import _PointEstimateTrainer as _PointEstimateTrainer
from .point import evaluate, fit
from .resume import ResumeMismatchError, data_fingerprint
from .settings import LoopSettings

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
