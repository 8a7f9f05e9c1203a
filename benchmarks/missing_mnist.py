"""MNIST with missing pixels and missing labels: the MNIST parts of the missing-data benchmark.

``benchmarks/missing.py`` holds the incomplete tables; this script the MNIST parts, on the
maximum-likelihood circuit chosen in docs/results.md ("MNIST by EM, gaussian inputs": uGMM
inputs with K = 12 components on logit-space pixels, per-class quad-trees of 10
repetitions x 10 channels, online EM with step size 0.05 for 10 epochs, the epoch kept by
validation ``-log p(x, y)``; built and trained by ``benchmarks/generative.py``'s functions).
Parts (``--parts``, default all):

- ``accuracy``: generative accuracy ``argmax_c p(c | x_observed)`` on the 10,000 test
  images, the missing pixels marginalised exactly (``joint_log_prob`` with a mask), with
  none, 25%, 50% and 75% of the pixels missing (a) completely at random (each pixel of each
  image with that probability, drawn from the seed) and (b) as the bottom 7, 14 or 21 of the
  28 rows; the curve as ``docs/mnist_missing_accuracy.png``.
- ``completion``: the bottom 14 rows of every test image filled given the top 14, RMSE in
  pixel space ([0, 1], the 8-bit pixels / 255) over the bottom rows. The circuit models
  logit-space pixels, so its pixel-space conditional mean ``E[pixel | top]`` is
  ``sum_u P(u | top) E_u[sigmoid-map(z)]`` over the input units
  (:meth:`UGMMCircuit.conditional_expectation`; each unit's expectation by Gauss-Hermite
  quadrature, ``--points`` nodes per component, to float precision), not the map of the
  logit-space mean (also reported, as the naive completion); the class is marginalised
  (the completion does not know the digit), and given (the true class) in a second row.
  Baselines: the mean training image of the digit's true class, and the overall mean image.
  A grid of completions goes to ``docs/mnist_missing_completions.png``.
- ``semi``: semi-supervised EM. ``--labelled-per-class`` (100) training images per class
  keep their labels (drawn with the seed from the fitting split; the validation split
  excluded), every other fitting image is unlabelled (``-1``: it contributes ``log p(x)``).
  The circuit fitted on the labelled images alone (``--labelled-epochs``) is set beside the
  semi-supervised fits, one per unlabelled weight ``lambda`` of ``--unlabelled-weights``
  (Nigam et al. 2000: the unlabelled rows count ``lambda`` times in EM; ``fit_em``'s
  ``unlabelled_weight``), started from the labelled-only fit (``--semi-start labelled``) or
  from a fresh initialisation on the labelled images (``data``). Epochs and ``lambda`` are
  chosen by accuracy on ``--val-labelled-per-class`` (100) labelled images per class of the
  validation split (1,000 images: a labelled validation set ten times smaller than the
  5,000-image split, which would be generous for 1,000 labelled training images).

Protocol: seed ``--seed`` (data dequantisation, masks, labelled subsets, initialisation,
data order); every choice on the last ``--val-rows`` training images; the test split scored
once per reported row. ``--checkpoint PATH`` keeps the maximum-likelihood circuit (trained
and saved there when absent, loaded when present, its settings checked), so that a failure
in the evaluation does not cost the training. ``--quick`` (a few thousand images, one
epoch, 500 test images) and ``--train-rows N`` for quick runs; ``--validation-only`` (semi)
prints the validation accuracies of the candidates without scoring the test split.

Records go to docs/results.json (``mnist-missing-*``, ``mnist-semi-supervised``), the table
to docs/results.md between the ``missing-mnist`` markers.

    python benchmarks/missing_mnist.py --checkpoint /tmp/mnist-mle.ckpt
    python benchmarks/missing_mnist.py --quick --no-write
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _harness import command_line, publish, record, timed
from _results import REPO, default_mnist_dir
from generative import _em_circuit, _grid_png, _mnist_split, _new_em_circuit
from missing import remove_cells

from ugmm_prob.checkpoints import load_checkpoint, save_checkpoint
from ugmm_prob.circuits import UGMMCircuit, fit_em
from ugmm_prob.distributions import pixel_logit_transform
from ugmm_prob.experiments import load_data
from ugmm_prob.roles import UNLABELLED

DOCS = REPO / "docs"
PARTS = ("accuracy", "completion", "semi")
RATES = (0.25, 0.5, 0.75)
SCHEMES = ("random", "bottom")
SIDE = 28
COMPLETION_ROWS = 14
"""Completions: the bottom 14 of the 28 rows are hidden, the top 14 observed."""

CHOSEN = {
    "em_components": 12,
    "em_step_size": 0.05,
    "em_repetitions": 10,
    "em_channels": 10,
    "em_structure": "quad_tree",
    "em_batch_size": 256,
    "em_step_decay": 0.0,
    "em_full_batch_epochs": 0,
    "alpha": 1e-6,
}
"""The maximum-likelihood setting chosen on the validation split (docs/results.md, "MNIST by
EM (maximum likelihood), gaussian inputs"), in ``benchmarks/generative.py``'s option names."""


# ------------------------------------------------------------------------------------------
# Masks and scores
# ------------------------------------------------------------------------------------------
def random_mask(count: int, rate: float, seed: int) -> torch.Tensor:
    """``(count, 784)`` observed-pixel mask (True = observed): each pixel missing with
    probability ``rate``, independently (:func:`missing.remove_cells`'s pattern)."""
    holes = remove_cells(np.ones((count, SIDE * SIDE)), rate, np.random.RandomState(seed))
    return torch.from_numpy(~np.isnan(holes))


def bottom_mask(count: int, missing_rows: int) -> torch.Tensor:
    """``(count, 784)`` mask observing the top ``28 - missing_rows`` rows of each image
    (row-major pixels), the bottom ``missing_rows`` missing."""
    rows = torch.arange(SIDE * SIDE) // SIDE
    return (rows < SIDE - missing_rows).expand(count, -1).clone()


def scheme_mask(scheme: str, rate: float, count: int, seed: int) -> torch.Tensor:
    """The mask of a scheme (``random`` or ``bottom``) at a rate (a multiple of 1/28 for
    ``bottom``: 0.25, 0.5 and 0.75 are 7, 14 and 21 rows)."""
    if scheme == "random":
        return random_mask(count, rate, seed)
    rows = round(rate * SIDE)
    if not math.isclose(rows, rate * SIDE):
        raise ValueError(f"bottom rows: {rate} of 28 rows is not a whole number of rows")
    return bottom_mask(count, rows)


def _chunks(size: int, total: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def masked_accuracy(
    circuit: UGMMCircuit, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
) -> float:
    """Accuracy of ``argmax_c log p(x_observed, c)`` (= ``argmax_c p(c | x_observed)``), the
    unobserved pixels (``mask`` False) marginalised exactly."""
    with torch.no_grad():
        predicted = torch.cat(
            [circuit.joint_log_prob(x[s], mask[s]).argmax(-1) for s in _chunks(500, len(x))]
        )
    return float((predicted == y).double().mean())


def pixel_mean(
    circuit: UGMMCircuit,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float,
    c: torch.Tensor | None = None,
    points: int = 64,
) -> torch.Tensor:
    """The circuit's conditional mean of the unobserved 8-bit pixels / 255 given the
    observed logit-space pixels ``x`` (class marginalised, or ``c``).

    The circuit models ``z = logit(alpha + (1 - 2 alpha) p)`` of the dequantised pixels
    ``p = (v + u) / 256`` (``u ~ U(0, 1)``): ``E[p | x_O]`` is the expectation of the map
    back to pixels (:meth:`UGMMCircuit.conditional_expectation`), and ``E[v / 255 | x_O] =
    (256 E[p | x_O] - 1/2) / 255`` exactly. Observed cells come back as their own pixels.
    """
    to_pixels = pixel_logit_transform(alpha)
    out = []
    for s in _chunks(500, len(x)):
        given = None if c is None else c[s]
        dequantised = circuit.conditional_expectation(
            x[s], to_pixels, mask[s], c=given, points=points
        )
        out.append((256 * dequantised - 0.5) / 255)
    return torch.cat(out)


def naive_pixel_mean(
    circuit: UGMMCircuit, x: torch.Tensor, mask: torch.Tensor, *, alpha: float
) -> torch.Tensor:
    """The map of the logit-space conditional mean to pixels, ``(256 sigma-map(E[z | x_O])
    - 1/2) / 255``: not the pixel-space conditional mean (reported to show the gap)."""
    to_pixels = pixel_logit_transform(alpha)
    means = [circuit.impute(x[s], mask[s], method="mean") for s in _chunks(500, len(x))]
    return (256 * to_pixels(torch.cat(means)) - 0.5) / 255


def rmse(estimate: torch.Tensor, truth: torch.Tensor, region: torch.Tensor) -> float:
    """Root mean squared error over the cells of ``region`` (True), all images pooled."""
    return float((estimate - truth)[region.expand_as(truth)].double().pow(2).mean().sqrt())


def class_mean_images(
    pixels: torch.Tensor, labels: torch.Tensor, classes: int = 10
) -> torch.Tensor:
    """``(classes, 784)``: the mean image of each class."""
    return torch.stack([pixels[labels == c].mean(0) for c in range(classes)])


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` rows of every class, drawn without replacement with
    ``seed`` (a class with fewer rows gives them all)."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().squeeze(1)
        picks.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


# ------------------------------------------------------------------------------------------
# The maximum-likelihood circuit
# ------------------------------------------------------------------------------------------
def generative_args(args: argparse.Namespace) -> argparse.Namespace:
    """``benchmarks/generative.py``'s options for the chosen circuit and this run's data."""
    return argparse.Namespace(
        **CHOSEN,
        seed=args.seed,
        epochs=args.epochs,
        train_rows=args.train_rows,
        val_rows=args.val_rows,
        mnist_dir=args.mnist_dir,
        device=None,
        metrics_dir=None,
    )


SETTINGS_KEYS = ("seed", "epochs", "train_rows", "val_rows", *CHOSEN)


@dataclasses.dataclass
class Fitted:
    """The maximum-likelihood circuit, its EM history, training minutes and data."""

    circuit: UGMMCircuit
    history: list[dict[str, Any]]
    minutes: float
    split: dict[str, torch.Tensor]
    loaded: bool


def mle_circuit(args: argparse.Namespace) -> Fitted:
    """The chosen circuit, fitted by ``generative._em_circuit``, or loaded from
    ``--checkpoint`` (which must hold the same settings); saved there after training."""
    options = generative_args(args)
    settings = {key: getattr(options, key) for key in SETTINGS_KEYS}
    path = pathlib.Path(args.checkpoint) if args.checkpoint else None
    if path is not None and path.exists():
        checkpoint = load_checkpoint(path)
        saved = checkpoint.training_state["settings"]
        if saved != settings:
            raise SystemExit(f"{path} holds a circuit of other settings: {saved} != {settings}")
        split = _mnist_split(options, "gaussian")  # the same seed: the same dequantisation
        minutes = float(checkpoint.training_state["minutes"])
        return Fitted(checkpoint.model, checkpoint.history, minutes, split, loaded=True)
    circuit, history, minutes, split = _em_circuit(options, "gaussian")
    if path is not None:
        save_checkpoint(
            path,
            circuit,
            epoch=len(history),
            history=history,
            training_state={"settings": settings, "minutes": minutes},
        )
    return Fitted(circuit, history, minutes, split, loaded=False)


def scored_test_images(
    split: dict[str, torch.Tensor], args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scored test images (all, or the first ``--test-rows``): logits, labels, and the
    8-bit pixels / 255."""
    count = args.test_rows or len(split["x_test"])
    pixels = load_data("mnist", mnist_root=args.mnist_dir).x_test[:count]
    return split["x_test"][:count], split["y_test"][:count], pixels


# ------------------------------------------------------------------------------------------
# Parts
# ------------------------------------------------------------------------------------------
def part_accuracy(args: argparse.Namespace, fitted: Fitted) -> dict[str, Any]:
    """Test accuracy per scheme and rate (the rate 0 shared by both schemes)."""
    x, y, _ = scored_test_images(fitted.split, args)
    full = masked_accuracy(fitted.circuit, x, y, torch.ones_like(x, dtype=torch.bool))
    curves = {"none": full}
    for scheme in SCHEMES:
        for rate in RATES:
            mask = scheme_mask(scheme, rate, len(x), args.seed)
            accuracy = masked_accuracy(fitted.circuit, x, y, mask)
            curves[f"{scheme}-{rate:g}"] = accuracy
            print(f"accuracy, {scheme} {rate:.0%} missing: {100 * accuracy:.2f}%", flush=True)
    return {"accuracy": curves, "test_images": len(x)}


def part_completion(args: argparse.Namespace, fitted: Fitted) -> dict[str, Any]:
    """RMSE of bottom-half completions in pixel space, beside the mean-image baselines."""
    x, y, pixels = scored_test_images(fitted.split, args)
    mask = bottom_mask(len(x), COMPLETION_ROWS)
    hidden = ~mask[:1]
    circuit, alpha = fitted.circuit, args.alpha
    fit_rows = len(fitted.split["x"])
    train = load_data("mnist", mnist_root=args.mnist_dir)
    train_pixels, train_labels = train.x_train[:fit_rows], train.y_train[:fit_rows]
    completions = {
        "circuit": pixel_mean(circuit, x, mask, alpha=alpha, points=args.points),
        "circuit_given_class": pixel_mean(circuit, x, mask, alpha=alpha, c=y, points=args.points),
        "circuit_naive": naive_pixel_mean(circuit, x, mask, alpha=alpha),
        "class_mean": class_mean_images(train_pixels, train_labels)[y],
        "overall_mean": train_pixels.mean(0).expand_as(pixels),
    }
    errors = {name: rmse(value, pixels, hidden) for name, value in completions.items()}
    for name, value in errors.items():
        print(f"bottom-half RMSE, {name}: {value:.4f}", flush=True)
    figures = pathlib.Path(tempfile.mkdtemp()) if args.no_write else DOCS
    shown = [pixels[:10], torch.where(mask[:10], pixels[:10], 0.5)] + [
        completions[name][:10] for name in ("circuit", "class_mean")
    ]
    _grid_png(torch.cat(shown), figures / "mnist_missing_completions.png", rows=len(shown))
    return {"rmse": errors, "test_images": len(x)}


@dataclasses.dataclass
class Candidate:
    """One fit of the semi-supervised part: its kept epoch's validation accuracy and more."""

    name: str
    model: UGMMCircuit
    history: list[dict[str, Any]]
    minutes: float
    weight: float | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The kept epoch's row (``keep_best="accuracy"``: the first of the best)."""
        return self.history[self.history[-1]["best_epoch"] - 1]

    def summary(self) -> dict[str, Any]:
        """Everything but the model, for the results and the table."""
        return {
            "name": self.name,
            "weight": self.weight,
            "validation": self.best["accuracy"],
            "epoch": self.best["epoch"],
            "minutes": self.minutes,
            "curve": [round(100 * row["accuracy"], 2) for row in self.history],
        }


def em_fit(
    args: argparse.Namespace,
    start: UGMMCircuit | None,
    x: torch.Tensor,
    y: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    online: bool,
    unlabelled_weight: float = 1.0,
) -> tuple[UGMMCircuit, list[dict[str, Any]], float]:
    """A circuit of the chosen setting fitted by EM on ``(x, y)`` (``-1``: unlabelled), from
    a copy of ``start`` or, with None, initialised on the labelled rows; online EM with the
    chosen step size or full-batch EM; the epoch with the best validation accuracy kept.
    Returns it, its history and the minutes taken."""
    if start is None:
        circuit = _new_em_circuit(generative_args(args), "gaussian", x)
        labelled = y != UNLABELLED
        generator = torch.Generator().manual_seed(args.seed)
        circuit.init_from_data(x[labelled], y[labelled], generator=generator)
    else:
        circuit = copy.deepcopy(start)
    history, seconds = timed(
        lambda: fit_em(
            circuit,
            x,
            y,
            x_val=validation[0],
            y_val=validation[1],
            epochs=epochs,
            batch_size=CHOSEN["em_batch_size"],
            online=online,
            step_size=CHOSEN["em_step_size"],
            unlabelled_weight=unlabelled_weight,
            seed=args.seed,
            keep_best="accuracy",
            progress=sys.stderr.isatty(),
        )
    )
    return circuit, history, seconds / 60


def part_semi(args: argparse.Namespace) -> dict[str, Any]:
    """Semi-supervised EM against the labelled images alone.

    Labelled only: online EM from an initialisation on the labelled images
    (``--labelled-epochs``), then ``--semi-epochs`` of full-batch EM from it (kept where
    the validation accuracy gains). Semi-supervised: from the online labelled-only fit
    (``--semi-start labelled``) or a fresh initialisation (``data``), ``--semi-epochs`` of
    EM (``--semi-em``) on every fitting image, one candidate per unlabelled weight; the
    candidate with the best validation accuracy is scored on the test split beside the
    labelled-only fit.
    """
    split = _mnist_split(generative_args(args), "gaussian")
    labelled = labelled_subset(split["y"], args.labelled_per_class, args.seed)
    val_rows = labelled_subset(split["y_val"], args.val_labelled_per_class, args.seed)
    validation = split["x_val"][val_rows], split["y_val"][val_rows]
    x_lab, y_lab = split["x"][labelled], split["y"][labelled]
    y_semi = torch.full_like(split["y"], UNLABELLED)
    y_semi[labelled] = y_lab

    def report(candidate: Candidate) -> Candidate:
        summary = candidate.summary()
        print(
            f"{candidate.name}: validation accuracy per epoch {summary['curve']} "
            f"({candidate.minutes:.1f} min)",
            flush=True,
        )
        return candidate

    online = report(
        Candidate(
            "labelled only, online EM",
            *em_fit(args, None, x_lab, y_lab, validation, epochs=args.labelled_epochs, online=True),
        )
    )
    full_batch = report(
        Candidate(
            "labelled only, then full-batch EM",
            *em_fit(
                args, online.model, x_lab, y_lab, validation, epochs=args.semi_epochs, online=False
            ),
        )
    )
    alone = max([online, full_batch], key=lambda c: c.best["accuracy"])
    semis = []
    for weight in args.unlabelled_weights:
        fit = em_fit(
            args,
            online.model if args.semi_start == "labelled" else None,
            split["x"],
            y_semi,
            validation,
            epochs=args.semi_epochs,
            online=args.semi_em == "online",
            unlabelled_weight=weight,
        )
        semis.append(report(Candidate(f"semi-supervised, lambda {weight:g}", *fit, weight)))
    chosen = max(semis, key=lambda c: c.best["accuracy"])
    out = {
        "labelled": len(labelled),
        "unlabelled": len(split["y"]) - len(labelled),
        "validation_images": len(val_rows),
        "candidates": [c.summary() for c in [online, full_batch, *semis]],
        "labelled_only": alone.name,
        "chosen_weight": chosen.weight,
    }
    if args.validation_only:
        return out
    x_test, y_test, _ = scored_test_images(split, args)
    everywhere = torch.ones_like(x_test, dtype=torch.bool)
    for key, candidate in (("labelled_only", alone), ("semi", chosen)):
        out[f"test_{key}"] = masked_accuracy(candidate.model, x_test, y_test, everywhere)
        print(f"test accuracy, {candidate.name}: {100 * out[f'test_{key}']:.2f}%", flush=True)
    return out


# ------------------------------------------------------------------------------------------
# Records, figure, table
# ------------------------------------------------------------------------------------------
def _rate_points(curves: dict[str, float], scheme: str) -> list[tuple[float, float]]:
    """``(rate, accuracy)`` of a scheme, from 0 (no pixel missing)."""
    return [(0.0, curves["none"])] + [(rate, curves[f"{scheme}-{rate:g}"]) for rate in RATES]


def accuracy_figure(curves: dict[str, float], path: pathlib.Path) -> None:
    """Test accuracy against the share of missing pixels, one line per scheme (Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    words = {"random": "completely at random", "bottom": "bottom rows"}
    for scheme in SCHEMES:
        rates, accuracies = zip(*_rate_points(curves, scheme), strict=True)
        ax.plot([100 * r for r in rates], [100 * a for a in accuracies], "o-", label=words[scheme])
    ax.set_xlabel("test pixels missing (%)")
    ax.set_ylabel("accuracy argmax p(c | x_observed) (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def records(results: dict[str, Any], command: str, split: str, seed: int) -> list[dict]:
    """docs/results.json records: accuracies in %, RMSEs in pixel units."""
    out: list[dict] = []

    def add(experiment: str, metric: str, value: float, **extra: Any) -> None:
        out.append(
            record(experiment, metric, [value], [seed], split=split, command=command, **extra)
        )

    if "accuracy" in results:
        for key, value in results["accuracy"]["accuracy"].items():
            add(f"mnist-missing-{key}", "test_accuracy", 100 * value, units="%", digits=2)
    if "completion" in results:
        for name, value in results["completion"]["rmse"].items():
            add("mnist-missing-bottom-half-completion", f"rmse_{name}", value, units="pixels")
    if "semi" in results and "test_semi" in results["semi"]:
        semi = results["semi"]
        for key in ("labelled_only", "semi"):
            add(
                "mnist-semi-supervised",
                f"test_accuracy_{key}",
                100 * semi[f"test_{key}"],
                units="%",
                digits=2,
                labelled=semi["labelled"],
                unlabelled_weight=semi["chosen_weight"] if key == "semi" else None,
            )
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


COMPLETION_ROWS_WORDS = {
    "circuit": ("circuit: E[pixel \\| top half], class marginalised", "no"),
    "circuit_given_class": ("circuit: E[pixel \\| top half, true class]", "yes"),
    "circuit_naive": (
        "circuit, naive: pixels of E[logit \\| top half], class marginalised",
        "no",
    ),
    "class_mean": ("mean training image of the true class", "yes"),
    "overall_mean": ("mean training image", "no"),
}
"""The rows of the completion table: words and whether the completion knows the class."""


def _rmse_cell(errors: dict[str, float], name: str) -> str:
    """An RMSE, in bold where it is the lowest."""
    text = f"{errors[name]:.4f}"
    return f"**{text}**" if errors[name] == min(errors.values()) else text


def table(results: dict[str, Any], args: argparse.Namespace, command: str, minutes: float) -> str:
    """The results.md section: the accuracy curve, completion RMSEs, semi-supervised rows."""
    fitted = results.get("fitted")
    lines = [
        "## MNIST with missing pixels and labels (`benchmarks/missing_mnist.py`)",
        "",
        f"Command: `{command}` ({minutes:.1f} min in all). Seed {args.seed} (dequantisation, "
        "masks, labelled subsets, initialisation, data order); the last "
        f"{args.val_rows:,} training images are the validation split, the test images are "
        "scored once per row.",
    ]
    if fitted is not None:
        kept = fitted.history[-1]["best_epoch"]
        trained = "loaded from `--checkpoint`, " if fitted.loaded else ""
        lines += [
            "",
            'The circuit of the first two tables is the maximum-likelihood one of "MNIST by EM '
            '(maximum likelihood), gaussian inputs" above: K = 12, per-class quad-trees of 10 '
            f"repetitions x 10 channels, online EM (step size 0.05) for {args.epochs} epochs "
            f"({kept} kept by validation -log p(x, y); {trained}trained in "
            f"{fitted.minutes:.1f} min on one thread) on {len(fitted.split['x']):,} images.",
        ]
    if "accuracy" in results:
        curves = results["accuracy"]["accuracy"]
        lines += [
            "",
            "### Generative accuracy with missing test pixels "
            f"({results['accuracy']['test_images']:,} test images)",
            "",
            "argmax_c p(c | x_observed), the missing pixels marginalised exactly (a mask in "
            "`joint_log_prob`). Completely at random: each pixel of each image missing with "
            "the probability; bottom rows: the bottom 7, 14 or 21 of the 28 rows missing.",
            "",
            "| missing | 0% | 25% | 50% | 75% |",
            "|---|---:|---:|---:|---:|",
        ]
        for scheme, words in (("random", "completely at random"), ("bottom", "bottom rows")):
            cells = " | ".join(_pct(a) for _, a in _rate_points(curves, scheme))
            lines.append(f"| {words} | {cells} |")
        lines += ["", "![accuracy with missing pixels](mnist_missing_accuracy.png)"]
    if "completion" in results:
        errors = results["completion"]["rmse"]
        lines += [
            "",
            f"### Bottom-half completions ({results['completion']['test_images']:,} test images)",
            "",
            "The top 14 rows observed, the bottom 14 filled; RMSE over the bottom 14 rows, in "
            "pixel units (8-bit pixels / 255, in [0, 1]). The circuit's pixel-space "
            "conditional mean E[pixel | top half] is exact: each input unit's expectation of "
            "the map from logits back to pixels by Gauss-Hermite quadrature "
            f"({args.points} nodes per component, float precision), weighted by the unit's "
            "posterior flow (`UGMMCircuit.conditional_expectation`), then the dequantisation "
            "offset removed exactly ((256 E - 1/2) / 255). The map of the logit-space "
            "conditional mean is not that mean (naive row). The class-mean baseline knows "
            "the digit; the circuit's completion does not (the class is marginalised), "
            "except in the row that gives it the true class.",
            "",
            "| completion of the bottom half | knows the class | RMSE |",
            "|---|---|---:|",
            *(
                f"| {words} | {knows} | {_rmse_cell(errors, name)} |"
                for name, (words, knows) in COMPLETION_ROWS_WORDS.items()
            ),
            "",
            "Rows: test digits, their observed top halves, the circuit's conditional mean, the "
            "class-mean image.",
            "",
            "![completions](mnist_missing_completions.png)",
        ]
    if "semi" in results:
        semi = results["semi"]
        candidates = "; ".join(
            f"{row['name']}: {_pct(row['validation'])} (epoch {row['epoch']} of "
            f"{len(row['curve'])}, {row['minutes']:.1f} min)"
            for row in semi["candidates"]
        )
        em = "full-batch EM" if args.semi_em == "full-batch" else "online EM (step size 0.05)"
        start = (
            "the online labelled-only fit"
            if args.semi_start == "labelled"
            else "an initialisation on the labelled images"
        )
        lines += [
            "",
            f"### Semi-supervised EM ({semi['labelled']:,} labelled, "
            f"{semi['unlabelled']:,} unlabelled training images)",
            "",
            f"{args.labelled_per_class} labelled images per class drawn with the seed from the "
            "fitting split (the validation split excluded), every other fitting image "
            "unlabelled (label -1: it contributes log p(x) = logsumexp_c log p(x, c)). The "
            "same circuit (K = 12, per-class 10 x 10 quad-trees) in every row. Labelled only: "
            f"online EM (step size 0.05, up to {args.labelled_epochs} epochs) from an "
            "initialisation on the labelled images, then up to "
            f"{args.semi_epochs} epochs of full-batch EM, kept where validation accuracy "
            f"gains (kept: {semi['labelled_only']}). Semi-supervised: {args.semi_epochs} "
            f"epochs of {em} on all {semi['labelled'] + semi['unlabelled']:,} fitting images "
            f"from {start}, the unlabelled rows weighted by lambda (Nigam et al. 2000; "
            "`fit_em(..., unlabelled_weight=lambda)`). Every epoch and lambda chosen by "
            f"accuracy on {semi['validation_images']:,} labelled validation images "
            f"({args.val_labelled_per_class} per class of the validation split, not all "
            f"{args.val_rows:,}: a labelled validation set as large as the split would be "
            "generous beside 1,000 labelled training images).",
            "",
            "| model | test accuracy argmax p(c\\|x) |",
            "|---|---:|",
            f"| labelled images only ({semi['labelled_only']}) | "
            f"{_pct(semi['test_labelled_only'])} |",
            f"| semi-supervised, lambda = {semi['chosen_weight']:g} | "
            f"**{_pct(semi['test_semi'])}** |",
            "",
            f"Validation accuracy of every candidate (kept epoch): {candidates}.",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="EM epochs on the fitting split")
    parser.add_argument("--labelled-epochs", type=int, default=20, help="labelled only: online")
    parser.add_argument("--train-rows", type=int, default=None, help="the first N images")
    parser.add_argument("--val-rows", type=int, default=5000, help="validation split")
    parser.add_argument("--test-rows", type=int, default=None, help="the first N test images")
    parser.add_argument("--labelled-per-class", type=int, default=100)
    parser.add_argument("--val-labelled-per-class", type=int, default=100)
    parser.add_argument("--unlabelled-weights", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--semi-start", choices=("labelled", "data"), default="labelled")
    parser.add_argument(
        "--semi-em", choices=("full-batch", "online"), default="full-batch", help="semi: EM"
    )
    parser.add_argument("--semi-epochs", type=int, default=6, help="semi: EM epochs")
    parser.add_argument("--points", type=int, default=64, help="Gauss-Hermite nodes")
    parser.add_argument("--alpha", type=float, default=CHOSEN["alpha"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help="the maximum-likelihood circuit")
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small data, one epoch")
    parser.add_argument("--validation-only", action="store_true", help="semi: no test scores")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    command = command_line("missing_mnist.py", argv)
    if args.quick:
        args.train_rows, args.val_rows = args.train_rows or 4000, 1000
        args.test_rows = args.test_rows or 500
        args.epochs, args.labelled_epochs, args.semi_epochs = 1, 2, 1
        args.labelled_per_class = 20
        args.val_labelled_per_class = 20
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    if "semi" in args.parts:  # first: a --checkpoint being written meanwhile is then read
        results["semi"] = part_semi(args)
    if {"accuracy", "completion"} & set(args.parts) and not args.validation_only:
        fitted = results["fitted"] = mle_circuit(args)
        for part, run in (("accuracy", part_accuracy), ("completion", part_completion)):
            if part in args.parts:
                results[part] = run(args, fitted)
    if args.validation_only:
        print("nothing written (--validation-only)", flush=True)
        return results
    minutes = (time.perf_counter() - started) / 60
    if "accuracy" in results:
        figures = pathlib.Path(tempfile.mkdtemp()) if args.no_write else DOCS
        accuracy_figure(results["accuracy"]["accuracy"], figures / "mnist_missing_accuracy.png")
    split = (
        f"MNIST, the last {args.val_rows:,} of the first {args.train_rows or 60000:,} training "
        "images the validation split, the test images scored once"
    )
    publish(
        records(results, command, split, args.seed),
        "missing-mnist",
        table(results, args, command, minutes),
        args.no_write,
        script="missing_mnist.py",
    )
    return results


if __name__ == "__main__":
    main()
