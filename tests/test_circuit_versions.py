"""Circuits of version 0.1 (repeated binary trees) on the general region graphs.

Reference values were written by version 0.1 itself (``tests/data/version_0_1_circuits``,
see its ``make_fixtures.py``): its checkpoints must load and give the same ``log p(x, c)``,
and the same seeds must give the same circuit, initialisation and EM training, so the
results reported with version 0.1 (the MNIST circuit rows of docs/results.md) still stand.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
import torch

from ugmm_prob.checkpoints import load_checkpoint

FIXTURES = pathlib.Path(__file__).parent / "data" / "version_0_1_circuits"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in REFERENCE
        if name.endswith(("gaussian", "categorical")) and not name.startswith("recipe")
    ],
)
def test_version_0_1_checkpoints_load_to_the_same_values(name):
    circuit = load_checkpoint(FIXTURES / f"{name}.pt").model
    x = torch.tensor(REFERENCE[name]["x"], dtype=torch.float64)
    expected = torch.tensor(REFERENCE[name]["joint"], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(circuit.joint_log_prob(x), expected, rtol=0, atol=1e-12)
    assert circuit.graph.repetitions == 2 and circuit.graph.depth == 2


@pytest.mark.parametrize("inputs", ["categorical", "gaussian"])
def test_the_same_seeds_give_the_same_training_as_version_0_1(inputs):
    """Same parameters drawn in the same order, same prototype initialisation, same EM:
    the float32 log-likelihoods agree to rounding (sums taken in another order)."""
    before, after = _fixture_script().recipe(inputs)
    reference = REFERENCE[f"recipe-{inputs}"]
    assert before == pytest.approx(reference["before"], rel=1e-6)
    assert after == pytest.approx(reference["after"], rel=1e-6)


def test_the_discrete_mnist_circuit_trains_as_in_version_0_1(mnist_dir):
    """The MNIST 8-bit circuit of docs/results.md in float64: the same log-likelihood after
    prototype initialisation and through four online-EM steps, to rounding, so its rows
    (1.749 bits/dim) still stand on the general region graphs."""
    values = _fixture_script().mnist_recipe(mnist_dir)
    reference = REFERENCE["mnist-discrete-float64"]
    assert values == pytest.approx(reference, rel=1e-12)
