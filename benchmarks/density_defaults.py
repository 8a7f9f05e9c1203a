"""How ``UGMMCircuitDensity``'s and ``UGMMCircuitImputer``'s ``init_params`` (and the
density's ``cv``, the imputer's ``depth``) defaults were chosen, without test rows.

Per table of ``benchmarks/tabular.py`` and split seed (:mod:`_harness`'s stratified 80/20
split), a validation fifth is carved from the training rows (:func:`_harness.validation_rows`,
stratified where there are labels); each variant of the estimator (:data:`VARIANTS`, every
other parameter at its default) is fitted on the other four fifths and scored on it (mean
``log p(x)`` per row, original units), beside the BIC-chosen ``GaussianMixture`` of the
tabular benchmark fitted on the same rows. The test rows are never read; the tabular
benchmark then scores the chosen defaults on them once.

``--part imputer``: the same for ``UGMMCircuitImputer`` (:data:`IMPUTER_VARIANTS`), judged
as ``benchmarks/missing.py`` judges it: cells removed completely at random from the training
split (``--rates``, the pattern drawn from the seed as there), each variant fitted on the
incomplete fitting rows and scored by the RMSE of its conditional mean over the removed cells
of the validation rows (in the fitting rows' standard deviations), beside the best of
scikit-learn's imputers fitted on the same rows. ``--part imputer-depth``: the same for
the imputer's searched depths (:data:`IMPUTER_DEPTH_VARIANTS`).

``--part search``: the density's defaults against ``n_init=3`` and
``selection="one_standard_error"`` (:data:`SEARCH_VARIANTS`), on the validation rows of
``--part density``.

Writes the table to docs/results.md (block ``<part>-defaults``).

    python benchmarks/density_defaults.py
    python benchmarks/density_defaults.py --part search
    python benchmarks/density_defaults.py --part imputer --tables iris wine diabetes
    python benchmarks/density_defaults.py --part imputer-depth
    python benchmarks/density_defaults.py --quick --no-write
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _harness import Standardiser, arguments, command_line, mean_sd, split, timed, validation_rows
from _results import machine, replace_block
from missing import RATES, remove_cells, sklearn_imputers
from tabular import GMM, QUICK, QUICK_GMM, TABLES, gmm_rows

from ugmm_prob.sklearn import UGMMCircuitDensity, UGMMCircuitImputer

VARIANTS: dict[str, dict[str, Any]] = {
    "random rows": {"init_params": "random_from_data"},
    "k-means++ rows": {"init_params": "k-means++"},
    "k-means": {"init_params": "kmeans"},
    "random rows, cv=5": {"init_params": "random_from_data", "cv": 5},
    "k-means, cv=5": {"init_params": "kmeans", "cv": 5},
}
"""The estimator's settings compared (the rest at their defaults)."""

SEARCH_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "n_init=3": {"n_init": 3},
    "one-standard-error rule": {"selection": "one_standard_error"},
}
"""``--part search``: the density's defaults against three starts per fit (``n_init``) and
against the one-standard-error rule (``selection``)."""

IMPUTER_DEPTH_VARIANTS: dict[str, dict[str, Any]] = {
    "depth 0 or 1 (the density's)": {"depth": (0, 1)},
    "depth 0": {"depth": 0},
}
"""``--part imputer-depth``: the imputer's depths searched, every other parameter at its
default."""

IMPUTER_VARIANTS: dict[str, dict[str, Any]] = {
    "random rows": {"init_params": "random_from_data", "depth": (0, 1)},
    "k-means": {"init_params": "kmeans", "depth": (0, 1)},
    "either, searched": {"init_params": ("kmeans", "random_from_data"), "depth": (0, 1)},
}
"""The imputer's starts compared (depth 0 or 1 searched, as before ``--part
imputer-depth``; the rest at their defaults)."""


def run_one(
    name: str, seed: int, quick: bool, variants: dict[str, dict[str, Any]] = VARIANTS
) -> dict[str, Any]:
    x, y = TABLES[name]()
    data = split(name, x, y, seed)
    fit, val = validation_rows(len(data.x_train), data.y_train)
    x_fit, x_val = data.x_train[fit], data.x_train[val]
    out: dict[str, Any] = {"table": name, "seed": seed}
    scale = Standardiser.from_train(x_fit)
    y_fit = None if data.y_train is None else data.y_train[fit]
    gmm = gmm_rows(scale(x_fit), y_fit, QUICK_GMM if quick else GMM)["bic-gmm"]
    out["BIC GMM"] = float(gmm.score(scale(x_val))) + scale.log_jacobian
    for label, options in variants.items():
        estimator = UGMMCircuitDensity(random_state=seed, **options, **(QUICK if quick else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diverged candidates are skipped with a warning
            _, seconds = timed(lambda estimator=estimator: estimator.fit(x_fit))
        out[label] = estimator.score(x_val)
        out[f"{label} seconds"] = seconds
    return out


def run_imputer(
    name: str,
    seed: int,
    rate: float,
    quick: bool,
    variants: dict[str, dict[str, Any]] = IMPUTER_VARIANTS,
) -> dict[str, Any]:
    x, y = TABLES[name]()
    data = split(name, x, y, seed)
    # the training rows' cells removed as benchmarks/missing.py removes them
    holes = remove_cells(data.x_train, rate, np.random.RandomState(seed))
    fit, val = validation_rows(len(holes), data.y_train)
    removed = np.isnan(holes[val])
    sd = np.nanstd(holes[fit], axis=0)
    sd = np.where(sd > 0, sd, 1.0)

    def rmse(filled: np.ndarray) -> float:
        return float(np.sqrt(np.mean(((filled - data.x_train[val]) / sd)[removed] ** 2)))

    out: dict[str, Any] = {"table": name, "seed": seed, "rate": rate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IterativeImputer's convergence notices
        scores = {
            label: rmse(imputer.fit(holes[fit]).transform(holes[val]))
            for label, imputer in sklearn_imputers(seed).items()
        }
        out["best scikit-learn"] = min(scores.values())
        out["best scikit-learn name"] = min(scores, key=scores.get)
        for label, options in variants.items():
            imputer = UGMMCircuitImputer(random_state=seed, **options, **(QUICK if quick else {}))
            _, seconds = timed(lambda imputer=imputer: imputer.fit(holes[fit]))
            out[label] = rmse(imputer.transform(holes[val]))
            out[f"{label} seconds"] = seconds
    return out


def _cells(
    group: list[dict[str, Any]], columns: list[str], variants: dict, best_of: Any
) -> list[str]:
    """One table row's cells: mean ± sd over the seeds of each column, the best variant
    (``best_of``: ``max`` for a likelihood, ``min`` for an error) in bold, fit seconds of
    each variant in brackets."""
    means = {c: mean_sd([r[c] for r in group]) for c in columns}
    best = best_of(variants, key=lambda c: means[c][0])
    cells = []
    for c in columns:
        text = f"{means[c][0]:.3f} ± {means[c][1]:.3f}"
        text = f"**{text}**" if c == best else text
        if c in variants:
            text += f" ({np.mean([r[f'{c} seconds'] for r in group]):.0f} s)"
        cells.append(text)
    return cells


_WHAT = {
    "density": (
        "Mean validation log p(x) per row (original units), mean ± sd over split seeds {seeds}: "
        "each variant of `UGMMCircuitDensity` fitted on four fifths of a training split and "
        "scored on the fifth left (test rows never read); the BIC-chosen GaussianMixture on "
        "the same rows for reference. Best circuit per table in bold; fit seconds in brackets."
    ),
    "imputer": (
        "Imputation RMSE (fitting rows' standard deviations) over the cells removed from the "
        "validation rows, mean ± sd over split seeds {seeds}: each variant of "
        "`UGMMCircuitImputer` fitted on the other four fifths of the incomplete training "
        "split (test rows never read), beside the best of SimpleImputer, KNNImputer and "
        "IterativeImputer on the same rows (per seed). Best circuit per row in bold; fit "
        "seconds in brackets."
    ),
}
"""What a table of each kind shows (its prose, ``{seeds}`` filled in)."""


def table(
    runs: list[dict[str, Any]],
    command: str,
    minutes: float,
    variants: dict[str, dict[str, Any]],
    title: str,
) -> str:
    """The variants' mean ± sd over the seeds: per table (density runs, higher is better)
    or per table and rate (imputer runs, which carry a ``rate``; lower is better)."""
    imputer = "rate" in runs[0]
    columns = [*variants, "best scikit-learn" if imputer else "BIC GMM"]
    keys = ("table", "rate") if imputer else ("table",)
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))
    what = _WHAT["imputer" if imputer else "density"].format(seeds=seeds)
    header = ["table", "missing"] if imputer else ["table"]
    lines = [
        f"## {title}",
        "",
        f"Command: `{command}` ({minutes:.1f} min, one thread). {what}",
        "",
        "| " + " | ".join(header + columns) + " |",
        "|---|" + "---:|" * (len(header) - 1 + len(columns)),
    ]
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in runs):
        group = [r for r in runs if tuple(r[k] for k in keys) == key]
        cells = _cells(group, columns, variants, min if imputer else max)
        label = [key[0]] + ([f"{key[1]:.0%}"] if imputer else [])
        lines.append("| " + " | ".join(label + cells) + " |")
    return "\n".join(lines)


PARTS: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "density": (VARIANTS, "How the density's start and search were chosen"),
    "search": (SEARCH_VARIANTS, "Restarts and the one-standard-error rule in the density's search"),
    "imputer": (IMPUTER_VARIANTS, "How the imputer's start was chosen"),
    "imputer-depth": (IMPUTER_DEPTH_VARIANTS, "How the imputer's depth was chosen"),
}
"""Each ``--part``: the variants it compares and the heading of its table."""


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments(parser, seeds=(0, 1, 2), tables=TABLES)
    parser.add_argument("--part", choices=tuple(PARTS), default="density")
    parser.add_argument("--rates", type=float, nargs="*", default=list(RATES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("density_defaults.py", argv)
    tables = ["iris"] if args.quick else args.tables
    seeds = args.seeds[:1] if args.quick else args.seeds
    imputer = args.part.startswith("imputer")
    rates = args.rates if imputer else [None]
    variants, title = PARTS[args.part]
    runs, seconds = [], 0.0
    for name in tables:
        for rate in rates:
            for seed in seeds:
                if rate is None:
                    call = lambda name=name, seed=seed: run_one(  # noqa: E731
                        name, seed, args.quick, variants
                    )
                else:
                    call = lambda name=name, seed=seed, rate=rate: run_imputer(  # noqa: E731
                        name, seed, rate, args.quick, variants
                    )
                run, took = timed(call)
                seconds += took
                runs.append(run)
                shown = [c for c in run if isinstance(run[c], float) and "seconds" not in c]
                print(
                    f"{name} {'' if rate is None else f'{rate:.0%} '}seed {seed}: "
                    + ", ".join(f"{c} {run[c]:.3f}" for c in shown),
                    flush=True,
                )
    flag = "" if args.part == "density" else f" --part {args.part}"
    heading = f"{title} (`benchmarks/density_defaults.py{flag}`)"
    text = f"{table(runs, command, seconds / 60, variants, heading)}\n\nMachine: {machine()}."
    print(text, flush=True)
    if not args.no_write:
        replace_block(f"{args.part}-defaults", text)
    return runs


if __name__ == "__main__":
    main()
