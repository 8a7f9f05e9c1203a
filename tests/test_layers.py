"""UGMMLayer: the paper's neuron as a PyroModule, its dropout, errors and use inside Pyro."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from ugmm_prob.kernels import coupled_log_density
from ugmm_prob.layers import UGMMLayer, component_dropout


def test_parameters_are_pyro_params_with_the_paper_initialisation():
    layer = UGMMLayer(300, 200, scale_floor=1e-3)
    assert set(layer._pyro_params) == {"loc", "scale", "logits"}
    loc, scale, logits = layer.loc.detach(), layer.scale.detach(), layer.logits.detach()
    assert loc.shape == scale.shape == logits.shape == (200, 300)
    assert abs(float(loc.mean())) < 0.02 and abs(float(loc.std()) - 1) < 0.02  # N(0, 1)
    assert float(scale.min()) > 1e-3 and float(scale.max()) < 1  # U(floor, 1)
    assert abs(float(scale.mean()) - 0.5) < 0.01
    assert float(logits.min()) >= 0 and float(logits.max()) < 1  # U(0, 1)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 200 * 300


def test_forward_is_the_kernel_on_the_layer_parameters():
    layer = UGMMLayer(6, 4, dtype=torch.float64)
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    want = coupled_log_density(x, layer.loc, layer.scale, layer.logits)
    torch.testing.assert_close(layer(x), want)


def test_equal_inputs_give_the_mixture_log_density():
    layer = UGMMLayer(5, 3, dtype=torch.float64)
    y = torch.linspace(-2, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(y[:, None].expand(9, 5)), layer.mixture.log_prob(y[:, None]))


def test_mixture_is_one_pyro_mixture_over_neurons():
    layer = UGMMLayer(5, 3)
    mixture = layer.mixture
    assert isinstance(mixture, dist.MixtureSameFamily)
    assert mixture.batch_shape == (3,)
    assert mixture.sample((10,)).shape == (10, 3)


def test_every_neuron_mixture_integrates_to_one():
    layer = UGMMLayer(6, 4, dtype=torch.float64, scale_floor=0.05)
    grid = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    with torch.no_grad():
        density = layer.mixture.log_prob(grid[:, None]).exp()
    mass = torch.trapezoid(density, grid, dim=0)
    torch.testing.assert_close(mass, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)


def test_scale_floor_holds_under_any_unconstrained_value():
    layer = UGMMLayer(4, 2, scale_floor=0.05)
    with torch.no_grad():
        layer.scale_unconstrained.fill_(-1e3)
    assert (layer.scale >= 0.05).all()
    assert torch.isfinite(layer(torch.randn(3, 4))).all()


def test_component_dropout_renormalises_over_survivors():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 40, dtype=torch.float64)
    dropped = component_dropout(logits, 0.3, generator=generator)
    mask = torch.isinf(dropped)
    assert 0.25 < mask.double().mean() < 0.35  # about p of the components
    assert (dropped[~mask] == logits[~mask]).all()
    pi = torch.softmax(logits, -1)
    survivors = torch.where(mask, 0, pi)
    renormalised = survivors / survivors.sum(-1, keepdim=True)  # no 1 / (1 - p) rescaling
    torch.testing.assert_close(torch.softmax(dropped, -1), renormalised)


def test_component_dropout_never_empties_a_neuron():
    logits = torch.zeros(2000, 2)
    dropped = component_dropout(logits, 0.9, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(dropped).any(-1).all()
    assert torch.isfinite(torch.softmax(dropped, -1)).all()


def test_dropout_acts_in_training_mode_only():
    layer = UGMMLayer(20, 5, dropout=0.5, dtype=torch.float64)
    x = torch.randn(4, 20, dtype=torch.float64)
    state = torch.get_rng_state()
    train_out = layer(x)
    torch.set_rng_state(state)
    masked = component_dropout(layer.logits, 0.5)
    torch.testing.assert_close(train_out, coupled_log_density(x, layer.loc, layer.scale, masked))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    torch.testing.assert_close(
        layer(x), coupled_log_density(x, layer.loc, layer.scale, layer.logits)
    )


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (
            torch.zeros(3, 5),
            ValueError,
            r"UGMMLayer\(in_features=4, out_features=2\).*\(\.\.\., 4\), got \(3, 5\)",
        ),
        (
            torch.tensor([[0.0, math.nan, 0.0, 0.0]]),
            ValueError,
            r"UGMMLayer\(in_features=4.*1 NaN or inf",
        ),
        (torch.tensor([[0.0, math.inf, 0.0, 0.0]]), ValueError, "NaN or inf"),
        (
            torch.zeros(3, 4, dtype=torch.int32),
            TypeError,
            r"UGMMLayer\(in_features=4.*float32 or float64, got torch.int32",
        ),
    ],
)
def test_bad_input_errors_name_the_layer(x, error, match):
    with pytest.raises(error, match=match):
        UGMMLayer(4, 2)(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0, "out_features": 2}, "in_features"),
        ({"in_features": 2, "out_features": 2, "dropout": 1.0}, "dropout"),
        ({"in_features": 2, "out_features": 2, "scale_floor": 0.0}, "scale_floor"),
        ({"in_features": 2, "out_features": 2, "dtype": torch.int64}, "floating dtype"),
    ],
)
def test_bad_construction_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        UGMMLayer(**kwargs)


def test_state_dict_round_trip():
    layer = UGMMLayer(7, 3, dropout=0.2)
    copy = UGMMLayer(7, 3, dropout=0.2)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(5, 7)
    layer.eval()
    copy.eval()
    torch.testing.assert_close(copy(x), layer(x))
    for name in ("loc", "scale", "logits"):
        torch.testing.assert_close(getattr(copy, name), getattr(layer, name))


def test_extra_repr_names_the_configuration():
    text = repr(UGMMLayer(3, 2, dropout=0.1, scale_floor=0.01, backend="eager"))
    assert "in_features=3, out_features=2, dropout=0.1, scale_floor=0.01, backend='eager'" in text


def test_named_layers_keep_separate_pyro_parameters():
    first, second = UGMMLayer(3, 2, name="first"), UGMMLayer(4, 5, name="second")
    assert first(torch.zeros(1, 3)).shape == (1, 2)
    assert second(torch.zeros(1, 4)).shape == (1, 5)
    assert {"first.loc", "second.loc"} <= set(pyro.get_param_store().keys())


def test_float64_layer_and_device_argument():
    layer = UGMMLayer(3, 2, dtype=torch.float64, device="cpu")
    assert layer.loc.dtype == torch.float64 and layer.loc.device.type == "cpu"
    assert layer(torch.zeros(1, 3, dtype=torch.float64)).dtype == torch.float64


def test_trains_inside_a_pyro_model_under_plate_with_svi():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100, 2) - 1.5, torch.randn(100, 2) + 1.5])
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    layer = UGMMLayer(2, 2)

    def model(x, y):
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Categorical(logits=layer(x)), obs=y)

    def guide(x, y):  # point estimates only: the parameters are param sites of the model
        pass

    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(60)]
    assert any("loc" in name for name in pyro.get_param_store().keys())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    accuracy = (layer(x).argmax(-1) == y).double().mean()
    assert accuracy > 0.85


@settings(max_examples=30, deadline=None)
@given(
    batch_shape=st.lists(st.integers(1, 3), max_size=3),
    in_features=st.integers(1, 5),
    out_features=st.integers(1, 5),
)
def test_output_and_mixture_shapes_property(batch_shape, in_features, out_features):
    pyro.clear_param_store()  # one store for all examples: unnamed layers share "loc" etc.
    layer = UGMMLayer(in_features, out_features)
    out = layer(torch.randn(*batch_shape, in_features))
    assert out.shape == (*batch_shape, out_features)
    assert layer.mixture.batch_shape == (out_features,)
    assert torch.isfinite(out).all()


def test_init_from_data_centres_each_neuron_on_an_example():
    torch.manual_seed(0)
    x = torch.rand(50, 6)
    layer = UGMMLayer(6, 4)
    layer.init_from_data(x, spread=1.5, generator=torch.Generator().manual_seed(1))
    # every neuron's means are one row of the data
    matches = (layer.loc[:, None, :] == x[None]).all(-1)
    assert bool(matches.any(1).all())
    torch.testing.assert_close(layer.scale, torch.full((4, 6), 1.5 * float(x.std())))
    # each component peaks where x_k = mu_jk, so a neuron's prototype maximises its activation
    # over any input: in particular over every data row.
    with torch.no_grad():
        at_prototype = layer(layer.loc).diagonal()
        assert bool((at_prototype[None] >= layer(x) - 1e-6).all())


def test_init_from_data_rejects_bad_data():
    layer = UGMMLayer(3, 2)
    with pytest.raises(ValueError, match=r"shape \(n >= 1, 3\)"):
        layer.init_from_data(torch.rand(5, 4))
    with pytest.raises(ValueError, match="finite"):
        layer.init_from_data(torch.tensor([[0.0, float("nan"), 1.0]]))
