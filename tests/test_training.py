"""fit(): learning, determinism, resumption, metrics files, checkpoints and the NaN guard."""

import json
import pathlib
import time

import pytest
import torch

from ugmm_prob.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ugmm_prob.datasets import iris_split, load_mnist, mnist_subset, standardize
from ugmm_prob.networks import JointScoreModel, UGMMClassifier
from ugmm_prob.training import TrainingDivergedError, evaluate, fit


@pytest.fixture(scope="module")
def iris():
    split = iris_split()
    x_train, x_test = standardize(split.x_train, split.x_test)
    return x_train, split.y_train, x_test, split.y_test


def _small_model():
    return UGMMClassifier(4, hidden=(8,), num_classes=3, layer_norm=False, backend="eager")


def test_learns_iris(iris):
    x, y, x_test, y_test = iris
    model = _small_model()
    history = fit(
        model, x, y, x_val=x_test, y_val=y_test, epochs=30, batch_size=16, lr=1e-2, progress=False
    )
    assert len(history) == 30
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] == evaluate(model, x_test, y_test)["accuracy"] >= 0.9
    assert evaluate(model, x, y)["accuracy"] >= 0.95
    assert set(history[0]) == {"epoch", "loss", "accuracy", "nll", "ece", "lr", "seconds"}


def test_learns_a_2000_image_mnist_subset(mnist_dir):
    x, y = mnist_subset(*load_mnist("train", root=mnist_dir), 2000, seed=0)
    x_test, y_test = mnist_subset(*load_mnist("test", root=mnist_dir), 1000, seed=0)
    model = UGMMClassifier(784, hidden=(32,), num_classes=10, layer_norm=False, backend="eager")
    fit(model, x, y, epochs=5, batch_size=64, lr=1e-2, progress=False)
    # 83.2% measured on 1,000 test images with these seeds; 10% is chance.
    assert evaluate(model, x_test, y_test)["accuracy"] >= 0.78


def test_same_seed_same_result_and_resume_equals_uninterrupted(iris, tmp_path):
    x, y, _, _ = iris
    kwargs = dict(
        epochs=6, batch_size=16, lr=1e-2, seed=3, progress=False, milestones=(3,), gamma=0.5
    )
    straight = UGMMClassifier(4, hidden=(8,), num_classes=3, dropout=0.3, backend="eager")
    initial = {k: v.clone() for k, v in straight.state_dict().items()}
    fit(straight, x, y, **kwargs)

    again = UGMMClassifier(4, hidden=(8,), num_classes=3, dropout=0.3, backend="eager")
    again.load_state_dict(initial)
    fit(again, x, y, **kwargs)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])

    path = tmp_path / "run.pt"
    resumed = UGMMClassifier(4, hidden=(8,), num_classes=3, dropout=0.3, backend="eager")
    resumed.load_state_dict(initial)
    fit(resumed, x, y, checkpoint_path=path, **{**kwargs, "epochs": 2})
    fresh = UGMMClassifier(
        4, hidden=(8,), num_classes=3, dropout=0.3, backend="eager"
    )  # a new process, say
    history = fit(fresh, x, y, checkpoint_path=path, resume=True, **kwargs)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["lr"] == pytest.approx(5e-3)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


def test_metrics_files(iris, tmp_path):
    x, y, _, _ = iris
    fit(
        _small_model(),
        x,
        y,
        epochs=3,
        batch_size=32,
        progress=False,
        metrics_path=tmp_path / "m.jsonl",
    )
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    fit(
        _small_model(),
        x,
        y,
        epochs=2,
        batch_size=32,
        progress=False,
        metrics_path=tmp_path / "m.csv",
    )
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["epoch", "loss", "accuracy"] and len(lines) == 3
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        fit(_small_model(), x, y, epochs=1, progress=False, metrics_path=tmp_path / "m.txt")


def test_nan_loss_stops_and_keeps_the_last_good_state(iris, tmp_path):
    x, y, _, _ = iris
    model = _small_model()
    path = tmp_path / "good.pt"
    fit(model, x, y, epochs=2, batch_size=32, progress=False, checkpoint_path=path)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}
    original = model.training_loss

    def poisoned(xb, yb):
        calls["n"] += 1
        loss = original(xb, yb)
        return loss * float("nan") if calls["n"] == 3 else loss

    model.training_loss = poisoned
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 3, step 3"):
        fit(model, x, y, epochs=4, batch_size=32, progress=False, checkpoint_path=path, resume=True)
    for key, value in good.items():
        assert torch.equal(model.state_dict()[key], value)
    assert load_checkpoint(path).epoch == 2


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    model = JointScoreModel(4, num_classes=3, objective="conditional")
    path = save_checkpoint(tmp_path / "sub" / "c.pt", model, epoch=5, history=[{"epoch": 5}])
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temporary left
    loaded = load_checkpoint(path)
    assert type(loaded.model) is JointScoreModel and loaded.epoch == 5
    assert loaded.model.config == model.config
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded.model.predict_proba(x), model.predict_proba(x))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable ugmm-prob checkpoint"),
        (b"garbage" * 10, "not a readable ugmm-prob checkpoint"),
    ],
)
def test_corrupt_checkpoints_are_named(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_and_foreign_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _small_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: checkpoint is corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="expected a 'ugmm-prob-checkpoint/1'"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_loading_never_runs_pickled_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ugmm-prob-checkpoint/1", "payload": Boom()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]), r"labels must be in \[0, 2\].*max 3"),
        (torch.randn(5, 4), torch.tensor([0, 1, 2]), "5.*3|3.*5"),
        (torch.randn(0, 4), torch.zeros(0, dtype=torch.long), "empty|no rows|0 rows"),
    ],
)
def test_bad_training_data_is_named(x, y, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fit(_small_model(), x, y, epochs=1, progress=False)


def test_cuda_requested_without_cuda_is_a_clear_error(iris):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    x, y, _, _ = iris
    with pytest.raises(RuntimeError, match=r"torch\.cuda\.is_available"):
        fit(_small_model(), x, y, epochs=1, progress=False, device="cuda")


def test_diverged_weights_are_caught_like_a_nan_loss(iris):
    """Weights gone NaN make Categorical refuse its logits before any loss exists."""
    x, y, _, _ = iris
    model = _small_model()
    original = model.training_loss

    def diverging(xb, yb):
        with torch.no_grad():
            model.stack.layers[0].loc_unconstrained.fill_(float("nan"))
        return original(xb, yb)

    model.training_loss = diverging
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 1"):
        fit(model, x, y, epochs=1, batch_size=32, progress=False)


def _keep_best_run(x, y, x_val, y_val, **kwargs):
    torch.manual_seed(0)
    model = UGMMClassifier(4, hidden=(8,), num_classes=3, layer_norm=False, backend="eager")
    options = dict(batch_size=16, lr=5e-2, seed=1, progress=False)
    history = fit(model, x, y, x_val=x_val, y_val=y_val, **{**options, **kwargs})
    return model, history


def test_keep_best_returns_the_epoch_with_the_lowest_validation_nll(iris, tmp_path):
    x, y, _, _ = iris
    x_fit, y_fit, x_val, y_val = x[:60], y[:60], x[60:], y[60:]  # few rows: it overfits
    model, history = _keep_best_run(x_fit, y_fit, x_val, y_val, epochs=25, keep_best="nll")
    nlls = [row["nll"] for row in history]
    best = min(range(len(nlls)), key=nlls.__getitem__) + 1
    assert history[-1]["best_epoch"] == best < 25, "the set-up should overfit before epoch 25"
    assert evaluate(model, x_val, y_val)["nll"] == pytest.approx(nlls[best - 1], abs=1e-6)
    # The same run stopped after `best` epochs is the model returned (CPU is deterministic).
    reference, _ = _keep_best_run(x_fit, y_fit, x_val, y_val, epochs=best)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    # Interrupted and resumed, the selection is the same; the checkpoint keeps the last epoch.
    path = tmp_path / "run.pt"
    _keep_best_run(x_fit, y_fit, x_val, y_val, epochs=10, keep_best="nll", checkpoint_path=path)
    resumed, history_resumed = _keep_best_run(
        x_fit, y_fit, x_val, y_val, epochs=25, keep_best="nll", checkpoint_path=path, resume=True
    )
    assert history_resumed[-1]["best_epoch"] == best
    assert load_checkpoint(path).epoch == 25
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_patience_stops_where_the_full_run_first_goes_that_long_without_a_better_epoch(iris):
    """The full run's validation curve says where early stopping must stop: at the first
    epoch ending ``patience`` epochs after the best so far; the stopped run's history is the
    full run's up to there, and it ends in the state of the best epoch before it."""
    x, y, _, _ = iris
    x_fit, y_fit, x_val, y_val = x[:60], y[:60], x[60:], y[60:]
    _, full = _keep_best_run(x_fit, y_fit, x_val, y_val, epochs=25, keep_best="nll")
    nlls = [row["nll"] for row in full]
    for patience in (1, 3):
        stop = next(
            epoch
            for epoch in range(1, 26)
            if epoch - (min(range(epoch), key=nlls.__getitem__) + 1) >= patience
        )
        assert stop < 25, "the set-up should overfit before epoch 25"
        model, history = _keep_best_run(
            x_fit, y_fit, x_val, y_val, epochs=25, keep_best="nll", patience=patience
        )
        assert [row["nll"] for row in history] == nlls[:stop]
        best = history[-1]["best_epoch"]
        assert best == min(range(stop), key=nlls.__getitem__) + 1 == stop - patience
        reference, _ = _keep_best_run(x_fit, y_fit, x_val, y_val, epochs=best)
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_patience_needs_keep_best_and_a_positive_int(iris):
    x, y, x_test, y_test = iris
    with pytest.raises(ValueError, match="give keep_best"):
        fit(_small_model(), x, y, x_val=x_test, y_val=y_test, patience=3, progress=False)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="patience must be None or an int >= 1"):
            fit(
                _small_model(),
                x,
                y,
                x_val=x_test,
                y_val=y_test,
                keep_best="nll",
                patience=bad,
                progress=False,
            )


def test_keep_best_needs_a_metric_and_held_out_data(iris):
    x, y, x_test, y_test = iris
    with pytest.raises(ValueError, match="keep_best must be one of"):
        fit(_small_model(), x, y, x_val=x_test, y_val=y_test, keep_best="loss", progress=False)
    with pytest.raises(ValueError, match="give x_val and y_val"):
        fit(_small_model(), x, y, keep_best="nll", progress=False)


def test_progress_bars_redraw_a_few_times_a_second_not_per_step(capsys):
    net = UGMMClassifier(4, hidden=(5,), num_classes=3, layer_norm=False)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    start = time.perf_counter()
    fit(net, x, y, epochs=40, batch_size=4, progress=True)  # 640 steps
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert "epochs: 100%" in err
    # at most 4 redraws a second (PROGRESS_INTERVAL_S), plus the first and the last; an
    # epoch's own bar only for epochs longer than PROGRESS_DELAY_S
    assert err.count("\r") <= 4 * seconds + 3, err.count("\r")
