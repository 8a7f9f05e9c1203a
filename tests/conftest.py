"""Shared fixtures: headless plotting, a fresh Pyro parameter store and fixed seeds, and
the MNIST folder."""

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


MNIST_ENV = "UGMM_PROB_MNIST_DIR"
WORKSPACE_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder of the four MNIST IDX files: ``$UGMM_PROB_MNIST_DIR`` when set (the tests
    then run, and fail if it is not a folder), else ``shared/data/mnist`` beside the
    repository if it exists; the test is skipped otherwise."""
    configured = os.environ.get(MNIST_ENV)
    if configured:
        folder = Path(configured).expanduser()
        if not folder.is_dir():
            pytest.fail(f"{MNIST_ENV}={configured} is not a folder")
        return folder
    if not WORKSPACE_MNIST.is_dir():
        pytest.skip(f"MNIST not found: set {MNIST_ENV} to the folder of its four IDX files")
    return WORKSPACE_MNIST
