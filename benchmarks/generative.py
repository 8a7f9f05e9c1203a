"""The generative uGMM circuit: likelihoods and posteriors beside baselines, and its speed.

Parts (``--parts``, default all):

- ``iris``: the circuit on Iris (4 features + class, the paper's 80/20 split, standardised),
  fitted by maximum likelihood: test log-likelihood per flower and exact posterior accuracy,
  beside a full-covariance Gaussian mixture (scikit-learn) fitted on the same data.
- ``speed``: the MNIST-sized circuit (784 variables, 10 classes) at batch 128: ``log_prob``
  and train-step throughput (images/s) of the layer-wise evaluation (each sum layer one
  batched matrix product) against the same circuit evaluated by a straightforward version
  that materialises every ``batch x units x inputs`` product tensor; alternating rounds in
  one process, medians, their ratio, and each one's peak memory in a fresh subprocess.
- ``mnist``: MNIST with uniform dequantisation ``x = (pixel + u) / 256``: test bits per
  dimension and generative classification accuracy for pure maximum likelihood and the hybrid
  objective, beside a diagonal Gaussian mixture of similar parameter count (scikit-learn);
  twenty samples and twenty imputations of half-masked test digits as PNG grids.

Records go to docs/results.json, tables to docs/results.md (between generative markers).

    pip install -e ".[bench]"           # scikit-learn for the baselines
    python benchmarks/generative.py --parts iris speed
    python benchmarks/generative.py --parts mnist --epochs 3
    python benchmarks/generative.py --parts mnist --epochs 16 --milestones 12 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _results import (
    MEMORY_CHILD_ENV,
    REPO,
    default_mnist_dir,
    machine,
    replace_block,
    step_peak_mib,
    update_results,
)

from ugmm_prob.circuits import UGMMCircuit, fit_em
from ugmm_prob.distributions import logit_pixels, pixel_logit_transform
from ugmm_prob.experiments import load_data
from ugmm_prob.training import fit

DOCS = REPO / "docs"


def _materialised_logsumexp(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The straightforward sum layer: builds ``(B, G, S, Q)`` and reduces it."""
    return torch.logsumexp(values[:, :, None, :] + log_weights, dim=-1)


class MaterialisedCircuit(UGMMCircuit):
    """The same circuit written straightforwardly: every product tensor materialised.

    Input units through ``MixtureSameFamily.log_prob`` (``B x R x D x I x K``), leaf regions
    by gathering their variables (one ``B x V x I`` tensor per region), sum layers by
    broadcasting (``B x G x S x Q``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for layer in [*self.sums, self.root]:
            layer.sum_kernel = _materialised_logsumexp

    def _leaf_region_values(self, x, mask, mode):
        assert mask is None and mode == "sum"
        leaf = self.inputs.mixture.log_prob(x[:, None, :, None])
        members = self.graph.leaf_regions  # (R, P, D)
        return torch.stack(
            [
                torch.stack([leaf[:, r, region].sum(1) for region in members[r]], dim=1)
                for r in range(members.shape[0])
            ],
            dim=1,
        )


def mnist_circuit(materialised: bool = False, **overrides) -> UGMMCircuit:
    options = {
        "num_classes": 10,
        "depth": 4,
        "repetitions": 10,
        "channels": 10,
        "components": 2,
        "scale_floor": 1e-2,
    }
    options.update(overrides)
    return (MaterialisedCircuit if materialised else UGMMCircuit)(784, **options)


# ------------------------------------------------------------------------------------------
# Iris
# ------------------------------------------------------------------------------------------
def part_iris(args: argparse.Namespace) -> tuple[list[dict], str]:
    from sklearn.mixture import GaussianMixture

    data = load_data("iris")
    torch.manual_seed(args.seed)
    circuit = UGMMCircuit(4, 3, depth=1, repetitions=4, channels=4, components=2, scale_floor=0.05)
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
# Speed
# ------------------------------------------------------------------------------------------
def _speed_step(kind: str, evaluation: str, batch: int, seed: int = 0):
    """A closure for one ``log_prob`` (``kind='eval'``) or train step (``'train'``)."""
    torch.manual_seed(seed)
    circuit = mnist_circuit(materialised=evaluation == "materialised")
    x = torch.rand(batch, 784)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.Adam(circuit.parameters(), lr=1e-3)

    def run():
        if kind == "eval":
            with torch.no_grad():
                circuit.log_prob(x)
        else:
            loss = circuit.training_loss(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def part_speed(args: argparse.Namespace) -> tuple[list[dict], str]:
    batch = 128
    steps = {
        (kind, ev): _speed_step(kind, ev, batch)
        for kind in ("eval", "train")
        for ev in ("layerwise", "materialised")
    }
    for step in steps.values():
        step()
    times: dict = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(t) for key, t in times.items()}
    memory = {}
    for key in steps:
        command = [sys.executable, __file__, "--measure-memory", *key]
        out = subprocess.run(
            command, capture_output=True, text=True, env=MEMORY_CHILD_ENV, check=True
        )
        memory[key] = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
    rows = []
    ratio = {}
    for kind in ("eval", "train"):
        fast, slow = medians[(kind, "layerwise")], medians[(kind, "materialised")]
        ratio[kind] = slow / fast
        label = "log_prob" if kind == "eval" else "train step"
        rows.append(
            f"| {label} | {batch / fast:,.0f} | {batch / slow:,.0f} | **{ratio[kind]:.1f}x** | "
            f"{memory[(kind, 'layerwise')]:.0f} | {memory[(kind, 'materialised')]:.0f} |"
        )
    table = "\n".join(
        [
            "### Speed of the MNIST circuit (784 variables, 10 classes, depth 4, 10 repetitions, "
            "10 channels, K=2; batch 128)",
            "",
            f"Command: `python benchmarks/generative.py --parts speed --rounds {args.rounds}`; "
            f"medians of {args.rounds} alternating rounds.",
            "",
            "| operation | layer-wise images/s | materialised images/s | speed-up "
            "| layer-wise peak MiB | materialised peak MiB |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print(table, flush=True)
    records = [
        {
            "experiment": "mnist-circuit-speed",
            "metric": "speedup",
            "value": round(ratio["train"], 2),
            "paper": None,
        }
    ]
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


def _diag_gmm_bpd(args, components: int, train: torch.Tensor, test: torch.Tensor, jacobian):
    """Test bits/dim of a diagonal GMM fitted by EM on ``train`` (the space of ``jacobian``)."""
    from sklearn.mixture import GaussianMixture

    started = time.perf_counter()
    gmm = GaussianMixture(
        components,
        covariance_type="diag",
        max_iter=args.gmm_iterations,
        random_state=args.seed,
        reg_covar=1e-4,
    )
    gmm.fit(train.double().numpy())
    log_density = torch.from_numpy(gmm.score_samples(test.double().numpy())) + jacobian
    return _bits_per_dim(log_density), (time.perf_counter() - started) / 60


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


def part_mnist(args: argparse.Namespace) -> tuple[list[dict], str]:
    data = load_data("mnist", mnist_root=args.mnist_dir)
    if args.train_rows:
        data = dataclasses.replace(
            data, x_train=data.x_train[: args.train_rows], y_train=data.y_train[: args.train_rows]
        )
    generator = torch.Generator().manual_seed(args.seed)
    pixels_train = _dequantise(data.x_train, generator)
    pixels_test = _dequantise(data.x_test, generator)
    # The circuits model logits z = logit(alpha + (1 - 2 alpha) x) of the dequantised pixels
    # (as RealNVP and MAF do): there the uniform noise on background pixels spreads over a
    # few units instead of a spike of width 1/256, so no pixel's likelihood dominates.
    # logit_pixels() carries each density back to the pixels with the exact Jacobian.
    to_pixels = pixel_logit_transform(args.alpha)
    z_train, z_test = to_pixels.inv(pixels_train), to_pixels.inv(pixels_test)
    jacobian_test = -to_pixels.log_abs_det_jacobian(z_test, pixels_test).sum(-1)
    results, lines, records = {}, [], []
    for name, weight in (("mle", 1.0), ("hybrid", args.hybrid_weight)):
        torch.manual_seed(args.seed)
        circuit = mnist_circuit(likelihood_weight=weight)
        circuit.init_from_data(z_train, data.y_train, generator=generator)
        started = time.perf_counter()
        history = fit(
            circuit,
            z_train,
            data.y_train,
            x_val=z_test[:2000],
            y_val=data.y_test[:2000],
            epochs=args.epochs,
            batch_size=128,
            lr=args.lr,
            milestones=args.milestones,
            seed=args.seed,
            device=args.device,
            progress=sys.stderr.isatty(),
        )
        minutes = (time.perf_counter() - started) / 60
        circuit.cpu()  # evaluation, baselines and grids run on the CPU whatever trained
        density = logit_pixels(circuit(), args.alpha)
        log_px = _chunked(density.log_prob, pixels_test)
        accuracy = float((circuit.predict(z_test) == data.y_test).double().mean())
        bpd = _bits_per_dim(log_px)
        results[name] = (bpd, accuracy, minutes, circuit)
        records += _mnist_circuit_records(name, accuracy, bpd)
        # monitoring only (nothing is selected on it): accuracy on 2,000 test digits per epoch
        curve = ", ".join(f"{100 * row['accuracy']:.1f}" for row in history)
        print(
            f"circuit {name}: {bpd:.3f} bits/dim, accuracy {100 * accuracy:.2f}% "
            f"({minutes:.1f} min); per epoch on 2,000 test digits: {curve}",
            flush=True,
        )
        objective = "maximum likelihood" if name == "mle" else f"hybrid (lambda={weight})"
        lines.append(
            f"| uGMM circuit, {objective}, logit space"
            f" | {sum(p.numel() for p in circuit.parameters()):,} | **{bpd:.3f}** | "
            f"{100 * accuracy:.2f}% | {args.epochs} epochs, {minutes:.1f} min; per epoch "
            f"(2,000 test digits): {curve} |"
        )
    circuit = results["mle"][3]
    params = sum(p.numel() for p in circuit.parameters())
    components = max(1, params // (2 * 784))
    baselines = {
        "pixels": (pixels_train, pixels_test, torch.zeros(len(pixels_test))),
        "logit space": (z_train, z_test, jacobian_test),
    }
    gmm_bpd = {}
    for space, (train, test, jacobian) in baselines.items():
        gmm_bpd[space], minutes = _diag_gmm_bpd(
            args, components, train[: args.gmm_rows], test, jacobian
        )
        print(f"diagonal GMM in {space}: {gmm_bpd[space]:.3f} bits/dim", flush=True)
        lines.append(
            f"| diagonal GMM, {components} components, {space} (EM on {args.gmm_rows:,} "
            f"images, {args.gmm_iterations} iterations) | {components * (2 * 784 + 1):,} | "
            f"{gmm_bpd[space]:.3f} | | {minutes:.1f} min |"
        )
    records.append(
        {
            "experiment": "mnist-diag-gmm",
            "metric": "bits_per_dim",
            "value": round(min(gmm_bpd.values()), 4),
            "paper": None,
        }
    )
    with torch.no_grad():
        classes = torch.arange(20) % 10
        samples = logit_pixels(circuit(classes), args.alpha).sample()
        # --no-write: the grids go to a temporary folder instead of docs/
        figures = pathlib.Path(tempfile.mkdtemp()) if args.no_write else DOCS
        _grid_png(samples, figures / "mnist_circuit_samples.png", rows=2)
        mask = torch.zeros(20, 784, dtype=torch.bool)
        mask[:, :392] = True  # top half observed
        imputed = to_pixels(circuit.impute(z_test[:20], mask))
        _grid_png(
            torch.cat([torch.where(mask, pixels_test[:20], 0.5), imputed]),
            figures / "mnist_circuit_imputations.png",
            rows=4,
        )
    table = "\n".join(
        [
            "### MNIST, uniformly dequantised (test set, 10,000 images)",
            "",
            f"Command: `python benchmarks/generative.py --parts mnist --epochs {args.epochs} "
            f"--milestones {' '.join(map(str, args.milestones))} --hybrid-weight "
            f"{args.hybrid_weight}{f' --device {args.device}' if args.device else ''}`; "
            f"seed {args.seed}; lr {args.lr}, divided by 10 at the "
            f"milestones; circuits fitted to "
            f"logit-space pixels (alpha = {args.alpha:g}), every bits/dim on the 8-bit pixels "
            "(the logit Jacobian included).",
            "",
            "| model | parameters | bits/dim | accuracy argmax p(c\\|x) | training |",
            "|---|---:|---:|---:|---|",
            *lines,
            "",
            "Samples (two per class) and imputations (rows 1-2: the observed top halves, rows 3-4: "
            "the circuit's completions) of the maximum-likelihood circuit:",
            "",
            "![samples](mnist_circuit_samples.png)",
            "![imputations](mnist_circuit_imputations.png)",
        ]
    )
    print(table, flush=True)
    return records, table


def part_mnist_em(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Maximum likelihood by online EM on quad-tree circuits, one circuit per class.

    The last ``--val-rows`` training images are the validation split (epoch selection by
    held-out ``-log p(x, y)``); the 10,000 test images are scored once, at the end.
    ``gaussian``: uGMM inputs on logit-space pixels, bits/dim on the dequantised pixels with
    the exact Jacobian; ``categorical``: 256-value inputs on the 8-bit pixels (discrete
    bits/dim, comparable with published discrete circuits).
    """
    data = load_data("mnist", mnist_root=args.mnist_dir)
    rows = args.train_rows or len(data.x_train)
    fit_rows = rows - args.val_rows
    generator = torch.Generator().manual_seed(args.seed)
    to_pixels = pixel_logit_transform(args.alpha)
    records, lines = [], []
    for inputs in args.em_inputs:
        torch.manual_seed(args.seed)
        if inputs == "gaussian":
            train = to_pixels.inv(_dequantise(data.x_train[:rows], generator))
            pixels_test = _dequantise(data.x_test, generator)
            test = to_pixels.inv(pixels_test)
            options = {"components": 2, "scale_floor": 1e-2}
        else:
            train, test = (data.x_train[:rows] * 255).round(), (data.x_test * 255).round()
            options = {"inputs": "categorical"}
        circuit = UGMMCircuit.for_images(
            28,
            28,
            10,
            depth=4,
            repetitions=args.em_repetitions,
            channels=10,
            shared_structure=False,
            seed=args.seed,
            **options,
        )
        circuit.init_from_data(train[:fit_rows], data.y_train[:fit_rows], generator=generator)
        started = time.perf_counter()
        history = fit_em(
            circuit,
            train[:fit_rows],
            data.y_train[:fit_rows],
            x_val=train[fit_rows:],
            y_val=data.y_train[fit_rows:rows],
            epochs=args.epochs,
            batch_size=256,
            step_size=args.em_step_size,
            seed=args.seed,
            device=args.device,
            keep_best="nll",
            progress=sys.stderr.isatty(),
        )
        minutes = (time.perf_counter() - started) / 60
        circuit.cpu()
        kept = history[-1]["best_epoch"]
        with torch.no_grad():
            if inputs == "gaussian":
                log_px = _chunked(logit_pixels(circuit(), args.alpha).log_prob, pixels_test)
                bpd = _bits_per_dim(log_px)
            else:
                bpd = float(-_chunked(circuit.log_prob, test).mean() / (784 * math.log(2)))
            accuracy = float((circuit.predict(test) == data.y_test).double().mean())
        name = "mle" if inputs == "gaussian" else "discrete"
        records += _mnist_circuit_records(name, accuracy, bpd)
        curve = ", ".join(
            f"{row['bits_per_dim']:.3f}/{100 * row['accuracy']:.1f}%" for row in history
        )
        print(
            f"EM {inputs}: {bpd:.3f} bits/dim, accuracy {100 * accuracy:.2f}%, "
            f"{minutes:.1f} min, epoch {kept} kept; validation per epoch: {curve}",
            flush=True,
        )
        space = "logit-space pixels" if inputs == "gaussian" else "8-bit pixels, discrete"
        lines.append(
            f"| quad-tree circuit, {inputs} inputs ({space}), one circuit per class, online EM "
            f"| {sum(p.numel() for p in circuit.parameters()):,} | **{bpd:.3f}** | "
            f"{100 * accuracy:.2f}% | {args.epochs} epochs ({kept} kept), {minutes:.1f} min; "
            f"validation bits/dim (their own space) / accuracy per epoch: {curve} |"
        )
    table = "\n".join(
        [
            "### MNIST by EM (test set, 10,000 images, scored once)",
            "",
            f"Command: `python benchmarks/generative.py --parts mnist-em --epochs {args.epochs} "
            f"--em-repetitions {args.em_repetitions} --em-inputs {' '.join(args.em_inputs)}`; "
            f"seed {args.seed}; {fit_rows:,} training images, the last {args.val_rows:,} of "
            "the training set held out to keep the epoch with the best validation "
            f"-log p(x, y); online EM, batch 256, step size {args.em_step_size}; depth-4 "
            "quad-tree (7 x 7 patches; repetitions after the first cut off the middle), "
            "10 channels, repetition r serving class r mod 10 only.",
            "",
            "| model | parameters | bits/dim | accuracy argmax p(c\\|x) | training |",
            "|---|---:|---:|---:|---|",
            *lines,
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
        default=["iris", "speed", "mnist"],
        choices=["iris", "speed", "mnist", "mnist-em"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iris-epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3, help="MNIST epochs per circuit")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--hybrid-weight", type=float, default=0.5)
    parser.add_argument("--milestones", type=int, nargs="*", default=[])
    parser.add_argument("--alpha", type=float, default=1e-6, help="logit-space margin")
    parser.add_argument("--gmm-iterations", type=int, default=20)
    parser.add_argument("--gmm-rows", type=int, default=20_000)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--train-rows", type=int, default=None, help="MNIST: first N images")
    parser.add_argument("--device", default=None, help="MNIST training device, e.g. cuda")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument("--val-rows", type=int, default=5000, help="mnist-em: held out")
    parser.add_argument("--em-repetitions", type=int, default=10)
    parser.add_argument("--em-step-size", type=float, default=0.1)
    parser.add_argument(
        "--em-inputs",
        nargs="*",
        default=["gaussian", "categorical"],
        choices=["gaussian", "categorical"],
    )
    parser.add_argument("--measure-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        step = _speed_step(*args.measure_memory, batch=128)
        step()
        step()
        print(json.dumps({"extra_mib": step_peak_mib(step)}))
        return
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    print(f"machine: {machine()}", flush=True)
    records, tables = [], {}
    for part in args.parts:
        new, table = {
            "iris": part_iris,
            "speed": part_speed,
            "mnist": part_mnist,
            "mnist-em": part_mnist_em,
        }[part](args)
        records += new
        tables[part] = table
    if args.no_write:
        print("nothing written (--no-write)", flush=True)
        return
    update_results(records)
    write_docs(tables)


if __name__ == "__main__":
    main()
