"""The size search of :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`: every
combination of the candidate values of its searched parameters (the sizes, and the start
``init_params``) is fitted on the training
rows, scored by its held-out log-likelihood, and the best one is kept (then refitted on all
rows), as scikit-learn's own estimators choose an epoch by early stopping.

A parameter given as a list or tuple is searched; a single value is fixed. Combinations that
build the same circuit (the depth and repetitions of an HCLT, which has neither; repetitions
of a depth-0 tree, whose one leaf region holds every column, so a repetition would only add
components, which ``channels`` already counts) are tried once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from ugmm_prob.circuits.circuit import SEEDINGS

__all__ = ["SEARCHED", "Candidate", "candidates", "select"]

SEARCHED = ("structure", "depth", "repetitions", "channels", "covariance_pooling", "init_params")
"""The parameters of :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity` that take a
list of candidate values (the start last, so that a single start keeps the order of the
sizes)."""

Candidate = dict[str, Any]
"""One combination of values: a dict from each name of :data:`SEARCHED` to its value."""


def _values(name: str, value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise ValueError(f"UGMMCircuitDensity: {name} has no candidate value")
    return values


def _canonical(candidate: Candidate, in_features: int) -> Candidate:
    """The circuit a candidate builds, with its inapplicable values neutralised."""
    out = dict(candidate)
    if out["structure"] == "hclt":
        out["depth"], out["repetitions"] = None, None
        return out
    depth = out["depth"]
    if depth is not None:  # at most log2(D) splits: every leaf region needs a column
        out["depth"] = min(int(depth), int(in_features).bit_length() - 1)
    if out["depth"] == 0:
        out["repetitions"] = 1
    return out


def candidates(params: dict[str, Any], in_features: int) -> list[Candidate]:
    """Every distinct combination of the candidate values in ``params`` (keys
    :data:`SEARCHED`), in the order given (the first of equally good ones wins)."""
    for name, value in params.items():
        for one in _values(name, value):
            if name == "structure" and one not in ("tree", "hclt"):
                raise ValueError(
                    f"UGMMCircuitDensity: structure must be 'tree' or 'hclt', got {one!r}"
                )
            if name in ("channels", "repetitions") and (
                isinstance(one, bool) or not isinstance(one, int) or one < 1
            ):
                raise ValueError(f"UGMMCircuitDensity: {name} must be ints >= 1, got {one!r}")
            if name == "depth" and one is not None and (isinstance(one, bool) or one < 0):
                raise ValueError(f"UGMMCircuitDensity: depth must be ints >= 0, got {one!r}")
            if name == "init_params" and one not in SEEDINGS:
                raise ValueError(
                    f"UGMMCircuitDensity: init_params must be one of {SEEDINGS}, got {one!r}"
                )
            if name == "covariance_pooling" and not float(one) >= 0:
                raise ValueError(
                    f"UGMMCircuitDensity: covariance_pooling must be >= 0, got {one!r}"
                )
    names = list(params)
    seen, out = set(), []
    for values in itertools.product(*(_values(n, params[n]) for n in names)):
        candidate = _canonical(dict(zip(names, values, strict=True)), in_features)
        key = tuple(candidate.items())
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


def select(
    options: Sequence[Candidate], score: Callable[[Candidate], tuple[float, int]]
) -> tuple[Candidate, int, list[dict[str, Any]]]:
    """The candidate with the highest held-out score.

    ``score(candidate)`` fits it and returns ``(held-out log-likelihood per row, epoch kept)``;
    a non-finite score (a diverged fit) never wins. Returns the best candidate, its epoch and
    one record per candidate (its values, ``validation_score`` and ``epoch``).
    """
    results, best = [], None
    for candidate in options:
        value, epoch = score(candidate)
        results.append({**candidate, "validation_score": value, "epoch": epoch})
        if math.isfinite(value) and (best is None or value > best[0]):
            best = (value, epoch, candidate)
    if best is None:
        raise ValueError(
            "UGMMCircuitDensity: every candidate diverged (no finite held-out likelihood); "
            "raise scale_floor"
        )
    return best[2], best[1], results
