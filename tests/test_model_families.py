"""The same checks for every model family (tests/model_families.py).

Shapes and the relations between a model's outputs; float64; gradients reaching every
parameter; checkpoints; the Bayesian treatment (one SVI step) and the ArviZ export. Where a
family's capability flag says it cannot do something, the check asserts the library's refusal.
"""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch

from tests.model_families import CLASSES, FAMILIES, ROWS, ModelFamily, tiny_batch
from ugmm_prob.arviz_export import to_inference_data
from ugmm_prob.bayes import fit_svi, make_bayesian, prior_sites
from ugmm_prob.checkpoints import load_checkpoint, save_checkpoint

BY_NAME = {family.name: family for family in FAMILIES}


def _outputs(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every family answers: logits, class posterior, prediction, ``log_prob``."""
    outputs = {
        "logits": model.logits(x),
        "proba": model.predict_proba(x),
        "predict": model.predict(x),
        "log_prob_y": model.log_prob(x, y),
    }
    if getattr(model, "likelihood_site", "y") == "x":  # a density: log p(x) without labels
        outputs["log_prob_x"] = model.log_prob(x)
    return outputs


def test_every_family_is_listed_once_and_flags_match_the_models():
    assert len(BY_NAME) == len(FAMILIES)
    for family in FAMILIES:
        model, _, _ = tiny_batch(family)
        # the density flag is the model's own role: it observes x, not the labels
        assert family.density == (model.likelihood_site == "x")
        assert family.density == (not model.requires_labels)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_output_shapes_and_their_relations(name):
    family = BY_NAME[name]
    model, x, y = tiny_batch(family)
    model.eval()
    with torch.no_grad():
        out = _outputs(model, x, y)
    assert model.in_features == x[0].numel()
    assert out["logits"].shape == out["proba"].shape == (ROWS, CLASSES)
    assert out["predict"].shape == out["log_prob_y"].shape == (ROWS,)
    torch.testing.assert_close(out["proba"], torch.softmax(out["logits"], -1))
    torch.testing.assert_close(out["proba"].sum(-1), torch.ones(ROWS))
    assert torch.equal(out["predict"], out["proba"].argmax(-1))
    picked = out["logits"].gather(-1, y[:, None]).squeeze(-1)
    if family.density:  # logits are log p(x, c): log p(x, y) and log p(x) = logsumexp_c
        torch.testing.assert_close(out["log_prob_y"], picked)
        torch.testing.assert_close(out["log_prob_x"], torch.logsumexp(out["logits"], -1))
        samples, classes = model.sample(5)
        assert samples.shape == (5, model.in_features) and classes.shape == (5,)
        with torch.no_grad():  # forward() is the distribution of x
            torch.testing.assert_close(model().log_prob(x), out["log_prob_x"])
    else:  # logits are unnormalised log p(y | x)
        torch.testing.assert_close(
            out["log_prob_y"], torch.log_softmax(out["logits"], -1)[torch.arange(ROWS), y]
        )
        assert not hasattr(model, "sample")
        with torch.no_grad():  # forward(x) is the predictive distribution of y
            predictive = model(x)
        assert isinstance(predictive, torch.distributions.Categorical)
        torch.testing.assert_close(predictive.log_prob(y), out["log_prob_y"])


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_float64_outputs_follow_the_model(name):
    family = BY_NAME[name]
    model, x, y = tiny_batch(family)
    model.eval()
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        narrow_out = _outputs(model, x, y)
        wide_out = _outputs(wide, x, y)  # float32 inputs, converted by the model
        again = _outputs(wide, x.double(), y)
    for key, value in wide_out.items():
        if key == "predict":
            continue
        assert value.dtype == torch.float64, key
        assert narrow_out[key].dtype == torch.float32, key
        torch.testing.assert_close(value, again[key])
        torch.testing.assert_close(value.float(), narrow_out[key], rtol=1e-4, atol=1e-4)
    if family.density:
        assert model.sample(2)[0].dtype == torch.float32
        assert wide.sample(2)[0].dtype == torch.float64


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_gradients_reach_every_parameter_and_are_finite(name):
    model, x, y = tiny_batch(BY_NAME[name])
    model.train()
    loss = model.training_loss(x, y)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for parameter_name, parameter in trainable:
        assert parameter.grad is not None, parameter_name
        assert bool(torch.isfinite(parameter.grad).all()), parameter_name
        assert bool((parameter.grad != 0).any()), parameter_name


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    model, x, y = tiny_batch(BY_NAME[name])
    model.eval()
    path = save_checkpoint(tmp_path / "model.pt", model, epoch=3)
    loaded = load_checkpoint(path)
    assert type(loaded.model) is type(model) and loaded.epoch == 3
    assert loaded.model.config == model.config
    loaded.model.eval()
    with torch.no_grad():
        before, after = _outputs(model, x, y), _outputs(loaded.model, x, y)
    for key in before:
        assert torch.equal(before[key], after[key]), key


def _one_svi_step(family: ModelFamily):
    model, x, y = tiny_batch(family)
    bayesian = make_bayesian(model)
    guide, history = fit_svi(bayesian, x, y, epochs=1, batch_size=ROWS, progress=False)
    return bayesian, guide, history, x, y


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_the_bayesian_treatment_runs_one_svi_step(name):
    family = BY_NAME[name]
    if not family.bayesian:
        model, _, _ = tiny_batch(family)
        with pytest.raises(ValueError, match="no uGMM parameters to put priors on"):
            make_bayesian(model)
        return
    bayesian, guide, history, x, y = _one_svi_step(family)
    assert len(history) == 1 and math.isfinite(history[0]["elbo_loss"])
    assert prior_sites(bayesian)
    # the guide's draws fill every prior site of the model, and the model's log-density
    # under them is finite
    guide_trace = pyro.poutine.trace(guide).get_trace(x, y)
    replayed = pyro.poutine.replay(bayesian.model, trace=guide_trace)
    model_trace = pyro.poutine.trace(replayed).get_trace(x, y)
    model_trace.compute_log_prob()
    for site in prior_sites(bayesian):
        assert site in guide_trace.nodes, site
        assert bool(torch.isfinite(model_trace.nodes[site]["log_prob_sum"])), site
    assert bool(torch.isfinite(model_trace.nodes[bayesian.likelihood_site]["log_prob_sum"]))


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_the_arviz_export_holds_every_prior_site(name):
    family = BY_NAME[name]
    if not family.bayesian:
        model, x, y = tiny_batch(family)
        with pytest.raises(ValueError, match="needs a model from make_bayesian"):
            to_inference_data(model, x, y, guide=lambda *args: None, num_samples=2)
        return
    bayesian, guide, _, x, y = _one_svi_step(family)
    draws = 2
    idata = to_inference_data(bayesian, x, y, guide=guide, num_samples=draws)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(
        idata.groups()
    )
    assert set(idata.posterior.data_vars) == set(prior_sites(bayesian))
    for site, (owner, attribute) in prior_sites(bayesian).items():
        shape = tuple(owner._pyro_samples[attribute].event_shape)
        assert idata.posterior[site].shape == (1, draws, *shape), site
    log_lik = idata.log_likelihood[bayesian.likelihood_site]
    assert log_lik.shape == (1, draws, ROWS)
    assert bool(torch.isfinite(torch.as_tensor(log_lik.values)).all())
    assert idata.posterior_predictive["y"].shape == (1, draws, ROWS)
    assert idata.observed_data["y"].values.tolist() == y.tolist()
    if family.density:
        assert idata.posterior_predictive["x"].shape == (1, draws, ROWS, bayesian.in_features)
