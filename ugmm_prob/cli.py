"""The ``ugmm-prob`` command: ``demo``, ``train``, ``evaluate``, and for your own tables
``fit``, ``score``, ``sample``, ``impute`` and ``posterior``.

``ugmm-prob demo`` is the main job on embedded data: it trains the paper's joint-score
uGMM-NN on Iris (shipped with the package), prints the test accuracy and the exact class
posteriors of a few flowers, and saves a figure. ``train`` runs any experiment of
:mod:`ugmm_prob.experiments` with checkpoints and metrics files; ``evaluate`` scores a
checkpoint on its data set's test split.

``fit DATA.csv --out DIR [--target COLUMN] [--model circuit|net]`` fits an estimator of
:mod:`ugmm_prob.sklearn` to a CSV table with a header (or a ``.npy`` array; see
:mod:`ugmm_prob.tables`) and saves ``DIR/model.pt`` (a checkpoint holding the model, the
standardisation and the column names), ``DIR/metrics.json`` and ``DIR/summary.png``;
``score``, ``sample``, ``impute`` and ``posterior`` read that folder and write CSV to stdout
or ``--output FILE`` (never over an existing file without ``--force``). A bad cell, a row of
the wrong length, an unknown class or an empty file is one line naming the line and column.

Every user error (a bad flag value, an output path that is a file, a device this machine
lacks, a damaged checkpoint, resuming with other settings) is one line on stderr and exit
status 2, and flag values are checked before any training starts. Ctrl-C during ``train``
stops after saving the last completed epoch, prints how to resume, and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from matplotlib.figure import Figure

from . import distributed
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import IRIS_CLASSES, CorruptDatasetError, DatasetNotFoundError
from .experiments import EXPERIMENTS, INITIALISATIONS, load_data, train_experiment
from .plotting import figure_grid, plot_history, plot_neuron_mixtures, plot_posteriors
from .tables import Table, TableError, read_table, write_table
from .training import (
    DeviceUnavailableError,
    ResumeMismatchError,
    TrainingDivergedError,
    evaluate,
    resolve_device,
)


class UsageError(ValueError):
    """A command-line value that cannot work, found before any training starts."""


def _check_folder(option: str, value: str) -> pathlib.Path:
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {value}: is an existing file, expected a folder")
    return path


def _check_file(option: str, value: str | None) -> None:
    if value is not None and pathlib.Path(value).is_dir():
        raise UsageError(f"{option} {value}: is a folder, expected a file name")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        resolve_device(device, torch.nn.Linear(1, 1))
    except RuntimeError as error:  # torch's own: unknown device string
        if isinstance(error, DeviceUnavailableError):
            raise
        raise UsageError(f"--device {device}: not a device ({error})") from error


__all__ = ["main"]


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _demo(args: argparse.Namespace) -> int:
    out = _check_folder("--out", args.out)
    if args.epochs is not None and args.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {args.epochs}")
    if args.show < 0:
        raise UsageError(f"--show must be >= 0, got {args.show}")
    data = load_data("iris")
    started = time.perf_counter()
    model, history, settings = train_experiment(
        EXPERIMENTS["iris-joint"],
        data,
        seed=args.seed,
        epochs=args.epochs,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - started
    posterior = model.posterior(data.x_test)
    correct = int((posterior.argmax(-1) == data.y_test).sum())
    kept = history[-1].get("best_epoch", settings["epochs"]) if history else 0
    print(
        f"Iris, joint-score uGMM-NN 5-10-5-1, {settings['epochs']} epochs in {seconds:.1f} s "
        f"(model of epoch {kept}, the best on held-out training flowers): exact posterior "
        f"accuracy {correct}/{len(data.y_test)} ({100 * correct / len(data.y_test):.1f}%) on "
        "the paper's 30-flower test split"
    )
    print("\nexact class posteriors p(c | x) of the first test flowers:")
    print(f"{'flower':>6}  {'true':<10}  " + "  ".join(f"{name:>10}" for name in IRIS_CLASSES))
    for i in range(min(args.show, len(data.y_test))):
        cells = "  ".join(f"{float(p):>10.4f}" for p in posterior[i])
        print(f"{i:>6}  {IRIS_CLASSES[int(data.y_test[i])]:<10}  {cells}")

    fig, axes = figure_grid(2, 2, size=(12, 7.5))
    plot_posteriors(posterior, data.y_test, class_names=IRIS_CLASSES, ax=axes[0, 0])
    axes[0, 0].set_title("exact p(c | x) on the 30 test flowers")
    plot_history(history, ax=axes[0, 1])
    axes[0, 1].set_title("training (metrics on the held-out training flowers)")
    plot_neuron_mixtures(model.stack.layers[0], ax=axes[1, 0])
    plot_neuron_mixtures(model.stack.layers[1], ax=axes[1, 1])
    path = _save(fig, out / "iris_demo.png")
    print(f"\nfigure saved to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    # Under `torchrun --nproc_per_node=N ugmm-prob train ...` every process runs this; fit
    # splits each minibatch across them and only rank 0 reports and writes files.
    ctx = distributed.init_distributed() if distributed.launched_by_torchrun() else None
    try:
        return _train_experiment(args, ctx)
    finally:
        if ctx is not None:
            torch.distributed.destroy_process_group()


def _check_train_args(args: argparse.Namespace) -> None:
    """Refuse flag values that cannot work, before any data is loaded or model trained."""
    for option, value, low in (
        ("--epochs", args.epochs, 0),
        ("--batch-size", args.batch_size, 1),
        ("--subset", args.subset, 1),
    ):
        if value is not None and value < low:
            raise UsageError(f"{option} must be >= {low}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.override_lr and args.lr is None:
        raise UsageError("--override-lr needs --lr (the new learning rate)")
    _check_folder("--out", args.out)
    _check_file("--checkpoint", args.checkpoint)
    _check_file("--metrics", args.metrics)
    if args.metrics and pathlib.Path(args.metrics).suffix not in (".csv", ".jsonl", ".json"):
        raise UsageError(f"--metrics {args.metrics}: expected a .csv or .jsonl file name")
    _check_device(args.device)


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues an interrupted ``train`` run."""
    argv = list(getattr(args, "argv", None) or [])
    if "--resume" not in argv:
        argv.append("--resume")
    return "ugmm-prob " + shlex.join(argv)


def _checkpoint_state(path: pathlib.Path) -> tuple[int, int] | None:
    """``(inode, mtime)`` of a file, to tell whether this run rewrote it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _train_experiment(args: argparse.Namespace, ctx: distributed.DistributedContext | None) -> int:
    experiment = EXPERIMENTS[args.experiment]
    out = pathlib.Path(args.out)
    checkpoint = pathlib.Path(args.checkpoint) if args.checkpoint else out / "checkpoint.pt"
    _check_file("checkpoint", str(checkpoint))
    data = load_data(experiment.data, mnist_root=args.mnist_dir)
    if args.subset is not None:
        data = replace(
            data, x_train=data.x_train[: args.subset], y_train=data.y_train[: args.subset]
        )
    overrides = {
        key: getattr(args, key)
        for key in ("batch_size", "lr", "optimizer")
        if getattr(args, key) is not None
    }
    if args.milestones is not None:
        overrides["milestones"] = tuple(args.milestones)
    before = _checkpoint_state(checkpoint)
    try:
        model, history, _ = train_experiment(
            experiment,
            data,
            seed=args.seed,
            epochs=args.epochs,
            overrides=overrides,
            init=args.init,
            device=args.device,
            progress=not args.quiet,
            checkpoint_path=checkpoint,
            metrics_path=args.metrics or out / "metrics.csv",
            resume=args.resume,
            override_lr=args.override_lr,
        )
    except KeyboardInterrupt:
        if ctx is not None and not ctx.is_main:
            return 130
        if _checkpoint_state(checkpoint) not in (None, before) or (
            args.resume and before is not None
        ):
            epoch = load_checkpoint(checkpoint).epoch
            print(
                f"ugmm-prob train: interrupted; {checkpoint} holds epoch {epoch}. "
                f"Resume with: {_resume_command(args)}",
                file=sys.stderr,
            )
        else:
            print(
                "ugmm-prob train: interrupted before the first epoch completed; no "
                "checkpoint was written",
                file=sys.stderr,
            )
        return 130
    if ctx is not None and not ctx.is_main:
        return 0
    final = evaluate(model, data.x_test, data.y_test)
    selected = _selected_model_note(model, history, out)
    processes = f" ({ctx.world_size} processes)" if ctx is not None else ""
    written = _checkpoint_state(checkpoint) not in (None, before)
    saved = f"checkpoint {checkpoint}" if written else "no checkpoint written (no epoch was run)"
    print(
        f"{experiment.name}: test accuracy {100 * final['accuracy']:.2f}% "
        f"(paper {experiment.paper}%), NLL {final['nll']:.4f}, ECE {final['ece']:.4f}; "
        f"{saved}{processes}{selected}"
    )
    if history:
        print(f"training curve saved to {_save(plot_history(history), out / 'history.png')}")
    return 0


def _selected_model_note(model: torch.nn.Module, history: list[dict], out: pathlib.Path) -> str:
    """Save the model of the selected epoch when training kept the best one (not the last).

    The training checkpoint holds the last epoch so that training can resume; the model
    reported on is written beside it as ``best.pt``.
    """
    if not history or "best_epoch" not in history[-1]:
        return ""
    epoch = history[-1]["best_epoch"]
    path = out / "best.pt"
    save_checkpoint(path, model, epoch=epoch, history=history[:epoch])
    return f"; model of epoch {epoch} (best validation NLL) saved to {path}"


def _evaluate(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    name = args.data or ("iris" if state.model.in_features == 4 else "mnist")
    data = load_data(name, mnist_root=args.mnist_dir)
    if state.model.in_features not in (None, data.x_test[0].numel()):
        raise UsageError(
            f"{args.checkpoint} holds a model of {state.model.in_features} inputs; the {name} "
            f"test split has {data.x_test[0].numel()} (choose the data set with --data)"
        )
    metrics = evaluate(state.model, data.x_test, data.y_test)
    shown = ", ".join(_format_metric(key, value) for key, value in metrics.items())
    print(
        f"{type(state.model).__name__} after {state.epoch} epochs on the {name} test split: {shown}"
    )
    return 0


def _format_metric(name: str, value: float) -> str:
    """``accuracy 96.67%``, ``nll 0.1234``: how the command prints a metric."""
    if name == "accuracy":
        return f"accuracy {100 * value:.2f}%"
    return f"{name.upper() if name in ('nll', 'ece') else name} {value:.4f}"


# ----------------------------------------------------------------------------------------
# Your own table: fit, score, sample, impute, posterior
# ----------------------------------------------------------------------------------------
MODEL_FILE = "model.pt"


def _sklearn_module():
    try:
        from . import sklearn as estimators

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
    _check_file("--output", args.output)
    if path.exists() and not args.force:
        raise UsageError(f"--output {path}: exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_table(columns, rows, handle)
    print(f"{len(rows)} rows written to {path}", file=sys.stderr)
    return 0


def _fit_table(args: argparse.Namespace) -> int:
    estimators = _sklearn_module()
    out = _check_folder("--out", args.out)
    if args.max_iter is not None and args.max_iter < 1:
        raise UsageError(f"--max-iter must be >= 1, got {args.max_iter}")
    _check_device(args.device)
    model_path = out / MODEL_FILE
    if model_path.exists() and not args.force:
        raise UsageError(f"{model_path}: exists; pass --force to overwrite it")
    table = read_table(args.data)
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
    options = {"random_state": args.seed, "verbose": not args.quiet, "device": args.device}
    if args.max_iter is not None:
        options["max_iter"] = args.max_iter
    if target is None:
        estimator = estimators.UGMMCircuitDensity(**options)
        estimator.fit(x)
        labels = None
    else:
        labels = table.labels(target)
        for row, label in enumerate(labels):
            if label is None:
                raise TableError(f"{table.where(row, target)}: the target is empty")
        cls = estimators.UGMMNetClassifier if args.model == "net" else None
        estimator = (cls or estimators.UGMMCircuitClassifier)(**options)
        estimator.fit(x, np.array(labels))
    metrics: dict = {
        "estimator": type(estimator).__name__,
        "data": str(args.data),
        "rows": len(x),
        "features": features,
        "target": target,
        "seed": args.seed,
        "epochs": estimator.n_iter_,
        "best_epoch": estimator.best_iter_,
    }
    density = hasattr(estimator, "score_samples")
    if density:
        log_p = estimator.score_samples(x)
        metrics["train_log_likelihood_per_row"] = float(log_p.mean())
        metrics["bic"] = float(estimator.bic(x))
    if labels is not None:
        metrics["classes"] = [str(c) for c in estimator.classes_]
        metrics["train_accuracy"] = float(estimator.score(x, np.array(labels)))
    metrics["history"] = estimator.history_
    estimators.save_estimator(
        estimator,
        model_path,
        extra={"columns": features, "target": target, "source": str(args.data)},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    fig, grid = figure_grid(1, 2, size=(12, 4))
    axes = grid[0]
    _plot_training(estimator.history_, axes[0])
    if labels is not None:
        proba = torch.as_tensor(estimator.predict_proba(x))
        truth = torch.as_tensor(estimator.encode_labels(labels))
        plot_posteriors(proba, truth, class_names=metrics["classes"], ax=axes[1])
        axes[1].set_title("p(class | x) on the training rows")
    else:
        axes[1].hist(log_p, bins=30)
        axes[1].set(xlabel="log p(x)", ylabel="rows", title="log-likelihood of the rows")
    figure = _save(fig, out / "summary.png")
    shown = [f"{type(estimator).__name__} on {len(x)} rows x {len(features)} columns"]
    if density:
        shown.append(f"mean log p(x) {metrics['train_log_likelihood_per_row']:.4f} per row")
    if labels is not None:
        shown.append(f"training accuracy {100 * metrics['train_accuracy']:.2f}%")
    print(", ".join(shown) + f"; saved {model_path}, {out / 'metrics.json'}, {figure}")
    return 0


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
    _sklearn_module()
    from .sklearn import load_estimator

    path = pathlib.Path(folder)
    path = path / MODEL_FILE if path.is_dir() else path
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
    method = "mode" if args.mode else "sample"
    labels = _known_labels(table, target, estimator)
    if labels is None:
        filled = estimator.impute(x, method=method)
        out_labels = None
    else:
        if method == "sample":
            # rows without a class: draw one from p(c | x_observed), then condition on it
            proba = estimator.predict_proba(x)
            rng = np.random.RandomState(args.seed)
            drawn = [str(estimator.classes_[rng.choice(len(p), p=p)]) for p in proba]
            out_labels = [drawn[i] if label is None else label for i, label in enumerate(labels)]
            by_name = {str(c): c for c in estimator.classes_}
            filled = estimator.impute(x, [by_name[c] for c in out_labels], method="sample")
        else:  # the max-product completion chooses the class with the cells
            filled = estimator.impute(x, method="mode")
            decided = estimator.predict(x)
            out_labels = [decided[i] if label is None else label for i, label in enumerate(labels)]
    if out_labels is None:
        return _output(args, columns, filled.tolist())
    rows = [[*row, c] for row, c in zip(filled.tolist(), out_labels, strict=True)]
    return _output(args, [*columns, target], rows)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", help="CSV file to write (default: stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ugmm-prob``."""
    parser = argparse.ArgumentParser(
        prog="ugmm-prob", description="uGMM-NN: neural networks of univariate Gaussian mixtures"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on Iris (shipped) and show exact posteriors")
    demo.add_argument("--out", default="ugmm-demo", help="folder for the figure")
    demo.add_argument("--epochs", type=int, help="override the preset's 300 epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--show", type=int, default=8, help="how many flowers to print")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    train = sub.add_parser(
        "train",
        help="train one of the paper's experiments",
        description="Train one of the paper's experiments. Under `torchrun --nproc_per_node=N "
        "-m ugmm_prob train ...` the N processes train data-parallel (--batch-size is the "
        "global batch); see docs/distributed.md.",
    )
    train.add_argument("experiment", choices=sorted(EXPERIMENTS))
    train.add_argument("--out", default="runs", help="folder for checkpoint, metrics, plot")
    train.add_argument("--checkpoint", help="checkpoint file (default OUT/checkpoint.pt)")
    train.add_argument("--metrics", help="metrics file, .csv or .jsonl (default OUT/metrics.csv)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument(
        "--override-lr",
        action="store_true",
        help="with --resume: continue with --lr instead of the checkpoint's learning rate",
    )
    train.add_argument("--optimizer", choices=["adam", "sgd"])
    train.add_argument("--milestones", type=int, nargs="*", help="MultiStepLR epochs")
    train.add_argument("--subset", type=int, help="train on the first N examples only")
    train.add_argument(
        "--init",
        choices=INITIALISATIONS,
        help="'paper' (N(0,1) means) or 'data' (prototype init); default: the preset's",
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--mnist-dir", help="MNIST IDX folder (default: $UGMM_PROB_MNIST_DIR)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)

    score = sub.add_parser("evaluate", help="score a checkpoint on its test split")
    score.add_argument("checkpoint")
    score.add_argument("--data", choices=["iris", "mnist"], help="default: from the model")
    score.add_argument("--mnist-dir")
    score.set_defaults(run=_evaluate)

    table_fit = sub.add_parser(
        "fit",
        help="fit a model to your own table (CSV with a header, or .npy)",
        description="Fit a model to a table: without --target a density (the generative "
        "circuit, UGMMCircuitDensity); with --target a classifier of that column (the "
        "circuit, exact p(class | x), or --model net, the paper's uGMM-NN). Saves OUT/model.pt, "
        "OUT/metrics.json and OUT/summary.png. Empty cells are missing values.",
    )
    table_fit.add_argument("data", help="CSV file with a header line, or a .npy array")
    table_fit.add_argument("--out", required=True, help="folder for model.pt, metrics, figure")
    table_fit.add_argument("--target", help="the class column (default: none, a density)")
    table_fit.add_argument("--model", choices=["circuit", "net"], default="circuit")
    table_fit.add_argument("--max-iter", type=int, help="epochs (default: the estimator's)")
    table_fit.add_argument("--seed", type=int, default=0)
    table_fit.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    table_fit.add_argument("--quiet", action="store_true", help="no progress bars")
    table_fit.add_argument("--force", action="store_true", help="overwrite OUT/model.pt")
    table_fit.set_defaults(run=_fit_table)

    table_score = sub.add_parser(
        "score",
        help="log-likelihood of each row (and class posteriors) under a fitted model",
        description="Per row: log p(x) in the table's units (circuits; empty cells are "
        "marginalised exactly), the class posteriors p(class | x) when the model has a target, "
        "and log p(target | x) when the table has the target column.",
    )
    table_score.add_argument("model_dir", help="the --out folder of 'ugmm-prob fit'")
    table_score.add_argument("data")
    _add_output_options(table_score)
    table_score.set_defaults(run=_score_table)

    table_posterior = sub.add_parser("posterior", help="class posteriors p(class | x) per row")
    table_posterior.add_argument("model_dir")
    table_posterior.add_argument("data")
    _add_output_options(table_posterior)
    table_posterior.set_defaults(run=_posterior_table)

    table_sample = sub.add_parser("sample", help="exact samples from a fitted circuit")
    table_sample.add_argument("model_dir")
    table_sample.add_argument("-n", type=int, default=10, help="number of rows (default 10)")
    table_sample.add_argument("--class", dest="klass", help="draw rows of this class only")
    _add_output_options(table_sample)
    table_sample.set_defaults(run=_sample_table)

    table_impute = sub.add_parser(
        "impute",
        help="fill the empty cells of a table",
        description="Fill empty (or NaN) cells by exact conditional sampling from the fitted "
        "circuit, or with --mode by the max-product completion (the conditional mode). An "
        "empty target cell is filled too (a class drawn from p(class | observed cells)).",
    )
    table_impute.add_argument("model_dir")
    table_impute.add_argument("data")
    table_impute.add_argument("--mode", action="store_true", help="the max-product completion")
    table_impute.add_argument("--seed", type=int, default=0, help="for drawn classes")
    _add_output_options(table_impute)
    table_impute.set_defaults(run=_impute_table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ugmm-prob`` console script; returns the exit status.

    0 on success, 2 for any user error (one line on stderr), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "train":
            _check_train_args(args)
        return args.run(args)
    except (
        UsageError,
        DatasetNotFoundError,
        CorruptDatasetError,
        CheckpointError,
        DeviceUnavailableError,
        TrainingDivergedError,
        ResumeMismatchError,
        TableError,
    ) as error:
        message = " ".join(str(error).split())  # one line
        print(f"ugmm-prob {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ugmm-prob {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
