"""The subcommands for users' own tables: ``fit`` an estimator of :mod:`ugmm_prob.sklearn`
to a CSV (or ``.npy``) table and save it in a folder; ``score``, ``posterior``, ``sample``
and ``impute`` read that folder and write CSV.

One module (about 400 lines) because the five subcommands share one folder format, one
reader of fitted folders and one way of writing CSV; each subcommand is one short function
and its parser another."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
import torch

from ..plotting import figure_grid, plot_posteriors
from ..tables import Table, TableError, read_table, write_table
from ._common import UsageError, check_device, check_file, check_folder, save_figure

__all__ = ["MODEL_FILE", "add_table_commands"]

MODEL_FILE = "model.pt"
"""The file ``fit`` writes in its ``--out`` folder (the estimator and the column names)."""


def _sklearn_module():
    try:
        from .. import sklearn as estimators

        estimators._require_sklearn()
    except ImportError as error:
        raise UsageError(str(error)) from error
    return estimators


def _output(args: argparse.Namespace, columns: list[str], rows: list[list]) -> int:
    """Write a CSV table to ``--output`` (never over an existing file without ``--force``)
    or to stdout."""
    if args.output is None:
        write_table(columns, rows, sys.stdout)
        return 0
    path = pathlib.Path(args.output)
    check_file("--output", args.output)
    if path.exists() and not args.force:
        raise UsageError(f"--output {path}: exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_table(columns, rows, handle)
    print(f"{len(rows)} rows written to {path}", file=sys.stderr)
    return 0


def _fit_table(args: argparse.Namespace) -> int:
    estimators = _sklearn_module()
    out = check_folder("--out", args.out)
    if args.max_iter is not None and args.max_iter < 1:
        raise UsageError(f"--max-iter must be >= 1, got {args.max_iter}")
    check_device(args.device)
    model_path = out / MODEL_FILE
    if model_path.exists() and not args.force:
        raise UsageError(f"{model_path}: exists; pass --force to overwrite it")
    table = read_table(args.data)
    features, x = _fit_columns(args, table)
    estimator, labels = _fitted_estimator(args, estimators, table, x)
    metrics = _fit_metrics(args, estimator, x, features, labels)
    estimators.save_estimator(
        estimator,
        model_path,
        extra={"columns": features, "target": args.target, "source": str(args.data)},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    figure = _fit_summary_figure(estimator, x, labels, out)
    shown = [f"{type(estimator).__name__} on {len(x)} rows x {len(features)} columns"]
    empty_cells = int(np.isnan(x).sum())
    if empty_cells:
        shown.append(f"{empty_cells} empty cells marginalised")
    if labels is not None and None in labels:
        shown.append(f"{labels.count(None)} rows without a class (semi-supervised)")
    if "train_log_likelihood_per_row" in metrics:
        shown.append(f"mean log p(x) {metrics['train_log_likelihood_per_row']:.4f} per row")
    if labels is not None:
        shown.append(f"training accuracy {100 * metrics['train_accuracy']:.2f}% (labelled rows)")
    print(", ".join(shown) + f"; saved {model_path}, {out / 'metrics.json'}, {figure}")
    return 0


def _fit_columns(args: argparse.Namespace, table: Table) -> tuple[list[str], np.ndarray]:
    """The feature columns (all but ``--target``) and their values."""
    target = args.target
    if target is not None:
        table.index(target)
    elif args.model == "net":
        raise UsageError("--model net is a classifier: name its target column with --target")
    features = [c for c in table.columns if c != target]
    if not features:
        raise UsageError(f"{args.data}: no feature columns besides the target {target!r}")
    x = table.numbers(features)
    if args.model == "net":
        _refuse_missing_cells(table, x, features)
    return features, x


def _fitted_estimator(args: argparse.Namespace, estimators, table: Table, x: np.ndarray):
    """The estimator ``--model`` and ``--target`` choose, fitted; and the target's labels
    (None for a density)."""
    options = {"random_state": args.seed, "verbose": not args.quiet, "device": args.device}
    if args.max_iter is not None:
        options["max_iter"] = args.max_iter
    if args.target is None:
        estimator = estimators.UGMMCircuitDensity(**options)
        estimator.fit(x)
        return estimator, None
    labels = table.labels(args.target)
    if args.model == "net":
        for row, label in enumerate(labels):
            if label is None:
                raise TableError(
                    f"{table.where(row, args.target)}: the target is empty, and the uGMM-NN "
                    "(--model net) cannot use rows without a class; fit with --model circuit, "
                    "which learns from them too (semi-supervised)"
                )
        estimator = estimators.UGMMNetClassifier(**options)
        estimator.fit(x, np.array(labels))
        return estimator, labels
    if all(label is None for label in labels):
        raise TableError(f"{args.data}: every cell of the target {args.target!r} is empty")
    # an empty target cell is a row of unknown class: the circuit marginalises it
    estimator = estimators.UGMMCircuitClassifier(unlabelled_label=_NO_CLASS, **options)
    estimator.fit(x, _label_array(labels))
    return estimator, labels


_NO_CLASS = -1
"""The label ``fit`` gives the circuit for an empty target cell (the class labels of a table
are strings, so a number never collides with one)."""


def _label_array(labels: list[str | None]) -> np.ndarray:
    """The labels for an estimator: strings, with :data:`_NO_CLASS` where a cell is empty."""
    if None not in labels:
        return np.array(labels)
    return np.array([_NO_CLASS if label is None else label for label in labels], dtype=object)


def _fit_metrics(
    args: argparse.Namespace, estimator, x: np.ndarray, features: list[str], labels
) -> dict:
    """What ``metrics.json`` records: the run, the training fit and the history."""
    metrics: dict = {
        "estimator": type(estimator).__name__,
        "data": str(args.data),
        "rows": len(x),
        "features": features,
        "target": args.target,
        "seed": args.seed,
        "epochs": estimator.n_iter_,
        "best_epoch": estimator.best_iter_,
    }
    if hasattr(estimator, "score_samples"):  # a density
        metrics["train_log_likelihood_per_row"] = float(estimator.score_samples(x).mean())
        metrics["bic"] = float(estimator.bic(x))
    if labels is not None:
        known = [i for i, label in enumerate(labels) if label is not None]
        metrics["classes"] = [str(c) for c in estimator.classes_]
        metrics["unlabelled_rows"] = len(labels) - len(known)
        metrics["train_accuracy"] = float(
            estimator.score(x[known], np.array([labels[i] for i in known]))
        )
    metrics["history"] = estimator.history_
    return metrics


def _fit_summary_figure(estimator, x: np.ndarray, labels, out: pathlib.Path) -> pathlib.Path:
    """``summary.png``: the training curve beside the class posteriors on the training rows
    (a classifier) or the histogram of their log-likelihoods (a density)."""
    fig, grid = figure_grid(1, 2, size=(12, 4))
    axes = grid[0]
    _plot_training(estimator.history_, axes[0])
    if labels is not None:
        known = [i for i, label in enumerate(labels) if label is not None]
        proba = torch.as_tensor(estimator.predict_proba(x[known]))
        truth = torch.as_tensor(estimator.encode_labels([labels[i] for i in known]))
        classes = [str(c) for c in estimator.classes_]
        plot_posteriors(proba, truth, class_names=classes, ax=axes[1])
        axes[1].set_title("p(class | x) on the labelled training rows")
    else:
        axes[1].hist(estimator.score_samples(x), bins=30)
        axes[1].set(xlabel="log p(x)", ylabel="rows", title="log-likelihood of the rows")
    return save_figure(fig, out / "summary.png")


def _plot_training(history: list[dict], ax) -> None:
    """Training loss per epoch and, where there were held-out rows, their NLL (one line of
    each per member of a committee, whose rows carry ``member``)."""
    members = sorted({row.get("member", 0) for row in history})
    for m in members:
        rows = [row for row in history if row.get("member", 0) == m]
        suffix = f", member {m}" if len(members) > 1 else ""
        epochs = [row["epoch"] for row in rows]
        ax.plot(epochs, [row["loss"] for row in rows], label=f"training loss{suffix}")
        if rows and "nll" in rows[0]:
            ax.plot(epochs, [row["nll"] for row in rows], label=f"held-out NLL per row{suffix}")
        if rows and rows[-1].get("best_epoch") and len(members) == 1:
            ax.axvline(rows[-1]["best_epoch"], color="grey", ls=":", label="epoch kept")
    ax.set(xlabel="epoch", title="training")
    ax.legend(fontsize="small")


def _load_fitted(folder: str):
    """The estimator saved by ``fit`` in ``folder`` (its ``--out``; the ``model.pt`` file
    inside it is accepted too), its feature columns and its target column."""
    _sklearn_module()
    from ..sklearn import load_estimator

    path = pathlib.Path(folder)
    if not path.exists():
        raise UsageError(
            f"{folder}: no such folder; expected the --out folder of 'ugmm-prob fit' "
            f"(holding {MODEL_FILE})"
        )
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UsageError(
                f"{folder}: a folder without {MODEL_FILE}; expected the --out folder of "
                "'ugmm-prob fit'"
            )
        path = path / MODEL_FILE
    estimator, extra = load_estimator(path)
    return estimator, list(extra["columns"]), extra.get("target")


def _refuse_missing_cells(table: Table, x: np.ndarray, columns: list[str]) -> None:
    """The uGMM-NN (``--model net``) cannot marginalise missing cells: name the first one."""
    empty = np.argwhere(np.isnan(x))
    if len(empty):
        row, column = (int(v) for v in empty[0])
        raise TableError(
            f"{table.where(row, columns[column])}: empty, and the uGMM-NN (--model net) cannot "
            f"marginalise missing cells ({len(empty)} in all); fit with --model circuit, which "
            "marginalises them exactly, or fill them first (ugmm-prob impute)"
        )


def _features_of(table: Table, columns: list[str]) -> np.ndarray:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TableError(
            f"{table.path}: lacks the model's column(s) {', '.join(map(repr, missing))}; "
            f"it has {', '.join(table.columns)}"
        )
    return table.numbers(columns)


def _known_labels(table: Table, target: str | None, estimator) -> list[str | None] | None:
    """The table's target cells, checked against the model's classes (None: no column)."""
    if target is None or target not in table.columns:
        return None
    known = [str(c) for c in estimator.classes_]
    labels = table.labels(target)
    for row, label in enumerate(labels):
        if label is not None and label not in known:
            raise TableError(
                f"{table.where(row, target)}: unknown class {label!r}; the model knows "
                f"{', '.join(known)}"
            )
    return labels


def _needs(estimator, what: str, command: str) -> None:
    if not hasattr(estimator, what):
        raise UsageError(
            f"{command}: the model is a {type(estimator).__name__}, which models p(class | x) "
            "only; fit with --model circuit for densities, samples and imputations"
        )


def _score_table(args: argparse.Namespace) -> int:
    estimator, columns, target = _load_fitted(args.model_dir)
    table = read_table(args.data)
    x = _features_of(table, columns)
    labels = _known_labels(table, target, estimator)
    if not hasattr(estimator, "score_samples"):
        _refuse_missing_cells(table, x, columns)
    header: list[str] = []
    parts: list[np.ndarray] = []
    if hasattr(estimator, "score_samples"):
        header.append("log_likelihood")
        parts.append(estimator.score_samples(x)[:, None])
    if target is not None:
        proba = estimator.predict_proba(x)
        header += [f"p({c})" for c in estimator.classes_]
        parts.append(proba)
        if labels is not None:
            index = {str(c): k for k, c in enumerate(estimator.classes_)}
            with np.errstate(divide="ignore"):
                log_proba = np.log(proba)
            picked = [
                math.nan if label is None else log_proba[i, index[label]]
                for i, label in enumerate(labels)
            ]
            header.append(f"log_p_{target}_given_x")
            parts.append(np.array(picked)[:, None])
    values = np.concatenate(parts, axis=1)
    return _output(args, header, values.tolist())


def _posterior_table(args: argparse.Namespace) -> int:
    estimator, columns, target = _load_fitted(args.model_dir)
    if target is None:
        raise UsageError("posterior: the model was fitted without --target; it has no classes")
    table = read_table(args.data)
    x = _features_of(table, columns)
    _known_labels(table, target, estimator)
    if not hasattr(estimator, "score_samples"):
        _refuse_missing_cells(table, x, columns)
    proba = estimator.predict_proba(x)
    header = [*(f"p({c})" for c in estimator.classes_), "predicted"]
    rows = [[*p, estimator.classes_[int(np.argmax(p))]] for p in proba.tolist()]
    return _output(args, header, rows)


def _sample_table(args: argparse.Namespace) -> int:
    estimator, columns, target = _load_fitted(args.model_dir)
    _needs(estimator, "sample", "sample")
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    if args.klass is not None:
        if target is None:
            raise UsageError("--class: the model was fitted without --target; it has no classes")
        known = [str(c) for c in estimator.classes_]
        if args.klass not in known:
            raise UsageError(f"--class {args.klass!r}: unknown; the model knows {', '.join(known)}")
        klass = estimator.classes_[known.index(args.klass)]
        x, y = estimator.sample(args.n, c=klass)
    else:
        x, y = estimator.sample(args.n)
    if target is None:
        return _output(args, columns, x.tolist())
    rows = [[*row, c] for row, c in zip(x.tolist(), y, strict=True)]
    return _output(args, [*columns, target], rows)


def _impute_table(args: argparse.Namespace) -> int:
    estimator, columns, target = _load_fitted(args.model_dir)
    _needs(estimator, "impute", "impute")
    table = read_table(args.data)
    x = _features_of(table, columns)
    method = "mpe" if args.mode else args.method
    if args.mode and args.method not in ("mpe", _DEFAULT_IMPUTATION):
        raise UsageError(f"--mode is --method mpe; it cannot go with --method {args.method}")
    draws = args.num_samples
    if draws is not None and (draws < 1 or method != "sample"):
        raise UsageError(
            f"--num-samples takes an int >= 1 with --method sample (multiple imputation), got "
            f"{draws} with --method {method}"
        )
    labels = _known_labels(table, target, estimator)
    copies = 1 if draws is None else draws
    if labels is None:
        filled = _impute_rows(estimator, x, method, draws)
        out_labels = None
    elif method == "sample":
        # rows without a class: draw one from p(c | x_observed) for every completion, then
        # condition on it (a class and the cells drawn together)
        proba = estimator.predict_proba(x)
        rng = np.random.RandomState(args.seed)
        by_name = {str(c): c for c in estimator.classes_}
        out_labels = []
        for _ in range(copies):
            drawn = [str(estimator.classes_[rng.choice(len(p), p=p)]) for p in proba]
            pairs = zip(drawn, labels, strict=True)
            out_labels.append([d if label is None else label for d, label in pairs])
        # one call for every completion, so that each gets draws of its own
        classes = [by_name[c] for chosen in out_labels for c in chosen]
        filled = estimator.impute(np.tile(x, (copies, 1)), classes, method="sample")
        filled = filled.reshape(copies, *x.shape)
        if draws is None:
            filled, out_labels = filled[0], out_labels[0]
    else:
        # "mean": the class is marginalised for the cells, an empty target cell gets the
        # most probable class; "mpe": the max-product completion chooses the class with them
        by_name = {str(c): c for c in estimator.classes_}
        given = [None if label is None else by_name[label] for label in labels]
        filled = estimator.impute(x, np.array(given, dtype=object), method=method)
        decided = estimator.predict(x)
        out_labels = [decided[i] if label is None else label for i, label in enumerate(labels)]
    header = [*columns] if out_labels is None else [*columns, target]
    if draws is None:
        return _output(args, header, _with_labels(filled, out_labels))
    rows = [
        [k, *row]
        for k in range(draws)
        for row in _with_labels(filled[k], None if out_labels is None else out_labels[k])
    ]
    return _output(args, ["draw", *header], rows)


_DEFAULT_IMPUTATION = "sample"


def _impute_rows(estimator, x: np.ndarray, method: str, draws: int | None) -> np.ndarray:
    """``x`` filled by ``method``; ``(draws, n, D)`` completions with ``draws``."""
    if draws is None:
        return estimator.impute(x, method=method)
    return estimator.conditional_sample(x, n_samples=draws)


def _with_labels(filled: np.ndarray, labels) -> list[list]:
    rows = filled.tolist()
    if labels is None:
        return rows
    return [[*row, c] for row, c in zip(rows, labels, strict=True)]


_MODEL_DIR_HELP = f"the --out folder of 'ugmm-prob fit' (holding {MODEL_FILE})"
_DATA_HELP = (
    "CSV file with a header line naming the model's columns (empty cells are missing), or a "
    ".npy array"
)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", help="CSV file to write (default: stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output")


def _add_fit_command(sub: argparse._SubParsersAction) -> None:
    table_fit = sub.add_parser(
        "fit",
        help="fit a model to your own table (CSV with a header, or .npy)",
        description="Fit a model to a table: without --target a density (the generative "
        "circuit, UGMMCircuitDensity); with --target a classifier of that column (the "
        "circuit, exact p(class | x), or --model net, the paper's uGMM-NN). Saves OUT/model.pt, "
        "OUT/metrics.json and OUT/summary.png. Empty cells are missing values, which the "
        "circuit marginalises in training; a row with an empty target cell is a row of "
        "unknown class, which the circuit learns from too (semi-supervised).",
    )
    table_fit.add_argument("data", help="CSV file with a header line, or a .npy array")
    table_fit.add_argument("--out", required=True, help="folder for model.pt, metrics, figure")
    table_fit.add_argument("--target", help="the class column (default: none, a density)")
    table_fit.add_argument(
        "--model",
        choices=["circuit", "net"],
        default="circuit",
        help="'circuit': the generative circuit (default); 'net': the paper's uGMM-NN, a "
        "classifier (needs --target)",
    )
    table_fit.add_argument("--max-iter", type=int, help="epochs (default: the estimator's)")
    table_fit.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the estimator's random_state: the same seed on the same table gives the same "
        "model (default 0)",
    )
    table_fit.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    table_fit.add_argument("--quiet", action="store_true", help="no progress bars")
    table_fit.add_argument("--force", action="store_true", help="overwrite OUT/model.pt")
    table_fit.set_defaults(run=_fit_table)


def _add_score_command(sub: argparse._SubParsersAction) -> None:
    table_score = sub.add_parser(
        "score",
        help="log-likelihood of each row (and class posteriors) under a fitted model",
        description="Per row: log p(x) in the table's units (circuits; empty cells are "
        "marginalised exactly), the class posteriors p(class | x) when the model has a target, "
        "and log p(target | x) when the table has the target column.",
    )
    table_score.add_argument("model_dir", help=_MODEL_DIR_HELP)
    table_score.add_argument("data", help=_DATA_HELP)
    _add_output_options(table_score)
    table_score.set_defaults(run=_score_table)


def _add_posterior_command(sub: argparse._SubParsersAction) -> None:
    table_posterior = sub.add_parser(
        "posterior",
        help="class posteriors p(class | x) per row",
        description="Per row of the table: the class posteriors p(class | x) of a model "
        "fitted with --target, and the most probable class. A circuit marginalises empty "
        "cells exactly; the uGMM-NN (--model net) refuses them.",
    )
    table_posterior.add_argument("model_dir", help=_MODEL_DIR_HELP)
    table_posterior.add_argument("data", help=_DATA_HELP)
    _add_output_options(table_posterior)
    table_posterior.set_defaults(run=_posterior_table)


def _add_sample_command(sub: argparse._SubParsersAction) -> None:
    table_sample = sub.add_parser(
        "sample",
        help="exact samples from a fitted circuit",
        description="Draw rows from the density of a fitted circuit (exact ancestral "
        "sampling), in the table's units; with a target column, each row's class too (or "
        "only rows of --class). Draws are fixed by the seed the model was fitted with.",
    )
    table_sample.add_argument("model_dir", help=_MODEL_DIR_HELP)
    table_sample.add_argument("-n", type=int, default=10, help="number of rows (default 10)")
    table_sample.add_argument("--class", dest="klass", help="draw rows of this class only")
    _add_output_options(table_sample)
    table_sample.set_defaults(run=_sample_table)


def _add_impute_command(sub: argparse._SubParsersAction) -> None:
    table_impute = sub.add_parser(
        "impute",
        help="fill the empty cells of a table",
        description="Fill empty (or NaN) cells from the fitted circuit, given each row's "
        "observed cells: --method mean, the exact conditional mean E[missing | observed] "
        "(the best fill in squared error); sample, an exact conditional draw (default; "
        "--num-samples K writes K completions, a 'draw' column numbering them: multiple "
        "imputation); mpe, the max-product completion. An empty target cell is filled too "
        "(a class drawn from p(class | observed cells), or the most probable one).",
    )
    table_impute.add_argument("model_dir", help=_MODEL_DIR_HELP)
    table_impute.add_argument("data", help=_DATA_HELP)
    table_impute.add_argument(
        "--method",
        choices=["mean", "mpe", "sample"],
        default=_DEFAULT_IMPUTATION,
        help="conditional mean, max-product completion or exact draw (default sample)",
    )
    table_impute.add_argument(
        "--num-samples", type=int, help="K conditional draws per row (with --method sample)"
    )
    table_impute.add_argument("--mode", action="store_true", help="the same as --method mpe")
    table_impute.add_argument(
        "--seed", type=int, default=0, help="seed of the classes drawn for empty targets"
    )
    _add_output_options(table_impute)
    table_impute.set_defaults(run=_impute_table)


def add_table_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``fit``, ``score``, ``posterior``, ``sample`` and ``impute`` to ``sub``."""
    _add_fit_command(sub)
    _add_score_command(sub)
    _add_posterior_command(sub)
    _add_sample_command(sub)
    _add_impute_command(sub)
