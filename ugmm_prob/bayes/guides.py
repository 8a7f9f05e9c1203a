"""Variational families for :func:`~ugmm_prob.bayes.fit_svi`: the guides named by string.

``"normal"`` is Pyro's ``AutoNormal`` (a diagonal Normal per parameter), ``"lowrank"``
``AutoLowRankMultivariateNormal``; any callable Pyro guide is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

__all__ = ["GUIDES", "make_guide"]

GUIDES = ("normal", "lowrank")
"""The guides :func:`make_guide` builds from a name."""


def make_guide(guide: str | Callable, model: Callable, init_scale: float) -> Callable:
    """The guide named ``guide`` for the Pyro ``model`` (a callable is returned as it is)."""
    if callable(guide):
        return guide
    if guide == "normal":
        return AutoNormal(model, init_scale=init_scale)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_scale=init_scale)
    raise ValueError(f"guide must be 'normal', 'lowrank' or a Pyro guide, got {guide!r}")
