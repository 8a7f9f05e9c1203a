"""fit_svi runs through the shared training loop: checkpoints, resumption, NaN guard."""

import pyro
import pytest
import torch

from ugmm_prob import UGMMClassifier
from ugmm_prob.bayes import fit_svi, make_bayesian, point_model
from ugmm_prob.checkpoints import load_checkpoint
from ugmm_prob.experiments import load_data
from ugmm_prob.training import TrainingDivergedError

SETTINGS = dict(batch_size=40, lr=2e-2, seed=4, progress=False, predictive_samples=4)


@pytest.fixture(scope="module")
def iris():
    data = load_data("iris")
    return data.x_train, data.y_train


def _point() -> UGMMClassifier:
    torch.manual_seed(2)
    return UGMMClassifier(4, hidden=(6,), num_classes=3, layer_norm=True, backend="eager")


def _guide_values(model) -> dict[str, torch.Tensor]:
    """The parameter store, named relative to ``model`` so two instances compare."""
    return {
        name.replace(model._pyro_name, "M"): value.detach().clone()
        for name, value in pyro.get_param_store().named_parameters()
    }


def test_resume_equals_the_uninterrupted_run(iris, tmp_path):
    x, y = iris
    straight = make_bayesian(_point())
    _, history = fit_svi(straight, x, y, epochs=3, **SETTINGS)
    expected = _guide_values(straight)

    path = tmp_path / "svi.pt"
    first = make_bayesian(_point())
    fit_svi(first, x, y, epochs=1, checkpoint_path=path, **SETTINGS)
    again = make_bayesian(_point())  # a new process would build a new model, new Pyro name
    _, resumed = fit_svi(again, x, y, epochs=3, checkpoint_path=path, resume=True, **SETTINGS)

    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    assert [row["elbo_loss"] for row in resumed] == [row["elbo_loss"] for row in history]
    got = _guide_values(again)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_checkpoint_model_is_the_network_at_the_guide_median(iris, tmp_path):
    x, y = iris
    bayesian = make_bayesian(_point())
    guide, _ = fit_svi(bayesian, x, y, epochs=2, checkpoint_path=tmp_path / "s.pt", **SETTINGS)
    network = load_checkpoint(tmp_path / "s.pt").model
    assert type(network) is UGMMClassifier
    # Reference: the Bayesian model's logits with every random site fixed at the median.
    bayesian.eval()
    with torch.no_grad():
        logits = pyro.poutine.condition(bayesian.logits, data=guide.median())(x)
    torch.testing.assert_close(network.predict_proba(x), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="does not belong"):
        point_model(bayesian, {"elsewhere.loc": torch.zeros(1)})


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_elbo_stops_and_keeps_the_last_good_guide(iris, tmp_path):
    x, y = iris
    path = tmp_path / "svi.pt"
    bayesian = make_bayesian(_point())
    fit_svi(bayesian, x, y, epochs=2, checkpoint_path=path, **SETTINGS)
    good = _guide_values(bayesian)

    poisoned = make_bayesian(_point())
    original, calls = poisoned.logits, []

    def logits(inputs):  # the first call sets the guide up; the weights "diverge" after it
        calls.append(1)
        return original(inputs) * (float("nan") if len(calls) > 1 else 1.0)

    poisoned.logits = logits
    with pytest.raises(TrainingDivergedError, match=r"elbo_loss became nan at epoch 3, step 1"):
        fit_svi(poisoned, x, y, epochs=4, checkpoint_path=path, resume=True, **SETTINGS)
    for name, value in _guide_values(poisoned).items():
        assert torch.equal(value, good[name]), name
    assert load_checkpoint(path).epoch == 2


def test_resuming_from_a_point_estimate_checkpoint_is_refused(iris, tmp_path):
    from ugmm_prob.training import fit

    x, y = iris
    path = tmp_path / "point.pt"
    fit(_point(), x, y, epochs=1, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="not written by fit_svi"):
        fit_svi(make_bayesian(_point()), x, y, epochs=2, checkpoint_path=path, resume=True)


def test_circuit_checkpoint_holds_the_circuit_at_the_guide_median(iris, tmp_path):
    from ugmm_prob.circuits import UGMMCircuit

    x, y = iris
    torch.manual_seed(0)
    bayesian = make_bayesian(UGMMCircuit(4, num_classes=3, repetitions=2, channels=3))
    guide, _ = fit_svi(bayesian, x, y, epochs=1, checkpoint_path=tmp_path / "c.pt", **SETTINGS)
    circuit = load_checkpoint(tmp_path / "c.pt").model
    assert type(circuit) is UGMMCircuit
    bayesian.eval()
    with torch.no_grad():
        expected = pyro.poutine.condition(bayesian.predict_proba, data=guide.median())(x)
        log_p = pyro.poutine.condition(bayesian.log_prob, data=guide.median())(x)
    torch.testing.assert_close(circuit.predict_proba(x), expected)
    torch.testing.assert_close(circuit.log_prob(x), log_p)


def test_learning_rate_milestones(iris, tmp_path):
    x, y = iris
    kwargs = {**SETTINGS, "milestones": (2, 3), "gamma": 0.5}
    _, history = fit_svi(make_bayesian(_point()), x, y, epochs=4, **kwargs)
    assert [row["lr"] for row in history] == pytest.approx([2e-2, 1e-2, 5e-3, 5e-3])
    # Resuming past a milestone continues at the decayed rate, as the straight run did.
    path = tmp_path / "svi.pt"
    straight = make_bayesian(_point())
    fit_svi(straight, x, y, epochs=4, **kwargs)
    expected = _guide_values(straight)
    fit_svi(make_bayesian(_point()), x, y, epochs=2, checkpoint_path=path, **kwargs)
    again = make_bayesian(_point())
    _, resumed = fit_svi(again, x, y, epochs=4, checkpoint_path=path, resume=True, **kwargs)
    assert [row["lr"] for row in resumed] == [row["lr"] for row in history]
    for name, value in _guide_values(again).items():
        assert torch.equal(value, expected[name]), name


def test_keep_best_ends_with_the_guide_of_the_best_validation_epoch(iris):
    x, y = iris
    x_fit, y_fit, x_val, y_val = x[:40], y[:40], x[40:], y[40:]
    settings = {**SETTINGS, "lr": 0.1}  # large steps: the validation NLL rises again
    kept = make_bayesian(_point())
    _, history = fit_svi(
        kept, x_fit, y_fit, x_val=x_val, y_val=y_val, epochs=12, keep_best="nll", **settings
    )
    nlls = [row["nll"] for row in history]
    best = min(range(len(nlls)), key=nlls.__getitem__) + 1
    assert history[-1]["best_epoch"] == best < 12, "the set-up should pass its best epoch"
    expected = _guide_values(kept)
    # the same run stopped after `best` epochs has the guide that was kept
    stopped = make_bayesian(_point())
    fit_svi(stopped, x_fit, y_fit, x_val=x_val, y_val=y_val, epochs=best, **settings)
    got = _guide_values(stopped)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
