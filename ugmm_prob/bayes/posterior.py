"""Using posterior draws: parameter samples, predictive probabilities, likelihoods.

Draws come from a fitted guide (SVI, :func:`~ugmm_prob.bayes.fit_svi`) or from MCMC
(:func:`~ugmm_prob.bayes.run_nuts`): :func:`sample_posterior` collects parameter draws,
:func:`predictive_logits` and :func:`predictive_probs` the posterior predictive,
:func:`posterior_log_likelihood` the posterior-averaged likelihood
``log (1/S) sum_s p(data | theta_s)`` and :func:`point_model` a point-estimate model at
given parameter values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.infer import Predictive
from pyro.nn import PyroParam

from ..roles import Model
from .priors import _check_bayesian, prior_sites

__all__ = [
    "PosteriorLogLikelihood",
    "log_likelihood_from_logits",
    "point_model",
    "pointwise_log_likelihood",
    "posterior_log_likelihood",
    "predictive_logits",
    "predictive_probs",
    "sample_posterior",
]


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
