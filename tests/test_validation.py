"""The validation switch: on by default, off in the inner training loop, honoured by the
checks at the API boundary and inside the models."""

import math

import pyro
import pytest
import torch

from ugmm_prob.boundary import NonFiniteError, as_batch, check_labels
from ugmm_prob.kernels import check_kernel_inputs
from ugmm_prob.layers import UGMMLayer
from ugmm_prob.networks import UGMMClassifier
from ugmm_prob.training import fit
from ugmm_prob.validation import enable_validation, is_validation_enabled, validation_enabled


def test_on_by_default_and_the_context_restores_the_previous_setting_even_on_error():
    assert is_validation_enabled()
    with validation_enabled(False):
        assert not is_validation_enabled()
        with validation_enabled(True):
            assert is_validation_enabled()
        assert not is_validation_enabled()
    assert is_validation_enabled()
    with pytest.raises(RuntimeError, match="inside"), validation_enabled(False):
        raise RuntimeError("inside")
    assert is_validation_enabled()
    enable_validation(False)
    try:
        assert not is_validation_enabled()
    finally:
        enable_validation()
    assert is_validation_enabled()


def test_the_boundary_checks_values_only_while_enabled():
    x = torch.tensor([[0.0, math.nan]])
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        as_batch(x, in_features=2)
    with validation_enabled(False):
        assert torch.equal(as_batch(x, in_features=2).isnan(), x.isnan())
        assert check_labels([0, 7], 3).tolist() == [0, 7]  # range unchecked
        with pytest.raises(ValueError, match="2 features per example"):
            as_batch(torch.zeros(1, 3), in_features=2)  # shapes are always checked
    with pytest.raises(ValueError, match=r"labels in \[0, 2\]"):
        check_labels([0, 7], 3)


def test_a_layer_refuses_nan_only_while_enabled():
    layer = UGMMLayer(2, 3)
    x = torch.tensor([[0.0, math.nan]])
    with pytest.raises(NonFiniteError, match=r"UGMMLayer\(in_features=2"):
        layer(x)
    with validation_enabled(False):
        assert layer(x).isnan().all()


def test_kernel_argument_checks_are_skipped_while_disabled():
    loc = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        check_kernel_inputs(torch.zeros(4, 2, dtype=torch.int64), loc, loc, loc)
    with validation_enabled(False):
        check_kernel_inputs(torch.zeros(4, 2, dtype=torch.int64), loc, loc, loc)


def test_fit_checks_the_data_once_and_runs_its_steps_without_validation():
    net = UGMMClassifier(4, hidden=(5,), num_classes=3, layer_norm=False)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    seen = []
    original = net.training_loss

    def spying(xb, yb):
        seen.append((is_validation_enabled(), pyro.distributions.is_validation_enabled()))
        return original(xb, yb)

    net.training_loss = spying
    fit(net, x, y, epochs=2, batch_size=8, progress=False)
    assert seen == [(False, False)] * 6  # 2 epochs of 3 steps
    assert is_validation_enabled() and pyro.distributions.is_validation_enabled()
    x[3, 1] = math.nan
    with pytest.raises(ValueError, match="training data: x has 1 non-finite"):
        fit(net, x, y, epochs=1, progress=False)


def test_em_steps_run_without_validation_and_svi_steps_keep_it(monkeypatch):
    from ugmm_prob.bayes import fit_svi, make_bayesian
    from ugmm_prob.circuits import UGMMCircuit, em, fit_em

    x, y = torch.randn(24, 3), torch.randint(0, 2, (24,))
    seen = []
    statistics = em.expected_statistics

    def spying(*args, **kwargs):
        seen.append(is_validation_enabled())
        return statistics(*args, **kwargs)

    monkeypatch.setattr(em, "expected_statistics", spying)
    fit_em(
        UGMMCircuit(3, num_classes=2, repetitions=2, channels=2),
        x,
        y,
        epochs=1,
        batch_size=8,
        progress=False,
    )
    assert seen == [False] * 3

    bayesian = make_bayesian(UGMMClassifier(3, hidden=(4,), num_classes=2, layer_norm=False))
    seen.clear()
    original = bayesian.logits

    def logits(inputs):
        seen.append(is_validation_enabled())
        return original(inputs)

    bayesian.logits = logits
    fit_svi(bayesian, x, y, epochs=1, batch_size=8, predictive_samples=2, progress=False)
    assert seen and all(seen)
