"""Reference values written by version 0.1 (commit 3095d9c, repeated binary trees only).

Run from the repository root of that version, with its package first on the path:
``PYTHONPATH=. python tests/data/version_0_1_circuits/make_fixtures.py OUT``. It saves one
checkpoint per region-graph builder and input type (``<graph>-<inputs>.pt``) and writes
``reference.json``: each checkpoint's ``log p(x, c)`` at five samples, and the training
log-likelihood of two small circuits before and after two epochs of EM from the same seeds
(:func:`recipe`).
``tests/test_circuit_versions.py`` checks that the current version reads the checkpoints to
the same values and reproduces the recipe, so results of version 0.1 still stand.
"""

from __future__ import annotations

import json
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
    (folder / "reference.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
