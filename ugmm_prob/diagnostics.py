"""ArviZ export: posterior draws of any Bayesian model of the library as ``InferenceData``.

:func:`to_inference_data` takes draws from a fitted guide (SVI) or from MCMC and writes the
groups ``posterior`` (every prior site, with dimensions naming each layer's neurons and
inputs), ``posterior_predictive`` (labels drawn from ``p(y | x, theta)``), ``observed_data``
and ``log_likelihood`` (pointwise ``log p(y_i | x_i, theta_s)``), so that ``az.summary``,
``az.plot_posterior``, ``az.loo`` and ``az.compare`` work. It builds the object with
``az.from_dict``, available in every arviz release, rather than ``az.from_pyro``, which
newer arviz removed.
"""

from __future__ import annotations

from collections.abc import Callable

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import Predictive

from .layers import UGMMLayer
from .networks import Classifier

__all__ = ["to_inference_data"]


def _site_dims(model: Classifier) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """ArviZ ``dims`` of every prior site and ``coords`` numbering neurons and inputs."""
    dims, coords = {}, {}
    for layer in model.modules():
        if not isinstance(layer, UGMMLayer):
            continue
        short = layer._pyro_name.split(".", 1)[-1]
        neuron, source = f"{short}.neuron", f"{short}.input"
        coords[neuron] = np.arange(layer.out_features)
        coords[source] = np.arange(layer.in_features)
        for kind in getattr(model, "bayesian_parameters", ()):
            dims[f"{layer._pyro_name}.{kind}"] = [neuron, source]
    return dims, coords


def to_inference_data(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    guide: Callable | None = None,
    posterior_samples: dict[str, torch.Tensor] | None = None,
    num_samples: int = 200,
) -> az.InferenceData:
    """Posterior draws, posterior predictive, observations and pointwise log-likelihood.

    Args:
        model: a model from :func:`ugmm_prob.bayes.make_bayesian`.
        x, y: the data the log-likelihood and predictive are computed on.
        guide: a fitted guide (``num_samples`` draws are taken), or
        posterior_samples: draws from MCMC (``mcmc.get_samples()``), one chain.
    """
    if (guide is None) == (posterior_samples is None):
        raise ValueError("give exactly one of guide= and posterior_samples=")
    if posterior_samples is None:
        with torch.no_grad():
            posterior_samples = {
                name: value
                for name, value in Predictive(model.model, guide=guide, num_samples=num_samples)(
                    x
                ).items()
                if name != "y"
            }
    dims, coords = _site_dims(model)
    # Predictive pads sites outside plates with singleton batch dimensions: drop them.
    posterior_samples = {
        name: value.reshape(len(value), *value.shape[value.dim() - len(dims[name]) :])
        if name in dims
        else value
        for name, value in posterior_samples.items()
    }
    draws = len(next(iter(posterior_samples.values())))
    was_training = model.training
    model.eval()
    log_lik, predicted = [], []
    try:
        with torch.no_grad():
            for s in range(draws):
                fixed = {name: value[s] for name, value in posterior_samples.items()}
                logits = pyro.poutine.condition(model.logits, data=fixed)(x)
                log_p = torch.log_softmax(logits, dim=-1)
                log_lik.append(log_p.gather(-1, y[:, None]).squeeze(-1))
                predicted.append(torch.distributions.Categorical(logits=logits).sample())
    finally:
        model.train(was_training)
    dims["y"] = ["example"]
    coords["example"] = np.arange(len(y))
    posterior = {
        name: value.detach().cpu().numpy()[None] for name, value in posterior_samples.items()
    }
    return az.from_dict(
        posterior=posterior,
        posterior_predictive={"y": torch.stack(predicted).cpu().numpy()[None]},
        observed_data={"y": y.cpu().numpy()},
        log_likelihood={"y": torch.stack(log_lik).cpu().numpy()[None]},
        coords=coords,
        dims=dims,
    )
