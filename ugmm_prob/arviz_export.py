"""ArviZ export: posterior draws of any Bayesian model of the library as ``InferenceData``.

:func:`to_inference_data` takes draws from a fitted guide (SVI) or from MCMC and writes the
groups

- ``posterior``: every prior site, with dimensions naming each layer's neurons and inputs
  (``"stack.layers.0.neuron"``, ``"stack.layers.0.input"``) or, for a circuit, its
  repetitions, variables, input channels, components, sum regions, channels and children;
- ``posterior_predictive``: replicated data drawn under each ``theta_s``;
- ``observed_data``;
- ``log_likelihood``: pointwise ``log p(y_i | x_i, theta_s)`` for a classifier,
  ``log p(x_i, y_i | theta_s)`` (or ``log p(x_i | theta_s)`` without labels) for a circuit,

so that ``az.summary``, ``az.plot_posterior``, ``az.loo`` and ``az.compare`` work. It builds
the object with ``az.from_dict``, available in every arviz release, rather than
``az.from_pyro``, which newer arviz removed.
"""

from __future__ import annotations

from collections.abc import Callable

import arviz as az
import numpy as np
import pyro
import torch

from .bayes import prior_sites, sample_posterior
from .roles import Model

__all__ = ["to_inference_data"]


def _site_dims(model: Model) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """ArviZ ``dims`` of every prior site (each owner module names its own) and ``coords``."""
    dims: dict[str, list[str]] = {}
    coords: dict[str, np.ndarray] = {}
    for name, (owner, attribute) in prior_sites(model).items():
        if not hasattr(owner, "prior_dims"):  # a user's own PyroSample: ArviZ numbers it
            continue
        shape = owner._pyro_samples[attribute].event_shape
        names = owner.prior_dims(attribute)
        dims[name] = names
        for dim, size in zip(names, shape, strict=True):
            coords[dim] = np.arange(size)
    return dims, coords


def _per_draw(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None,
    draws: dict[str, torch.Tensor],
    density: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Under each draw ``theta_s`` (evaluation mode): the pointwise log-likelihood, labels
    drawn from ``p(y | x_i, theta_s)`` and, for a density model, replicated inputs."""
    count = len(next(iter(draws.values())))
    log_lik, predicted_y, predicted_x = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(count):
                fixed = {name: value[s] for name, value in draws.items()}
                with pyro.poutine.condition(data=fixed):
                    logits = model.logits(x)  # a density model's: log p(x, c)
                    log_lik.append(model.log_likelihood_from_logits(logits, y))
                    if density:
                        predicted_x.append(model.sample(len(x), y)[0])
                predicted_y.append(torch.distributions.Categorical(logits=logits).sample())
    finally:
        model.train(was_training)
    return log_lik, predicted_y, predicted_x


def to_inference_data(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 200,
) -> az.InferenceData:
    """Posterior draws, posterior predictive, observations and pointwise log-likelihood.

    For draws ``theta_s`` (``s = 1..S``, one chain) the ``log_likelihood`` group holds
    ``log p(y_i | x_i, theta_s)`` (variable ``"y"``) for a classifier, and
    ``log p(x_i, y_i | theta_s)`` (or ``log p(x_i | theta_s)`` when ``y`` is None; variable
    ``"x"``) for a density model such as :class:`~ugmm_prob.circuits.UGMMCircuit` (the
    model's ``likelihood_site``). ``posterior_predictive`` holds labels
    ``y ~ p(y | x_i, theta_s)`` and, for a density model, replicated inputs
    ``x ~ p(x | y_i, theta_s)`` (``p(x | theta_s)`` without labels).

    Args:
        model: a model from :func:`ugmm_prob.bayes.make_bayesian`.
        x, y: the data the log-likelihood and predictive are computed on (``y`` may be
            omitted for a circuit only).
        guide: a fitted guide (run ``num_samples`` times with ``x, y``), or
        posterior_samples: draws from MCMC (``mcmc.get_samples()``), one chain.
        num_samples: draws taken from the guide.
    """
    density = model.likelihood_site == "x"  # the model generates x: replicate it too
    if y is None and model.requires_labels:
        raise ValueError(f"{type(model).__name__} is a classifier: to_inference_data needs y")
    args = (x,) if y is None else (x, y)
    draws = sample_posterior(
        model, *args, guide=guide, posterior_samples=posterior_samples, num_samples=num_samples
    )
    dims, coords = _site_dims(model)
    log_lik, predicted_y, predicted_x = _per_draw(model, x, y, draws, density)
    coords["example"] = np.arange(len(x))
    observed, predictive = {}, {"y": torch.stack(predicted_y).cpu().numpy()[None]}
    dims["y"] = ["example"]
    if y is not None:
        observed["y"] = y.cpu().numpy()
    if density:
        dims["x"] = ["example", "variable"]
        coords["variable"] = np.arange(model.in_features)
        observed["x"] = x.cpu().numpy()
        predictive["x"] = torch.stack(predicted_x).cpu().numpy()[None]
    posterior = {name: value.detach().cpu().numpy()[None] for name, value in draws.items()}
    return az.from_dict(
        posterior=posterior,
        posterior_predictive=predictive,
        observed_data=observed,
        log_likelihood={model.likelihood_site: torch.stack(log_lik).cpu().numpy()[None]},
        coords=coords,
        dims=dims,
    )
