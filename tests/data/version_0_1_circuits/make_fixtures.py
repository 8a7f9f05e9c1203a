"""Reference values written by version 0.1 (commit 3095d9c, repeated binary trees only).

Run from the repository root of that version, with its package first on the path:
``PYTHONPATH=. python tests/data/version_0_1_circuits/make_fixtures.py OUT``. It saves one
checkpoint per region-graph builder and input type (``<graph>-<inputs>.pt``) and writes
``reference.json``: each checkpoint's ``log p(x, c)`` at five samples, the training
log-likelihood of two small circuits before and after two epochs of EM from the same seeds
(:func:`recipe`), and, where MNIST lies in ``../shared/data/mnist``, the discrete MNIST
circuit's log-likelihood through four online-EM steps in float64 (:func:`mnist_recipe`).
``tests/test_circuit_versions.py`` checks that the current version reads the checkpoints to
the same values and reproduces the recipe, so results of version 0.1 still stand.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import torch

from ugmm_prob.circuits import UGMMCircuit, fit_em


def recipe(inputs: str) -> tuple[float, float]:
    """``sum log p(x, y)`` of a seeded circuit before and after two epochs of online EM: an
    8x8 image quad-tree with categorical inputs (an MNIST circuit in small), or a
    data-driven tree with Gaussian mixture inputs."""
    generator = torch.Generator().manual_seed(0)
    if inputs == "categorical":
        x = torch.randint(0, 16, (120, 64), generator=generator).float()
        x[:60, :32] = (x[:60, :32] / 4).floor()  # class 0 darker on top
        y = (torch.arange(120) < 60).long()
        torch.manual_seed(0)
        circuit = UGMMCircuit.for_images(
            8, 8, 2, depth=4, repetitions=3, channels=3, inputs="categorical", num_values=16
        )
        circuit.init_from_data(x, y, generator=torch.Generator().manual_seed(1))
    else:
        x = torch.randn(120, 6, generator=generator) @ torch.randn(6, 6, generator=generator)
        y = (x[:, 0] > 0).long()
        torch.manual_seed(0)
        circuit = UGMMCircuit.from_data(
            x,
            y,
            depth=2,
            repetitions=4,
            channels=3,
            components=2,
            generator=torch.Generator().manual_seed(1),
            seed=3,
        )
    with torch.no_grad():
        before = float(circuit.log_prob(x, y).sum())
    fit_em(circuit, x, y, epochs=2, batch_size=40, progress=False, seed=0)
    with torch.no_grad():
        return before, float(circuit.log_prob(x, y).sum())


def mnist_recipe(mnist_dir: pathlib.Path) -> list[float]:
    """The discrete MNIST circuit of docs/results.md (quad-tree, depth 4, 10 repetitions,
    10 channels, one class per repetition, 8-bit categorical inputs) in float64, prototype
    initialisation and four online-EM steps on the first 1,024 training images: ``sum log
    p(x, y)`` of the first 256 before and after each step."""
    from ugmm_prob.circuits.em import _EMTrainer
    from ugmm_prob.datasets import load_mnist

    x, y = load_mnist("train", root=mnist_dir)
    x, y = (x[:1024] * 255).round().double(), y[:1024]
    torch.manual_seed(0)
    circuit = UGMMCircuit.for_images(
        28,
        28,
        10,
        depth=4,
        repetitions=10,
        channels=10,
        shared_structure=False,
        seed=0,
        inputs="categorical",
    ).double()
    circuit.init_from_data(x, y, generator=torch.Generator().manual_seed(1))
    trainer = _EMTrainer(
        circuit,
        online=True,
        step_size=0.1,
        step_decay=0.0,
        pseudo_count=1e-2,
        variance_pseudo_count=1e-2,
    )
    values = []
    for step in range(5):
        with torch.no_grad():
            values.append(float(circuit.log_prob(x[:256], y[:256]).sum()))
        if step < 4:
            rows = slice(256 * step, 256 * (step + 1))
            trainer.step(x[rows], y[rows], weight=1.0, num_data=55_000)
    return values


def main(folder: pathlib.Path) -> None:
    from tests.circuit_cases import build  # version 0.1's property-suite circuits
    from ugmm_prob.checkpoints import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    record = {}
    for graph in ("random", "quad", "data"):
        for inputs in ("gaussian", "categorical"):
            circuit = build(graph, 2, inputs)
            torch.manual_seed(1)
            x = circuit.sample(5)[0]
            save_checkpoint(folder / f"{graph}-{inputs}.pt", circuit, epoch=1)
            joint = circuit.joint_log_prob(x).tolist()
            record[f"{graph}-{inputs}"] = {"x": x.tolist(), "joint": joint}
    for inputs in ("categorical", "gaussian"):
        before, after = recipe(inputs)
        record[f"recipe-{inputs}"] = {"before": before, "after": after}
    mnist = pathlib.Path(os.environ.get("UGMM_PROB_MNIST_DIR") or "../shared/data/mnist")
    if mnist.is_dir():
        record["mnist-discrete-float64"] = mnist_recipe(mnist)
    (folder / "reference.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
