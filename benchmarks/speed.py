"""Speed of the library's training and inference against plain PyTorch on this machine.

Parts (``--parts``, default all):

- ``overhead``: the per-step cost of training a small model through the library. One
  training step (forward, backward, Adam) of the Iris demo's network (the ``iris-joint``
  preset: joint-score uGMM-NN 5-10-5-1 with LayerNorm, batch 16) as ``fit`` runs it, the
  same step with validation on (the library's checks and Pyro's distribution checks), and a
  plain ``torch.nn.Module`` doing the same arithmetic with the same kernel (checked to give
  the same loss from the same parameters); alternating rounds in one process, medians.
  Also the preset's whole ``fit`` (all epochs, with per-epoch validation and ``keep_best``)
  per step, and its test accuracy; and the wall time of the command a new user runs first,
  ``python -m ugmm_prob demo --out DIR`` (a fresh process each time: imports, training with
  its progress bar, the figure), ``--demo-runs`` times.
- ``circuit``: a train step and ``log_prob`` of the MNIST-sized Gaussian circuit, against
  the implementation before issue 15 and a straightforward one.
- ``categorical-em``: one online-EM step of the discrete MNIST circuit (20 M parameters),
  with its leaf regions in C++ and in plain PyTorch.
- ``classifier``: a train step of the paper's MNIST uGMM-NN against an MLP of its widths.
- ``hclt``: forward + backward and one online-EM step of a hidden Chow-Liu tree with 32
  latent states on 8-bit MNIST, beside the floor of its dense sum layers' multiply-adds at
  this machine's matrix-product rate.
- ``missing``: forward + backward of full-covariance (``"multivariate"``) leaves on tables
  of breast cancer's and digits' shapes with 0/10/30/50% of cells missing (what EM and the
  estimators' size search run per step), against the plain formula: every example's
  ``Sigma`` with its missing rows and columns replaced by the identity's, factorised
  through autograd.
- ``contention``: the demo (a fresh process), the uGMM layer's training step, the MNIST
  Gaussian circuit's training step and the HCLT's forward + backward, on an idle machine and
  beside one CPU-bound process that the script starts and stops itself, on one thread and
  on two with the thread count fixed or adapted (:mod:`ugmm_prob.threads`, as the training
  loop runs it); the ratios to the idle single-thread time.

Each part returns ``(records, markdown)``; records go to docs/results.json (``speed-*``),
tables to docs/performance.md (between ``speed-<part>`` markers).

    python benchmarks/speed.py --parts overhead
    python benchmarks/speed.py --parts overhead --rounds 5 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from _results import REPO, default_mnist_dir, run_parts
from generative import MNIST_CIRCUIT, MaterialisedCircuit

from ugmm_prob import threads as threads_module
from ugmm_prob.circuits import UGMMCircuit, hclt, random_binary_trees
from ugmm_prob.circuits.em import _EMTrainer
from ugmm_prob.circuits.layers import region_products
from ugmm_prob.datasets import DatasetNotFoundError, load_mnist
from ugmm_prob.experiments import EXPERIMENTS, load_data, train_experiment
from ugmm_prob.kernels import coupled_log_density
from ugmm_prob.layers import UGMMLayer
from ugmm_prob.networks import JointScoreModel, MLPClassifier, UGMMClassifier
from ugmm_prob.threads import adaptive_threads
from ugmm_prob.training.point import _make_optimizer, _PointEstimateTrainer
from ugmm_prob.validation import validation_enabled

PERFORMANCE_PAGE = REPO / "docs" / "performance.md"


# ------------------------------------------------------------------------------------------
# overhead
# ------------------------------------------------------------------------------------------
class PlainJointScore(torch.nn.Module):
    """The joint-score network as a plain ``torch.nn.Module``: the arithmetic of
    :class:`~ugmm_prob.networks.JointScoreModel` (``objective="conditional"``, LayerNorm
    after each hidden layer) with the same kernel, without Pyro, checks or distributions."""

    def __init__(self, model: JointScoreModel) -> None:
        super().__init__()
        self.num_classes = model.num_classes
        layers = model.stack.layers
        self.floors = [layer.scale_floor for layer in layers]
        with torch.no_grad():
            self.loc = torch.nn.ParameterList([layer.loc.clone() for layer in layers])
            self.log_scale = torch.nn.ParameterList(
                [(layer.scale - layer.scale_floor).log() for layer in layers]
            )
            self.logits = torch.nn.ParameterList([layer.logits.clone() for layer in layers])
        self.norms = torch.nn.ModuleList()
        for norm in model.stack.norms:
            plain = torch.nn.LayerNorm(norm.normalized_shape)
            plain.load_state_dict(norm.state_dict())
            self.norms.append(plain)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean ``-log p(y | x)``, ``p(c | x) = softmax_c s(x, c)``."""
        labels = torch.arange(self.num_classes, dtype=x.dtype)
        h = torch.cat(
            [
                x.expand(self.num_classes, *x.shape),
                labels[:, None, None].expand(self.num_classes, len(x), 1),
            ],
            dim=-1,
        )
        for index, (loc, log_scale, logits) in enumerate(
            zip(self.loc, self.log_scale, self.logits, strict=True)
        ):
            scale = log_scale.exp() + self.floors[index]
            h = coupled_log_density(h, loc, scale, logits, backend="eager")
            if index < len(self.norms):
                h = self.norms[index](h)
        scores = h.squeeze(-1).transpose(0, 1)
        return -torch.log_softmax(scores, -1).gather(-1, y[:, None]).mean()


def _overhead_steps(batch: int) -> dict[str, Callable[[], None]]:
    """The training steps compared, from one initialisation (after checking that the plain
    module computes the library's loss)."""
    data = load_data("iris")
    x, y = data.x_train[:batch], data.y_train[:batch]
    torch.manual_seed(0)
    model = EXPERIMENTS["iris-joint"].build()
    model.init_from_data(data.x_train, data.y_train, generator=torch.Generator().manual_seed(0))
    plain = PlainJointScore(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, y), model.training_loss(x, y))
    optimizer = _make_optimizer("adam", list(model.parameters()), 1e-3, 0.0, 0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])
    trainer = _PointEstimateTrainer(model, optimizer, schedule, torch.device("cpu"))
    plain_optimizer = _make_optimizer("adam", list(plain.parameters()), 1e-3, 0.0, 0.9)

    def library() -> None:  # fit's step: checks off, loss kept on the device
        trainer.step(x, y, weight=1.0, num_data=len(data.x_train))

    def library_checked() -> None:  # the same step with the library's and Pyro's checks
        loss = model.training_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    def plain_step() -> None:
        loss = plain(x, y)
        plain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain_optimizer.step()

    return {
        "fit's step (library)": library,
        "the same with validation on": library_checked,
        "plain torch.nn.Module, same kernel": plain_step,
    }


def _median_us(steps: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict:
    for step in steps.values():  # warm-up
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def _whole_fit(epochs: int) -> tuple[float, int, int, int]:
    """The ``iris-joint`` preset's whole training: seconds, steps, test flowers right, all."""
    data = load_data("iris")
    experiment = EXPERIMENTS["iris-joint"]
    start = time.perf_counter()
    model, _, settings = train_experiment(experiment, data, epochs=epochs, progress=False)
    seconds = time.perf_counter() - start
    fitted_rows = round(len(data.x_train) * (1 - experiment.validation))
    steps = epochs * -(-fitted_rows // settings["batch_size"])
    correct = int((model.posterior(data.x_test).argmax(-1) == data.y_test).sum())
    return seconds, steps, correct, len(data.y_test)


def _demo_walls(runs: int, epochs: int) -> list[tuple[float, str]]:
    """Wall seconds of ``python -m ugmm_prob demo`` in fresh processes, with each run's
    accuracy line (``N/30``)."""
    walls = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "ugmm_prob", "demo", "--out", out]
            command += ["--epochs", str(epochs)]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - start
        accuracy = re.search(r"accuracy (\d+/\d+)", done.stdout)
        walls.append((seconds, accuracy.group(1) if accuracy else "?"))
    return walls


def part_overhead(args: argparse.Namespace) -> tuple[list[dict], str]:
    batch = 16
    with validation_enabled(True):
        medians = _median_us(_overhead_steps(batch), args.rounds, args.steps_per_round)
    seconds, steps, correct, total = _whole_fit(args.demo_epochs)
    plain = medians["plain torch.nn.Module, same kernel"]
    rows = [f"| {name} | {value:,.0f} | {value / plain:.2f}x |" for name, value in medians.items()]
    whole = seconds / steps * 1e6
    rows.append(
        f"| whole `fit` of the preset, per step ({args.demo_epochs} epochs, {steps:,} steps, "
        f"{seconds:.1f} s; test {correct}/{total}) | {whole:,.0f} | {whole / plain:.2f}x |"
    )
    walls = _demo_walls(args.demo_runs, args.demo_epochs)
    demo_line = ""
    if walls:
        runs = ", ".join(f"{seconds:.2f} s ({accuracy})" for seconds, accuracy in walls)
        demo_line = (
            f"\n\nThe whole demo, `python -m ugmm_prob demo --out DIR` ({args.demo_epochs} "
            f"epochs, progress bar on, a fresh process each run: imports, training, the "
            f"figure): median **{statistics.median(w for w, _ in walls):.2f} s** wall over "
            f"{len(walls)} runs: {runs}."
        )
    table = "\n".join(
        [
            "### Per-step overhead: the Iris demo's network (joint-score 5-10-5-1, LayerNorm, "
            f"batch {batch}) against plain PyTorch",
            "",
            f"Command: `python benchmarks/speed.py --parts overhead --rounds {args.rounds}`; "
            f"medians of {args.rounds} alternating rounds of {args.steps_per_round} steps "
            "(forward, backward, Adam). The whole `fit` adds per epoch the validation pass, "
            "the snapshot for the NaN guard and `keep_best`.",
            "",
            "| training step | µs per step | vs plain |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    table += demo_line
    print(table, flush=True)
    names = {
        "fit's step (library)": "library",
        "the same with validation on": "library-validated",
        "plain torch.nn.Module, same kernel": "plain",
    }
    records = [
        {
            "experiment": f"speed-overhead-{names[name]}",
            "metric": "step_us",
            "value": round(value, 1),
            "paper": None,
        }
        for name, value in medians.items()
    ]
    records.append(
        {
            "experiment": "speed-overhead-demo-fit",
            "metric": "seconds",
            "value": round(seconds, 2),
            "paper": None,
        }
    )
    if walls:
        records.append(
            {
                "experiment": "speed-demo-wall",
                "metric": "seconds",
                "value": round(statistics.median(w for w, _ in walls), 2),
                "runs": [round(w, 2) for w, _ in walls],
                "paper": None,
            }
        )
    return records, table


def _medians(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, alternating rounds of one call each."""
    return {name: us / 1e6 for name, us in _median_us(steps, rounds, 1).items()}


# ------------------------------------------------------------------------------------------
# circuit
# ------------------------------------------------------------------------------------------
class TorchLeafRegionsCircuit(UGMMCircuit):
    """The circuit with its leaf regions in plain PyTorch, not a C++ kernel: every input
    unit's value at every example into a ``B x R x D x I`` tensor, then a gather and a sum
    per region."""

    def _leaf_region_values(self, x, mask, mode):
        return region_products(self.inputs.log_values(x, mask, mode), self.inputs.leaf_slots)


class PreviousCircuit(TorchLeafRegionsCircuit):
    """The circuit as evaluated before the fused leaf regions (issue 15's "today"): input
    units through the compiled tied-mixture kernel, leaf regions in plain PyTorch, every
    product layer's ``W^2`` log-values formed before its sum layer."""

    def _internal_upward(self, h, mode="sum", probes=None, keep_products=False):
        return super()._internal_upward(h, mode, probes, keep_products=True)


def exp_per_second(rounds: int = 7) -> float:
    """This machine's exponentials per second (float32, all threads, vectorised)."""
    x = -torch.rand(1 << 24) * 20
    out = torch.empty_like(x)
    torch.exp(x, out=out)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        torch.exp(x, out=out)
        times.append(time.perf_counter() - start)
    return x.numel() / statistics.median(times)


def _circuit_steps(batch: int) -> tuple[dict[str, Callable[[], None]], dict[str, UGMMCircuit]]:
    kinds = {
        "ugmm_prob": UGMMCircuit,
        "previous": PreviousCircuit,
        "straightforward": MaterialisedCircuit,
    }
    steps, circuits = {}, {}
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    for name, kind in kinds.items():
        torch.manual_seed(0)  # the same parameters for every implementation
        circuit = kind(784, **MNIST_CIRCUIT)
        optimiser = torch.optim.Adam(circuit.parameters(), lr=1e-3)

        def train(circuit=circuit, optimiser=optimiser):
            optimiser.zero_grad()
            circuit.training_loss(x, y).backward()
            optimiser.step()

        def score(circuit=circuit):
            with torch.no_grad():
                circuit.log_prob(x)

        steps[f"train {name}"], steps[f"log_prob {name}"] = train, score
        circuits[name] = circuit
    return steps, circuits


def part_circuit(args: argparse.Namespace) -> tuple[list[dict], str]:
    batch = 128
    steps, circuits = _circuit_steps(batch)
    probe = torch.rand(batch, 784, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = circuits["straightforward"].log_prob(probe)
        agreement = max(
            float((circuits[name].log_prob(probe) - reference).abs().max())
            for name in ("ugmm_prob", "previous")
        )
    ms = {name: 1000 * t for name, t in _medians(steps, args.rounds).items()}
    exps = exp_per_second()
    units = batch * MNIST_CIRCUIT["repetitions"] * 784 * MNIST_CIRCUIT["channels"]
    # K = 2 components: one exponential per unit forward, one more for the backward pass
    floors = {"log_prob": 1000 * units / exps, "train": 1000 * 2 * units / exps}
    rows, records = [], []
    for operation, label in (("train", "train step"), ("log_prob", "`log_prob`")):
        new, old = ms[f"{operation} ugmm_prob"], ms[f"{operation} previous"]
        plain = ms[f"{operation} straightforward"]
        rows.append(
            f"| {label} | **{new:.1f}** ({batch / new * 1000:,.0f}/s) | {old:.1f} "
            f"({batch / old * 1000:,.0f}/s) | {plain:.1f} ({batch / plain * 1000:,.0f}/s) | "
            f"**{old / new:.1f}x** | {plain / new:.1f}x | {floors[operation]:.1f} "
            f"({new / floors[operation]:.0f}x above) |"
        )
        records += [
            {
                "experiment": f"speed-circuit-{operation}",
                "metric": "images_per_second",
                "value": round(batch / new * 1000),
                "paper": None,
            },
            {
                "experiment": f"speed-circuit-{operation}",
                "metric": "speedup_vs_previous",
                "value": round(old / new, 2),
                "paper": None,
            },
        ]
    table = "\n".join(
        [
            "### The MNIST circuit: train step and `log_prob`",
            "",
            f"Command: `python benchmarks/speed.py --parts circuit --rounds {args.rounds}`; "
            f"784 variables, 10 classes, depth 4, 10 repetitions, 10 channels, K = 2, batch "
            f"{batch}, float32; medians of {args.rounds} alternating rounds in one process. "
            "*ugmm_prob*: fused leaf regions (C++) and sums of never-formed products; "
            "*previous*: the compiled input layer, a gathered `B x R x D x I` tensor and "
            "formed products (the code before issue 15); *straightforward*: "
            "`MixtureSameFamily` inputs, per-region gathers and broadcast sums "
            "(`benchmarks/generative.py`). All three give the same `log_prob` (largest "
            f"difference {agreement:.1e} nats on values near "
            f"{float(reference.abs().mean()):,.0f}). Floor: one exponential per input unit and "
            f"example forward (two with the backward pass) at this machine's measured "
            f"{exps / 1e9:.2f} G exponentials/s.",
            "",
            "| operation | ugmm_prob ms (images/s) | previous ms | straightforward ms | vs "
            "previous | vs straightforward | exp floor ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    return records, table


# ------------------------------------------------------------------------------------------
# categorical-em
# ------------------------------------------------------------------------------------------
def online_em(circuit: UGMMCircuit) -> _EMTrainer:
    """``fit_em``'s online EM with its defaults (step size 0.1, pseudo-counts 1e-2), whose
    ``step`` is one minibatch's E-step, running statistics and M-step."""
    return _EMTrainer(
        circuit,
        online=True,
        step_size=0.1,
        step_decay=0.0,
        pseudo_count=1e-2,
        variance_pseudo_count=1e-2,
    )


def part_categorical_em(args: argparse.Namespace) -> tuple[list[dict], str]:
    batch, num_data = 256, 55_000
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4 * batch, 784), generator=generator).float()
    y = torch.randint(0, 10, (4 * batch,), generator=generator)
    options = {k: MNIST_CIRCUIT[k] for k in ("depth", "repetitions", "channels")}
    steps, trainers = {}, {}
    for name, kind in (("ugmm_prob", UGMMCircuit), ("pytorch", TorchLeafRegionsCircuit)):
        torch.manual_seed(0)
        circuit = kind.for_images(
            28, 28, 10, shared_structure=False, seed=0, inputs="categorical", **options
        )
        circuit.init_from_data(x, y, generator=torch.Generator().manual_seed(1))
        trainer = online_em(circuit)
        batches = itertools.cycle(range(4))

        def step(trainer=trainer, batches=batches):
            start = next(batches) * batch
            rows = slice(start, start + batch)
            trainer.step(x[rows], y[rows], weight=1.0, num_data=num_data)

        steps[name], trainers[name] = step, trainer
    ms = {name: 1000 * t for name, t in _medians(steps, args.rounds).items()}
    parameters = sum(p.numel() for p in trainers["ugmm_prob"].model.parameters())
    with torch.no_grad():  # float32 statistics of rare values differ in rounding only
        scores = {name: trainer.model.log_prob(x[:batch]) for name, trainer in trainers.items()}
    agreement = float((scores["ugmm_prob"] - scores["pytorch"]).abs().max())
    magnitude = float(scores["pytorch"].abs().mean())
    epoch_steps = -(-num_data // batch)
    new, old = ms["ugmm_prob"], ms["pytorch"]
    records = [
        {
            "experiment": "speed-categorical-em-step",
            "metric": "ms",
            "value": round(new, 1),
            "paper": None,
        },
        {
            "experiment": "speed-categorical-em-step",
            "metric": "speedup_vs_pytorch_leaf_regions",
            "value": round(old / new, 2),
            "paper": None,
        },
    ]
    table = "\n".join(
        [
            "### The discrete MNIST circuit: one online-EM step",
            "",
            f"Command: `python benchmarks/speed.py --parts categorical-em --rounds {args.rounds}`; "
            "the quad-tree circuit of the discrete MNIST row of docs/results.md (784 variables "
            f"with 256 values, 10 classes, depth {options['depth']}, {options['repetitions']} "
            f"repetitions, {options['channels']} channels: {parameters:,} parameters), batch "
            f"{batch} of random 8-bit images with labels, float32; an E-step, the running "
            f"statistics and an M-step of every parameter; medians of {args.rounds} alternating "
            "rounds in one process. *ugmm_prob*: leaf regions through the C++ kernel "
            "(`ugmm_prob/native/categorical_regions.cpp`); *PyTorch leaf regions*: the same "
            "circuit with a `B x R x D x I` tensor of looked-up log-probabilities gathered per "
            "region. After the same steps the two circuits' `log p(x)` differ by at most "
            f"{agreement:.1e} nats (values near {magnitude:,.0f}): float32 rounding of rare "
            "values' counts; in float64 the two agree to 1e-10 (`tests/test_kernels.py`).",
            "",
            "| leaf regions | ms per step | s per MNIST epoch (55,000 images) | speed-up |",
            "|---|---:|---:|---:|",
            f"| ugmm_prob (C++) | **{new:.0f}** | {new * epoch_steps / 1000:.0f} | "
            f"**{old / new:.1f}x** |",
            f"| PyTorch | {old:.0f} | {old * epoch_steps / 1000:.0f} | |",
        ]
    )
    return records, table


# ------------------------------------------------------------------------------------------
# missing
# ------------------------------------------------------------------------------------------
class PlainMaskedLeaves(torch.nn.Module):
    """``log N(x_O | mu_O, Sigma_OO)`` of every example, leaf and unit by the plain formula:
    ``Sigma`` with the missing rows and columns replaced by the identity's and the residual
    zeroed there, one ``V x V`` Cholesky factor per example and unit, autograd for the
    gradients (what the library did before grouping the observed blocks by size)."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        loc, tril = layer.leaf_loc(), layer.scale_tril
        seen = layer.leaf_observed(observed)[:, :, None, :]  # (B, L, 1, V)
        values = torch.where(seen[:, :, 0], layer._leaf_values(x), 0.0)[:, :, None, :]
        residual = torch.where(seen, values - loc, 0.0)
        pair = seen[..., :, None] & seen[..., None, :]
        eye = torch.eye(tril.shape[-1], dtype=tril.dtype)
        factor = torch.linalg.cholesky(torch.where(pair, tril @ tril.mT, eye))
        z = torch.linalg.solve_triangular(factor, residual[..., None], upper=False)
        half_log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        count = seen.sum(-1).to(z.dtype)
        return -0.5 * z.pow(2).sum((-2, -1)) - half_log_det - 0.5 * math.log(2 * math.pi) * count


def part_missing(args: argparse.Namespace) -> tuple[list[dict], str]:
    shapes = (  # (name, rows, columns, depth, repetitions): the default search's largest
        ("breast cancer", 364, 30, 1, 4),
        ("digits", 1150, 64, 0, 1),
        ("digits", 1150, 64, 1, 4),
    )
    records, rows = [], []
    for name, n, d, depth, repetitions in shapes:
        generator = torch.Generator().manual_seed(0)
        mixing = torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
        x = torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing
        graph = random_binary_trees(d, depth=depth, repetitions=repetitions, seed=0)
        circuit = UGMMCircuit(d, graph=graph, channels=8, inputs="multivariate").double()
        circuit.init_from_data(x, generator=torch.Generator().manual_seed(1))
        plain = PlainMaskedLeaves(circuit.inputs)
        complete_ms = None
        for rate in (0.0, 0.1, 0.3, 0.5):
            observed = torch.rand(n, d, generator=generator) >= rate
            holes = torch.where(observed, x, torch.nan)
            layer = circuit.inputs

            def library(holes=holes, observed=observed, layer=layer):
                layer.zero_grad()
                layer.region_log_values(holes, observed).sum().backward()

            def reference(holes=holes, observed=observed, layer=layer, plain=plain):
                layer.zero_grad()
                plain(holes, observed).sum().backward()

            with torch.no_grad():  # the same numbers first
                gap = (layer.region_log_values(holes, observed) - plain(holes, observed)).abs()
            ms = {
                k: 1000 * t
                for k, t in _medians({"library": library, "plain": reference}, args.rounds).items()
            }
            complete_ms = complete_ms or ms["library"]
            shape = f"{name} ({n} x {d}), depth {depth}, {repetitions} rep."
            rows.append(
                f"| {shape} | {rate:.0%} | **{ms['library']:.0f}** | {ms['plain']:.0f} | "
                f"**{ms['plain'] / ms['library']:.1f}x** | {ms['library'] / complete_ms:.1f}x | "
                f"{float(gap.max()):.0e} |"
            )
            key = f"speed-missing-{name.replace(' ', '-')}-depth{depth}-{int(100 * rate)}"
            records.append(
                {"experiment": key, "metric": "ms", "value": round(ms["library"], 1), "paper": None}
            )
            records.append(
                {
                    "experiment": key,
                    "metric": "speedup_vs_plain",
                    "value": round(ms["plain"] / ms["library"], 2),
                    "paper": None,
                }
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "### Full-covariance leaves with missing cells: forward + backward",
            "",
            f"Command: `python benchmarks/speed.py --parts missing --rounds {args.rounds}`; "
            "random correlated rows of breast cancer's and digits' shapes (the training rows "
            "of a search candidate), 8 full-covariance units per leaf region, float64 (as the "
            "scikit-learn estimators run), cells missing completely at random; one "
            "`region_log_values(x, observed).sum().backward()` of the leaves (what EM and "
            "gradient training run per step); medians of alternating rounds in one process. "
            "*plain*: every example's `Sigma` with the missing rows and columns replaced by "
            "the identity's, one `V x V` factorisation per example and unit through autograd; "
            "the last column is the largest difference of their log-densities (nats).",
            "",
            "| rows x columns, tree | missing | ms | plain formula (ms) | speed-up | "
            "/ complete rows | largest difference |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    return records, table


# ------------------------------------------------------------------------------------------
# classifier
# ------------------------------------------------------------------------------------------
def part_classifier(args: argparse.Namespace) -> tuple[list[dict], str]:
    """The paper's MNIST uGMM-NN train step against an MLP of the same widths."""
    batch, widths = 128, (784, 128, 64, 10)
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    steps = {}
    for name, model in (
        ("uGMM-NN", UGMMClassifier(784, hidden=widths[1:-1], num_classes=10)),
        ("MLP", MLPClassifier(784, hidden=widths[1:-1], num_classes=10, dropout=0.0)),
    ):
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train(model=model, optimiser=optimiser):
            optimiser.zero_grad()
            model.training_loss(x, y).backward()
            optimiser.step()

        steps[name] = train
    ms = {name: 1000 * t for name, t in _medians(steps, args.rounds).items()}
    elements = batch * sum(a * b for a, b in itertools.pairwise(widths))
    # forward, the batch reductions and the input reduction each evaluate every exponential
    floor = 1000 * 3 * elements / exp_per_second()
    ratio = ms["uGMM-NN"] / ms["MLP"]
    table = "\n".join(
        [
            "### The paper's MNIST uGMM-NN against an MLP of the same widths",
            "",
            f"Command: `python benchmarks/speed.py --parts classifier --rounds {args.rounds}`; "
            f"784-128-64-10, batch {batch}, Adam, float32; medians of alternating rounds. "
            "Floor: three exponentials per (example, neuron, input) at the measured rate.",
            "",
            "| model | train step ms | images/s | exp floor ms |",
            "|---|---:|---:|---:|",
            f"| uGMM-NN (`UGMMClassifier`) | {ms['uGMM-NN']:.1f} | "
            f"{batch / ms['uGMM-NN'] * 1000:,.0f} | {floor:.1f} |",
            f"| MLP (`MLPClassifier`, ReLU) | {ms['MLP']:.2f} | "
            f"{batch / ms['MLP'] * 1000:,.0f} | |",
            "",
            f"A uGMM-NN step costs {ratio:.0f} MLP steps of the same shape: each of its "
            f"{elements // batch:,} (neuron, input) pairs is a two-component mixture evaluated "
            "with exponentials where the MLP multiplies and adds.",
        ]
    )
    records = [
        {
            "experiment": "speed-classifier",
            "metric": "ugmm_over_mlp_step",
            "value": round(ratio, 1),
            "paper": None,
        }
    ]
    return records, table


# ------------------------------------------------------------------------------------------
# hclt
# ------------------------------------------------------------------------------------------
def matmul_per_second(size: int = 1024, rounds: int = 7) -> float:
    """This machine's float32 multiply-adds per second in one large matrix product."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    out = a @ b
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return size**3 / statistics.median(times)


def sum_layer_macs(circuit: UGMMCircuit) -> int:
    """Multiply-adds of every sum layer for one example: ``F * S * Q`` per layer."""
    return sum(int(layer.logits.numel()) for layer in [*circuit.sums, circuit.root])


def mnist_training_images(args: argparse.Namespace, rows: int) -> tuple[torch.Tensor, str]:
    """The first ``rows`` 8-bit MNIST training images as floats, or random images of the
    same shape (named in the table) when the data folder is absent."""
    try:
        images, _ = load_mnist("train", root=args.mnist_dir)
    except DatasetNotFoundError:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (rows, 784), generator=generator).float(), "random"
    return (images[:rows] * 255).round(), "MNIST"


def part_hclt(args: argparse.Namespace) -> tuple[list[dict], str]:
    """A hidden Chow-Liu tree with 32 latent states on 8-bit MNIST: forward + backward."""
    batch, latents = 256, 32
    x, source = mnist_training_images(args, args.hclt_rows)
    start = time.perf_counter()
    graph = hclt(x)
    build_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    circuit = UGMMCircuit(
        784, graph=graph, channels=latents, inputs="categorical", product="hadamard"
    )
    images = x[:batch]

    def step() -> None:
        circuit.zero_grad(set_to_none=True)
        (-circuit.log_prob(images).mean()).backward()

    trainer = online_em(circuit)

    def em_step() -> None:
        trainer.step(images, None, weight=1.0, num_data=55_000)

    ms = {
        name: 1000 * t
        for name, t in _medians({"fwd+bwd": step, "EM": em_step}, args.rounds).items()
    }
    macs = sum_layer_macs(circuit)
    rate = matmul_per_second()
    # forward: one multiply-add per weight and example; backward: two (inputs and weights)
    floor = 1000 * 3 * macs * batch / rate
    parameters = sum(p.numel() for p in circuit.parameters())
    images_per_second = batch / ms["fwd+bwd"] * 1000
    records = [
        {
            "experiment": "speed-hclt-mnist",
            "metric": "images_per_second",
            "value": round(images_per_second),
            "paper": None,
        },
        {
            "experiment": "speed-hclt-mnist",
            "metric": "times_floor",
            "value": round(ms["fwd+bwd"] / floor, 1),
            "paper": None,
        },
    ]
    table = "\n".join(
        [
            "### A hidden Chow-Liu tree (HCLT, 32 latent states) on 8-bit MNIST",
            "",
            f"Command: `python benchmarks/speed.py --parts hclt --rounds {args.rounds}`; the "
            f"Chow-Liu tree of the first {args.hclt_rows:,} {source} training images (built in "
            f"{build_seconds:.1f} s), categorical inputs over 256 values, Hadamard products, "
            f"{parameters:,} parameters, {len(graph.regions):,} regions compiled into "
            f"{len(circuit.compiled.levels)} levels ({len(circuit.products)} product and "
            f"{len(circuit.sums) + 1} sum layers); batch {batch}, float32; medians of "
            f"{args.rounds} alternating rounds in one process. *fwd+bwd*: `log_prob` and its "
            "gradient with respect to every parameter; *EM*: one online-EM step (the E-step's "
            "forward and backward pass, the running statistics and every M-step). Floor: the "
            f"sum layers' {macs:,} multiply-adds per image, three times (forward, and the "
            f"backward pass's two products), at this machine's measured matrix-product rate of "
            f"{rate / 1e9:.1f} G multiply-adds/s.",
            "",
            "| operation | ms per batch | images/s | floor ms |",
            "|---|---:|---:|---:|",
            f"| fwd+bwd | **{ms['fwd+bwd']:.1f}** | {images_per_second:,.0f} | {floor:.1f} "
            f"({ms['fwd+bwd'] / floor:.0f}x above) |",
            f"| online-EM step | {ms['EM']:.1f} | {batch / ms['EM'] * 1000:,.0f} | |",
        ]
    )
    print(table, flush=True)
    return records, table


# ------------------------------------------------------------------------------------------
# contention
# ------------------------------------------------------------------------------------------
BUSY_PROGRAM = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass"
)
"""A CPU-bound neighbour: one core spinning until its deadline (so it cannot outlive the
benchmark even if the benchmark is killed)."""

CONDITIONS = {
    "idle, 1 thread": (False, 1, True),
    "idle, 2 threads fixed": (False, 2, False),
    "idle, 2 threads adaptive": (False, 2, True),
    "busy, 1 thread": (True, 1, True),
    "busy, 2 threads fixed": (True, 2, False),
    "busy, 2 threads adaptive": (True, 2, True),
}
"""Each condition: ``(beside a busy process, threads, thread count adapted)``."""


@contextlib.contextmanager
def busy_neighbour(active: bool, seconds: float = 600.0):
    """One CPU-bound process beside the block (none when not ``active``), stopped after it."""
    if not active:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", BUSY_PROGRAM, str(seconds)])
    try:
        time.sleep(0.5)  # running before the timing starts
        yield
    finally:
        process.kill()
        process.wait()


def _governed_step_seconds(step: Callable[[], None], adaptive: bool, seconds: float) -> float:
    """Median seconds per call of ``step`` over ``seconds`` of calls in a loop that ticks a
    thread governor, as the training loop does (``adaptive=False``: the count stays)."""
    for _ in range(3):  # warm-up at the count set
        step()
    times = []
    with adaptive_threads(enabled=adaptive) as governor:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            governor.tick()
    return statistics.median(times)


def _demo_seconds(threads: int, adaptive: bool, epochs: int, runs: int) -> float:
    """Median wall seconds of ``python -m ugmm_prob demo`` in a fresh process."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    environment[threads_module.ENVIRONMENT_VARIABLE] = "1" if adaptive else "0"
    walls = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "ugmm_prob", "demo", "--out", out, "--quiet"]
            start = time.perf_counter()
            subprocess.run(
                [*command, "--epochs", str(epochs)],
                capture_output=True,
                check=True,
                env=environment,
            )
            walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def _contention_steps(args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], str]:
    """The training steps of the contention part by record name, and the HCLT's data."""
    torch.manual_seed(0)
    layer = UGMMLayer(784, 128)
    x_layer = torch.randn(128, 784, generator=torch.Generator().manual_seed(0))

    def layer_step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x_layer).sum().backward()

    steps, _ = _circuit_steps(128)
    images, source = mnist_training_images(args, args.hclt_rows)
    torch.manual_seed(0)
    circuit = UGMMCircuit(784, graph=hclt(images), channels=32, inputs="categorical")
    batch = images[:256]

    def hclt_step() -> None:
        circuit.zero_grad(set_to_none=True)
        (-circuit.log_prob(batch).mean()).backward()

    return {
        "layer": layer_step,
        "mnist-circuit": steps["train ugmm_prob"],
        "hclt": hclt_step,
    }, source


CONTENTION_WORKLOADS = {
    "demo": "demo, whole command (s)",
    "layer": "uGMM layer 784 -> 128, batch 128: forward + backward (ms)",
    "mnist-circuit": "MNIST Gaussian circuit, batch 128: training step (ms)",
    "hclt": "HCLT-32 on 8-bit MNIST, batch 256: forward + backward (ms)",
}


def part_contention(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Each workload idle and beside a busy process, on 1 and 2 threads (fixed / adaptive)."""
    steps, source = _contention_steps(args)
    saved = torch.get_num_threads()
    seconds: dict[str, dict[str, float]] = {name: {} for name in CONTENTION_WORKLOADS}
    try:
        for busy in (False, True):
            with busy_neighbour(busy):
                for condition, (beside, threads, adaptive) in CONDITIONS.items():
                    if beside != busy:
                        continue
                    seconds["demo"][condition] = _demo_seconds(
                        threads, adaptive, args.demo_epochs, args.demo_runs
                    )
                    torch.set_num_threads(threads)
                    for name, step in steps.items():
                        seconds[name][condition] = _governed_step_seconds(
                            step, adaptive, args.contention_seconds
                        )
                    print(f"{condition}: done", flush=True)
    finally:
        torch.set_num_threads(saved)
    records, rows = [], []
    for name, row in seconds.items():
        idle = row["idle, 1 thread"]
        fixed, adaptive = (
            row["busy, 2 threads fixed"] / idle,
            row["busy, 2 threads adaptive"] / idle,
        )
        scale = 1 if name == "demo" else 1000
        cells = " | ".join(f"{scale * value:,.1f}" for value in row.values())
        label = CONTENTION_WORKLOADS[name]
        rows.append(f"| {label} | {cells} | {fixed:.2f}x | **{adaptive:.2f}x** |")
        records.append(
            {
                "experiment": f"speed-contention-{name}",
                "metric": "busy_over_idle_single_thread",
                "value": round(adaptive, 2),
                "paper": None,
            }
        )
    header = " | ".join(CONDITIONS)
    table = "\n".join(
        [
            "### Beside a busy process",
            "",
            f"Command: `python benchmarks/speed.py --parts contention --demo-runs "
            f"{args.demo_runs} --contention-seconds {args.contention_seconds:g}`. Each "
            "workload on an idle machine and beside one CPU-bound process the script starts and "
            "stops itself, with torch on 1 or 2 threads, the count fixed or adapted to the "
            "cores the other processes leave free (`ugmm_prob.threads`, what the training loop "
            "does; `UGMM_PROB_ADAPTIVE_THREADS=0` fixes it). Steps: medians over "
            f"{args.contention_seconds:g} s of calls in a loop that ticks the thread governor; "
            f"the demo: median wall time of {args.demo_runs} fresh `python -m ugmm_prob demo` "
            f"processes ({args.demo_epochs} epochs) with `OMP_NUM_THREADS` set. HCLT on "
            f"{source} images. The last two columns: busy two-thread time over the idle "
            "single-thread time, with the count fixed and adapted.",
            "",
            f"| workload | {header} | fixed, busy / idle 1 | adaptive, busy / idle 1 |",
            "|---|" + "---:|" * (len(CONDITIONS) + 2),
            *rows,
        ]
    )
    print(table, flush=True)
    return records, table


PARTS = {
    "overhead": part_overhead,
    "circuit": part_circuit,
    "categorical-em": part_categorical_em,
    "classifier": part_classifier,
    "hclt": part_hclt,
    "missing": part_missing,
    "contention": part_contention,
}
"""The parts of this script by name, each ``(args) -> (records, markdown)``."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=200)
    parser.add_argument("--demo-epochs", type=int, default=300, help="overhead: whole fit")
    parser.add_argument("--demo-runs", type=int, default=3, help="overhead: demo wall times")
    parser.add_argument(
        "--hclt-rows", type=int, default=20_000, help="hclt, contention: images of the tree"
    )
    parser.add_argument(
        "--contention-seconds", type=float, default=4.0, help="contention: seconds per step timing"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument(
        "--mnist-dir",
        default=None,
        help="hclt: the MNIST folder (default $UGMM_PROB_MNIST_DIR or ../shared/data/mnist)",
    )
    args = parser.parse_args()
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    run_parts(PARTS, args, block="speed", page=PERFORMANCE_PAGE, write=not args.no_write)


if __name__ == "__main__":
    main()
