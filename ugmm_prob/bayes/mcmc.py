"""Exact posterior sampling of small Bayesian models with NUTS: :func:`run_nuts`."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import MCMC, NUTS

from ..datasets import check_classification_data
from ..roles import Model
from .priors import _check_bayesian

__all__ = ["run_nuts"]


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
    _check_bayesian(model, "run_nuts")
    check_classification_data(
        x,
        y,
        model.num_classes,
        name="data",
        allow_missing=model.accepts_missing_cells,  # a circuit's model marginalises both
        allow_unlabelled=model.accepts_unlabelled_rows,
        model=type(model).__name__,
    )
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    kernel = NUTS(model.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    mcmc = MCMC(
        kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=not progress
    )
    mcmc.run(x, y)
    return mcmc
