"""The size search of :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`: every
combination of the candidate values of its searched parameters (the sizes, and the start
``init_params``) is fitted on the training
rows, scored by its held-out log-likelihood, and the best one is kept (then refitted on all
rows), as scikit-learn's own estimators choose an epoch by early stopping; or, with the
one-standard-error rule, the smallest one whose score is within one standard error of the
best.

A parameter given as a list or tuple is searched; a single value is fixed. Combinations that
build the same circuit (the depth and repetitions of an HCLT, which has neither; repetitions
of a depth-0 tree, whose one leaf region holds every column, so a repetition would only add
components, which ``channels`` already counts) are tried once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ugmm_prob.circuits.circuit import SEEDINGS

__all__ = [
    "SEARCHED",
    "SELECTIONS",
    "Candidate",
    "Score",
    "candidates",
    "check_selection",
    "select",
]

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


SELECTIONS = ("best", "one_standard_error")
"""How :func:`select` chooses: the highest held-out score, or the smallest candidate within
one standard error of it."""


def check_selection(selection: str) -> None:
    """Refuse a ``selection`` not in :data:`SELECTIONS`."""
    if selection not in SELECTIONS:
        raise ValueError(
            f"UGMMCircuitDensity: selection must be one of {SELECTIONS}, got {selection!r}"
        )


class Score(NamedTuple):
    """What fitting a candidate and scoring it on the held-out rows gives."""

    value: float
    """Mean held-out score (higher is better; non-finite for a diverged fit)."""
    standard_error: float
    """Standard error of ``value`` (the held-out items' standard deviation / sqrt(count))."""
    epoch: int
    """Epoch kept."""
    n_parameters: int
    """Free parameters of the fitted candidate."""


def select(
    options: Sequence[Candidate],
    score: Callable[[Candidate], Score],
    selection: str = "best",
) -> tuple[Candidate, int, list[dict[str, Any]]]:
    """The candidate with the highest held-out score, or (``selection="one_standard_error"``)
    the one with the fewest parameters among those whose score is at least the highest
    minus its standard error (the one-standard-error rule of Breiman et al. 1984: held-out
    scores that differ by less than their noise do not justify the larger model).

    ``score(candidate)`` fits it and returns its :class:`Score`; a non-finite score (a
    diverged fit) never wins. Returns the chosen candidate, its epoch and one record per
    candidate (its values, ``validation_score``, ``validation_se``, ``epoch`` and
    ``n_parameters``).
    """
    check_selection(selection)
    results, scored = [], []
    for candidate in options:
        result = score(candidate)
        results.append(
            {
                **candidate,
                "validation_score": result.value,
                "validation_se": result.standard_error,
                "epoch": result.epoch,
                "n_parameters": result.n_parameters,
            }
        )
        if math.isfinite(result.value):
            scored.append((result, candidate))
    if not scored:
        raise ValueError(
            "UGMMCircuitDensity: every candidate diverged (no finite held-out likelihood); "
            "raise scale_floor"
        )
    best, chosen = max(scored, key=lambda pair: pair[0].value)  # the first of equals
    if selection == "one_standard_error":
        threshold = best.value - best.standard_error
        best, chosen = min(
            (pair for pair in scored if pair[0].value >= threshold),
            key=lambda pair: pair[0].n_parameters,
        )
    return chosen, best.epoch, results
