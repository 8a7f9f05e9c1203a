"""The ``ugmm-prob`` command: ``demo``, ``train`` and ``evaluate``.

``ugmm-prob demo`` is the main job on embedded data: it trains the paper's joint-score
uGMM-NN on Iris (shipped with the package), prints the test accuracy and the exact class
posteriors of a few flowers, and saves a figure. ``train`` runs any experiment of
:mod:`ugmm_prob.experiments` with checkpoints and metrics files; ``evaluate`` scores a
checkpoint on its data set's test split.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from matplotlib.figure import Figure

from . import distributed
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import IRIS_CLASSES, CorruptDatasetError, DatasetNotFoundError
from .experiments import EXPERIMENTS, INITIALISATIONS, load_data, train_experiment
from .networks import JointScoreModel
from .plotting import plot_history, plot_neuron_mixtures, plot_posteriors
from .training import DeviceUnavailableError, TrainingDivergedError, evaluate

__all__ = ["main"]


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _demo(args: argparse.Namespace) -> int:
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

    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(2, 2)
    plot_posteriors(posterior, data.y_test, class_names=IRIS_CLASSES, ax=axes[0, 0])
    axes[0, 0].set_title("exact p(c | x) on the 30 test flowers")
    plot_history(history, ax=axes[0, 1])
    axes[0, 1].set_title("training (metrics on the held-out training flowers)")
    plot_neuron_mixtures(model.stack.layers[0], ax=axes[1, 0])
    plot_neuron_mixtures(model.stack.layers[1], ax=axes[1, 1])
    path = _save(fig, pathlib.Path(args.out) / "iris_demo.png")
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


def _train_experiment(args: argparse.Namespace, ctx: distributed.DistributedContext | None) -> int:
    experiment = EXPERIMENTS[args.experiment]
    data = load_data(experiment.data, mnist_root=args.mnist_dir)
    if args.subset:
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
    out = pathlib.Path(args.out)
    checkpoint = pathlib.Path(args.checkpoint) if args.checkpoint else out / "checkpoint.pt"
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
    )
    if ctx is not None and not ctx.is_main:
        return 0
    final = evaluate(model, data.x_test, data.y_test)
    selected = _selected_model_note(model, history, out)
    processes = f" ({ctx.world_size} processes)" if ctx is not None else ""
    print(
        f"{experiment.name}: test accuracy {100 * final['accuracy']:.2f}% "
        f"(paper {experiment.paper}%), NLL {final['nll']:.4f}, ECE {final['ece']:.4f}; "
        f"checkpoint {checkpoint}{processes}{selected}"
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
    name = args.data or ("iris" if isinstance(state.model, JointScoreModel) else "mnist")
    data = load_data(name, mnist_root=args.mnist_dir)
    metrics = evaluate(state.model, data.x_test, data.y_test)
    print(
        f"{type(state.model).__name__} after {state.epoch} epochs on the {name} test split: "
        f"accuracy {100 * metrics['accuracy']:.2f}%, NLL {metrics['nll']:.4f}, "
        f"ECE {metrics['ece']:.4f}"
    )
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ugmm-prob`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (
        DatasetNotFoundError,
        CorruptDatasetError,
        CheckpointError,
        DeviceUnavailableError,
        TrainingDivergedError,
    ) as error:
        print(f"ugmm-prob {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
