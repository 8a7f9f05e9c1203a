"""The generative uGMM circuit: likelihoods and posteriors beside baselines, and its speed.

Parts (``--parts``, default all):

- ``iris``: the circuit on Iris (4 features + class, the paper's 80/20 split, standardised),
  fitted by maximum likelihood: test log-likelihood per flower and exact posterior accuracy,
  beside a full-covariance Gaussian mixture (scikit-learn) fitted on the same data.
- ``mnist-em``: MNIST by maximum likelihood with online EM, one quad-tree circuit per class:
  uGMM inputs on logit-space pixels (bits/dim of the uniformly dequantised 8-bit pixels with
  the exact Jacobian) and 256-value categorical inputs (discrete bits/dim); generative
  accuracy argmax p(c | x); samples and imputations as PNG grids.
- ``mnist-hybrid``: the EM circuit fine-tuned on the hybrid objective, ``lambda`` chosen on
  the validation split.

Every MNIST choice is made on the last ``--val-rows`` training images; the test split is
scored once per row. ``--validation-only`` trains a candidate setting and prints its
validation curve without scoring the test split (how the settings of docs/results.md were
chosen). The baselines (diagonal and per-class GMMs, PCA + GMM) are fitted by
``benchmarks/mnist_baselines.py``. The circuit's speed, against the straightforward
:class:`MaterialisedCircuit` below, is measured by ``benchmarks/speed.py --parts circuit``.

Records go to docs/results.json, tables to docs/results.md (between generative markers).

    pip install -e ".[bench]"           # scikit-learn for the baselines
    python benchmarks/generative.py --parts iris
    python benchmarks/generative.py --parts mnist-em mnist-hybrid --epochs 10
    python benchmarks/generative.py --parts mnist-em --em-inputs gaussian --epochs 5 \
        --em-components 12 --em-step-size 0.05 --validation-only
"""

from __future__ import annotations

import argparse
import copy
import math
import pathlib
import sys
import tempfile
import time

import torch
from _results import (
    REPO,
    default_mnist_dir,
    machine,
    replace_block,
    update_results,
)

from ugmm_prob.circuits import UGMMCircuit, fit_em, hclt
from ugmm_prob.distributions import logit_pixels, pixel_logit_transform
from ugmm_prob.experiments import load_data
from ugmm_prob.training import fit

DOCS = REPO / "docs"


def _materialised_logsumexp(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The straightforward sum layer: builds ``(B, G, S, Q)`` and reduces it."""
    return torch.logsumexp(values[:, :, None, :] + log_weights, dim=-1)


class MaterialisedCircuit(UGMMCircuit):
    """The same circuit written straightforwardly: every product tensor materialised.

    Input units through ``MixtureSameFamily.log_prob`` (``B x N x I x K``), leaf regions
    by gathering their slots (one ``B x V x I`` tensor per region), sum layers by
    broadcasting (``B x G x S x Q``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for layer in [*self.sums, self.root]:
            layer.sum_kernel = _materialised_logsumexp

    def _leaf_region_values(self, x, mask, mode):
        assert mask is None and mode == "sum"
        inputs = self.inputs
        leaf = inputs.mixture.log_prob(inputs.slot_values(x)[:, :, None])  # (B, N, I)
        return torch.stack(
            [leaf[:, slots[slots < inputs.num_slots]].sum(1) for slots in inputs.leaf_slots],
            dim=1,
        )


MNIST_CIRCUIT = {
    "num_classes": 10,
    "depth": 4,
    "repetitions": 10,
    "channels": 10,
    "components": 2,
    "scale_floor": 1e-2,
}
"""The MNIST-sized circuit of the speed measurements (784 variables), shared by
``benchmarks/speed.py`` and ``benchmarks/gpu.py``."""


def mnist_circuit(materialised: bool = False, **overrides) -> UGMMCircuit:
    options = {**MNIST_CIRCUIT, **overrides}
    return (MaterialisedCircuit if materialised else UGMMCircuit)(784, **options)


# ------------------------------------------------------------------------------------------
# Iris
# ------------------------------------------------------------------------------------------
def part_iris(args: argparse.Namespace) -> tuple[list[dict], str]:
    from sklearn.mixture import GaussianMixture

    data = load_data("iris")
    torch.manual_seed(args.seed)
    circuit = UGMMCircuit(
        4, num_classes=3, depth=1, repetitions=4, channels=4, components=2, scale_floor=0.05
    )
    circuit.init_leaves_from_data(data.x_train)
    started = time.perf_counter()
    fit(
        circuit,
        data.x_train,
        data.y_train,
        epochs=args.iris_epochs,
        batch_size=16,
        lr=1e-2,
        seed=args.seed,
        progress=False,
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        loglik_x = float(circuit.log_prob(data.x_test).mean())
        loglik_xc = float(circuit.log_prob(data.x_test, data.y_test).mean())
        accuracy = float((circuit.predict(data.x_test) == data.y_test).double().mean())

    x_train, x_test = data.x_train.double().numpy(), data.x_test.double().numpy()
    y_train, y_test = data.y_train.numpy(), data.y_test.numpy()
    best = min(
        (
            GaussianMixture(k, covariance_type="full", random_state=args.seed).fit(x_train)
            for k in range(1, 6)
        ),
        key=lambda g: g.bic(x_train),
    )
    gmm_loglik = float(best.score(x_test))  # mean log p(x) per flower
    per_class = [
        GaussianMixture(1, covariance_type="full", random_state=args.seed).fit(
            x_train[y_train == c]
        )
        for c in range(3)
    ]
    prior = torch.bincount(data.y_train, minlength=3).double() / len(data.y_train)
    scores = torch.stack(
        [
            torch.from_numpy(g.score_samples(x_test)) + prior[c].log()
            for c, g in enumerate(per_class)
        ],
        -1,
    )
    gmm_accuracy = float((scores.argmax(-1).numpy() == y_test).mean())

    records = [
        {
            "experiment": "iris-circuit-standardised",
            "metric": "test_accuracy",
            "value": round(100 * accuracy, 2),
            "paper": None,
        },
        {
            "experiment": "iris-circuit-standardised",
            "metric": "test_loglik",
            "value": round(loglik_x, 4),
            "paper": None,
        },
        {
            "experiment": "iris-full-gmm",
            "metric": "test_loglik",
            "value": round(gmm_loglik, 4),
            "paper": None,
        },
    ]
    table = "\n".join(
        [
            "### Iris (4 standardised features + class; paper's split, 120/30)",
            "",
            f"Command: `python benchmarks/generative.py --parts iris --iris-epochs "
            f"{args.iris_epochs}`; seed {args.seed}.",
            "",
            "| model | test log p(x) per flower | test log p(x, c) per flower "
            "| posterior accuracy |",
            "|---|---:|---:|---:|",
            f"| uGMM circuit (depth 1, 4 repetitions, 4 channels, K=2; {args.iris_epochs} epochs, "
            f"{seconds:.0f} s) | **{loglik_x:.3f}** | {loglik_xc:.3f} | **{100 * accuracy:.1f}%** "
            f"({round(30 * accuracy)}/30) |",
            f"| full-covariance GMM ({best.n_components} components by BIC) "
            f"| {gmm_loglik:.3f} | | |",
            f"| per-class full-covariance Gaussian (generative classifier) | | | "
            f"{100 * gmm_accuracy:.1f}% |",
        ]
    )
    print(table, flush=True)
    return records, table


# ------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------
def _dequantise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    pixels = torch.round(x * 255)
    return (pixels + torch.rand(x.shape, generator=generator)) / 256


def _bits_per_dim(log_density: torch.Tensor) -> float:
    """Bits per pixel of the 8-bit data bounded through the dequantised density on [0,1]^D."""
    return float(-(log_density.mean() / 784 - math.log(256)) / math.log(2))


def _grid_png(images: torch.Tensor, path, rows: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(len(images) // rows, rows))
    for i, image in enumerate(images):
        ax = fig.add_subplot(rows, len(images) // rows, i + 1)
        ax.imshow(image.reshape(28, 28).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _chunked(function, x: torch.Tensor, size: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([function(x[i : i + size]) for i in range(0, len(x), size)])


def _mnist_circuit_records(name: str, accuracy: float, bpd: float) -> list[dict]:
    """The ``mnist-circuit-<name>`` records: test accuracy (%) and bits per dimension."""
    experiment = f"mnist-circuit-{name}"
    return [
        {
            "experiment": experiment,
            "metric": "test_accuracy",
            "value": round(100 * accuracy, 2),
            "paper": None,
        },
        {"experiment": experiment, "metric": "bits_per_dim", "value": round(bpd, 4), "paper": None},
    ]


def _mnist_split(args: argparse.Namespace, inputs: str) -> dict[str, torch.Tensor]:
    """Training, validation (the last ``--val-rows`` training images) and test tensors.

    ``gaussian``: logit-space pixels of the uniformly dequantised images (the test pixels
    kept for bits/dim on the 8-bit pixels with the exact Jacobian); ``categorical``: the
    8-bit values.
    """
    data = load_data("mnist", mnist_root=args.mnist_dir)
    rows = args.train_rows or len(data.x_train)
    fit_rows = rows - args.val_rows
    generator = torch.Generator().manual_seed(args.seed)
    if inputs == "gaussian":
        to_logits = pixel_logit_transform(args.alpha).inv
        train = to_logits(_dequantise(data.x_train[:rows], generator))
        pixels_test = _dequantise(data.x_test, generator)
        test = to_logits(pixels_test)
    else:
        train, test = (data.x_train[:rows] * 255).round(), (data.x_test * 255).round()
        pixels_test = test
    return {
        "x": train[:fit_rows],
        "y": data.y_train[:fit_rows],
        "x_val": train[fit_rows:],
        "y_val": data.y_train[fit_rows:rows],
        "x_test": test,
        "y_test": data.y_test,
        "pixels_test": pixels_test,
        "generator": generator,
    }


def _metrics_path(args: argparse.Namespace, name: str) -> pathlib.Path | None:
    """Where a run's per-epoch metrics go (``--metrics-dir``), to follow a long run."""
    return pathlib.Path(args.metrics_dir) / f"{name}.jsonl" if args.metrics_dir else None


_EM_FITS: dict[str, tuple] = {}
"""EM circuits fitted in this process (``mnist-hybrid`` starts from the ``mnist-em`` one)."""


def _new_em_circuit(args: argparse.Namespace, inputs: str, x: torch.Tensor) -> UGMMCircuit:
    """The circuit of the ``--em-*`` settings before initialisation (``x``: the training
    images, for the hidden Chow-Liu tree); ``torch.manual_seed(args.seed)`` first."""
    torch.manual_seed(args.seed)
    options = {"components": args.em_components, "scale_floor": 1e-2}
    options = options if inputs == "gaussian" else {}
    if args.em_structure == "hclt":  # the Chow-Liu tree of the training images
        graph = hclt(x, seed=args.seed)
        return UGMMCircuit(
            784, num_classes=10, graph=graph, channels=args.em_channels, inputs=inputs, **options
        )
    return UGMMCircuit.for_images(
        28,
        28,
        10,
        depth=4,
        repetitions=args.em_repetitions,
        channels=args.em_channels,
        shared_structure=False,
        seed=args.seed,
        inputs=inputs,
        **options,
    )


def _em_circuit(args: argparse.Namespace, inputs: str):
    """The per-class quad-tree circuit fitted by online EM, selected on validation
    ``-log p(x, y)``: ``(circuit, history, minutes, split)``."""
    if inputs in _EM_FITS:
        return _EM_FITS[inputs]
    split = _mnist_split(args, inputs)
    circuit = _new_em_circuit(args, inputs, split["x"])
    circuit.init_from_data(split["x"], split["y"], generator=split["generator"])
    started = time.perf_counter()
    common = {
        "x_val": split["x_val"],
        "y_val": split["y_val"],
        "batch_size": args.em_batch_size,
        "seed": args.seed,
        "device": args.device,
        "keep_best": "nll",
        "progress": sys.stderr.isatty(),
    }
    history = fit_em(
        circuit,
        split["x"],
        split["y"],
        epochs=args.epochs,
        step_size=args.em_step_size,
        step_decay=args.em_step_decay,
        metrics_path=_metrics_path(args, f"em-{inputs}"),
        **common,
    )
    if args.em_full_batch_epochs:  # then full-batch EM from the kept online epoch
        online_state = copy.deepcopy(circuit.state_dict())
        finish = fit_em(
            circuit,
            split["x"],
            split["y"],
            epochs=args.em_full_batch_epochs,
            online=False,
            metrics_path=_metrics_path(args, f"em-{inputs}-full-batch"),
            **common,
        )
        best_online = min(row["nll"] for row in history)
        for row in finish:  # one history, epochs numbered on
            row["epoch"] += len(history)
            row["best_epoch"] += len(history)
        if min(row["nll"] for row in finish) >= best_online:  # full batch did not help
            circuit.load_state_dict(online_state)
            kept = history[-1]["best_epoch"]
        else:
            kept = finish[-1]["best_epoch"]
        history += finish
        for row in history:
            row["best_epoch"] = kept
    circuit.cpu()
    _EM_FITS[inputs] = (circuit, history, (time.perf_counter() - started) / 60, split)
    return _EM_FITS[inputs]


def _test_scores(args, circuit: UGMMCircuit, split: dict, inputs: str) -> tuple[float, float]:
    """Test bits/dim (8-bit pixels) and accuracy of argmax p(c | x): the test split's one use."""
    with torch.no_grad():
        if inputs == "gaussian":
            log_px = _chunked(logit_pixels(circuit(), args.alpha).log_prob, split["pixels_test"])
            bpd = _bits_per_dim(log_px)
        else:
            bpd = float(-_chunked(circuit.log_prob, split["x_test"]).mean() / (784 * math.log(2)))
        accuracy = float((circuit.predict(split["x_test"]) == split["y_test"]).double().mean())
    return bpd, accuracy


def _figures(args, circuit: UGMMCircuit, split: dict, inputs: str) -> str:
    """Samples (two per class) and completions of test digits whose bottom half is hidden,
    as PNG grids in pixel space; their markdown."""
    if inputs == "gaussian":  # logit-space pixels
        to_pixels, pixels = pixel_logit_transform(args.alpha), split["pixels_test"]
        name, model = "mnist_circuit", "EM-fitted uGMM circuit"
    else:  # 8-bit values
        to_pixels, pixels = (lambda v: v / 255), split["x_test"] / 255
        name, model = "mnist_circuit_discrete", "8-bit circuit (categorical inputs)"
    with torch.no_grad():
        samples = to_pixels(circuit(torch.arange(20) % 10).sample())
        # --no-write: the grids go to a temporary folder instead of docs/
        figures = pathlib.Path(tempfile.mkdtemp()) if args.no_write else DOCS
        _grid_png(samples, figures / f"{name}_samples.png", rows=2)
        mask = torch.zeros(20, 784, dtype=torch.bool)
        mask[:, :392] = True  # top half observed
        imputed = to_pixels(circuit.impute(split["x_test"][:20], mask))
        observed = torch.where(mask, pixels[:20], 0.5)
        _grid_png(torch.cat([observed, imputed]), figures / f"{name}_imputations.png", 4)
    return (
        "Samples (two per class) and completions (rows 1-2: the observed top halves of test "
        f"digits, rows 3-4: one draw of the bottom half from the {model} given the top "
        f"half):\n\n![samples]({name}_samples.png)\n![imputations]({name}_imputations.png)"
    )


def _components_flag(args: argparse.Namespace, inputs: str) -> str:
    """`` --em-components K`` and ``--em-structure`` where they are not the defaults
    (commands stay as they were)."""
    flags = (
        f" --em-components {args.em_components}"
        if inputs == "gaussian" and (args.em_components != 2)
        else ""
    )
    schedule = {
        "--em-structure": (args.em_structure, "quad_tree"),
        "--em-batch-size": (args.em_batch_size, 256),
        "--em-step-size": (args.em_step_size, 0.1),
        "--em-step-decay": (args.em_step_decay, 0.0),
        "--em-full-batch-epochs": (args.em_full_batch_epochs, 0),
    }
    return flags + "".join(
        f" {flag} {value}" for flag, (value, default) in schedule.items() if value != default
    )


def _structure_words(args: argparse.Namespace) -> str:
    """The circuit's structure in the words of a results table."""
    if args.em_structure == "hclt":
        return (
            f"hidden Chow-Liu tree ({args.em_channels} latent states per pixel, one root "
            "sum unit per class)"
        )
    return "quad-tree circuit, one circuit per class"


def _protocol(args: argparse.Namespace) -> str:
    structure = (
        f"a hidden Chow-Liu tree of the training images (pairwise mutual information of "
        f"binned pixels), {args.em_channels} latent states per pixel"
        if args.em_structure == "hclt"
        else f"depth-4 quad-tree (7 x 7 patches; repetitions after the first cut off the "
        f"middle), {args.em_repetitions} repetitions, {args.em_channels} channels, "
        "repetition r serving class r mod 10 only"
    )
    return (
        f"seed {args.seed}; the last {args.val_rows:,} training images held out as the "
        "validation split (every epoch, weight and setting chosen there), the 10,000 test "
        f"images scored once per row; {structure}; online EM, batch {args.em_batch_size}, "
        f"step size {args.em_step_size}"
        + (f" (1 + t)^-{args.em_step_decay}" if args.em_step_decay else "")
        + (
            f", then {args.em_full_batch_epochs} epochs of full-batch EM"
            if args.em_full_batch_epochs
            else ""
        )
        + "."
    )


def _epochs_words(args: argparse.Namespace) -> str:
    """``10 epochs`` or ``30 online + 6 full-batch epochs``."""
    if args.em_full_batch_epochs:
        return f"{args.epochs} online + {args.em_full_batch_epochs} full-batch epochs"
    return f"{args.epochs} epochs"


def _print_validation(name: str, history: list[dict], minutes: float) -> None:
    """``--validation-only``: the per-epoch validation figures of a candidate setting."""
    curve = ", ".join(
        f"{row['epoch']}: {row['bits_per_dim']:.4f}/{100 * row['accuracy']:.2f}%" for row in history
    )
    print(f"{name} (validation only, {minutes:.1f} min): bits/dim / accuracy {curve}", flush=True)


def part_mnist_em(args: argparse.Namespace) -> tuple[list[dict], dict[str, str]]:
    """Maximum likelihood by online EM, one circuit per class; epoch kept by validation
    ``-log p(x, y)``. ``gaussian``: uGMM inputs on logit-space pixels (bits/dim on the
    dequantised pixels with the exact Jacobian); ``categorical``: 256-value inputs on the
    8-bit pixels (discrete bits/dim, comparable with published discrete circuits)."""
    records, tables = [], {}
    for inputs in args.em_inputs:
        circuit, history, minutes, split = _em_circuit(args, inputs)
        if args.validation_only:
            _print_validation(f"EM {inputs}", history, minutes)
            continue
        bpd, accuracy = _test_scores(args, circuit, split, inputs)
        name = "mle" if inputs == "gaussian" else "discrete"
        records += _mnist_circuit_records(name, accuracy, bpd)
        curve = ", ".join(
            f"{row['bits_per_dim']:.3f}/{100 * row['accuracy']:.1f}%" for row in history
        )
        kept = history[-1]["best_epoch"]
        print(
            f"EM {inputs}: {bpd:.3f} bits/dim, {100 * accuracy:.2f}%, {minutes:.1f} min, "
            f"epoch {kept} kept; validation per epoch: {curve}",
            flush=True,
        )
        space = "logit-space pixels" if inputs == "gaussian" else "8-bit pixels, discrete"
        table = "\n".join(
            [
                f"### MNIST by EM (maximum likelihood), {inputs} inputs",
                "",
                f"Command: `python benchmarks/generative.py --parts mnist-em --epochs "
                f"{args.epochs} --em-repetitions {args.em_repetitions} --em-channels "
                f"{args.em_channels}{_components_flag(args, inputs)} --em-inputs {inputs}`; "
                f"{_protocol(args)}",
                "",
                "| model | parameters | bits/dim | accuracy argmax p(c\\|x) | training |",
                "|---|---:|---:|---:|---|",
                f"| {_structure_words(args)}, {inputs} inputs ({space}), online EM | "
                f"{sum(p.numel() for p in circuit.parameters()):,} | **{bpd:.3f}** | "
                f"{100 * accuracy:.2f}% | {_epochs_words(args)} ({kept} kept), {minutes:.1f} min; "
                f"validation bits/dim (their own space) / accuracy per epoch: {curve} |",
            ]
        )
        table += "\n\n" + _figures(args, circuit, split, inputs)
        print(table, flush=True)
        tables[f"mnist-em-{inputs}"] = table
    return records, tables


def part_mnist_hybrid(args: argparse.Namespace) -> tuple[list[dict], str]:
    """The EM circuit fine-tuned by Adam on the hybrid objective ``lambda NLL(x, y) / D +
    (1 - lambda) CE``: each ``lambda`` of ``--hybrid-weights`` trained ``--hybrid-epochs``
    epochs keeping the epoch with the best validation cross-entropy; the ``lambda`` with the
    best validation accuracy is scored on the test split."""
    circuit, _, em_minutes, split = _em_circuit(args, "gaussian")
    started = time.perf_counter()
    candidates, lines = [], []
    for weight in args.hybrid_weights:
        tuned = copy.deepcopy(circuit)
        tuned.likelihood_weight = weight
        history = fit(
            tuned,
            split["x"],
            split["y"],
            x_val=split["x_val"],
            y_val=split["y_val"],
            epochs=args.hybrid_epochs,
            batch_size=128,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            keep_best="class_nll",
            progress=sys.stderr.isatty(),
            metrics_path=_metrics_path(args, f"hybrid-{weight}"),
        )
        tuned.cpu()
        best = min(history, key=lambda row: row["class_nll"])
        candidates.append((best["accuracy"], weight, tuned, best))
        print(
            f"hybrid lambda={weight}: validation accuracy {100 * best['accuracy']:.2f}%, "
            f"cross-entropy {best['class_nll']:.4f} (epoch {best['epoch']})",
            flush=True,
        )
        lines.append(f"lambda {weight}: {100 * best['accuracy']:.2f}% (epoch {best['epoch']})")
    _, weight, tuned, best = max(candidates, key=lambda row: row[0])
    minutes = em_minutes + (time.perf_counter() - started) / 60
    bpd, accuracy = _test_scores(args, tuned, split, "gaussian")
    records = _mnist_circuit_records("hybrid", accuracy, bpd)
    table = "\n".join(
        [
            "### MNIST, hybrid objective (EM warm start, then Adam)",
            "",
            f"Command: `python benchmarks/generative.py --parts mnist-hybrid --epochs "
            f"{args.epochs} --em-repetitions {args.em_repetitions} --em-channels "
            f"{args.em_channels}{_components_flag(args, 'gaussian')} --hybrid-weights "
            f"{' '.join(map(str, args.hybrid_weights))} "
            f"--hybrid-epochs {args.hybrid_epochs} --lr {args.lr}`; {_protocol(args)} Adam, "
            f"batch 128, lr {args.lr}.",
            "",
            "| model | bits/dim | accuracy argmax p(c\\|x) | schedule | validation accuracy "
            "per lambda |",
            "|---|---:|---:|---|---|",
            f"| uGMM circuit, EM then hybrid lambda = {weight} | {bpd:.3f} | "
            f"**{100 * accuracy:.2f}%** | {args.epochs} EM epochs + {len(candidates)} x "
            f"{args.hybrid_epochs} Adam epochs, {minutes:.1f} min in all | {'; '.join(lines)} |",
        ]
    )
    print(table, flush=True)
    return records, table


def write_docs(tables: dict[str, str]) -> None:
    for part, table in tables.items():
        replace_block(f"generative-{part}", f"{table}\n\nMachine: {machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts",
        nargs="*",
        default=["iris", "mnist-em", "mnist-hybrid"],
        choices=["iris", "mnist-em", "mnist-hybrid"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iris-epochs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10, help="MNIST EM epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="mnist-hybrid: Adam")
    parser.add_argument("--hybrid-weights", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    parser.add_argument("--hybrid-epochs", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1e-6, help="logit-space margin")
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--train-rows", type=int, default=None, help="MNIST: first N images")
    parser.add_argument("--device", default=None, help="MNIST training device, e.g. cuda")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument("--val-rows", type=int, default=5000, help="mnist-em: held out")
    parser.add_argument("--em-repetitions", type=int, default=10)
    parser.add_argument("--em-channels", type=int, default=10)
    parser.add_argument("--em-step-size", type=float, default=0.1)
    parser.add_argument("--em-step-decay", type=float, default=0.0, help="step size (1 + t)^-decay")
    parser.add_argument("--em-batch-size", type=int, default=256)
    parser.add_argument(
        "--em-full-batch-epochs",
        type=int,
        default=0,
        help="full-batch EM epochs after the online ones, from the kept online epoch",
    )
    parser.add_argument("--em-components", type=int, default=2, help="gaussian inputs: K")
    parser.add_argument(
        "--em-structure",
        default="quad_tree",
        choices=["quad_tree", "hclt"],
        help="mnist-em: per-class quad-trees (--em-repetitions) or a hidden Chow-Liu tree "
        "with --em-channels latent states",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="mnist-em: train and print the validation curve only (for choosing a setting); "
        "the test split is not scored and nothing is written",
    )
    parser.add_argument(
        "--em-inputs",
        nargs="*",
        default=["gaussian", "categorical"],
        choices=["gaussian", "categorical"],
    )
    parser.add_argument("--metrics-dir", default=None, help="per-epoch metrics, JSON lines")
    args = parser.parse_args()
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    print(f"machine: {machine()}", flush=True)
    records, tables = [], {}
    for part in args.parts:
        new, table = {
            "iris": part_iris,
            "mnist-em": part_mnist_em,
            "mnist-hybrid": part_mnist_hybrid,
        }[part](args)
        records += new
        tables.update(table if isinstance(table, dict) else {part: table})
    if args.no_write or args.validation_only:
        print("nothing written (--no-write or --validation-only)", flush=True)
        return
    update_results(records)
    write_docs(tables)


if __name__ == "__main__":
    main()
