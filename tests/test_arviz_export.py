"""Bayesian circuits, guides for every model family, ArviZ export and posterior plots."""

import copy
import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

from ugmm_prob import JointScoreModel, UGMMClassifier
from ugmm_prob.arviz_export import to_inference_data
from ugmm_prob.bayes import (
    fit_svi,
    make_bayesian,
    posterior_log_likelihood,
    predictive_probs,
    prior_sites,
    sample_posterior,
)
from ugmm_prob.circuits import GaussianMixtureInput, UGMMCircuit
from ugmm_prob.plotting import plot_neuron_posterior


def _circuit(num_classes=2, depth=2):
    torch.manual_seed(0)
    return UGMMCircuit(
        4,
        num_classes=num_classes,
        depth=depth,
        repetitions=2,
        channels=2,
        components=2,
        scale_floor=0.05,
    )


def _set_parameter(model, path, value):
    """Give ``model`` the point value ``value`` for the parameter at ``path`` (a prior site's
    name without the model's prefix, e.g. ``inputs.scale``)."""
    owner_path, _, attribute = path.rpartition(".")
    owner = model.get_submodule(owner_path)
    floor = constraints.greater_than(0.05)
    constraint = floor if path == "inputs.scale" else constraints.real
    setattr(owner, attribute, PyroParam(value, constraint=constraint))


def _toy_data(n=24, classes=2):
    generator = torch.Generator().manual_seed(3)
    y = torch.arange(n) % classes
    x = torch.randn(n, 4, generator=generator) + 1.5 * y[:, None].float()
    return x, y


def test_circuit_priors_are_sample_sites_with_the_default_log_densities():
    circuit = _circuit(depth=2)
    bayesian = make_bayesian(circuit)
    name = bayesian._pyro_name
    expected = {f"{name}.inputs.{a}" for a in ("loc", "scale", "logits")}
    expected |= {f"{name}.sums.0.logits", f"{name}.root.logits"}
    assert set(prior_sites(bayesian)) == expected
    assert bayesian.bayesian_parameters == ("loc", "scale", "logits", "sum_logits")
    x, y = _toy_data()
    trace = pyro.poutine.trace(bayesian.model).get_trace(x, y)
    trace.compute_log_prob()
    for site in expected:
        value, log_prob = trace.nodes[site]["value"], trace.nodes[site]["log_prob_sum"]
        if site.endswith("inputs.scale"):
            assert (value > 0.05).all()
            reference = dist.LogNormal(0.0, 1.0).log_prob(value - 0.05).sum()
        else:
            reference = dist.Normal(0.0, 1.0).log_prob(value).sum()
        torch.testing.assert_close(log_prob, reference)
    # The likelihood uses the parameters drawn in the same trace.
    pyro.clear_param_store()  # the copy shares Pyro names with the Bayesian model
    point = copy.deepcopy(circuit)
    for site in expected:
        _set_parameter(point, site.split(".", 1)[1], trace.nodes[site]["value"])
    torch.testing.assert_close(
        trace.nodes["x"]["log_prob"] + trace.nodes["y"]["log_prob"], point.log_prob(x, y)
    )
    # the point circuit is untouched and still a point estimate
    assert "loc" in circuit.inputs._pyro_params


def test_the_bayesian_copy_never_shares_parameters_with_the_point_model():
    circuit = _circuit(depth=1)
    x, y = _toy_data()
    before = circuit.log_prob(x, y).detach()  # registers the point's names in the store
    class_logits = circuit.class_logits.detach().clone()
    bayesian = make_bayesian(circuit)
    assert bayesian._pyro_name != circuit._pyro_name
    assert all(name.startswith(bayesian._pyro_name + ".") for name in prior_sites(bayesian))
    fit_svi(bayesian, x, y, epochs=3, batch_size=12, lr=0.1, progress=False)
    assert not torch.allclose(bayesian.class_logits, class_logits)  # SVI moved its own copy
    torch.testing.assert_close(circuit.log_prob(x, y), before)
    torch.testing.assert_close(circuit.class_logits, class_logits)


def test_circuit_prior_choices_and_errors():
    circuit = _circuit()
    only_class = make_bayesian(circuit, parameters=("class_logits",))
    assert set(prior_sites(only_class)) == {f"{only_class._pyro_name}.class_logits"}

    def prior(kind, value, owner):
        assert isinstance(owner, GaussianMixtureInput)
        return dist.Normal(torch.full_like(value, 2.0), 0.1).to_event(value.dim())

    custom = make_bayesian(circuit, parameters=("loc",), prior=prior)
    draws = sample_posterior(
        custom,
        posterior_samples={
            f"{custom._pyro_name}.inputs.loc": torch.zeros(3, *circuit.inputs.loc.shape)
        },
    )
    assert draws[f"{custom._pyro_name}.inputs.loc"].shape == (3, *circuit.inputs.loc.shape)
    trace = pyro.poutine.trace(custom.model).get_trace(*_toy_data())
    assert abs(float(trace.nodes[f"{custom._pyro_name}.inputs.loc"]["value"].mean()) - 2) < 0.1
    with pytest.raises(ValueError, match="'sum_logits'"):
        make_bayesian(UGMMClassifier(4, hidden=(3,), num_classes=2), parameters=("sum_logits",))
    with pytest.raises(ValueError, match="event shape"):
        make_bayesian(circuit, prior=lambda kind, value, owner: dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="no uGMM parameters"):
        make_bayesian(torch.nn.Linear(2, 2).__class__ and pyro.nn.PyroModule())
    with pytest.raises(ValueError, match="exactly one"):
        sample_posterior(make_bayesian(circuit))


def _delta_guide(bayesian):
    """A hand-written MAP guide: one point mass per prior site, in the prior's support."""
    sites = prior_sites(bayesian)

    def guide(*args, **kwargs):
        for name, (owner, attribute) in sites.items():
            prior = owner._pyro_samples[attribute]
            raw = pyro.param(f"q_{name}", lambda prior=prior: torch.zeros(prior.event_shape))
            value = torch.distributions.biject_to(prior.support)(raw)
            pyro.sample(name, dist.Delta(value, event_dim=len(prior.event_shape)))

    return guide


@pytest.mark.parametrize("family", ["classifier", "joint", "circuit"])
@pytest.mark.parametrize("guide", ["normal", "lowrank", "callable"])
def test_every_guide_fits_every_family(family, guide):
    x, y = _toy_data(classes=3)
    torch.manual_seed(0)
    model = {
        "classifier": lambda: UGMMClassifier(4, hidden=(3,), num_classes=3, layer_norm=False),
        "joint": lambda: JointScoreModel(4, num_classes=3, hidden=(3,)),
        "circuit": lambda: _circuit(num_classes=3, depth=1),
    }[family]()
    bayesian = make_bayesian(model)
    chosen = _delta_guide(bayesian) if guide == "callable" else guide
    fitted, history = fit_svi(
        bayesian, x, y, guide=chosen, epochs=3, batch_size=12, lr=2e-2, progress=False
    )
    assert len(history) == 3 and all(math.isfinite(row["elbo_loss"]) for row in history)
    draws = predictive_probs(bayesian, x, guide=fitted, num_samples=4)
    assert draws.shape == (4, 24, 3)
    torch.testing.assert_close(draws.sum(-1), torch.ones(4, 24))
    samples = sample_posterior(bayesian, x, y, guide=fitted, num_samples=3)
    assert set(samples) == set(prior_sites(bayesian))
    for name, (owner, attribute) in prior_sites(bayesian).items():
        assert samples[name].shape == (3, *owner._pyro_samples[attribute].event_shape)
    spread = [float(v.std(0).max()) for v in samples.values()]
    if guide == "callable":
        assert max(spread) == 0.0  # a point mass: every draw the same
    else:
        assert min(spread) > 0.0


def test_circuit_posterior_log_likelihood_is_the_monte_carlo_average():
    circuit = _circuit(depth=2)
    bayesian = make_bayesian(circuit)
    x, y = _toy_data()
    # Draws from the prior, independently of the library's sampler.
    generator = torch.Generator().manual_seed(5)
    samples = {}
    for name, (owner, attribute) in prior_sites(bayesian).items():
        shape = (6, *owner._pyro_samples[attribute].event_shape)
        draw = torch.randn(shape, generator=generator)
        samples[name] = 0.05 + draw.exp() if name.endswith("inputs.scale") else draw
    result = posterior_log_likelihood(bayesian, x, y, posterior_samples=samples)
    reference = []
    for s in range(6):  # plain circuits with the drawn values as their parameters
        pyro.clear_param_store()  # the copies share Pyro names: keep the store out of it
        point = copy.deepcopy(circuit)
        for name in prior_sites(bayesian):
            _set_parameter(point, name.split(".", 1)[1], samples[name][s])
        with torch.no_grad():
            reference.append(point.log_prob(x, y).double().numpy())
    reference = np.stack(reference)
    expected = np.log(np.mean(np.exp(reference), axis=0))
    np.testing.assert_allclose(result.log_mean.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.std.numpy(), reference.std(0, ddof=1), rtol=1e-4)
    assert result.draws.shape == (6, 24)
    # log p(x) without labels is larger than log p(x, y) for every draw
    marginal = posterior_log_likelihood(bayesian, x, posterior_samples=samples)
    assert (marginal.draws >= result.draws - 1e-5).all()
    # Jensen: the log of the mean likelihood is at least the mean log-likelihood
    assert (result.log_mean >= result.draws.mean(0) - 1e-5).all()


def test_circuit_svi_and_posterior_log_likelihood_from_a_guide():
    x, y = _toy_data()
    bayesian = make_bayesian(_circuit(depth=1))
    guide, history = fit_svi(bayesian, x, y, epochs=15, batch_size=12, lr=5e-2, progress=False)
    assert history[-1]["elbo_loss"] < history[0]["elbo_loss"]
    result = posterior_log_likelihood(bayesian, x, y, guide=guide, num_samples=10)
    assert result.log_mean.shape == (24,) and torch.isfinite(result.log_mean).all()
    assert (result.std > 0).all()


def test_classifier_posterior_log_likelihood_is_the_predictive_probability():
    x, y = _toy_data(classes=3)
    bayesian = make_bayesian(UGMMClassifier(4, hidden=(3,), num_classes=3, layer_norm=False))
    samples = {
        name: value.detach()
        for name, value in pyro.infer.Predictive(bayesian.model, num_samples=5)(x).items()
        if name != "y"
    }
    result = posterior_log_likelihood(bayesian, x, y, posterior_samples=samples)
    probs = predictive_probs(bayesian, x, posterior_samples=samples).mean(0)
    torch.testing.assert_close(result.log_mean, probs.gather(-1, y[:, None]).log().squeeze(-1))
    with pytest.raises(ValueError, match="give the labels y"):
        posterior_log_likelihood(bayesian, x, posterior_samples=samples)


def test_circuit_inference_data_groups_shapes_loo_and_compare():
    import matplotlib

    matplotlib.use("Agg")
    x, y = _toy_data()
    datasets = {}
    for depth in (1, 2):
        bayesian = make_bayesian(_circuit(depth=depth))
        guide, _ = fit_svi(bayesian, x, y, epochs=5, batch_size=12, lr=5e-2, progress=False)
        idata = to_inference_data(bayesian, x, y, guide=guide, num_samples=40)
        datasets[f"depth {depth}"] = idata
        assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(
            idata.groups()
        )
        name = bayesian._pyro_name
        loc = idata.posterior[f"{name}.inputs.loc"]
        assert loc.dims == ("chain", "draw", "slot", "input_channel", "component")
        assert loc.shape == (1, 40, 2 * 4, 2, 2)  # slots: (repetition, variable) pairs
        assert idata.log_likelihood["x"].shape == (1, 40, 24)
        assert idata.posterior_predictive["x"].shape == (1, 40, 24, 4)
        assert idata.posterior_predictive["y"].shape == (1, 40, 24)
        np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
        # the pointwise log-likelihood is log p(x_i, y_i | theta_s) of the stored draws
        samples = {k: torch.as_tensor(v.values[0]) for k, v in idata.posterior.items()}
        reference = posterior_log_likelihood(bayesian, x, y, posterior_samples=samples)
        np.testing.assert_allclose(
            idata.log_likelihood["x"].values[0], reference.draws.numpy(), rtol=1e-5, atol=1e-5
        )
        root = f"{name}.root.logits"
        summary = az.summary(idata, var_names=[root], kind="stats")
        assert summary.shape[0] == int(np.prod(idata.posterior[root].shape[2:]))
        axes = az.plot_posterior(idata, var_names=[root], coords={"root.sum": [0]})
        assert np.size(axes) >= 1
    unlabelled = to_inference_data(bayesian, x, guide=guide, num_samples=5)
    assert "y" not in unlabelled.observed_data and unlabelled.log_likelihood["x"].shape == (
        1,
        5,
        24,
    )
    with warnings.catch_warnings():  # few draws: arviz warns that the estimates are rough
        warnings.simplefilter("ignore", UserWarning)
        loos = {name: az.loo(data) for name, data in datasets.items()}
        comparison = az.compare(datasets)
    assert set(comparison.index) == set(datasets)
    for name, data in datasets.items():
        # written out from the exported log p(x_i, y_i | theta_s): the in-sample lppd and the
        # plain importance-sampling LOO, which Pareto smoothing changes only slightly here
        ll = torch.as_tensor(data.log_likelihood["x"].values[0]).double()  # (S, n)
        log_s = math.log(len(ll))
        lppd = float((torch.logsumexp(ll, 0) - log_s).sum())
        is_loo = float((log_s - torch.logsumexp(-ll, 0)).sum())
        loo = loos[name]
        assert loo.elpd_loo == pytest.approx(is_loo, abs=0.05)
        assert loo.p_loo == pytest.approx(lppd - loo.elpd_loo, abs=1e-3)
        assert comparison.loc[name, "elpd_loo"] == pytest.approx(loo.elpd_loo)


def test_classifier_inference_data_compare_and_plot_posterior():
    import matplotlib

    matplotlib.use("Agg")
    x, y = _toy_data(classes=3)
    datasets = {}
    for label, model in (
        ("uGMM-NN", UGMMClassifier(4, hidden=(3,), num_classes=3, layer_norm=False)),
        ("joint", JointScoreModel(4, num_classes=3, hidden=(3,))),
    ):
        bayesian = make_bayesian(model)
        guide, _ = fit_svi(bayesian, x, y, epochs=3, batch_size=12, lr=3e-2, progress=False)
        idata = to_inference_data(bayesian, x, y, guide=guide, num_samples=30)
        first = f"{bayesian._pyro_name}.stack.layers.0.loc"
        assert idata.posterior[first].dims[2:] == ("stack.layers.0.neuron", "stack.layers.0.input")
        assert idata.posterior[first].shape[2:] == ((3, 4) if label == "uGMM-NN" else (3, 5))
        axes = az.plot_posterior(idata, var_names=[first], coords={"stack.layers.0.neuron": [0]})
        inputs = 4 if label == "uGMM-NN" else 5
        assert sum(ax.get_title() != "" for ax in np.ravel(axes)) == inputs  # neuron 0's means
        datasets[label] = idata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        comparison = az.compare(datasets)
    assert len(comparison) == 2 and np.isfinite(comparison["elpd_loo"]).all()
    with pytest.raises(ValueError, match="needs y"):
        to_inference_data(bayesian, x, guide=guide)


def test_neuron_posterior_band_is_the_quantile_of_the_drawn_densities(tmp_path):
    x, y = _toy_data(classes=3)
    bayesian = make_bayesian(
        UGMMClassifier(4, hidden=(3,), num_classes=3, layer_norm=False), parameters=("loc",)
    )
    layer = bayesian.stack.layers[0]
    generator = torch.Generator().manual_seed(1)
    samples = {
        f"{layer._pyro_name}.loc": torch.randn(50, 3, 4, generator=generator),
        f"{bayesian._pyro_name}.stack.layers.1.loc": torch.randn(50, 3, 3, generator=generator),
    }
    fig = plot_neuron_posterior(
        bayesian, "stack.layers.0", 1, posterior_samples=samples, band=(0.1, 0.9), points=50
    )
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    grid, mean = line.get_xdata(), line.get_ydata()
    # Independent reference: each draw's mixture written out with the point scales and logits.
    scale, logits = layer.scale.detach()[1], layer.logits.detach()[1]
    weight = torch.softmax(logits, -1).numpy()
    densities = []
    for s in range(50):
        loc = samples[f"{layer._pyro_name}.loc"][s, 1].numpy()
        normal = np.exp(-0.5 * ((grid[:, None] - loc) / scale.numpy()) ** 2) / (
            scale.numpy() * math.sqrt(2 * math.pi)
        )
        densities.append((normal * weight).sum(-1))
    densities = np.stack(densities)
    np.testing.assert_allclose(mean, densities.mean(0), rtol=1e-4, atol=1e-6)
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.max(), np.quantile(densities, 0.9, axis=0).max(), rtol=1e-4)
    fig.savefig(tmp_path / "band.png")
    guide, _ = fit_svi(bayesian, x, y, epochs=1, batch_size=12, progress=False)
    fig = plot_neuron_posterior(bayesian, layer, 0, guide=guide, guide_args=(x, y), num_samples=5)
    ax = fig.axes[0]
    (mean_line,) = ax.get_lines()
    grid, mean = (np.asarray(v, dtype=float) for v in mean_line.get_data())
    (band,) = ax.collections
    edge = band.get_paths()[0].vertices[:, 1]  # the 5% and 95% curves around the mean
    # a density framed to +-4 sigma of a typical draw: it integrates to about 1, and the
    # band of quantiles over the draws spans the posterior mean
    area = float(((mean[1:] + mean[:-1]) / 2 * np.diff(grid)).sum())  # trapezoid rule
    assert area == pytest.approx(1.0, abs=0.05)
    assert edge.min() <= mean.min() + 1e-9 and edge.max() >= mean.max() - 1e-9
    assert ax.get_title() == f"neuron 0 of {layer.label}, 5 draws"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("y", "P_j(y)")
    with pytest.raises(ValueError, match="neuron must be in"):
        plot_neuron_posterior(bayesian, layer, 7, posterior_samples=samples)


def test_nuts_on_a_bayesian_circuit_and_its_inference_data():
    from ugmm_prob.bayes import run_nuts

    x, y = _toy_data(n=16)
    bayesian = make_bayesian(_circuit(depth=1), parameters=("loc", "sum_logits"))
    mcmc = run_nuts(bayesian, x, y, num_samples=8, warmup_steps=8, max_tree_depth=3, progress=False)
    samples = mcmc.get_samples()
    assert samples[f"{bayesian._pyro_name}.inputs.loc"].shape == (8, 2 * 4, 2, 2)  # slots
    idata = to_inference_data(bayesian, x, y, posterior_samples=samples)
    assert idata.log_likelihood["x"].shape == (1, 8, 16)
    reference = posterior_log_likelihood(bayesian, x, y, posterior_samples=samples)
    np.testing.assert_allclose(
        idata.log_likelihood["x"].values[0], reference.draws.numpy(), rtol=1e-5, atol=1e-5
    )


def test_the_diagnostics_module_is_a_deprecated_alias_of_the_arviz_export():
    import importlib
    import sys

    sys.modules.pop("ugmm_prob.diagnostics", None)
    with pytest.warns(DeprecationWarning, match="ugmm_prob.arviz_export"):
        module = importlib.import_module("ugmm_prob.diagnostics")
    assert module.to_inference_data is to_inference_data
