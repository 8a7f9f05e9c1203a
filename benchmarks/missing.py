"""Incomplete tables: the circuit's imputation and fitting beside scikit-learn's imputers.

Tables: those of ``benchmarks/tabular.py`` (:data:`tabular.TABLES`). Per table, split seed
(``--seeds``) and rate (``--rates``), cells are removed completely at random, in the
training and the test rows alike (the pattern drawn from the seed); with :mod:`_harness`'s
stratified 80/20 split:

- imputation: every removed test cell filled by the exact conditional mean
  ``E[x_missing | x_observed]`` of ``UGMMCircuitImputer()`` (defaults: its size chosen by
  held-out imputation error) fitted on the incomplete training rows as they are, and by
  ``SimpleImputer`` (mean), ``KNNImputer`` and ``IterativeImputer`` fitted on the same rows;
  RMSE over the removed test cells of :data:`TEST_PATTERNS` independent removal patterns of
  the test rows, each cell in its column's (observed) training standard deviations;
- fitting: test ``log p(x)`` per row, on the complete test rows (before removal), of
  ``UGMMCircuitDensity()`` (defaults: its size chosen by held-out likelihood) fitted on the
  incomplete training rows and of the same estimator fitted on the training rows that stayed
  complete (NaN where fewer than 10 did).

Records (docs/results.json): ``<table>-missing-<rate>`` with metrics ``rmse_circuit``,
``rmse_simple``, ``rmse_knn``, ``rmse_iterative``, ``loglik_incomplete`` and
``loglik_complete_rows`` (mean and sd over the seeds); the table goes to docs/results.md
between the ``missing`` markers. ``--quick``: two small tables, one seed, few epochs;
``--save``/``--load``: run tables in several processes, then merge and write.

The MNIST parts of the missing-data benchmark (missing test pixels, completions, labels
missing from most training images) are ``benchmarks/missing_mnist.py``.

    python benchmarks/missing.py
    python benchmarks/missing.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _harness import arguments, command_line, mean_sd, publish, record, split, timed
from tabular import TABLES

from ugmm_prob.sklearn import UGMMCircuitDensity, UGMMCircuitImputer

RATES = (0.1, 0.3, 0.5)
IMPUTERS = ("circuit", "simple", "knn", "iterative")
MIN_COMPLETE_ROWS = 10
TEST_PATTERNS = 20
"""Independent removal patterns drawn on the test rows: iris at 10% has 12 removed test
cells per pattern, too few for a 2% comparison (one pattern: seeds 0-2 of the circuit and
``IterativeImputer`` 0.429 / 0.701 / 0.659 against 0.362 / 0.676 / 0.636)."""


def remove_cells(x: np.ndarray, rate: float, rng: np.random.RandomState) -> np.ndarray:
    """``x`` with each cell replaced by NaN with probability ``rate`` (completely at random)."""
    return np.where(rng.rand(*x.shape) < rate, np.nan, x)


def sklearn_imputers(seed: int) -> dict[str, Any]:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    return {
        "simple": SimpleImputer(),
        "knn": KNNImputer(),
        "iterative": IterativeImputer(random_state=seed, max_iter=25),
    }


def run_rate(name: str, seed: int, rate: float, quick: bool) -> dict[str, Any]:
    """One table, split seed and rate: the imputation errors and the two fits' scores."""
    x, y = TABLES[name]()
    data = split(name, x, y, seed)
    rng = np.random.RandomState(seed)
    train = remove_cells(data.x_train, rate, rng)
    # TEST_PATTERNS independent patterns on the test rows, stacked (the first one the
    # pattern of the runs before there were several): the imputers are fitted once, and
    # the RMSE pools every removed cell of every pattern
    truth = np.concatenate([data.x_test] * TEST_PATTERNS)
    test = remove_cells(truth, rate, rng)
    removed = np.isnan(test)
    sd = np.nanstd(train, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    options = {"max_iter": 5, "channels": (1, 2)} if quick else {}

    def rmse(filled: np.ndarray) -> float:
        return float(np.sqrt(np.mean(((filled - truth) / sd)[removed] ** 2)))

    circuit_imputer, seconds = timed(
        lambda: UGMMCircuitImputer(random_state=seed, **options).fit(train)
    )
    density, density_seconds = timed(
        lambda: UGMMCircuitDensity(random_state=seed, **options).fit(train)
    )
    out: dict[str, Any] = {"seed": seed, "circuit_seconds": seconds + density_seconds}
    out["rmse_circuit"] = rmse(circuit_imputer.transform(test))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IterativeImputer's convergence notices
        for label, imputer in sklearn_imputers(seed).items():
            out[f"rmse_{label}"] = rmse(imputer.fit(train).transform(test))
    out["loglik_incomplete"] = density.score(data.x_test)
    complete = train[~np.isnan(train).any(axis=1)]
    out["complete_rows"] = len(complete)
    out["loglik_complete_rows"] = (
        UGMMCircuitDensity(random_state=seed, **options).fit(complete).score(data.x_test)
        if len(complete) >= MIN_COMPLETE_ROWS
        else math.nan
    )
    out["split"] = data.how
    out["test_patterns"] = TEST_PATTERNS
    return out


def records(results: list[dict[str, Any]], command: str) -> list[dict]:
    """One record per table, rate and metric (mean and sd over the seeds)."""
    out = []
    for result in results:
        runs = result["runs"]
        for metric in [f"rmse_{i}" for i in IMPUTERS] + [
            "loglik_incomplete",
            "loglik_complete_rows",
        ]:
            values = [run[metric] for run in runs]
            if not all(math.isfinite(v) for v in values):
                continue
            out.append(
                record(
                    f"{result['name']}-missing-{result['rate']:g}",
                    metric,
                    values,
                    [run["seed"] for run in runs],
                    split=runs[0]["split"],
                    command=command,
                    units=(
                        "training standard deviations"
                        if metric.startswith("rmse")
                        else "nats per complete test row, original units"
                    ),
                )
            )
    return out


def _cell(values: Sequence[float], best: bool = False) -> str:
    if not all(math.isfinite(v) for v in values):
        return "n/a"
    mean, sd = mean_sd(values)
    text = f"{mean:.3f} ± {sd:.3f}"
    return f"**{text}**" if best else text


def table(results: list[dict[str, Any]], command: str, minutes: float) -> str:
    lines = [
        "## Incomplete tables (`benchmarks/missing.py`)",
        "",
        f"Command: `{command}` ({minutes:.1f} min). Cells removed completely at random from "
        "the training and test rows of each table of the tabular benchmark; "
        f"{results[0]['runs'][0]['split']}; split seeds "
        f"{', '.join(str(r['seed']) for r in results[0]['runs'])} (mean ± sd). RMSE over "
        f"the removed cells of {results[0]['runs'][0].get('test_patterns', 1)} independent "
        "removal patterns of the test rows, in training standard deviations: the exact "
        "conditional mean "
        "of `UGMMCircuitImputer()` (its size chosen by held-out imputation error) fitted on "
        "the incomplete rows as they are, and scikit-learn's imputers fitted on the same "
        "rows (best in bold). Test log p(x) per complete test row: `UGMMCircuitDensity()` "
        "(its size chosen by held-out likelihood) fitted on the incomplete rows, and fitted "
        "on the training rows left complete (their count in brackets; n/a below "
        f"{MIN_COMPLETE_ROWS}).",
        "",
        "| table | missing | circuit mean | SimpleImputer | KNNImputer | IterativeImputer | "
        "circuit / best imputer | log p(x), incomplete rows | log p(x), complete rows only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        runs = result["runs"]
        means = {i: mean_sd([r[f"rmse_{i}"] for r in runs])[0] for i in IMPUTERS}
        best = min(means, key=means.get)
        others = min(means[i] for i in IMPUTERS if i != "circuit")
        cells = [_cell([r[f"rmse_{i}"] for r in runs], i == best) for i in IMPUTERS]
        complete = round(np.mean([r["complete_rows"] for r in runs]))
        lines.append(
            f"| {result['name']} | {result['rate']:.0%} | {' | '.join(cells)} | "
            f"{means['circuit'] / others:.3f} | "
            f"{_cell([r['loglik_incomplete'] for r in runs])} | "
            f"{_cell([r['loglik_complete_rows'] for r in runs])} ({complete}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments(parser, seeds=(0, 1, 2), tables=TABLES)
    parser.add_argument("--rates", type=float, nargs="*", default=list(RATES))
    parser.add_argument("--save", help="write the results to this JSON file, nothing else")
    parser.add_argument("--load", nargs="*", help="merge saved results instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("missing.py", argv)
    tables = args.tables if not args.quick else [t for t in args.tables if t in ("iris", "wine")]
    seeds = args.seeds[:1] if args.quick else args.seeds
    results, seconds = [], 0.0
    if args.load:  # the runs of several processes (tables in parallel), in table order
        saved = [json.loads(pathlib.Path(path).read_text()) for path in args.load]
        command = "; ".join(part["command"] for part in saved)
        seconds = sum(part["seconds"] for part in saved)
        results = [r for part in saved for r in part["results"]]
        results.sort(key=lambda r: (list(TABLES).index(r["name"]), r["rate"]))
        tables = []
    for name in tables:
        for rate in args.rates:
            runs = []
            for seed in seeds:
                run, took = timed(
                    lambda name=name, seed=seed, rate=rate: run_rate(name, seed, rate, args.quick)
                )
                seconds += took
                runs.append(run)
                print(
                    f"{name} {rate:.0%} seed {seed}: RMSE circuit {run['rmse_circuit']:.3f}, "
                    f"simple {run['rmse_simple']:.3f}, knn {run['rmse_knn']:.3f}, iterative "
                    f"{run['rmse_iterative']:.3f}; log p(x) incomplete "
                    f"{run['loglik_incomplete']:.3f}, complete rows only "
                    f"{run['loglik_complete_rows']:.3f} ({run['complete_rows']} rows); "
                    f"{took:.0f} s",
                    flush=True,
                )
            results.append({"name": name, "rate": rate, "runs": runs})
    if args.save:
        saved = {"command": command, "seconds": seconds, "results": results}
        pathlib.Path(args.save).write_text(json.dumps(saved))
        return results
    publish(
        records(results, command),
        "missing",
        table(results, command, seconds / 60),
        args.no_write,
        script="missing.py",
    )
    return results


if __name__ == "__main__":
    main()
