"""How ``UGMMCircuitDensity``'s ``init_params`` and ``cv`` defaults were chosen, without test
rows.

Per table of ``benchmarks/tabular.py`` and split seed (:mod:`_harness`'s stratified 80/20
split), a validation fifth is carved from the training rows (:func:`_harness.validation_rows`,
stratified where there are labels); each variant of the estimator (:data:`VARIANTS`, every
other parameter at its default) is fitted on the other four fifths and scored on it (mean
``log p(x)`` per row, original units), beside the BIC-chosen ``GaussianMixture`` of the
tabular benchmark fitted on the same rows. The test rows are never read; the tabular
benchmark then scores the chosen defaults on them once.

Writes the table to docs/results.md (block ``density-defaults``).

    python benchmarks/density_defaults.py
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
from tabular import GMM, QUICK, QUICK_GMM, TABLES, gmm_rows

from ugmm_prob.sklearn import UGMMCircuitDensity

VARIANTS: dict[str, dict[str, Any]] = {
    "random rows": {"init_params": "random_from_data"},
    "k-means++ rows": {"init_params": "k-means++"},
    "k-means": {"init_params": "kmeans"},
    "random rows, cv=5": {"init_params": "random_from_data", "cv": 5},
    "k-means, cv=5": {"init_params": "kmeans", "cv": 5},
}
"""The estimator's settings compared (the rest at their defaults)."""


def run_one(name: str, seed: int, quick: bool) -> dict[str, Any]:
    x, y = TABLES[name]()
    data = split(name, x, y, seed)
    fit, val = validation_rows(len(data.x_train), data.y_train)
    x_fit, x_val = data.x_train[fit], data.x_train[val]
    out: dict[str, Any] = {"table": name, "seed": seed}
    scale = Standardiser.from_train(x_fit)
    y_fit = None if data.y_train is None else data.y_train[fit]
    gmm = gmm_rows(scale(x_fit), y_fit, QUICK_GMM if quick else GMM)["bic-gmm"]
    out["BIC GMM"] = float(gmm.score(scale(x_val))) + scale.log_jacobian
    for label, options in VARIANTS.items():
        estimator = UGMMCircuitDensity(random_state=seed, **options, **(QUICK if quick else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diverged candidates are skipped with a warning
            _, seconds = timed(lambda estimator=estimator: estimator.fit(x_fit))
        out[label] = estimator.score(x_val)
        out[f"{label} seconds"] = seconds
    return out


def table(runs: list[dict[str, Any]], command: str, minutes: float) -> str:
    columns = [*VARIANTS, "BIC GMM"]
    lines = [
        "## How the density's start and search were chosen (`benchmarks/density_defaults.py`)",
        "",
        f"Command: `{command}` ({minutes:.1f} min, one thread). Mean validation log p(x) per "
        "row (original units), mean ± sd over split seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in runs}))}: each variant of "
        "`UGMMCircuitDensity` fitted on four fifths of a training split and scored on the "
        "fifth left (test rows never read); the BIC-chosen GaussianMixture on the same "
        "rows for reference. Best circuit per table in bold; fit seconds in brackets.",
        "",
        "| table | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in dict.fromkeys(r["table"] for r in runs):
        group = [r for r in runs if r["table"] == name]
        means = {c: mean_sd([r[c] for r in group]) for c in columns}
        best = max(VARIANTS, key=lambda c: means[c][0])
        cells = []
        for c in columns:
            text = f"{means[c][0]:.3f} ± {means[c][1]:.3f}"
            text = f"**{text}**" if c == best else text
            if c in VARIANTS:
                text += f" ({np.mean([r[f'{c} seconds'] for r in group]):.0f} s)"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments(parser, seeds=(0, 1, 2))
    parser.add_argument("--tables", nargs="*", default=list(TABLES), choices=list(TABLES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("density_defaults.py", argv)
    tables = ["iris"] if args.quick else args.tables
    seeds = args.seeds[:1] if args.quick else args.seeds
    runs, seconds = [], 0.0
    for name in tables:
        for seed in seeds:
            run, took = timed(lambda name=name, seed=seed: run_one(name, seed, args.quick))
            seconds += took
            runs.append(run)
            print(
                f"{name} seed {seed}: "
                + ", ".join(f"{c} {run[c]:.3f}" for c in [*VARIANTS, "BIC GMM"]),
                flush=True,
            )
    text = f"{table(runs, command, seconds / 60)}\n\nMachine: {machine()}."
    print(text, flush=True)
    if not args.no_write:
        replace_block("density-defaults", text)
    return runs


if __name__ == "__main__":
    main()
