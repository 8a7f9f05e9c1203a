"""The subcommands on the paper's presets: ``demo`` (Iris, shipped), ``train`` (any
experiment of :mod:`ugmm_prob.experiments`, with checkpoints, metrics files and resuming,
data-parallel under ``torchrun``) and ``evaluate`` (a checkpoint on its test split)."""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time

import torch

from .. import distributed
from ..checkpoints import load_checkpoint, save_checkpoint
from ..datasets import IRIS_CLASSES
from ..experiments import EXPERIMENTS, INITIALISATIONS, load_data, train_experiment
from ..plotting import figure_grid, plot_history, plot_neuron_mixtures, plot_posteriors
from ..training import evaluate
from ._common import (
    UsageError,
    check_device,
    check_file,
    check_folder,
    load_preset_data,
    save_figure,
)

__all__ = ["add_preset_commands", "check_train_args"]


def _demo(args: argparse.Namespace) -> int:
    out = check_folder("--out", args.out)
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
    plot_history(history, held_out="held-out training flowers", ax=axes[0, 1])
    axes[0, 1].set_title("training: loss on the training flowers, metrics on held-out ones")
    plot_neuron_mixtures(model.stack.layers[0], ax=axes[1, 0])
    plot_neuron_mixtures(model.stack.layers[1], ax=axes[1, 1])
    path = save_figure(fig, out / "iris_demo.png")
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


def check_train_args(args: argparse.Namespace) -> None:
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
    check_folder("--out", args.out)
    check_file("--checkpoint", args.checkpoint)
    check_file("--metrics", args.metrics)
    if args.metrics and pathlib.Path(args.metrics).suffix not in (".csv", ".jsonl", ".json"):
        raise UsageError(f"--metrics {args.metrics}: expected a .csv or .jsonl file name")
    check_device(args.device)


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
    check_file("checkpoint", str(checkpoint))
    data = load_preset_data(experiment.data, args.mnist_dir)
    before = _checkpoint_state(checkpoint)
    try:
        model, history, _ = train_experiment(
            experiment,
            data,
            seed=args.seed,
            epochs=args.epochs,
            overrides=_setting_overrides(args),
            init=args.init,
            train_rows=args.subset,
            device=args.device,
            progress=not args.quiet,
            checkpoint_path=checkpoint,
            metrics_path=args.metrics or out / "metrics.csv",
            resume=args.resume,
            override_lr=args.override_lr,
        )
    except KeyboardInterrupt:
        if ctx is None or ctx.is_main:
            _report_interruption(args, checkpoint, before)
        return 130
    if ctx is not None and not ctx.is_main:
        return 0
    final = evaluate(model, data.x_test, data.y_test)  # the test split, once, after training
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
        path = save_figure(
            plot_history(history, held_out="the validation split"), out / "history.png"
        )
        print(f"training curve saved to {path}")
    return 0


def _setting_overrides(args: argparse.Namespace) -> dict:
    """The preset's training settings that flags replace."""
    overrides = {
        key: getattr(args, key)
        for key in ("batch_size", "lr", "optimizer")
        if getattr(args, key) is not None
    }
    if args.milestones is not None:
        overrides["milestones"] = tuple(args.milestones)
    return overrides


def _report_interruption(
    args: argparse.Namespace, checkpoint: pathlib.Path, before: tuple[int, int] | None
) -> None:
    """After Ctrl-C: which epoch the checkpoint holds and how to resume, or that none was
    written."""
    if _checkpoint_state(checkpoint) not in (None, before) or (args.resume and before is not None):
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
    data = load_preset_data(name, args.mnist_dir)
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


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="train on Iris (shipped) and show exact posteriors",
        description="Train the paper's joint-score uGMM-NN on Iris (shipped with the package; "
        "no data folder needed), keep the epoch with the best NLL on held-out training "
        "flowers, print the test accuracy and the exact class posteriors p(c | x) of the "
        "first test flowers, and save a figure (OUT/iris_demo.png): the posteriors, the "
        "training curves and the mixtures of the hidden neurons.",
    )
    demo.add_argument(
        "--out", default="ugmm-demo", help="folder for the figure (default %(default)s)"
    )
    demo.add_argument("--epochs", type=int, help="override the preset's 300 epochs")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialisation, validation split and data order (default 0)",
    )
    demo.add_argument("--show", type=int, default=8, help="how many flowers to print")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train one of the paper's experiments",
        description="Train one of the paper's experiments. Under `torchrun --nproc_per_node=N "
        "-m ugmm_prob train ...` the N processes train data-parallel (--batch-size is the "
        "global batch); see docs/distributed.md.",
    )
    train.add_argument(
        "experiment",
        choices=sorted(EXPERIMENTS),
        metavar="experiment",
        help=f"the preset to train: {', '.join(sorted(EXPERIMENTS))}",
    )
    train.add_argument("--out", default="runs", help="folder for checkpoint, metrics, plot")
    train.add_argument("--checkpoint", help="checkpoint file (default OUT/checkpoint.pt)")
    train.add_argument("--metrics", help="metrics file, .csv or .jsonl (default OUT/metrics.csv)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    train.add_argument("--epochs", type=int, help="epochs in all (default: the preset's)")
    train.add_argument(
        "--batch-size", type=int, help="minibatch size, global under torchrun (default: preset's)"
    )
    train.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    train.add_argument(
        "--override-lr",
        action="store_true",
        help="with --resume: continue with --lr instead of the checkpoint's learning rate",
    )
    train.add_argument(
        "--optimizer", choices=["adam", "sgd"], help="optimiser (default: the preset's)"
    )
    train.add_argument("--milestones", type=int, nargs="*", help="MultiStepLR epochs")
    train.add_argument(
        "--subset",
        type=int,
        help="train on the first N examples left after the validation split (which stays)",
    )
    train.add_argument(
        "--init",
        choices=INITIALISATIONS,
        help="'paper' (N(0,1) means) or 'data' (prototype init); default: the preset's",
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialisation, validation split and data order (default 0)",
    )
    train.add_argument(
        "--mnist-dir",
        help="folder of the four MNIST IDX files, raw or .gz (default: $UGMM_PROB_MNIST_DIR, "
        "then ~/.cache/ugmm-prob/mnist)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser(
        "evaluate",
        help="score a checkpoint on its test split",
        description="Load a checkpoint written by 'ugmm-prob train' (checkpoint.pt or best.pt) "
        "and print its accuracy, NLL and ECE on the test split of its data set.",
    )
    score.add_argument("checkpoint", help="checkpoint file written by 'ugmm-prob train'")
    score.add_argument(
        "--data",
        choices=["iris", "mnist"],
        help="the data set (default: iris for a model of 4 inputs, else mnist)",
    )
    score.add_argument(
        "--mnist-dir",
        help="folder of the four MNIST IDX files (default: $UGMM_PROB_MNIST_DIR, then "
        "~/.cache/ugmm-prob/mnist)",
    )
    score.set_defaults(run=_evaluate)


def add_preset_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``, ``train`` and ``evaluate`` to the subcommands ``sub``."""
    _add_demo_command(sub)
    _add_train_command(sub)
    _add_evaluate_command(sub)
