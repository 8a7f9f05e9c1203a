"""Networks: paper shapes, Pyro use, and the joint-score posterior.

The checks every model family shares (shapes, float64, gradients, checkpoints, SVI, ArviZ)
are in tests/test_model_families.py."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

from ugmm_prob.networks import (
    CNNClassifier,
    ConvUGMMClassifier,
    JointScoreModel,
    MLPClassifier,
    UGMMClassifier,
    UGMMStack,
)


def test_predict_proba_is_deterministic_and_restores_training_mode():
    net = UGMMClassifier(12, hidden=(6,), num_classes=3, dropout=0.5)
    x = torch.randn(5, 12)
    assert net.training
    torch.testing.assert_close(net.predict_proba(x), net.predict_proba(x))
    assert net.training


@pytest.mark.parametrize("make", [lambda: CNNClassifier(10), lambda: ConvUGMMClassifier(10)])
def test_conv_networks_take_flat_or_image_input(make):
    net = make().eval()
    images = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(net.logits(images), net.logits(images.flatten(1)))
    assert net.logits(images).shape == (3, 10)


def test_paper_shapes_and_parameter_counts():
    net = UGMMClassifier(784, hidden=(128, 64), num_classes=10, layer_norm=True, dropout=0.3)
    ugmm = 3 * (784 * 128 + 128 * 64 + 64 * 10)
    norms = 2 * (128 + 64)
    assert sum(p.numel() for p in net.parameters()) == ugmm + norms
    assert [layer.dropout for layer in net.stack.layers] == [0.3, 0.0, 0.0]
    mlp = MLPClassifier(784, hidden=(128, 64), num_classes=10)
    assert (
        sum(p.numel() for p in mlp.parameters()) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    )


def test_stack_rejects_wrong_number_of_dropout_rates():
    with pytest.raises(ValueError, match="expected 3 dropout values"):
        UGMMStack([4, 3, 2, 1], dropout=[0.1, 0.2])


def test_instances_keep_their_own_pyro_parameters():
    """Two unnamed networks in one process do not share parameters through the param store."""
    first, second = (
        UGMMClassifier(4, hidden=(3,), num_classes=2),
        UGMMClassifier(4, hidden=(3,), num_classes=2),
    )
    x = torch.randn(5, 4)
    before = first.logits(x).detach().clone()
    second.logits(x)
    torch.testing.assert_close(first.logits(x), before)
    assert not torch.equal(first.logits(x), second.logits(x))


def test_network_is_a_pyro_model_trained_by_svi_with_minibatch_scaling():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(60, 4) - 1.5, torch.randn(60, 4) + 1.5])
    y = torch.cat([torch.zeros(60), torch.ones(60)]).long()
    net = UGMMClassifier(4, hidden=(3,), num_classes=2)
    trace = pyro.poutine.trace(net.model).get_trace(x[:10], y[:10], num_data=120)
    trace.compute_log_prob()
    site = trace.nodes["y"]
    torch.testing.assert_close(site["log_prob_sum"], 12 * net.log_prob(x[:10], y[:10]).sum())
    svi = SVI(net.model, lambda *a, **k: None, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(40)]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_joint_score_posterior_is_softmax_of_scores_in_one_pass():
    model = JointScoreModel(4, num_classes=3, hidden=(5, 3)).eval()
    x = torch.randn(7, 4)
    scores = torch.stack([model.score(x, torch.full((7,), c)) for c in range(3)], -1)
    torch.testing.assert_close(model.posterior(x), torch.softmax(scores, -1))


def test_joint_score_posterior_equals_pyro_enumeration():
    """Pyro's exact marginal of the enumerated label site equals posterior(x) to 1e-6."""
    model = JointScoreModel(4, num_classes=3, hidden=(10, 5)).eval()
    x = torch.randn(11, 4, dtype=torch.float32)
    marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
        config_enumerate(model.joint_model), lambda x: None, x
    )
    enumerated = marginals["c"].log_prob(torch.arange(3)[:, None]).exp().T
    torch.testing.assert_close(enumerated, model.posterior(x), atol=1e-6, rtol=0)


def test_joint_score_objectives():
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    paper = JointScoreModel(4, num_classes=3, objective="score")
    torch.testing.assert_close(paper.training_loss(x, y), -paper.score(x, y).mean())
    conditional = JointScoreModel(4, num_classes=3, objective="conditional")
    torch.testing.assert_close(conditional.training_loss(x, y), -conditional.log_prob(x, y).mean())
    with pytest.raises(ValueError, match="objective"):
        JointScoreModel(4, num_classes=3, objective="likelihood")


def test_stack_init_from_data_matches_each_layer_to_its_inputs():
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    net = UGMMClassifier(5, hidden=(6, 4), num_classes=3, layer_norm=True)
    net.init_from_data(x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second, _ = net.stack.layers
        h = net.stack.norms[0](first(x))  # what the second layer receives for every row
        assert bool((first.loc[:, None, :] == x[None]).all(-1).any(1).all())
        close = torch.isclose(second.loc[:, None, :], h[None], atol=1e-6).all(-1)
        assert bool(close.any(1).all())


def test_joint_score_init_from_data_uses_the_labels():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    model = JointScoreModel(4, num_classes=3, hidden=(5,))
    with pytest.raises(ValueError, match="labels"):
        model.init_from_data(x)
    model.init_from_data(x, y)
    first = model.stack.layers[0]
    pairs = torch.cat([x, y[:, None].float()], -1)
    assert bool((first.loc[:, None, :] == pairs[None]).all(-1).any(1).all())


def test_the_checkpoint_allow_list_moved_to_checkpoints_with_a_deprecated_old_path():
    from ugmm_prob import checkpoints, networks

    for name in (
        "LOADABLE_MODEL_CLASSES",
        "build_model",
        "model_class_path",
        "resolve_model_class",
    ):
        with pytest.warns(DeprecationWarning, match=f"ugmm_prob.checkpoints.{name}"):
            assert getattr(networks, name) is getattr(checkpoints, name)
    with pytest.raises(AttributeError):
        networks.no_such_name  # noqa: B018


def test_mlp_without_hidden_layers_is_a_logistic_regression():
    net = MLPClassifier(4, hidden=(), num_classes=3)
    (linear,) = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.randn(5, 4)
    torch.testing.assert_close(net.logits(x), x @ linear.weight.T + linear.bias)


def test_mlp_layers_follow_the_widths():
    net = MLPClassifier(6, hidden=(5, 4), num_classes=3)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes == [(5, 6), (4, 5), (3, 4)]
