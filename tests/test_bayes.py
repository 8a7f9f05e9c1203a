"""Priors, SVI and the predictive uncertainty decomposition."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample

from ugmm_prob import UGMMClassifier, UGMMLayer
from ugmm_prob.bayes import fit_svi, make_bayesian, predictive_probs
from ugmm_prob.experiments import load_data
from ugmm_prob.uncertainty import accuracy_coverage, auroc, decompose_uncertainty, entropy


def test_make_bayesian_leaves_the_point_model_untouched_and_adds_prior_sites():
    model = UGMMClassifier(4, hidden=(3,), num_classes=2, layer_norm=True)
    x = torch.randn(5, 4)
    before = model.logits(x).detach()
    bayesian = make_bayesian(model)
    torch.testing.assert_close(model.logits(x), before)
    assert set(model.stack.layers[0]._pyro_params) == {"loc", "scale", "logits"}
    trace = pyro.poutine.trace(bayesian.model).get_trace(x, torch.tensor([0, 1, 0, 1, 1]))
    trace.compute_log_prob()
    sites = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    assert sum(name.endswith((".loc", ".scale", ".logits")) for name in sites) == 6
    site = next(s for n, s in trace.nodes.items() if n.endswith("layers.0.loc"))
    torch.testing.assert_close(
        site["log_prob_sum"], dist.Normal(0, 1).log_prob(site["value"]).sum()
    )
    scale_site = next(s for n, s in trace.nodes.items() if n.endswith("layers.0.scale"))
    assert (scale_site["value"] > 1e-3).all()  # priors respect the scale floor


def test_bad_arguments():
    with pytest.raises(ValueError, match="parameters must be among"):
        make_bayesian(UGMMClassifier(4, hidden=(3,), num_classes=2), parameters=("weight",))
    with pytest.raises(ValueError, match="make_bayesian"):
        fit_svi(
            UGMMClassifier(4, hidden=(3,), num_classes=2),
            torch.randn(4, 4),
            torch.zeros(4).long(),
            epochs=1,
        )
    bayesian = make_bayesian(UGMMClassifier(4, hidden=(3,), num_classes=2))
    x, y = torch.randn(4, 4), torch.zeros(4).long()
    with pytest.raises(ValueError, match="give x_val and y_val"):
        fit_svi(bayesian, x, y, epochs=1, keep_best="nll")


def test_svi_lowers_the_elbo_on_iris():
    data = load_data("iris")
    torch.manual_seed(0)
    bayesian = make_bayesian(
        UGMMClassifier(4, hidden=(8,), num_classes=3, layer_norm=False), prior_scale=2.0
    )
    guide, history = fit_svi(
        bayesian,
        data.x_train,
        data.y_train,
        x_val=data.x_test,
        y_val=data.y_test,
        epochs=25,
        batch_size=30,
        lr=3e-2,
        progress=False,
    )
    assert history[-1]["elbo_loss"] < 0.8 * history[0]["elbo_loss"]
    assert history[-1]["accuracy"] >= 0.8
    draws = predictive_probs(bayesian, data.x_test, guide=guide, num_samples=10)
    assert draws.shape == (10, 30, 3)
    assert not torch.allclose(draws[0], draws[1])  # draws differ: parameters are random


def test_conjugate_toy_matches_the_closed_form_posterior():
    """One neuron, one component, fixed scale 1, prior N(0, 10^2) on its mean."""
    torch.manual_seed(0)
    data = 2.0 + torch.randn(40, 1)
    layer = UGMMLayer(1, 1, name="toy")
    layer.scale = PyroParam(torch.ones(1, 1), constraint=constraints.greater_than(1e-3))
    layer.scale_unconstrained.requires_grad_(False)
    layer.loc = PyroSample(dist.Normal(torch.zeros(1, 1), 10.0).to_event(2))

    def model(x):
        log_density = layer(x)[:, 0]  # a(x) = log N(x | mu, 1); the mean is drawn once
        with pyro.plate("data", len(x)):
            pyro.factor("obs", log_density)

    guide = AutoNormal(model, init_scale=0.1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO(num_particles=8))
    for _ in range(1500):
        svi.step(data)
    precision = 1 / 100 + len(data)
    mean, sd = float(data.sum()) / precision, 1 / math.sqrt(precision)
    with torch.no_grad():
        draws = torch.stack([guide(data)["toy.loc"].squeeze() for _ in range(4000)])
    assert abs(float(guide.median(data)["toy.loc"]) - mean) < 0.03
    assert abs(float(draws.std()) - sd) < 0.03
    assert isinstance(layer, PyroModule)


def test_uncertainty_decomposition():
    draws = torch.softmax(torch.randn(30, 8, 4), -1)
    parts = decompose_uncertainty(draws)
    torch.testing.assert_close(parts.total, parts.aleatoric + parts.epistemic)
    assert (parts.aleatoric >= 0).all() and (parts.epistemic >= 0).all()
    torch.testing.assert_close(parts.predictive, draws.mean(0))
    same = decompose_uncertainty(draws[:1].expand(5, 8, 4))
    torch.testing.assert_close(same.epistemic, torch.zeros(8), atol=1e-6, rtol=0)
    disagree = decompose_uncertainty(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    torch.testing.assert_close(disagree.aleatoric, torch.zeros(1))
    torch.testing.assert_close(disagree.epistemic, torch.tensor([math.log(2)]))
    assert float(entropy(torch.tensor([0.25] * 4))) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match=r"\(S, n, C\)"):
        decompose_uncertainty(torch.rand(3, 4))


def test_auroc_against_a_plain_pairwise_count():
    torch.manual_seed(1)
    inside, outside = torch.randn(40).round(decimals=1), (torch.randn(30) + 1).round(decimals=1)
    pairs = (outside[:, None] > inside[None, :]).double() + 0.5 * (
        outside[:, None] == inside[None, :]
    ).double()
    assert auroc(inside, outside) == pytest.approx(float(pairs.mean()))
    assert auroc(torch.zeros(3), torch.ones(2)) == 1.0
    assert auroc(torch.ones(3), torch.ones(2)) == 0.5


def test_accuracy_coverage_curve():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    y = torch.tensor([0, 1, 1, 0])
    coverage, acc = accuracy_coverage(probs, y)
    torch.testing.assert_close(coverage, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    # most confident first: 0.9 (right), 0.8 (right), 0.6 (wrong), 0.55 (wrong)
    torch.testing.assert_close(acc, torch.tensor([1.0, 1.0, 2 / 3, 0.5], dtype=torch.float64))


def test_nuts_and_inference_data_for_arviz():
    import arviz as az

    from ugmm_prob.arviz_export import to_inference_data
    from ugmm_prob.bayes import run_nuts

    data = load_data("iris")
    x, y = data.x_train[:40], data.y_train[:40]
    bayesian = make_bayesian(UGMMClassifier(4, hidden=(3,), num_classes=3, layer_norm=False))
    mcmc = run_nuts(
        bayesian, x, y, num_samples=20, warmup_steps=20, max_tree_depth=4, progress=False
    )
    samples = mcmc.get_samples()
    assert samples[f"{bayesian._pyro_name}.stack.layers.0.loc"].shape == (20, 3, 4)
    draws = predictive_probs(bayesian, data.x_test, posterior_samples=samples)
    assert draws.shape == (20, 30, 3)
    idata = to_inference_data(bayesian, x, y, posterior_samples=samples)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(
        idata.groups()
    )
    loc = idata.posterior[f"{bayesian._pyro_name}.stack.layers.0.loc"]
    assert loc.dims == ("chain", "draw", "stack.layers.0.neuron", "stack.layers.0.input")
    assert idata.log_likelihood["y"].shape == (1, 20, 40)
    assert az.summary(idata, var_names=[f"{bayesian._pyro_name}.stack.layers.1.loc"]).shape[0] == 9
    with warnings.catch_warnings():  # 20 draws: arviz warns that the estimate is rough
        warnings.simplefilter("ignore", UserWarning)
        assert np.isfinite(az.loo(idata).elpd_loo)

    guide, _ = fit_svi(bayesian, x, y, epochs=2, batch_size=20, progress=False)
    svi_data = to_inference_data(bayesian, x, y, guide=guide, num_samples=15)
    assert svi_data.posterior_predictive["y"].shape == (1, 15, 40)
    with pytest.raises(ValueError, match="exactly one"):
        to_inference_data(bayesian, x, y)
