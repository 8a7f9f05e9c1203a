"""The scikit-learn estimators with their defaults on small tables (issue 16's acceptance).

Tables (shipped with scikit-learn, nothing downloaded): ``wine`` (tutorial 07's table),
``iris`` and ``breast-cancer``, each split as tutorial 07 splits wine: stratified 75/25,
``train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)``.

Two parts:

- ``validation``: how ``UGMMNetClassifier``'s defaults were chosen, on the TRAINING rows
  only (the test rows play no part): repeated stratified K-fold cross-validation of the
  training portion (``RepeatedStratifiedKFold(n_splits=5, n_repeats=--repeats,
  random_state=123)``); on every fold the candidate settings and ``LogisticRegression`` are
  fitted on the other folds and scored by their NLL on it. The figure is the candidate's
  mean NLL over folds divided by logistic regression's (and the median of the per-fold
  ratios). Candidates: ``single`` (the previous default: one network, 10% held out) and
  ``committee`` (the new default: five networks, each early-stopped on its own fold);
- ``test``: every estimator with its defaults and ``random_state`` in ``--seeds``, fitted on
  the training rows and scored once on the test rows: the classifiers' test NLL (log loss)
  and accuracy, and the ratio of the NLL to ``LogisticRegression``'s (defaults, after
  ``StandardScaler``, ``max_iter=1000`` so that it converges; deterministic); the density's
  test log p(x) per row (original units) beside the ``GaussianMixture`` with the lowest
  training BIC over {full, tied, diag, spherical} x 1-6 components (as tutorial 07 picks it).

Records go to docs/results.json (``<table>-sklearn-<estimator>``: ``test_nll``,
``test_nll_ratio_to_logistic``, ``test_accuracy``, ``test_loglik``; ``<table>-sklearn-
net-validation``: ``cv_nll_ratio_to_logistic``), the tables to docs/results.md between
``estimators`` markers. ``--quick`` runs a few epochs on one seed (seconds); ``--no-write``
prints only. The last line printed is ``RESULT {json}``.

    python benchmarks/estimators.py                  # both parts, three tables (about 1 h
                                                     # on one shared thread)
    python benchmarks/estimators.py --parts test --tables wine
    python benchmarks/estimators.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from _results import machine, replace_block, update_results

from ugmm_prob.sklearn import UGMMCircuitClassifier, UGMMCircuitDensity, UGMMNetClassifier

TABLES = ("wine", "iris", "breast-cancer")
SPLIT = "stratified 75/25 split, train_test_split(test_size=0.25, random_state=0, stratify=y)"
CANDIDATES: dict[str, dict[str, Any]] = {
    "single": {"n_members": 1, "validation_fraction": 0.1},  # the previous default
    "committee": {},  # the defaults: 5 members x 0.2
}


def load_table(name: str) -> tuple[np.ndarray, ...]:
    """``x_train, x_test, y_train, y_test`` of tutorial 07's split."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    loader = {
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
        "breast-cancer": datasets.load_breast_cancer,
    }[name]
    x, y = loader(return_X_y=True)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=0, stratify=y))


def logistic() -> Any:
    """``StandardScaler`` + ``LogisticRegression`` (defaults; enough iterations)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def nll(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p(y | x)`` (scikit-learn's log loss)."""
    from sklearn.metrics import log_loss

    return float(log_loss(y, model.predict_proba(x), labels=model.classes_))


def best_bic_gmm(x_train: np.ndarray, seed: int, max_components: int) -> Any:
    """The ``GaussianMixture`` with the lowest training BIC (tutorial 07's choice)."""
    from sklearn.mixture import GaussianMixture

    best, best_bic = None, np.inf
    for covariance in ("full", "tied", "diag", "spherical"):
        for k in range(1, max_components + 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gmm = GaussianMixture(k, covariance_type=covariance, random_state=seed)
                bic = gmm.fit(x_train).bic(x_train)
            if bic < best_bic:
                best, best_bic = gmm, bic
    return best


def _spread(values: list[float]) -> dict[str, Any]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


# ------------------------------------------------------------------------------------------
# Parts
# ------------------------------------------------------------------------------------------
def validation_part(name: str, args: argparse.Namespace, log: Callable) -> dict[str, Any]:
    """Cross-validation of the net candidates inside the training rows only."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    x, _, y, _ = load_table(name)
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=args.repeats, random_state=123)
    folds = list(folds.split(x, y))
    reference = [nll(logistic().fit(x[tr], y[tr]), x[ev], y[ev]) for tr, ev in folds]
    result: dict[str, Any] = {"folds": len(folds), "logistic_nll": _spread(reference)}
    for label, options in CANDIDATES.items():
        started, scores = time.perf_counter(), []
        for i, (tr, ev) in enumerate(folds):
            model = UGMMNetClassifier(random_state=i, **args.net_options, **options)
            scores.append(nll(model.fit(x[tr], y[tr]), x[ev], y[ev]))
        ratios = [s / r for s, r in zip(scores, reference, strict=True)]
        result[label] = {
            "options": options,
            "nll": _spread(scores),
            "ratio": statistics.fmean(scores) / statistics.fmean(reference),
            "median_fold_ratio": statistics.median(ratios),
            "seconds": time.perf_counter() - started,
        }
        log(f"{name} validation {label}: ratio {result[label]['ratio']:.3f}")
    return result


def test_part(name: str, args: argparse.Namespace, log: Callable) -> dict[str, Any]:
    """Every estimator with its defaults, per seed, scored once on the test rows."""
    x_train, x_test, y_train, y_test = load_table(name)
    reference = logistic().fit(x_train, y_train)
    ref_nll = nll(reference, x_test, y_test)
    rows: dict[str, dict[str, list[float]]] = {}
    chosen: list[str] = []

    def add(key: str, metric: str, value: float) -> None:
        rows.setdefault(key, {}).setdefault(metric, []).append(float(value))

    for seed in args.seeds:
        for key, cls, options in (
            ("circuit-classifier", UGMMCircuitClassifier, args.circuit_options),
            ("net", UGMMNetClassifier, args.net_options),
        ):
            started = time.perf_counter()
            model = cls(random_state=seed, **options).fit(x_train, y_train)
            add(key, "seconds", time.perf_counter() - started)
            add(key, "test_nll", nll(model, x_test, y_test))
            add(key, "test_nll_ratio_to_logistic", nll(model, x_test, y_test) / ref_nll)
            add(key, "test_accuracy", model.score(x_test, y_test))
        density = UGMMCircuitDensity(random_state=seed, **args.circuit_options).fit(x_train)
        add("density", "test_loglik", density.score(x_test))
        add("density", "best_epoch", density.best_iter_ or 0)
        gmm = best_bic_gmm(x_train, seed, args.max_components)
        add("best-bic-gmm", "test_loglik", gmm.score(x_test))
        chosen.append(f"{gmm.covariance_type}, {gmm.n_components}")
        shown = {k: round(v["test_nll"][-1], 4) for k, v in rows.items() if "test_nll" in v}
        log(f"{name} seed {seed}: test NLL {shown}, logistic {ref_nll:.4f}")
    result: dict[str, Any] = {
        key: {metric: _spread(values) for metric, values in metrics.items()}
        for key, metrics in rows.items()
    }
    result["best-bic-gmm"]["chosen"] = chosen
    result["logistic"] = {
        "test_nll": ref_nll,
        "test_accuracy": float(reference.score(x_test, y_test)),
    }
    result["rows"] = {"train": len(x_train), "test": len(x_test)}
    return result


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def _pm(spread: dict[str, Any], digits: int = 4) -> str:
    return f"{spread['mean']:.{digits}f} ± {spread['sd']:.{digits}f}"


def test_table(name: str, r: dict[str, Any], seeds: Sequence[int]) -> list[str]:
    """The test part of one table as markdown lines."""
    ref = r["logistic"]
    lines = [
        f"#### {name} (test rows {r['rows']['test']}, training rows {r['rows']['train']}; "
        f"estimator seeds {', '.join(map(str, seeds))}: mean ± sd)",
        "",
        "| classifier | test NLL | NLL / logistic regression | test accuracy | fit (s) |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("circuit-classifier", "`UGMMCircuitClassifier()` (generative, EM)"),
        ("net", "`UGMMNetClassifier()` (uGMM-NN, committee of 5)"),
    ):
        m = r[key]
        lines.append(
            f"| {label} | {_pm(m['test_nll'])} | **{_pm(m['test_nll_ratio_to_logistic'], 2)}** "
            f"| {_pm(m['test_accuracy'], 3)} | {m['seconds']['mean']:.0f} |"
        )
    lines += [
        f"| `StandardScaler` + `LogisticRegression(max_iter=1000)` | {ref['test_nll']:.4f} "
        f"| 1.00 | {ref['test_accuracy']:.3f} | |",
        "",
        "| density | test log p(x) per row (original units) |",
        "|---|---|",
        f"| `UGMMCircuitDensity()` (EM, epoch kept: "
        f"{', '.join(str(int(v)) for v in r['density']['best_epoch']['values'])}) "
        f"| {_pm(r['density']['test_loglik'], 3)} |",
        f"| `GaussianMixture`, lowest training BIC of {{full, tied, diag, spherical}} x "
        f"1-6 components ({'; '.join(sorted(set(r['best-bic-gmm']['chosen'])))}) "
        f"| {_pm(r['best-bic-gmm']['test_loglik'], 3)} |",
        "",
    ]
    return lines


def validation_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The validation part (all tables) as markdown lines."""
    lines = [
        "#### How `UGMMNetClassifier`'s defaults were chosen (training rows only)",
        "",
        "Repeated stratified 5-fold cross-validation inside the training rows; mean NLL over "
        "the folds divided by logistic regression's on the same folds (median of the "
        "per-fold ratios in brackets).",
        "",
        "| table (folds) | logistic NLL | single network, 10% held out (previous default) "
        "| committee of 5, each early-stopped on its own fold (default) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [
            f"{r[c]['nll']['mean']:.4f}: **{r[c]['ratio']:.2f}x** "
            f"({r[c]['median_fold_ratio']:.2f}x)"
            for c in CANDIDATES
        ]
        lines.append(
            f"| {name} ({r['folds']}) | {r['logistic_nll']['mean']:.4f} | {' | '.join(cells)} |"
        )
    return [*lines, ""]


def records(results: dict[str, Any], command: str, seeds: Sequence[int]) -> list[dict]:
    """Records for docs/results.json."""
    out = []
    base = {"paper": None, "split": SPLIT, "command": command}
    for name, r in results.get("test", {}).items():
        for key in ("circuit-classifier", "net", "density", "best-bic-gmm"):
            for metric in (
                "test_nll",
                "test_nll_ratio_to_logistic",
                "test_accuracy",
                "test_loglik",
            ):
                if metric in r[key]:
                    value = r[key][metric]
                    out.append(
                        {
                            "experiment": f"{name}-sklearn-{key}",
                            "metric": metric,
                            "value": round(value["mean"], 4),
                            "sd": round(value["sd"], 4),
                            "seeds": list(seeds),
                            **base,
                        }
                    )
        out.append(
            {
                "experiment": f"{name}-sklearn-logistic",
                "metric": "test_nll",
                "value": round(r["logistic"]["test_nll"], 4),
                **base,
            }
        )
    for name, r in results.get("validation", {}).items():
        for label in CANDIDATES:
            out.append(
                {
                    "experiment": f"{name}-sklearn-net-validation-{label}",
                    "metric": "cv_nll_ratio_to_logistic",
                    "value": round(r[label]["ratio"], 3),
                    "folds": r["folds"],
                    **{**base, "split": f"{r['folds']} folds inside the training rows"},
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the parts; returns (and prints as ``RESULT {json}``) every number."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", nargs="*", default=list(TABLES), choices=TABLES)
    parser.add_argument("--parts", nargs="*", default=["validation", "test"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="of the 5-fold validation CV")
    parser.add_argument("--max-components", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="few epochs, one seed")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    args.net_options, args.circuit_options = {}, {}
    if args.quick:
        args.seeds, args.repeats, args.max_components = args.seeds[:1], 1, 2
        args.net_options, args.circuit_options = {"max_iter": 5}, {"max_iter": 3}
    torch.set_num_threads(args.threads)
    command = "python benchmarks/estimators.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    log(f"machine: {machine()}")
    started = time.perf_counter()
    parts = {"validation": validation_part, "test": test_part}
    results = {
        part: {name: parts[part](name, args, log) for name in args.tables} for part in args.parts
    }
    seconds = time.perf_counter() - started
    lines = [f"Command: `{command.strip()}` ({seconds / 60:.1f} min); {SPLIT}.", ""]
    for name, r in results.get("test", {}).items():
        lines += test_table(name, r, args.seeds)
    if "validation" in results:
        lines += validation_table(results["validation"])
    lines.append(f"Machine: {machine()}.")
    block = "\n".join(lines)
    log(block)
    if args.no_write:
        log("nothing written (--no-write)")
    else:
        update_results(records(results, command.strip(), args.seeds))
        replace_block("estimators", block)
    summary = {"command": command.strip(), "seconds": seconds, "results": results}
    log("RESULT " + json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
