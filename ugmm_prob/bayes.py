"""Bayesian treatment of parameters: priors, guides, stochastic variational inference.

:func:`make_bayesian` turns the uGMM parameters of any model of the library into random
variables with priors (``PyroSample``), on a copy, so the point-estimate model is left as it
was: the uGMM-NN classifiers and the joint-score model (every
:class:`~ugmm_prob.layers.UGMMLayer`) and the generative
:class:`~ugmm_prob.circuits.UGMMCircuit`. :func:`fit_svi` then fits a guide (``AutoNormal``
by default, ``AutoLowRankMultivariateNormal`` or any callable) by minibatch SVI whose
likelihood is scaled to the full data set, :func:`run_nuts` samples small models exactly,
:func:`sample_posterior` collects parameter draws from either, :func:`predictive_probs`
draws posterior predictive class probabilities and :func:`posterior_log_likelihood` the
posterior-averaged likelihood ``log (1/S) sum_s p(data | theta_s)``.

Default priors, per parameter kind (each element independent):

- means ``loc`` (a layer's ``mu``, a circuit's input-unit means): ``Normal(0, prior_scale)``;
- scales: ``floor + LogNormal(0, 1)`` (so the scale floor holds for every draw);
- mixing logits ``logits`` (a layer's, a circuit's input units'): ``Normal(0, prior_scale)``;
- a circuit's sum-unit and root logits ``sum_logits`` and class logits ``class_logits``:
  ``Normal(0, prior_scale)``.

A circuit's ``loc`` prior assumes standardised (or unit-range) data; pass ``prior=`` for
others.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
from .layers import rename_pyro_module, unique_pyro_name
from .roles import Model
from .training import LoopSettings, diverged, prepare_training, train_loop

__all__ = [
    "PosteriorLogLikelihood",
    "default_prior",
    "fit_svi",
    "log_likelihood_from_logits",
    "make_bayesian",
    "point_model",
    "pointwise_log_likelihood",
    "posterior_log_likelihood",
    "predictive_logits",
    "predictive_probs",
    "prior_sites",
    "run_nuts",
    "sample_posterior",
]

PriorFactory = Callable[[str, torch.Tensor, torch.nn.Module], dist.Distribution]

PARAMETER_KINDS = ("loc", "scale", "logits", "sum_logits", "class_logits")
"""Kinds of parameters that take priors; modules name theirs in ``prior_parameters``."""


def default_prior(
    kind: str, value: torch.Tensor, owner: torch.nn.Module, *, prior_scale: float = 1.0
) -> dist.Distribution:
    """The default prior of one parameter tensor (see the module docstring).

    Args:
        kind: ``"loc"``, ``"scale"``, ``"logits"``, ``"sum_logits"`` or ``"class_logits"``.
        value: the parameter's current value (its shape is the prior's event shape).
        owner: the module the parameter belongs to (a :class:`~ugmm_prob.layers.UGMMLayer`,
            a circuit's input or sum layer; for scales: its ``scale_floor``).
        prior_scale: standard deviation of the Normal priors.

    Returns:
        ``Normal(0, prior_scale)`` for means and logits, ``floor + LogNormal(0, 1)`` for
        scales, with every element an event dimension.
    """
    zeros = torch.zeros_like(value)
    if kind in ("loc", "logits", "sum_logits", "class_logits"):
        base: dist.Distribution = dist.Normal(zeros, prior_scale * torch.ones_like(value))
    elif kind == "scale":
        base = FlooredLogNormal(zeros, torch.ones_like(value), float(owner.scale_floor))
    else:
        raise ValueError(f"no default prior for parameter kind {kind!r}")
    return base.to_event(value.dim())


def _targets(
    model: torch.nn.Module, parameters: Iterable[str] | None
) -> list[tuple[torch.nn.Module, str, str]]:
    """``(owner, attribute, kind)`` of every parameter that gets a prior.

    Every module that can carry priors says which of its attributes are of which kind in a
    ``prior_parameters`` table (uGMM layers, a circuit's input and sum layers, the circuit's
    class logits); the default is every kind but ``"class_logits"``.
    """
    owners = [
        (owner, owner.prior_parameters)
        for owner in model.modules()
        if isinstance(getattr(type(owner), "prior_parameters", None), dict)
    ]
    allowed = tuple(k for k in PARAMETER_KINDS if any(k in t.values() for _, t in owners))
    kinds = tuple(parameters) if parameters is not None else allowed
    if parameters is None:
        kinds = tuple(kind for kind in kinds if kind != "class_logits")
    unknown = [kind for kind in kinds if kind not in allowed]
    if unknown:
        raise ValueError(
            f"parameters must be among {', '.join(map(repr, allowed))} for "
            f"{type(model).__name__}, got {unknown}"
        )
    return [
        (owner, attribute, kind)
        for owner, table in owners
        for attribute, kind in table.items()
        if kind in kinds
    ]


def make_bayesian(
    model: Model,
    *,
    parameters: Iterable[str] | None = None,
    prior: PriorFactory | None = None,
    prior_scale: float = 1.0,
) -> Model:
    """A copy of ``model`` whose uGMM parameters are random variables with priors.

    Args:
        model: any model of the library built from :class:`~ugmm_prob.layers.UGMMLayer`\\ s
            (uGMM-NN classifiers, the joint-score model, convolutional uGMM heads) or a
            :class:`~ugmm_prob.circuits.UGMMCircuit`.
        parameters: which parameter kinds get priors. For uGMM layers among ``"loc"``,
            ``"scale"``, ``"logits"`` (default all three); for a circuit also
            ``"sum_logits"`` (sum units and roots) and ``"class_logits"`` (default: all but
            ``"class_logits"``). The others, and every non-uGMM parameter (LayerNorm,
            convolutions), stay point estimates.
        prior: ``prior(kind, current_value, owner) -> Distribution`` with event shape equal
            to the parameter's shape (``owner``: the layer or circuit); default
            :func:`default_prior`.
        prior_scale: standard deviation of the default priors on means and logits.

    Returns:
        The Bayesian copy, under a fresh Pyro name (``UGMMClassifier_7`` etc.) so that it
        never shares Pyro's parameter store with ``model``, which is left unchanged. Its
        prior sites are named ``"{copy name}.{path}.{attribute}"``; see :func:`prior_sites`.
    """
    if not isinstance(model, PyroModule):
        raise TypeError(f"make_bayesian needs a model of the library, got {type(model).__name__}")
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be positive, got {prior_scale}")
    # The library's models get a fresh Pyro name when deep-copied (FreshPyroNameOnCopy), so
    # the copy never shares Pyro's parameter store with the point model.
    bayesian = copy.deepcopy(model)
    if bayesian._pyro_name == model._pyro_name:
        rename_pyro_module(bayesian, unique_pyro_name(type(model).__name__))
    targets = _targets(bayesian, parameters)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no uGMM parameters to put priors on")
    for owner, attribute, kind in targets:
        value = getattr(owner, attribute).detach()
        distribution = (
            prior(kind, value, owner)
            if prior is not None
            else default_prior(kind, value, owner, prior_scale=prior_scale)
        )
        if distribution.event_shape != value.shape:
            label = getattr(owner, "label", type(owner).__name__)
            raise ValueError(
                f"prior for {attribute} of {label} has event shape "
                f"{tuple(distribution.event_shape)}, expected {tuple(value.shape)}"
            )
        delattr(owner, attribute)
        setattr(owner, attribute, PyroSample(distribution))
    bayesian.bayesian_parameters = tuple(dict.fromkeys(kind for _, _, kind in targets))
    return bayesian


def prior_sites(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """Pyro site name of every parameter with a prior: ``{name: (owner, attribute)}``."""
    sites = {}
    for owner in model.modules():
        for attribute in getattr(owner, "_pyro_samples", {}):
            prefix = owner._pyro_name
            sites[f"{prefix}.{attribute}" if prefix else attribute] = (owner, attribute)
    return sites


def _check_bayesian(model: torch.nn.Module, caller: str) -> None:
    if not isinstance(model, PyroModule) or not getattr(model, "bayesian_parameters", None):
        raise ValueError(
            f"{caller} needs a model from make_bayesian(...), got {type(model).__name__}"
        )


def sample_posterior(
    model: Model,
    *args: Any,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 100,
) -> dict[str, torch.Tensor]:
    """Draws ``theta_s`` of every parameter with a prior: ``{site: (S, *shape)}``.

    From a fitted ``guide`` (run ``num_samples`` times with ``*args``, e.g. ``x, y``; any
    callable guide whose trace samples the model's prior sites), or from
    ``posterior_samples`` (e.g. ``run_nuts(...).get_samples()``), whose singleton batch
    dimensions are dropped. Other sites are left out.
    """
    _check_bayesian(model, "sample_posterior")
    if (guide is None) == (posterior_samples is None):
        raise ValueError("give exactly one of guide= and posterior_samples=")
    sites = prior_sites(model)
    if posterior_samples is None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        draws: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
        with torch.no_grad():
            for _ in range(num_samples):
                trace = pyro.poutine.trace(guide).get_trace(*args)
                for name in sites:
                    if name not in trace.nodes:
                        raise ValueError(f"the guide has no sample site {name!r}")
                    draws[name].append(trace.nodes[name]["value"].detach())
        return {name: torch.stack(values) for name, values in draws.items()}
    missing = sorted(set(sites) - set(posterior_samples))
    if missing:
        raise ValueError(f"posterior_samples lacks the prior sites {missing}")
    out = {}
    for name, (owner, attribute) in sites.items():
        value = posterior_samples[name]
        shape = owner._pyro_samples[attribute].event_shape
        if value.dim() == 0 or value[0].numel() != shape.numel():
            raise ValueError(
                f"posterior_samples[{name!r}] must have shape (S, {', '.join(map(str, shape))})"
                f", got {tuple(value.shape)}"
            )
        # Predictive pads sites outside plates with singleton batch dimensions.
        out[name] = value.reshape(len(value), *shape)
    return out


@dataclass(frozen=True)
class PosteriorLogLikelihood:
    """Per-example posterior-averaged log-likelihood, its spread and the draws (nats).

    ``log_mean[i] = log (1/S) sum_s p_i(theta_s)`` (log-sum-exp minus ``log S``),
    ``std[i]`` the standard deviation over ``s`` of ``log p_i(theta_s)``, ``draws`` ``(S, n)``.
    """

    log_mean: torch.Tensor
    std: torch.Tensor
    draws: torch.Tensor


def pointwise_log_likelihood(
    model: Model, x: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """``log p_i`` of each example under the model's current parameters, shape ``(n,)``.

    A circuit: ``log p(x_i, y_i)``, or ``log p(x_i)`` without ``y``; a classifier
    ``log p(y_i | x_i)`` (``y`` required). Evaluation mode (no dropout).
    """
    was_training = model.training
    model.eval()
    try:
        return model.log_likelihood(x, y)
    finally:
        model.train(was_training)


def log_likelihood_from_logits(
    model: Model, logits: torch.Tensor, y: torch.Tensor | None
) -> torch.Tensor:
    """``log p_i`` from ``model.logits(x)``, for callers that need the logits anyway.

    A circuit's logits are ``log p(x_i, c)``: ``log p(x_i, y_i)`` is the entry of ``y_i`` and
    ``log p(x_i)`` their log-sum-exp over ``c``. A classifier's give
    ``log p(y_i | x_i) = log_softmax(logits)[y_i]``.
    """
    return model.log_likelihood_from_logits(logits, y)


def posterior_log_likelihood(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 100,
    batch_size: int = 4096,
) -> PosteriorLogLikelihood:
    """The posterior predictive log-likelihood of each example and its spread.

    .. math::  \\log \\hat p(d_i) = \\log \\frac1S \\sum_{s=1}^S p(d_i \\mid \\theta_s)
               = \\operatorname{logsumexp}_s \\log p(d_i \\mid \\theta_s) - \\log S

    with ``theta_s`` drawn from the guide (``num_samples`` draws, the guide run with
    ``x, y``) or given as ``posterior_samples``; ``d_i`` is ``(x_i, y_i)`` or ``x_i`` for a
    circuit (a normalised density, so these are exact likelihoods per draw) and ``y_i`` given
    ``x_i`` for a classifier. Also the standard deviation of ``log p(d_i | theta_s)``
    across draws, a measure of how much the parameters' uncertainty moves each likelihood.
    """
    x = torch.as_tensor(x)
    args = (x,) if y is None else (x, y)
    draws = sample_posterior(
        model, *args, guide=guide, posterior_samples=posterior_samples, num_samples=num_samples
    )
    count = len(next(iter(draws.values())))
    rows = []
    with torch.no_grad():
        for s in range(count):
            fixed = {name: value[s] for name, value in draws.items()}
            conditioned = pyro.poutine.condition(pointwise_log_likelihood, data=fixed)
            rows.append(
                torch.cat(
                    [
                        conditioned(
                            model,
                            x[i : i + batch_size],
                            None if y is None else y[i : i + batch_size],
                        )
                        for i in range(0, len(x), batch_size)
                    ]
                )
            )
    values = torch.stack(rows)
    log_mean = torch.logsumexp(values, 0) - math.log(count)
    std = values.std(0) if count > 1 else torch.zeros_like(log_mean)
    return PosteriorLogLikelihood(log_mean, std, values)


def _make_guide(guide: str | Callable, model: Callable, init_scale: float) -> Callable:
    if callable(guide):
        return guide
    if guide == "normal":
        return AutoNormal(model, init_scale=init_scale)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_scale=init_scale)
    raise ValueError(f"guide must be 'normal', 'lowrank' or a Pyro guide, got {guide!r}")


def predictive_logits(
    model: Model,
    x: torch.Tensor,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 50,
) -> torch.Tensor:
    """``model.logits(x)`` under posterior draws: ``(S, n, C)`` (evaluation mode).

    Draws come from a fitted ``guide`` (``num_samples`` of them) or from
    ``posterior_samples`` (e.g. ``run_nuts(...).get_samples()``).
    """
    if (guide is None) == (posterior_samples is None):
        raise ValueError("give exactly one of guide= and posterior_samples=")
    if posterior_samples is not None:
        posterior_samples = sample_posterior(model, posterior_samples=posterior_samples)
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
            return predictive(x)["_RETURN"]
    finally:
        model.train(was_training)


def predictive_probs(
    model: Model,
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
    logits = predictive_logits(
        model, x, guide=guide, posterior_samples=posterior_samples, num_samples=num_samples
    )
    return torch.softmax(logits, dim=-1)


def run_nuts(
    model: Model,
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


def point_model(model: Model, values: dict[str, torch.Tensor]) -> Model:
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
        point = type(model)(**model.config)
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
    :func:`~ugmm_prob.training.fit` (needs held-out ``x_val``, ``y_val``).

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
    if not isinstance(model, PyroModule) or not getattr(model, "bayesian_parameters", None):
        raise ValueError("fit_svi needs a model from make_bayesian(...)")
    settings = LoopSettings.from_arguments(locals())
    x_val, y_val, device = prepare_training(model, x, y, x_val, y_val, settings, device)
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
