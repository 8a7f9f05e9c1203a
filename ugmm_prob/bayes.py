"""Bayesian treatment of parameters: priors, guides, stochastic variational inference.

:func:`make_bayesian` turns the uGMM parameters of any model of the library into random
variables with priors (``PyroSample``), on a copy, so the point-estimate model is left as it
was. :func:`fit_svi` then fits a guide (``AutoNormal`` by default) by minibatch SVI whose
likelihood is scaled to the full data set, and :func:`predictive_probs` draws posterior
predictive class probabilities.

Default priors, per parameter kind (each element independent):

- means ``loc``: ``Normal(0, prior_scale)``;
- scales: ``floor + LogNormal(0, 1)`` (so the scale floor holds for every draw);
- mixing logits: ``Normal(0, prior_scale)``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.optim import PyroOptim

from . import distributed
from .checkpoints import Checkpoint
from .datasets import check_classification_data
from .distributions import FlooredLogNormal
from .layers import UGMMLayer
from .networks import Classifier, build_model
from .training import check_schedule, checked_data, diverged, resolve_device, train_loop

__all__ = [
    "default_prior",
    "fit_svi",
    "make_bayesian",
    "point_model",
    "predictive_probs",
    "run_nuts",
]

PriorFactory = Callable[[str, torch.Tensor, UGMMLayer], dist.Distribution]


def default_prior(kind: str, value: torch.Tensor, layer: UGMMLayer, *, prior_scale: float = 1.0):
    """The default prior of one parameter tensor of a layer (see the module docstring)."""
    zeros = torch.zeros_like(value)
    if kind == "loc" or kind == "logits":
        base: dist.Distribution = dist.Normal(zeros, prior_scale * torch.ones_like(value))
    elif kind == "scale":
        base = FlooredLogNormal(zeros, torch.ones_like(value), layer.scale_floor)
    else:
        raise ValueError(f"no default prior for parameter kind {kind!r}")
    return base.to_event(value.dim())


def make_bayesian(
    model: Classifier,
    *,
    parameters: Iterable[str] = ("loc", "scale", "logits"),
    prior: PriorFactory | None = None,
    prior_scale: float = 1.0,
) -> Classifier:
    """A copy of ``model`` whose uGMM parameters are random variables with priors.

    Args:
        model: any model of the library built from :class:`~ugmm_prob.layers.UGMMLayer`\\ s.
        parameters: which parameter kinds of every uGMM layer get priors; the others, and
            every non-uGMM parameter (LayerNorm, convolutions), stay point estimates.
        prior: ``prior(kind, current_value, layer) -> Distribution`` with event shape equal
            to the parameter's shape; default :func:`default_prior`.
        prior_scale: standard deviation of the default priors on means and logits.

    Returns:
        The Bayesian copy; ``model`` itself is unchanged.
    """
    kinds = tuple(parameters)
    unknown = set(kinds) - {"loc", "scale", "logits"}
    if unknown:
        raise ValueError(f"parameters must be among 'loc', 'scale', 'logits', got {unknown}")
    bayesian = copy.deepcopy(model)
    layers = [m for m in bayesian.modules() if isinstance(m, UGMMLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no UGMMLayer to put priors on")
    for layer in layers:
        for kind in kinds:
            value = getattr(layer, kind).detach()
            distribution = (
                prior(kind, value, layer)
                if prior is not None
                else default_prior(kind, value, layer, prior_scale=prior_scale)
            )
            if distribution.event_shape != value.shape:
                raise ValueError(
                    f"prior for {kind} of {layer.label} has event shape "
                    f"{tuple(distribution.event_shape)}, expected {tuple(value.shape)}"
                )
            delattr(layer, kind)
            setattr(layer, kind, PyroSample(distribution))
    bayesian.bayesian_parameters = kinds
    return bayesian


def _make_guide(guide: str | Callable, model: Callable, init_scale: float) -> Callable:
    if callable(guide):
        return guide
    if guide == "normal":
        return AutoNormal(model, init_scale=init_scale)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_scale=init_scale)
    raise ValueError(f"guide must be 'normal', 'lowrank' or a Pyro guide, got {guide!r}")


def predictive_probs(
    model: Classifier,
    x: torch.Tensor,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 50,
) -> torch.Tensor:
    """Class probabilities under posterior draws: ``(S, n, C)``.

    Draws come from a fitted ``guide`` (``num_samples`` of them) or from
    ``posterior_samples`` (e.g. ``run_nuts(...).get_samples()``).
    """
    if (guide is None) == (posterior_samples is None):
        raise ValueError("give exactly one of guide= and posterior_samples=")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            predictive = Predictive(
                model.logits,
                guide=guide,
                posterior_samples=posterior_samples,
                num_samples=None if posterior_samples is not None else num_samples,
                return_sites=("_RETURN",),
            )
            logits = predictive(x)["_RETURN"]
    finally:
        model.train(was_training)
    return torch.softmax(logits, dim=-1)


def run_nuts(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_samples: int = 200,
    warmup_steps: int = 200,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> MCMC:
    """Sample the posterior of a (small) Bayesian model with NUTS; returns the ``MCMC``.

    Gold standard against which variational results can be checked; its cost grows with the
    number of parameters and data points, so keep it to models like the Iris networks.
    """
    if not getattr(model, "bayesian_parameters", None):
        raise ValueError("run_nuts needs a model from make_bayesian(...)")
    check_classification_data(x, y, model.num_classes, name="data")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    kernel = NUTS(model.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    mcmc = MCMC(
        kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=not progress
    )
    mcmc.run(x, y)
    return mcmc


def point_model(model: Classifier, values: dict[str, torch.Tensor]) -> Classifier:
    """A point-estimate model with every random parameter of ``model`` fixed to ``values``.

    Args:
        model: a model from :func:`make_bayesian`.
        values: one value per prior site, keyed by site name (e.g. ``guide.median()``).

    Returns:
        A fresh instance of the original class (same config), with the non-random
        parameters of ``model`` (LayerNorm, convolutions) and ``values`` for the others,
        usable wherever a point-estimate model is (``predict_proba``, checkpoints).
    """
    # Building draws initial values from the global RNG; keep it where training left it, so a
    # run that writes checkpoints follows the same random path as one that does not.
    with torch.random.fork_rng(devices=[]):
        point = build_model(type(model).__name__, model.config)
    point.load_state_dict(model.state_dict(), strict=False)
    prefix = model._pyro_name + "."
    for name, value in values.items():
        if not name.startswith(prefix):
            raise ValueError(f"site {name!r} does not belong to {model._pyro_name}")
        path, kind = name[len(prefix) :].rpartition(".")[::2]
        module = point.get_submodule(path)
        value = value.detach().to(module.__getattr__(kind).device)
        if kind in getattr(module, "_pyro_params", {}):
            constraint, event_dim = module._pyro_params[kind]
            setattr(module, kind, PyroParam(value, constraint=constraint, event_dim=event_dim))
        else:
            with torch.no_grad():
                getattr(module, kind).copy_(value)
    return point


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
    _MODEL = "{model}"

    def __init__(
        self,
        model: Classifier,
        guide: Callable,
        lr: float,
        num_particles: int,
        predictive_samples: int,
        example: tuple[torch.Tensor, torch.Tensor, int],
    ) -> None:
        self.model, self.guide, self.lr = model, guide, lr
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
                torch.distributed.broadcast(param.data, src=0)

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

    def end_epoch(self) -> dict[str, Any]:
        return {}

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        probs = predictive_probs(
            self.model, x, guide=self.guide, num_samples=self.predictive_samples
        )
        return probs.mean(0)

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

    def checkpoint_model(self) -> Classifier:
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


def fit_svi(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    guide: str | Callable = "normal",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-2,
    num_particles: int = 1,
    init_scale: float = 0.05,
    predictive_samples: int = 20,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    metrics_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> tuple[Callable, list[dict[str, Any]]]:
    """Fit a guide to ``p(parameters | data)`` by minibatch SVI.

    Each minibatch's log-likelihood is scaled by ``len(x) / batch`` (``pyro.plate``
    subsampling), so the ELBO is that of the whole data set. Pyro's global parameter store is
    cleared first. Training runs through the same loop as :func:`~ugmm_prob.training.fit`:
    progress bars, per-epoch metrics (mean negative ELBO per example ``elbo_loss``, and the
    posterior predictive's accuracy, NLL and ECE on the validation data, the training data
    when omitted), checkpoints, resumption, the NaN guard and ``torchrun`` (each rank fits
    its share of every global minibatch; gradients are averaged over ranks).

    Checkpoints hold the guide's parameters and the optimiser state for resuming, and, as
    their model, the point-estimate network at the guide's median (see :func:`point_model`),
    so ``load_checkpoint`` gives a usable network. To resume, rebuild the same Bayesian model
    and call ``fit_svi(..., checkpoint_path=..., resume=True)`` with the same guide.

    Returns:
        The fitted guide and the per-epoch history.

    Raises:
        TrainingDivergedError: the ELBO became NaN/inf; the guide is restored to the end of
            the last completed epoch, which is also what the checkpoint holds.
    """
    if not isinstance(model, PyroModule) or not getattr(model, "bayesian_parameters", None):
        raise ValueError("fit_svi needs a model from make_bayesian(...)")
    x_val, y_val = checked_data(model, x, y, x_val, y_val)
    check_schedule(epochs, batch_size, resume, checkpoint_path)
    device = resolve_device(device, model)
    model.to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide_fn = _make_guide(guide, model.model, init_scale)
    trainer = _VariationalTrainer(
        model,
        guide_fn,
        lr,
        num_particles,
        predictive_samples,
        example=(x[:batch_size].to(device), y[:batch_size].to(device), len(x)),
    )
    history = train_loop(
        trainer,
        x,
        y,
        x_val,
        y_val,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
        metrics_path=metrics_path,
        checkpoint_path=checkpoint_path,
        resume=resume,
    )
    return guide_fn, history
