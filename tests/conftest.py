"""Shared fixtures: headless plotting, a fresh Pyro parameter store and fixed seeds."""

import os

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
