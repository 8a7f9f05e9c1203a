"""Density estimation on small tables: ``UGMMCircuitDensity`` beside ``GaussianMixture``.

Tables (all shipped with scikit-learn, nothing downloaded; :data:`TABLES`): Iris, wine and
breast cancer (the class labels only stratify the splits), diabetes (the nine real-valued
measurements and the disease progression; the two-valued sex column is left out, as a
continuous density of it is unbounded) and digits (8 x 8 images of 0-16 counts, uniformly
dequantised with a fixed seed, so that the density is of continuous values and bounded).

Per table and split seed (``--seeds``; :mod:`_harness`: a stratified 80/20 split, the
features standardised with the training rows' statistics, log-likelihoods reported per test
row in the ORIGINAL units through the exact Jacobian ``-sum_d log sd_d``), each row fitted on
the training rows only and scored once on the test rows:

- ``bic-gmm``: ``GaussianMixture`` (n_init 5, max_iter 2000: fitted to convergence) with the
  lowest training BIC over {full, tied, diag, spherical} x 1..10 components;
- ``best-gmm``: covariance type and components chosen by log-likelihood on a validation
  split of the training rows (20%, stratified), then refitted on all of them;
- ``circuit-default``: ``UGMMCircuitDensity()`` with its defaults (it searches its own size
  on 20% of the rows it is given, then refits: see its docstring);
- ``circuit``: the validation-tuned circuit, ``UGMMCircuitDensity(**TUNED)``: the same search
  over a wider grid (the HCLT beside the data-driven trees, more pooling values).

Records go to docs/results.json (``<table>-bic-gmm``, ``<table>-best-gmm``,
``<table>-circuit-default`` and ``<table>-circuit``, metric ``test_loglik``: mean and sd over
the split seeds, with the wall time per fit), the table to docs/results.md between the
``tabular`` markers. ``--quick`` runs tiny settings on one seed; ``--no-write`` prints only;
``--save``/``--load`` keep and merge per-table results (to run tables in parallel). The last
line printed is ``RESULT {json}``.

    python benchmarks/tabular.py                          # the documented run
    python benchmarks/tabular.py --quick --no-write --tables iris wine
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from _harness import (
    Split,
    Standardiser,
    arguments,
    command_line,
    mean_sd,
    publish,
    record,
    select_on_validation,
    split,
    timed,
    validation_rows,
)

from ugmm_prob.sklearn import UGMMCircuitDensity

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
TUNED: dict[str, Any] = {
    "structure": ("tree", "hclt"),
    "depth": (0, 1),
    "channels": (1, 2, 4, 8),
    "covariance_pooling": (0.0, 10.0, 30.0, 100.0),
}
"""The tuned circuit's grid (the defaults' grid, the HCLT and one more pooling value)."""
QUICK: dict[str, Any] = {"channels": (1, 2), "covariance_pooling": (0.0, 10.0), "max_iter": 5}
GMM = {"n_init": 5, "max_iter": 2000, "max_components": 10}
QUICK_GMM = {"n_init": 1, "max_iter": 200, "max_components": 3}


def _load(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    from sklearn import datasets

    if name == "diabetes":
        x, progression = datasets.load_diabetes(return_X_y=True, scaled=False)
        return np.c_[np.delete(x, 1, axis=1), progression], None  # column 1: sex, two-valued
    if name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
        return x + np.random.default_rng(0).uniform(size=x.shape), y  # dequantised
    loader = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
    }[name]
    return loader(return_X_y=True)


TABLES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]] = {
    name: (lambda name=name: _load(name))
    for name in ("iris", "wine", "breast-cancer", "diabetes", "digits")
}
"""Each table's rows and labels (None: no labels to stratify by)."""


def gaussian_mixture(components: int, covariance: str, settings: dict[str, int]) -> Any:
    """A ``GaussianMixture`` with the benchmark's fitting settings (random_state 0)."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        components,
        covariance_type=covariance,
        n_init=settings["n_init"],
        max_iter=settings["max_iter"],
        random_state=0,
    )


def fit_quietly(model: Any, x: np.ndarray) -> Any:
    """``model.fit(x)``, without convergence warnings (``converged_`` reports them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(x)


def gmm_rows(z_train: np.ndarray, y_train: np.ndarray | None, settings: dict[str, int]) -> dict:
    """The BIC-chosen and the validation-chosen ``GaussianMixture``, fitted on ``z_train``."""
    grid = [
        (cov, k)
        for cov in COVARIANCE_TYPES
        for k in range(1, settings["max_components"] + 1)
        if k < len(z_train)
    ]
    bic_models = [fit_quietly(gaussian_mixture(k, cov, settings), z_train) for cov, k in grid]
    bic = min(bic_models, key=lambda model: model.bic(z_train))
    fit_rows, val_rows = validation_rows(len(z_train), y_train)
    (cov, k), value, _ = select_on_validation(
        grid,
        lambda c: fit_quietly(gaussian_mixture(c[1], c[0], settings), z_train[fit_rows]).score(
            z_train[val_rows]
        ),
    )
    best = fit_quietly(gaussian_mixture(k, cov, settings), z_train)
    return {"bic-gmm": bic, "best-gmm": best, "best_validation_z": value}


def run_split(data: Split, quick: bool) -> dict[str, Any]:
    """Every row on one split: test log p(x) per row (original units) and fit seconds."""
    scale = Standardiser.from_train(data.x_train)
    z_train, z_test = scale(data.x_train), scale(data.x_test)
    gmms, gmm_seconds = timed(lambda: gmm_rows(z_train, data.y_train, QUICK_GMM if quick else GMM))
    out: dict[str, Any] = {"seed": data.seed, "gmm_seconds": gmm_seconds}
    for name in ("bic-gmm", "best-gmm"):
        model = gmms[name]
        out[name] = {
            "test_loglik": float(model.score(z_test)) + scale.log_jacobian,
            "chosen": f"{model.covariance_type} x{model.n_components}",
            "converged": bool(model.converged_),
        }
    quick_options = QUICK if quick else {}
    settings = {"circuit-default": quick_options, "circuit": {**TUNED, **quick_options}}
    for name, options in settings.items():
        estimator = UGMMCircuitDensity(random_state=data.seed, **options)
        _, seconds = timed(lambda estimator=estimator: estimator.fit(data.x_train))
        out[name] = {
            "test_loglik": float(estimator.score(data.x_test)),
            "chosen": estimator.best_params_,
            "epochs": estimator.best_iter_,
            "candidates": len(estimator.search_results_),
            "parameters": estimator.n_parameters_,
            "seconds": seconds,
        }
    print(
        f"{data.name} seed {data.seed}: "
        + ", ".join(f"{k} {out[k]['test_loglik']:.3f}" for k in ROWS)
        + f" ({out['circuit']['seconds'] + out['circuit-default']['seconds']:.0f} s circuits)",
        flush=True,
    )
    return out


ROWS = ("circuit-default", "bic-gmm", "circuit", "best-gmm")


def run_table(name: str, seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    """Every split seed of one table."""
    x, y = TABLES[name]()
    runs, seconds = timed(lambda: [run_split(split(name, x, y, seed), quick) for seed in seeds])
    how = split(name, x, y, seeds[0]).how
    return {"name": name, "rows": len(x), "features": x.shape[1], "split": how,
            "runs": runs, "seconds": seconds}  # fmt: skip


def _describe(row: str, runs: list[dict]) -> str:
    """What a row chose on each seed, in words."""
    if row.endswith("gmm"):
        return ", ".join(r[row]["chosen"] for r in runs)
    chosen = []
    for r in runs:
        c = r[row]["chosen"]
        shape = "HCLT" if c["structure"] == "hclt" else f"depth {c['depth']}"
        pooling = f"{c['covariance_pooling']:g}"
        chosen.append(f"{shape} x{c['channels']}, pool {pooling}, {r[row]['epochs']} ep")
    return "; ".join(chosen)


def records(result: dict[str, Any], command: str) -> list[dict]:
    """The ``docs/results.json`` records of one table."""
    runs, seeds = result["runs"], [r["seed"] for r in result["runs"]]
    out = []
    for row in ROWS:
        seconds = [r[row].get("seconds", r["gmm_seconds"]) for r in runs]
        out.append(
            record(
                f"{result['name']}-{row}",
                "test_loglik",
                [r[row]["test_loglik"] for r in runs],
                seeds,
                split=result["split"],
                command=command,
                units="nats per test row, original feature units",
                model=_describe(row, runs),
                fit_seconds=round(mean_sd(seconds)[0], 1),
            )
        )
    return out


def table(results: Sequence[dict[str, Any]], command: str) -> str:
    """The markdown block for docs/results.md."""
    minutes = sum(r["seconds"] for r in results) / 60
    lines = [
        "## Tabular density estimation (`benchmarks/tabular.py`)",
        "",
        f"Command: `{command}`; wall time {minutes:.1f} min (one thread, on a 2-core machine "
        "shared with other jobs). Mean test log-likelihood per row in the original units of "
        "the features, mean ± sd over the split seeds (stratified 80/20 splits, "
        "`random_state` = seed); every choice on validation rows carved from the training "
        "rows; fit times per seed in seconds.",
        "",
        "| table (rows x columns) | `UGMMCircuitDensity()` | BIC-chosen GMM | default - BIC "
        "| tuned circuit | best validation-chosen GMM | tuned - best | wall time (min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        values = {row: mean_sd([run[row]["test_loglik"] for run in r["runs"]]) for row in ROWS}
        cells = {row: f"{m:.3f} ± {s:.3f}" for row, (m, s) in values.items()}
        lines.append(
            f"| {r['name']} ({r['rows']} x {r['features']}) | {cells['circuit-default']} "
            f"| {cells['bic-gmm']} "
            f"| **{values['circuit-default'][0] - values['bic-gmm'][0]:+.3f}** "
            f"| {cells['circuit']} | {cells['best-gmm']} "
            f"| **{values['circuit'][0] - values['best-gmm'][0]:+.3f}** | {r['seconds'] / 60:.1f} |"
        )
    lines += ["", "What each row chose, per seed:", ""]
    for r in results:
        runs = r["runs"]
        seconds = {
            row: mean_sd([run[row]["seconds"] for run in runs])[0]
            for row in ("circuit-default", "circuit")
        }
        lines.append(
            f"- {r['name']}: default: {_describe('circuit-default', runs)} "
            f"({seconds['circuit-default']:.0f} s per fit, "
            f"{runs[0]['circuit-default']['candidates']} candidates); tuned: "
            f"{_describe('circuit', runs)} ({seconds['circuit']:.0f} s per fit, "
            f"{runs[0]['circuit']['candidates']} candidates, "
            f"{runs[0]['circuit']['parameters']:,} parameters on seed {runs[0]['seed']}); "
            f"BIC: {_describe('bic-gmm', runs)}; best: {_describe('best-gmm', runs)}."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and prints as ``RESULT {json}``) every number."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments(parser, seeds=(0, 1, 2), tables=TABLES)
    parser.add_argument("--save", help="write the per-table results to this JSON file")
    parser.add_argument("--load", nargs="*", help="merge saved results instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("tabular.py", argv)
    if args.load:
        results = [r for path in args.load for r in json.loads(open(path).read())]
        command = "; ".join(dict.fromkeys(r["command"] for r in results))
        order = list(TABLES)
        results.sort(key=lambda r: order.index(r["name"]))
    else:
        seeds = args.seeds[:1] if args.quick else args.seeds
        results = [{**run_table(name, seeds, args.quick), "command": command}
                   for name in args.tables]  # fmt: skip
    if args.save:
        with open(args.save, "w") as out:
            json.dump(results, out, default=str)
    publish(
        [rec for r in results for rec in records(r, command)],
        "tabular",
        table(results, command),
        args.no_write or bool(args.save),
        script="tabular.py",
    )
    summary = {"command": command, "tables": results}
    print("RESULT " + json.dumps(summary, default=lambda v: None if v != v else str(v)))
    assert all(math.isfinite(run[row]["test_loglik"]) for r in results for run in r["runs"]
               for row in ROWS), "a test log-likelihood is not finite"  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
