"""Shared by the benchmark scripts: records in ``docs/results.json`` and the machine line."""

from __future__ import annotations

import json
import os
import pathlib
import platform

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "docs" / "results.json"


def default_mnist_dir() -> pathlib.Path:
    """``$UGMM_PROB_MNIST_DIR`` if set, else ``../shared/data/mnist`` beside the repository."""
    env = os.environ.get("UGMM_PROB_MNIST_DIR")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data" / "mnist"


def machine() -> str:
    """CPU model, cores, torch version and threads, Python version."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def update_results(records: list[dict], path: pathlib.Path = RESULTS_JSON) -> None:
    """Replace the records with the same (experiment, metric) in ``path``; keep the others."""
    existing = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["experiment"], r["metric"]) for r in records}
    kept = [r for r in existing if (r["experiment"], r["metric"]) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + records, indent=2) + "\n")
