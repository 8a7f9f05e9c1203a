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
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from tqdm.auto import tqdm

from .datasets import check_classification_data
from .distributions import FlooredLogNormal
from .layers import UGMMLayer
from .metrics import accuracy, expected_calibration_error, negative_log_likelihood
from .networks import Classifier
from .training import TrainingDivergedError, _MetricsWriter, checked_data, resolve_device

__all__ = ["default_prior", "fit_svi", "make_bayesian", "predictive_probs", "run_nuts"]

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
) -> tuple[Callable, list[dict[str, Any]]]:
    """Fit a guide to ``p(parameters | data)`` by minibatch SVI.

    Each minibatch's log-likelihood is scaled by ``len(x) / batch`` (``pyro.plate``
    subsampling), so the ELBO is that of the whole data set. Pyro's global parameter store is
    cleared first. Per epoch: mean ELBO loss per example, and the posterior predictive's
    accuracy, NLL and ECE on the validation data (the training data when omitted).

    Returns:
        The fitted guide and the per-epoch history.

    Raises:
        TrainingDivergedError: the ELBO became NaN/inf (the guide keeps its last values).
    """
    if not isinstance(model, PyroModule) or not getattr(model, "bayesian_parameters", None):
        raise ValueError("fit_svi needs a model from make_bayesian(...)")
    x_val, y_val = checked_data(model, x, y, x_val, y_val)
    device = resolve_device(device, model)
    model.to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide_fn = _make_guide(guide, model.model, init_scale)
    svi = SVI(
        model.model, guide_fn, pyro.optim.Adam({"lr": lr}), Trace_ELBO(num_particles=num_particles)
    )
    writer = _MetricsWriter(metrics_path, append=False)
    history: list[dict[str, Any]] = []
    n = len(x)
    for epoch in tqdm(range(epochs), desc="SVI epochs", disable=not progress):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        total, steps = 0.0, 0
        for step, begin in enumerate(range(0, n, batch_size)):
            index = order[begin : begin + batch_size]
            loss = svi.step(x[index].to(device), y[index].to(device), num_data=n)
            if not torch.isfinite(torch.tensor(loss)):
                raise TrainingDivergedError(
                    f"ELBO became {loss} at epoch {epoch + 1}, step {step + 1}; lower lr"
                )
            total += loss
            steps += 1
        probs = (
            predictive_probs(
                model, x_val.to(device), guide=guide_fn, num_samples=predictive_samples
            )
            .mean(0)
            .cpu()
        )
        row = {
            "epoch": epoch + 1,
            # each step's loss estimates the whole data set's negative ELBO
            "elbo_loss": total / steps / n,
            "accuracy": accuracy(probs, y_val.cpu()),
            "nll": negative_log_likelihood(probs, y_val.cpu()),
            "ece": expected_calibration_error(probs, y_val.cpu()),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        writer.write(row)
    return guide_fn, history
