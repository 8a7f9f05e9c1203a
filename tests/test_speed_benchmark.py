"""``benchmarks/speed.py --no-write`` runs, in a subprocess, with tiny settings: its plain
module computes the library's loss from the same parameters (the script checks it) and the
table has a row per step it compares; docs/ is left alone."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_overhead_part_runs_and_writes_nothing(tmp_path):
    docs = REPO / "docs"
    before = {p.name: p.read_bytes() for p in docs.glob("*.*")}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--parts", "overhead"]
    command += ["--rounds", "1", "--steps-per-round", "3", "--demo-epochs", "1", "--no-write"]
    command += ["--demo-runs", "1"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    names = [row.split(" | ")[0][2:] for row in rows[1:]]  # after the header
    assert names[:3] == [
        "fit's step (library)",
        "the same with validation on",
        "plain torch.nn.Module, same kernel",
    ]
    assert names[3].startswith("whole `fit` of the preset, per step (1 epochs, 6 steps")
    assert re.search(r"The whole demo, .* median \*\*[0-9.]+ s\*\* wall over 1 runs", done.stdout)
    assert "nothing written" in done.stdout
    assert {p.name: p.read_bytes() for p in docs.glob("*.*")} == before


def test_contention_part_runs_every_condition_and_writes_nothing(tmp_path):
    docs = REPO / "docs"
    before = {p.name: p.read_bytes() for p in docs.glob("*.*")}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--parts", "contention"]
    command += ["--contention-seconds", "0.01", "--demo-epochs", "1", "--demo-runs", "1"]
    command += ["--hclt-rows", "300", "--no-write"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].split(" | ")[1:7] == [
        "idle, 1 thread",
        "idle, 2 threads fixed",
        "idle, 2 threads adaptive",
        "busy, 1 thread",
        "busy, 2 threads fixed",
        "busy, 2 threads adaptive",
    ]
    labels = [row.split(" | ")[0][2:] for row in rows[1:]]  # after the header
    assert [label.split(",")[0].split(" ")[0] for label in labels] == [
        "demo",
        "uGMM",
        "MNIST",
        "HCLT-32",
    ]
    for row in rows[1:]:  # six times and two ratios, all positive numbers
        cells = [cell.strip(" *x|") for cell in row.split(" | ")[1:]]
        assert len(cells) == 8 and all(float(c.replace(",", "")) > 0 for c in cells), row
    assert "nothing written" in done.stdout
    assert {p.name: p.read_bytes() for p in docs.glob("*.*")} == before


def test_missing_part_compares_against_the_same_log_densities():
    """The ``missing`` part's plain per-example formula gives the library's leaf values and
    parameter gradients with missing cells (so its speed-up compares equal work)."""
    import torch

    from tests.benchmark_scripts import import_benchmark
    from ugmm_prob.circuits import UGMMCircuit, random_binary_trees

    speed = import_benchmark("speed")
    torch.manual_seed(0)
    graph = random_binary_trees(7, depth=1, repetitions=2, seed=0)
    circuit = UGMMCircuit(7, graph=graph, channels=3, inputs="multivariate").double()
    x = torch.randn(40, 7, dtype=torch.float64)
    circuit.init_from_data(x, generator=torch.Generator().manual_seed(1))
    observed = torch.rand(40, 7, generator=torch.Generator().manual_seed(2)) > 0.4
    holes = torch.where(observed, x, torch.nan)
    layer, params = circuit.inputs, list(circuit.inputs.parameters())
    mine = layer.region_log_values(holes, observed)
    plain = speed.PlainMaskedLeaves(layer)(holes, observed)
    torch.testing.assert_close(mine, plain, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(mine)
    for a, b in zip(
        torch.autograd.grad((weights * mine).sum(), params),
        torch.autograd.grad((weights * plain).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
