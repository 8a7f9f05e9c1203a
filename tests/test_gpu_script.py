"""``benchmarks/gpu.py``, the script kept ready for a GPU, runs end to end on the CPU."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_script_runs_quick_on_cpu():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("UGMM_PROB_MNIST_DIR", None)  # random images: the script must not need MNIST
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--quick", "--no-write"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for heading in ("Correctness on `cpu`", "Speed on `cpu`", "Short training on `cpu`"):
        assert heading in out
    assert "FAILED" not in out
    # every model family was checked, and each check reported a number
    for family in ("UGMMClassifier", "JointScoreModel", "UGMMCircuit (gaussian)", "categorical"):
        assert f"{family}" in out
    assert "| ok |" in out and "nan" not in out
