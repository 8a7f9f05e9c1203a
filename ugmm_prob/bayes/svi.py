"""Stochastic variational inference: :func:`fit_svi`.

Minibatch SVI whose likelihood is scaled to the full data set, run through the training loop
of :mod:`ugmm_prob.training` (progress, metrics, checkpoints, resumption, the NaN guard,
``torchrun``) by a :class:`~ugmm_prob.training.Trainer` of its own.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import PyroOptim

from .. import distributed
from ..checkpoints import Checkpoint
from ..roles import Model
from ..training import LoopSettings, diverged, prepare_training, train_loop
from .guides import make_guide
from .posterior import point_model, predictive_logits
from .priors import _check_bayesian

__all__ = ["fit_svi"]


class _RankAveragedOptim(PyroOptim):
    """A Pyro optimiser that averages gradients over ``torchrun`` ranks before each step.

    SVI hands the optimiser a *set* of parameters, whose order differs between processes;
    sorting by parameter-store name makes every rank reduce the same tensors in the same
    order.
    """

    def __init__(self, lr: float, ctx: distributed.DistributedContext) -> None:
        super().__init__(torch.optim.Adam, {"lr": lr})
        self.ctx = ctx

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        store = pyro.get_param_store()
        params = sorted(params, key=store.param_name)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.ctx.sum(torch.cat([g.reshape(-1) for g in grads])) / self.ctx.world_size
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        super().__call__(params, *args, **kwargs)


def _relative(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """Rename parameter-store keys from one model's Pyro name to another's.

    Every model instance has its own Pyro name (``UGMMClassifier_3``), so names in a
    checkpoint are stored relative to the model and resolved against the resuming one.
    """
    return {key.replace(old, new, 1): value for key, value in state.items()}


class _VariationalTrainer:
    """:class:`~ugmm_prob.training.Trainer` for SVI on a Bayesian model (:func:`fit_svi`)."""

    loss_name = "elbo_loss"
    # Checks stay on in the steps: a model that computes non-finite logits from finite
    # parameters reports it through them (NonFiniteError), which the NaN guard recognises.
    keeps_checks = True
    _MODEL = "{model}"

    def __init__(
        self,
        model: Model,
        guide: Callable,
        lr: float,
        num_particles: int,
        predictive_samples: int,
        example: tuple[torch.Tensor, torch.Tensor, int],
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.guide, self.lr = model, guide, lr
        self.settings = dict(settings or {})
        self.milestones, self.gamma, self.epoch = sorted(milestones), gamma, 0
        self.predictive_samples = predictive_samples
        self.ctx = distributed.context()
        self.svi = SVI(model.model, guide, self._optimizer(), Trace_ELBO(num_particles))
        # Create the guide's parameters now (guides create them lazily), so that they can be
        # broadcast from rank 0 and overwritten when resuming.
        x, y, num_data = example
        self.example = example
        guide(x, y, num_data=num_data)
        if self.ctx.enabled:
            for _, param in sorted(pyro.get_param_store().named_parameters()):
                # through the collective device: NCCL broadcasts only GPU tensors
                shared = param.detach().to(self.ctx.device(), copy=True)
                torch.distributed.broadcast(shared, src=0)
                param.data.copy_(shared)

    def _optimizer(self) -> PyroOptim:
        if self.ctx.enabled:
            return _RankAveragedOptim(self.lr, self.ctx)
        return pyro.optim.Adam({"lr": self.lr})

    def step(self, x: torch.Tensor, y: torch.Tensor, *, weight: float, num_data: int) -> float:
        # Each rank's minibatch ELBO, scaled to the whole data set, is an unbiased estimate
        # of the full ELBO; averaging gradients over ranks averages W such estimates.
        try:
            loss = self.svi.step(x, y, num_data=num_data)
        except ValueError as error:
            if not diverged(error, pyro.get_param_store().values()):
                raise
            loss = float("nan")
        summed = self.ctx.sum(torch.tensor(float(loss), dtype=torch.float64))
        return float(summed) / self.ctx.world_size / num_data

    def _set_lr(self) -> float:
        # MultiStepLR by hand: Pyro keeps one torch optimiser per parameter.
        lr = self.lr * self.gamma ** sum(m <= self.epoch for m in self.milestones)
        for optimizer in self.svi.optim.optim_objs.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        self.svi.optim.pt_optim_args["lr"] = lr  # for parameters created later
        return lr

    def end_epoch(self) -> dict[str, Any]:
        self.epoch += 1
        return {"lr": self._set_lr()}

    def run_settings(self) -> dict[str, Any]:
        return {**self.settings, "lr": float(self.lr)}

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        self._set_lr()

    def parameters(self) -> list[torch.Tensor]:
        # what an SVI step changes: the guide's parameters and the model's point estimates
        return list(pyro.get_param_store().values())

    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = predictive_logits(
            self.model, x, guide=self.guide, num_samples=self.predictive_samples
        )
        return self.model.outputs_from_logit_draws(logits)

    def _parameters(self) -> dict[str, torch.Tensor]:
        return {
            name: param.detach().clone()
            for name, param in pyro.get_param_store().named_parameters()
        }

    def _load_parameters(self, values: dict[str, torch.Tensor]) -> None:
        params = dict(pyro.get_param_store().named_parameters())
        missing = values.keys() - params.keys()
        if missing:
            raise ValueError(f"the guide has no parameters named {sorted(missing)}")
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)

    def snapshot(self) -> Any:
        return self._parameters(), copy.deepcopy(self.svi.optim.get_state())

    def restore(self, snapshot: Any) -> None:
        self._load_parameters(snapshot[0])
        self.svi.optim = self._optimizer()
        self.svi.optim.set_state(snapshot[1])

    def checkpoint_model(self) -> Model:
        if hasattr(self.guide, "median"):
            values = self.guide.median()
        else:
            x, y, num_data = self.example
            trace = pyro.poutine.trace(self.guide).get_trace(x, y, num_data=num_data)
            values = {
                name: site["value"]
                for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
        return point_model(self.model, values)

    def training_state(self) -> dict[str, Any]:
        name = self.model._pyro_name
        to_cpu = {key: value.cpu() for key, value in self._parameters().items()}
        return {
            "guide_parameters": _relative(to_cpu, name, self._MODEL),
            "optimizer": _relative(self.svi.optim.get_state(), name, self._MODEL),
        }

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        state, name = checkpoint.training_state, self.model._pyro_name
        if "guide_parameters" not in state:
            raise ValueError("the checkpoint was not written by fit_svi: no guide parameters")
        device = next(iter(self._parameters().values())).device
        values = _relative(state["guide_parameters"], self._MODEL, name)
        self._load_parameters({key: value.to(device) for key, value in values.items()})
        self.svi.optim = self._optimizer()
        self.svi.optim.set_state(_relative(state["optimizer"], self._MODEL, name))
        self.epoch = checkpoint.epoch
        self._set_lr()


def fit_svi(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    guide: str | Callable = "normal",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-2,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    num_particles: int = 1,
    init_scale: float = 0.05,
    predictive_samples: int = 20,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    metrics_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    keep_best: str | None = None,
    patience: int | None = None,
    override_lr: bool = False,
) -> tuple[Callable, list[dict[str, Any]]]:
    """Fit a guide to ``p(parameters | data)`` by minibatch SVI.

    Each minibatch's log-likelihood is scaled by ``len(x) / batch`` (``pyro.plate``
    subsampling), so the ELBO is that of the whole data set. Pyro's global parameter store is
    cleared first. Training runs through the same loop as :func:`~ugmm_prob.training.fit`:
    progress bars, per-epoch metrics (mean negative ELBO per example ``elbo_loss``, and the
    posterior predictive's accuracy, NLL and ECE on the validation data, the training data
    when omitted), checkpoints, resumption, the NaN guard and ``torchrun`` (each rank fits
    its share of every global minibatch; gradients are averaged over ranks).

    Adam's learning rate ``lr`` is multiplied by ``gamma`` at each epoch in ``milestones``
    (as ``MultiStepLR`` does for :func:`~ugmm_prob.training.fit`); ending with a small step
    lets the guide settle instead of jittering around the optimum at the Monte-Carlo noise
    of a large step.

    Checkpoints hold the guide's parameters and the optimiser state for resuming, and, as
    their model, the point-estimate network at the guide's median (see :func:`point_model`),
    so ``load_checkpoint`` gives a usable network. To resume, rebuild the same Bayesian model
    and call ``fit_svi(..., checkpoint_path=..., resume=True)`` with the same guide.

    ``keep_best`` ends with the guide of the epoch with the best validation metric, as in
    :func:`~ugmm_prob.training.fit` (needs held-out ``x_val``, ``y_val``), and ``patience``
    stops once that many epochs pass without a better one.

    Returns:
        The fitted guide and the per-epoch history.

    Resuming checks the run against the checkpoint as :func:`~ugmm_prob.training.fit`
    does (``override_lr=True`` allows a new ``lr``).

    Raises:
        TrainingDivergedError: the ELBO (or the per-epoch evaluation of the posterior
            predictive) became NaN/inf, whichever pass found it; the guide is restored to
            the end of the last completed epoch, which is also what the checkpoint holds,
            if one was written.
        ResumeMismatchError: ``resume`` with settings or data other than the checkpoint's.
    """
    _check_bayesian(model, "fit_svi")
    settings = LoopSettings.from_arguments(locals())
    x_val, y_val, device = prepare_training(model, x, y, x_val, y_val, settings, device)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide_fn = make_guide(guide, model.model, init_scale)
    trainer = _VariationalTrainer(
        model,
        guide_fn,
        lr,
        num_particles,
        predictive_samples,
        example=(x[:batch_size].to(device), y[:batch_size].to(device), len(x)),
        milestones=milestones,
        gamma=gamma,
        settings={
            "training": "fit_svi",
            "guide": guide if isinstance(guide, str) else type(guide).__name__,
            "num_particles": int(num_particles),
            "milestones": sorted(int(m) for m in milestones),
            "gamma": float(gamma),
        },
    )
    history = train_loop(trainer, x, y, x_val, y_val, settings, device)
    return guide_fn, history
