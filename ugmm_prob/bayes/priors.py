"""Priors on a model's parameters: :func:`make_bayesian` and :func:`default_prior`.

:func:`make_bayesian` turns the uGMM parameters of any model of the library into random
variables with priors (``PyroSample``), on a copy, so the point-estimate model is left as it
was. Default priors, per parameter kind (each element independent):

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
from collections.abc import Callable, Iterable

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample

from ..distributions import FlooredLogNormal
from ..layers import rename_pyro_module, unique_pyro_name
from ..roles import Model

__all__ = ["PARAMETER_KINDS", "PriorFactory", "default_prior", "make_bayesian", "prior_sites"]

PriorFactory = Callable[[str, torch.Tensor, torch.nn.Module], dist.Distribution]
"""``prior(kind, current_value, owner) -> Distribution``, as :func:`make_bayesian` takes it."""

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
