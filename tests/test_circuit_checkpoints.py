"""Circuit checkpoints load and evaluate in a fresh interpreter, command line included.

A fresh process imports nothing but :mod:`ugmm_prob.checkpoints` (the class is found on the
allow-list by ``module:qualname``, with no import side effect), for every region graph of the
property suite (repeated trees, DAGs, HCLT, quad-graph), every input type and the point
circuit ``fit_svi`` writes for a Bayesian circuit.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch

from tests.circuit_cases import GRAPHS, INPUTS, build
from ugmm_prob.bayes import fit_svi, make_bayesian
from ugmm_prob.checkpoints import save_checkpoint
from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.experiments import load_data

ROOT = pathlib.Path(__file__).resolve().parents[1]

FRESH = """
import sys, torch
import ugmm_prob.checkpoints as checkpoints
assert "ugmm_prob.circuits" not in sys.modules
for path in sys.argv[1:]:
    model = checkpoints.load_checkpoint(path).model
    x = torch.load(path + ".x", weights_only=True)
    expected = torch.load(path + ".expected", weights_only=True)
    torch.testing.assert_close(model.log_prob(x).detach(), expected, rtol=0, atol=1e-10)
    print(model.graph.kind, model.config["inputs"], tuple(model.sample(3)[0].shape))
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, check=False, timeout=300
    )


def test_every_graph_and_input_type_loads_in_a_fresh_process(tmp_path):
    paths, expected_lines = [], []
    for graph in GRAPHS:
        for inputs in INPUTS:
            circuit = build(graph, 2, inputs)
            x = circuit.sample(6)[0]
            path = save_checkpoint(tmp_path / f"{graph}-{inputs}.pt", circuit, epoch=1)
            torch.save(x, f"{path}.x")
            torch.save(circuit.log_prob(x).detach(), f"{path}.expected")
            paths.append(str(path))
            expected_lines.append(f"{graph} {inputs} (3, 4)")
    result = _run(["-c", FRESH, *paths])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[: len(paths)] == expected_lines


def test_a_bayesian_circuits_checkpoint_loads_and_the_command_line_evaluates_it(tmp_path):
    data = load_data("iris")
    torch.manual_seed(0)
    bayesian = make_bayesian(UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2))
    path = tmp_path / "svi.pt"
    fit_svi(
        bayesian,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=40,
        progress=False,
        checkpoint_path=path,
    )
    x = data.x_test[:5].double().float()
    from ugmm_prob.checkpoints import load_checkpoint

    point = load_checkpoint(path).model
    torch.save(x, f"{path}.x")
    torch.save(point.log_prob(x).detach(), f"{path}.expected")
    result = _run(["-c", FRESH, str(path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("random gaussian (3, 4)")
    result = _run(["-m", "ugmm_prob", "evaluate", str(path)])
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("UGMMCircuit after 1 epochs on the iris test split:")
    for name in ("NLL", "bits_per_dim", "accuracy", "class_nll", "ECE"):
        assert name in line
    # the reported NLL is the circuit's -log p(x, y) on the 30 test flowers
    nll = float(line.split("NLL ")[1].split(",")[0])
    expected = -float(point.log_prob(data.x_test, data.y_test).detach().mean())
    assert abs(nll - expected) < 1e-3
