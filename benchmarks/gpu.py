"""The script to run the moment a GPU is lent: correctness there, speed, short training.

    python benchmarks/gpu.py --device cuda            # about 5 minutes on one GPU
    python benchmarks/gpu.py --device cpu --quick --no-write   # CI: tests/test_gpu_script.py

Three parts, each independent (one that fails is reported and the others still run):

1. ``correctness``: every model family (circuits on repeated trees, an HCLT, a quad-graph, a
   DAG of shared regions and multivariate leaves) and both kernels on the device, in
   float64, against the same model on the CPU: ``training_loss`` and every parameter
   gradient; one ``fit`` epoch on the device and a checkpoint round trip.
2. ``speed`` (medians of alternating rounds, the device synchronised around each step): the
   layer kernel (forward + backward, batch 128, 784 -> 128) against the plain broadcast
   formula and ``torch.compile`` of it; the MNIST-sized circuit's train step and
   ``log_prob`` against the straightforward circuit of ``benchmarks/generative.py``; a
   hidden Chow-Liu tree's forward and backward pass (32 latent states, 784 pixels).
3. ``training``: one EM epoch of the MNIST circuit and one epoch of the paper's uGMM-NN
   (``UGMMClassifier(784, hidden=(128, 64), num_classes=10)``), images per second; MNIST
   from ``--mnist-dir`` or ``UGMM_PROB_MNIST_DIR`` when present, otherwise random images of
   the same shape.

The tables go to docs/performance.md (block ``gpu-<device>``) unless ``--no-write``; the exit
status is 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import REPO, machine, replace_block
from generative import MaterialisedCircuit, mnist_circuit

from ugmm_prob.checkpoints import load_checkpoint, save_checkpoint
from ugmm_prob.circuits import RegionGraph, UGMMCircuit, fit_em, hclt, quad_graph
from ugmm_prob.kernels import coupled_log_density, reference_log_density
from ugmm_prob.networks import (
    ConvUGMMClassifier,
    JointScoreModel,
    MLPClassifier,
    UGMMClassifier,
)
from ugmm_prob.training import fit


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------
# 1. Correctness on the device
# ------------------------------------------------------------------------------------------
def model_cases(quick: bool) -> dict[str, tuple[Callable[[], torch.nn.Module], torch.Tensor]]:
    """Each model family, small, with inputs it accepts."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 28, 28, generator=g)
    table = torch.randn(6, 4, generator=g)
    cases = {
        "UGMMClassifier": (
            lambda: UGMMClassifier(4, hidden=(5, 3), num_classes=3, layer_norm=True),
            table,
        ),
        "MLPClassifier": (lambda: MLPClassifier(4, hidden=(5,), num_classes=3, dropout=0.0), table),
        "JointScoreModel": (lambda: JointScoreModel(4, num_classes=3, hidden=(5, 3)), table),
        "UGMMCircuit (gaussian)": (
            lambda: UGMMCircuit(4, num_classes=3, depth=2, repetitions=2),
            table,
        ),
        "UGMMCircuit (categorical)": (
            lambda: UGMMCircuit(
                4, num_classes=3, depth=2, repetitions=2, inputs="categorical", num_values=5
            ),
            torch.randint(0, 5, (6, 4), generator=g).double(),
        ),
    }
    levels = torch.randint(0, 5, (6, 4), generator=g).double()
    correlated = torch.randn(200, 4, generator=g).cumsum(1)
    cases |= {
        "UGMMCircuit (HCLT, categorical)": (
            lambda: UGMMCircuit(
                4,
                num_classes=3,
                graph=hclt(correlated),
                channels=3,
                inputs="categorical",
                num_values=5,
            ),
            levels,
        ),
        "UGMMCircuit (quad-graph, Hadamard)": (
            lambda: UGMMCircuit(4, num_classes=3, graph=quad_graph(2, 2), product="hadamard"),
            table,
        ),
        "UGMMCircuit (DAG of shared regions)": (
            lambda: UGMMCircuit(4, num_classes=3, graph=_shared_regions_graph()),
            table,
        ),
        "UGMMCircuit (multivariate leaves)": (
            lambda: UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, inputs="multivariate"),
            table,
        ),
    }
    if not quick:
        cases["ConvUGMMClassifier"] = (lambda: ConvUGMMClassifier(3, features=8), images)
    return cases


def _shared_regions_graph() -> RegionGraph:
    """Four variables; the root split two ways that share the region ``{1, 2}``."""
    return RegionGraph.from_partitions(
        4,
        [
            ((0, 1, 2, 3), [(0,), (1, 2, 3)]),
            ((0, 1, 2, 3), [(0, 1, 2), (3,)]),
            ((1, 2, 3), [(1, 2), (3,)]),
            ((0, 1, 2), [(0,), (1, 2)]),
            ((1, 2), [(1,), (2,)]),
        ],
    )


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.eval()  # no dropout: both devices compute the same function
    loss = model.training_loss(x, y)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach().cpu(), [grad.cpu() for grad in grads]


def check_models(device: torch.device, quick: bool) -> list[tuple[str, float, bool]]:
    rows = []
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for name, (build, x) in model_cases(quick).items():
        torch.manual_seed(0)
        on_cpu = build().double()
        on_device = build().double()
        on_device.load_state_dict(on_cpu.state_dict())
        on_device.to(device)
        loss_cpu, grads_cpu = _loss_and_grads(on_cpu, x.double(), y)
        loss_dev, grads_dev = _loss_and_grads(on_device, x.double().to(device), y.to(device))
        diff = max(
            [float((loss_cpu - loss_dev).abs())]
            + [float((a - b).abs().max()) for a, b in zip(grads_cpu, grads_dev, strict=True)]
        )
        rows.append((f"{name}: loss and gradients, float64", diff, diff < 1e-8))
    return rows


def check_kernels(device: torch.device) -> list[tuple[str, float, bool]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 7, generator=g, dtype=torch.float64)
    loc = torch.randn(5, 7, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(5, 7, generator=g, dtype=torch.float64)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = reference_log_density(x, loc, scale, logits)
    rows = []
    for backend in ("eager", "compiled"):
        try:
            out = coupled_log_density(
                *(t.to(device) for t in (x, loc, scale, logits)), backend=backend
            )
            diff = float((out.cpu() - expected).abs().max())
            rows.append((f"coupled_log_density, {backend} backend", diff, diff < 1e-10))
        except Exception as error:  # a compiler missing on the device is a finding too
            rows.append(
                (f"coupled_log_density, {backend} backend: {error!r:.80}", float("nan"), False)
            )
    return rows


def check_training(device: torch.device) -> list[tuple[str, float, bool]]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    model = UGMMCircuit(4, num_classes=3, depth=2, repetitions=2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuit.pt"
        fit(
            model,
            x,
            y,
            epochs=1,
            batch_size=16,
            device=device,
            progress=False,
            checkpoint_path=path,
        )
        again = Path(folder) / "again.pt"
        save_checkpoint(again, load_checkpoint(path, map_location=device).model)
        restored = load_checkpoint(again).model
    model.cpu()
    with torch.no_grad():
        diff = float((model.log_prob(x, y) - restored.log_prob(x, y)).abs().max())
    return [("fit one epoch on the device, checkpoint round trip", diff, diff < 1e-5)]


def part_correctness(device: torch.device, args: argparse.Namespace) -> tuple[str, bool]:
    rows = check_kernels(device) + check_models(device, args.quick) + check_training(device)
    lines = [f"| {name} | {diff:.1e} | {'ok' if ok else '**FAILED**'} |" for name, diff, ok in rows]
    table = "\n".join(
        [
            f"#### Correctness on `{device}` (against the CPU)",
            "",
            "| check | max abs difference | |",
            "|---|---:|---|",
            *lines,
        ]
    )
    return table, all(ok for *_, ok in rows)


# ------------------------------------------------------------------------------------------
# 2. Speed
# ------------------------------------------------------------------------------------------
def median_ms(steps: dict[str, Callable[[], object]], device: torch.device, rounds: int):
    """Median milliseconds of each step over alternating rounds, after two warm-up calls."""
    for step in steps.values():
        step(), step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            synchronise(device)
            start = time.perf_counter()
            step()
            synchronise(device)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def plain_formula(x, loc, scale, logits):
    """The layer's log-density written as plain tensor operations (what ``torch.compile``
    can trace whole): ``logsumexp_k(log pi - log sigma - log sqrt(2 pi) - t^2 / 2)``."""
    t = (x[..., None, :] - loc) / scale
    log_terms = torch.log_softmax(logits, -1) - torch.log(scale) - 0.5 * t * t
    return torch.logsumexp(log_terms, -1) - 0.5 * math.log(2 * math.pi)


def kernel_steps(device: torch.device, quick: bool) -> dict[str, Callable[[], object]]:
    batch, inputs, neurons = (16, 32, 16) if quick else (128, 784, 128)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, inputs, generator=g).to(device).requires_grad_()
    params = [
        torch.randn(neurons, inputs, generator=g),
        0.5 + torch.rand(neurons, inputs, generator=g),
        torch.randn(neurons, inputs, generator=g),
    ]
    params = [p.to(device).requires_grad_() for p in params]
    compiled = torch.compile(plain_formula, fullgraph=True)

    def step(function):
        return lambda: function(x, *params).sum().backward()

    return {
        "plain formula": step(plain_formula),
        "torch.compile(plain formula)": step(compiled),
        "ugmm_prob kernel": step(coupled_log_density),
    }


def circuit_steps(device: torch.device, quick: bool) -> dict[str, Callable[[], object]]:
    options = {"depth": 2, "repetitions": 2, "channels": 3} if quick else {}
    in_features = 16 if quick else 784
    steps = {}
    for label, materialised in (("ugmm_prob", False), ("straightforward", True)):
        torch.manual_seed(0)
        if quick:
            kind = MaterialisedCircuit if materialised else UGMMCircuit
            circuit = kind(in_features, num_classes=10, **options).to(device)
        else:
            circuit = mnist_circuit(materialised=materialised).to(device)
        x = torch.rand(128, in_features, device=device)
        y = torch.randint(0, 10, (128,), device=device)
        optimiser = torch.optim.Adam(circuit.parameters(), lr=1e-3)

        def train(circuit=circuit, x=x, y=y, optimiser=optimiser):
            optimiser.zero_grad()
            circuit.training_loss(x, y).backward()
            optimiser.step()

        def score(circuit=circuit, x=x):
            with torch.no_grad():
                circuit.log_prob(x)

        steps[f"circuit train step, {label}"] = train
        steps[f"circuit log_prob, {label}"] = score
    steps["HCLT fwd+bwd"] = hclt_step(device, quick)
    return steps


def hclt_step(device: torch.device, quick: bool) -> Callable[[], object]:
    """Forward and backward of a hidden Chow-Liu tree with 32 latent states over 784 8-bit
    pixels (16 variables and 4 states with ``quick``), batch 256."""
    in_features, latents = (16, 4) if quick else (784, 32)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2_000, in_features), generator=g).float()
    images = images.cumsum(1).remainder(256)  # neighbours depend on each other
    torch.manual_seed(0)
    circuit = UGMMCircuit(
        in_features, graph=hclt(images), channels=latents, inputs="categorical"
    ).to(device)
    x = images[:256].to(device)

    def step(circuit=circuit, x=x):
        circuit.zero_grad(set_to_none=True)
        (-circuit.log_prob(x).mean()).backward()

    return step


def part_speed(device: torch.device, args: argparse.Namespace) -> tuple[str, bool]:
    quick = args.quick
    rounds = 3 if quick else 15
    kernel = median_ms(kernel_steps(device, quick), device, rounds)
    circuit = median_ms(circuit_steps(device, quick), device, rounds)
    plain = kernel["plain formula"]
    lines = [
        f"| layer kernel: {name} | {ms:.2f} | {plain / ms:.1f}x |" for name, ms in kernel.items()
    ]
    hclt_ms = circuit.pop("HCLT fwd+bwd")
    size = "4 latent states, 16 pixels" if quick else "32 latent states, 784 pixels"
    lines.append(
        f"| HCLT ({size}) forward + backward, batch 256 | {hclt_ms:.1f} "
        f"({256e3 / hclt_ms:,.0f} images/s) | |"
    )
    for operation in ("train step", "log_prob"):
        fast = circuit[f"circuit {operation}, ugmm_prob"]
        slow = circuit[f"circuit {operation}, straightforward"]
        lines.append(
            f"| MNIST circuit {operation}, batch 128: ugmm_prob {fast:.1f} ms "
            f"({128e3 / fast:,.0f} images/s) | {slow:.1f} (straightforward) | {slow / fast:.1f}x |"
        )
    table = "\n".join(
        [
            f"#### Speed on `{device}` (medians of {rounds} alternating rounds)",
            "",
            "| what | ms | speed-up over the plain version |",
            "|---|---:|---:|",
            *lines,
        ]
    )
    return table, True


# ------------------------------------------------------------------------------------------
# 3. Short training
# ------------------------------------------------------------------------------------------
def mnist_or_random(mnist_dir: str | None, rows: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    folder = mnist_dir or os.environ.get("UGMM_PROB_MNIST_DIR")
    if folder and Path(folder).is_dir():
        from ugmm_prob.experiments import load_data

        data = load_data("mnist", mnist_root=folder)
        return data.x_train[:rows], data.y_train[:rows], "MNIST"
    g = torch.Generator().manual_seed(0)
    return torch.rand(rows, 784, generator=g), torch.randint(0, 10, (rows,), generator=g), "random"


def part_training(device: torch.device, args: argparse.Namespace) -> tuple[str, bool]:
    quick = args.quick
    rows = 512 if quick else 10_000
    x, y, source = mnist_or_random(args.mnist_dir, rows)
    lines = []
    torch.manual_seed(0)
    circuit = UGMMCircuit.for_images(
        28,
        28,
        10,
        depth=2 if quick else 4,
        repetitions=10,
        channels=4 if quick else 10,
        shared_structure=False,
    )
    logits = torch.logit(0.01 + 0.98 * x)  # the circuits model logit-space pixels
    circuit.init_from_data(logits, y)
    start = time.perf_counter()
    history = fit_em(circuit, logits, y, epochs=1, batch_size=256, device=device, progress=False)
    seconds = time.perf_counter() - start
    lines.append(
        f"| MNIST circuit, one EM epoch ({rows:,} {source} images) | {rows / seconds:,.0f} | "
        f"training accuracy {100 * history[-1]['accuracy']:.1f}% |"
    )
    torch.manual_seed(0)
    network = UGMMClassifier(
        784, hidden=(16, 8) if quick else (128, 64), num_classes=10, dropout=0.3
    )
    start = time.perf_counter()
    history = fit(network, x, y, epochs=1, batch_size=128, lr=1e-2, device=device, progress=False)
    seconds = time.perf_counter() - start
    lines.append(
        f"| uGMM-NN 784-(128, 64)-10, one epoch ({rows:,} {source} images) | "
        f"{rows / seconds:,.0f} | training loss {history[-1]['loss']:.3f} |"
    )
    table = "\n".join(
        [
            f"#### Short training on `{device}`",
            "",
            "| run | images/s | result |",
            "|---|---:|---|",
            *lines,
        ]
    )
    return table, True


PARTS = {"correctness": part_correctness, "speed": part_speed, "training": part_training}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI, on CPU)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--mnist-dir", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    started = time.perf_counter()
    tables, passed = [], True
    for name in args.parts:
        try:
            table, ok = PARTS[name](device, args)
        except Exception:
            table, ok = (
                f"#### {name} on `{device}`: FAILED\n\n```\n{traceback.format_exc()}```",
                False,
            )
        print(table + "\n", flush=True)
        tables.append(table)
        passed &= ok
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    header = (
        f"### `python benchmarks/gpu.py --device {args.device}{' --quick' if args.quick else ''}`"
        f"\n\nDevice: {device_name}; {time.strftime('%Y-%m-%d')}; "
        f"{time.perf_counter() - started:.0f} s in all."
    )
    if not args.no_write:
        replace_block(
            f"gpu-{device.type}", "\n\n".join([header, *tables]), REPO / "docs" / "performance.md"
        )
    print(header)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
