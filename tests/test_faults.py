"""Fault injection (issue 17): damaged checkpoints, killed and interrupted runs, resuming
with other settings, divergence, copies of models, and bad input of every kind.

Each test is a probe of the issue's table; together they run in well under a minute on
two cores (tiny Iris-sized models).
"""

import copy
import csv
import math
import multiprocessing
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyro
import pytest
import torch

from ugmm_prob.bayes import fit_svi, make_bayesian
from ugmm_prob.boundary import NonFiniteError, as_batch, check_labels
from ugmm_prob.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ugmm_prob.cli import main
from ugmm_prob.experiments import load_data
from ugmm_prob.networks import CNNClassifier, JointScoreModel, MLPClassifier, UGMMClassifier
from ugmm_prob.training import (
    ResumeMismatchError,
    TrainingDivergedError,
    _PointEstimateTrainer,
    diverged,
    fit,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def iris():
    data = load_data("iris")
    return data.x_train, data.y_train


def _tiny():
    return UGMMClassifier(4, hidden=(8,), num_classes=3, layer_norm=False, backend="eager")


# --------------------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------------------


def test_no_single_byte_flip_loads_silently(tmp_path):
    model = _tiny()
    good = save_checkpoint(tmp_path / "good.pt", model, epoch=3, history=[{"epoch": 3}])
    data = good.read_bytes()
    rng = random.Random(17)
    damaged = tmp_path / "damaged.pt"
    outcomes = {"error": 0, "silent": 0}
    for _ in range(200):
        position = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[position] ^= rng.randrange(1, 256)  # always a different byte
        damaged.write_bytes(bytes(flipped))
        try:
            load_checkpoint(damaged)
        except CheckpointError as error:
            assert "damaged.pt" in str(error)  # the file is named
            outcomes["error"] += 1
        else:
            outcomes["silent"] += 1
    assert outcomes == {"error": 200, "silent": 0}
    # the undamaged file still loads, with the model's exact weights
    loaded = load_checkpoint(good)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_evaluate_refuses_a_flipped_checkpoint(tmp_path, capsys):
    assert main(["train", "iris-joint", "--epochs", "1", "--quiet", "--out", str(tmp_path)]) == 0
    path = tmp_path / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["evaluate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "checkpoint is corrupt" in captured.err


def test_legacy_checkpoints_load_with_a_warning(tmp_path):
    model = _tiny()
    payload = {
        "format": "ugmm-prob-checkpoint/1",
        "version": "0.1.0",
        "model_class": "UGMMClassifier",
        "config": model.config,
        "model_state": model.state_dict(),
        "epoch": 2,
    }
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="without a digest"):
        loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.epoch == 2 and type(loaded.model) is UGMMClassifier


def test_classes_off_the_allow_list_are_refused(tmp_path):
    class Mine(MLPClassifier):
        pass

    model = Mine(4, hidden=(5,), num_classes=3)
    path = save_checkpoint(tmp_path / "mine.pt", model)
    with pytest.raises(CheckpointError, match=r"mine\.pt: model class .*Mine.* is not loadable"):
        load_checkpoint(path)
    assert type(load_checkpoint(path, extra_classes=[Mine]).model) is Mine


FRESH_PROCESS = """
import sys, torch
import ugmm_prob.checkpoints as checkpoints
assert "ugmm_prob.circuits" not in sys.modules
for path in sys.argv[1:]:
    state = checkpoints.load_checkpoint(path)
    x = torch.load(path + ".x", weights_only=True)
    expected = torch.load(path + ".expected", weights_only=True)
    got = state.model.predict_proba(x)
    torch.testing.assert_close(got, expected)
    print(type(state.model).__module__, type(state.model).__name__, tuple(got.shape))
"""


def test_checkpoints_load_in_a_fresh_process(tmp_path):
    from ugmm_prob.circuits import UGMMCircuit

    x = torch.randn(5, 4)
    paths = []
    for name, model in (
        ("classifier", UGMMClassifier(4, hidden=(6,), num_classes=3)),
        ("circuit", UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2)),
    ):
        path = save_checkpoint(tmp_path / f"{name}.pt", model)
        torch.save(x, f"{path}.x")
        torch.save(model.predict_proba(x), f"{path}.expected")
        paths.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *paths],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [
        "ugmm_prob.networks UGMMClassifier (5, 3)",
        "ugmm_prob.circuits.circuit UGMMCircuit (5, 3)",
    ]


# --------------------------------------------------------------------------------------
# Killed and interrupted runs
# --------------------------------------------------------------------------------------


def test_twenty_kills_leave_no_temporary_file_and_no_duplicate_row(tmp_path, iris):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._fault_worker"])
    from tests import _fault_worker

    rng = random.Random(3)
    temporaries_seen = 0
    for _ in range(20):
        started = context.Event()
        process = context.Process(target=_fault_worker.run, args=(str(tmp_path), 100_000, started))
        process.start()
        assert started.wait(60)
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL
        temporaries_seen += len(list(tmp_path.glob(".*.tmp")))
    # A temporary as a process killed mid-save leaves it (planted, so the check never
    # depends on where the kills happened to land).
    (tmp_path / ".checkpoint.pt.killed.tmp").write_bytes(b"\0" * 1000)
    (tmp_path / ".metrics.csv.killed.tmp").write_bytes(b"")
    epoch = load_checkpoint(tmp_path / "checkpoint.pt").epoch
    assert epoch >= 1, "the killed runs should have completed some epochs"

    _fault_worker.run(str(tmp_path), epoch + 2)  # resume to completion

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.csv"]
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == epoch + 2
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(1, epoch + 3))
    assert all(None not in row.values() and "" not in row.values() for row in rows)
    print(f"{temporaries_seen} temporary files seen after kills; resumed from epoch {epoch}")


def test_ctrl_c_saves_the_last_epoch_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    original = _PointEstimateTrainer.end_epoch
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, delivered during epoch 3
        return original(self)

    monkeypatch.setattr(_PointEstimateTrainer, "end_epoch", interrupted)
    args = ["train", "iris-joint", "--epochs", "20", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 130
    err = capsys.readouterr().err
    checkpoint = tmp_path / "checkpoint.pt"
    assert f"{checkpoint} holds epoch 2" in err and "--resume" in err
    assert load_checkpoint(checkpoint).epoch == 2
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(_PointEstimateTrainer, "end_epoch", original)
    resume = err.split("Resume with: ugmm-prob ")[1].split()
    assert main([*resume[:3], "4", *resume[4:]]) == 0
    assert load_checkpoint(checkpoint).epoch == 4
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 4


# --------------------------------------------------------------------------------------
# Resuming with other settings
# --------------------------------------------------------------------------------------


def _resume(iris, path, **changes):
    x, y = iris
    options = dict(epochs=3, batch_size=32, lr=1e-2, seed=0, progress=False)
    torch.manual_seed(0)
    model = changes.pop("model", None) or _tiny()
    return fit(model, changes.pop("x", x), y, checkpoint_path=path, **{**options, **changes})


def test_resume_refuses_changed_settings_and_accepts_more_epochs(iris, tmp_path):
    path = tmp_path / "run.pt"
    _resume(iris, path, epochs=2)
    x = iris[0]
    cases = [
        ({"seed": 1}, r"seed was 0 .* this run has 1"),
        ({"batch_size": 16}, r"batch_size was 32 .* this run has 16"),
        ({"x": x + 0.5}, r"data was .*x_sum"),
        ({"optimizer": "sgd"}, r"optimizer was adam .* this run has sgd"),
        (
            {"model": UGMMClassifier(4, hidden=(9,), num_classes=3, layer_norm=False)},
            r"hidden': \[8\].*\[9\]",
        ),
        (
            {"model": JointScoreModel(4, num_classes=3)},
            r"holds a UGMMClassifier .* trains a JointScore",
        ),
        ({"lr": 1e6}, r"lr 0\.01, this run asks for lr 1000000\.0; pass override_lr=True"),
    ]
    for change, match in cases:
        with pytest.raises(ResumeMismatchError, match=match):
            _resume(iris, path, resume=True, **change)
    assert load_checkpoint(path).epoch == 2  # none of them touched the checkpoint
    history = _resume(iris, path, resume=True, epochs=4)  # more epochs: that is resuming
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    with pytest.warns(UserWarning, match="with lr 0.005 instead of 0.01"):
        history = _resume(iris, path, resume=True, epochs=5, lr=5e-3, override_lr=True)
    assert history[-1]["lr"] == pytest.approx(5e-3) and history[3]["lr"] == pytest.approx(1e-2)


def test_cli_resume_with_other_flags_is_one_line(tmp_path, capsys):
    base = ["train", "iris-joint", "--epochs", "2", "--quiet", "--out", str(tmp_path)]
    assert main(base) == 0
    capsys.readouterr()
    for extra, match in (
        (["--lr", "1e6"], "--override-lr"),
        (["--seed", "1"], "seed was 0"),
        (["--batch-size", "8"], "batch_size was 16"),
    ):
        assert main([*base, "--resume", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 2
    assert main([*base[:3], "3", *base[4:], "--resume", "--lr", "1e-3", "--override-lr"]) == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 3


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------


def test_fit_svi_divergence_restores_the_last_good_guide(iris, tmp_path):
    x, y = iris
    path = tmp_path / "svi.pt"
    options = dict(batch_size=32, progress=False, predictive_samples=2)
    fit_svi(make_bayesian(_tiny()), x, y, lr=1e-2, epochs=1, checkpoint_path=path, **options)
    model = make_bayesian(_tiny())
    with (
        pytest.warns(UserWarning, match="with lr 100.0"),
        pytest.raises(TrainingDivergedError, match=r"after epoch \d+ \(.*svi\.pt holds") as caught,
    ):
        fit_svi(
            model,
            x,
            y,
            lr=100.0,
            override_lr=True,
            resume=True,
            epochs=30,
            checkpoint_path=path,
            **options,
        )
    assert caught.value.checkpoint == path and caught.value.epoch >= 1
    state = load_checkpoint(path)
    assert state.epoch == caught.value.epoch
    good = state.training_state["guide_parameters"]
    store = dict(pyro.get_param_store().named_parameters())
    restored = {key.replace(model._pyro_name, "{model}", 1): v for key, v in store.items()}
    assert restored.keys() == good.keys()
    for key, value in good.items():
        assert torch.equal(restored[key].detach(), value), key


@pytest.mark.parametrize("where", ["fit", "fit_svi"])
def test_divergence_found_by_the_evaluation_pass(iris, monkeypatch, where):
    """Parameters go NaN in a way the training step never sees; the evaluation finds it."""
    x, y = iris
    model = _tiny() if where == "fit" else make_bayesian(_tiny())
    if where == "fit":
        from ugmm_prob import training as module

        trainer_class = module._PointEstimateTrainer
    else:
        from ugmm_prob import bayes as module

        trainer_class = module._VariationalTrainer
    original, calls = trainer_class.end_epoch, {"n": 0}

    def poisoning(self):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                for value in list(pyro.get_param_store().values()) + list(self.model.parameters()):
                    value.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(trainer_class, "end_epoch", poisoning)
    run = fit if where == "fit" else fit_svi
    options = {"predictive_samples": 2} if where == "fit_svi" else {}
    with pytest.raises(TrainingDivergedError, match=r"evaluation after epoch 2|probabilities"):
        run(model, x, y, epochs=3, batch_size=64, progress=False, **options)
    parameters = list(pyro.get_param_store().values()) + list(model.parameters())
    assert parameters and all(bool(torch.isfinite(p).all()) for p in parameters)


def test_divergence_is_recognised_by_type_not_message():
    finite = [torch.zeros(2)]
    assert diverged(NonFiniteError("anything"), finite)
    assert not diverged(ValueError("found invalid values NaN or inf"), finite)
    assert diverged(ValueError("whatever"), [torch.tensor([float("nan")])])


def test_cli_divergence_names_only_a_written_checkpoint(tmp_path, capsys):
    args = ["train", "iris-joint", "--epochs", "5", "--quiet", "--lr", "1e6", "--out"]
    assert main([*args, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "became" in err
    checkpoint = tmp_path / "checkpoint.pt"
    if "no checkpoint was written" in err:
        assert not checkpoint.exists()
    else:
        epoch = int(err.split("state after epoch ")[1].split()[0])
        assert f"{checkpoint} holds the same" in err
        assert load_checkpoint(checkpoint).epoch == epoch


def test_zero_epochs_claims_no_checkpoint(tmp_path, capsys):
    assert main(["train", "iris-joint", "--epochs", "0", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint written" in out and not (tmp_path / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------
# Copies of models
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: UGMMClassifier(4, hidden=(8,), num_classes=3, layer_norm=True),
        lambda: JointScoreModel(4, num_classes=3, hidden=(6,), objective="conditional"),
    ],
)
def test_a_deep_copy_trains_on_its_own_parameters(iris, build):
    x, y = iris
    original = build()
    fit(original, x, y, epochs=1, batch_size=32, lr=1e-2, progress=False)  # now in the store
    before = {k: v.clone() for k, v in original.state_dict().items()}
    copied = copy.deepcopy(original)
    assert copied._pyro_name != original._pyro_name
    history = fit(copied, x, y, epochs=3, batch_size=32, lr=5e-2, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] - 1e-3  # the copy learns
    for key, value in original.state_dict().items():
        assert torch.equal(value, before[key]), key  # the original is untouched
    assert any(not torch.equal(value, before[key]) for key, value in copied.state_dict().items())
    names = set(pyro.get_param_store().keys())
    mine = {n for n in names if n.startswith(copied._pyro_name + ".")}
    theirs = {n for n in names if n.startswith(original._pyro_name + ".")}
    assert mine and theirs and not mine & theirs


# --------------------------------------------------------------------------------------
# Command-line user errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--device", "nonsense"], "--device nonsense: not a device"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--subset", "-5"], "--subset must be >= 1, got -5"),
        (["--subset", "0"], "--subset must be >= 1, got 0"),
        (["--epochs", "-1"], "--epochs must be >= 0, got -1"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--override-lr"], "--override-lr needs --lr"),
        (["--metrics", "m.txt"], "expected a .csv or .jsonl"),
        (["--out", "FILE"], "is an existing file, expected a folder"),
    ],
)
def test_cli_user_errors_are_one_line_before_training(tmp_path, capsys, extra, match):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    extra = [str(afile) if value == "FILE" else value for value in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "run")]
    started = time.perf_counter()
    assert main(["train", "iris-joint", "--quiet", *out, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert time.perf_counter() - started < 5  # refused before any training
    assert not (tmp_path / "run").exists() and afile.read_text() == "keep me"


def test_demo_refuses_an_existing_file_as_out(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["demo", "--quiet", "--out", str(afile)]) == 2
    assert "is an existing file, expected a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Inputs of every kind
# --------------------------------------------------------------------------------------

MODELS = {
    "ugmm": lambda: UGMMClassifier(4, hidden=(6,), num_classes=3),
    "mlp": lambda: MLPClassifier(4, hidden=(6,), num_classes=3),
    "joint": lambda: JointScoreModel(4, num_classes=3, hidden=(6,)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_inputs_of_every_kind(kind):
    model = MODELS[kind]().eval()  # log_prob is compared with predict_proba: no dropout
    x = torch.randn(5, 4)
    expected = model.predict_proba(x)
    assert expected.shape == (5, 3)
    torch.testing.assert_close(model.predict_proba(x.double().numpy()), expected)
    torch.testing.assert_close(model.predict_proba(x.tolist()), expected)
    torch.testing.assert_close(model.predict_proba(x.reshape(5, 2, 2)), expected)
    assert model.predict_proba(x.double()).dtype == torch.float32
    assert model.predict(x.numpy()).tolist() == expected.argmax(-1).tolist()
    # empty batches: empty answers of the right shape
    assert model.predict_proba(torch.empty(0, 4)).shape == (0, 3)
    assert model.predict_proba(np.zeros((0, 4))).shape == (0, 3)
    assert model.predict(torch.empty(0, 4)).shape == (0,)
    assert model.log_prob(torch.empty(0, 4), torch.empty(0, dtype=torch.long)).shape == (0,)
    # log_prob from NumPy, against the probabilities
    y = np.array([0, 1, 2, 1, 0])
    torch.testing.assert_close(
        model.log_prob(x.numpy(), y), expected.log()[torch.arange(5), torch.as_tensor(y)]
    )
    name = type(model).__name__
    with pytest.raises(
        ValueError,
        match=rf"{name}.predict_proba: x: .*shape \(n, 4\), got shape \(4,\); .*x\[None\]",
    ):
        model.predict_proba(x[0])
    with pytest.raises(ValueError, match=r"expected 4 features per example.*got shape \(5, 3\)"):
        model.predict_proba(x[:, :3])
    bad = x.clone()
    bad[0, 1], bad[3, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"got 2 NaN or infinite value\(s\)"):
        model.predict_proba(bad)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\] .* max 3"):
        model.log_prob(x, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="expected 5 labels"):
        model.log_prob(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="expected numbers"):
        model.predict_proba("not data")
    with pytest.raises(TypeError, match="expected a tensor, NumPy array or list"):
        model.predict_proba({"x": 1})


def test_joint_model_entry_points():
    model = JointScoreModel(4, num_classes=3, hidden=(6,))
    x = torch.randn(5, 4)
    torch.testing.assert_close(model.posterior(x.numpy()), model.predict_proba(x))
    assert model.posterior(torch.empty(0, 4)).shape == (0, 3)
    scores = model.score(x.tolist(), 1)
    torch.testing.assert_close(scores, model.logits(x)[:, 1])
    assert model.score(torch.empty(0, 4), 0).shape == (0,)
    with pytest.raises(ValueError, match=r"JointScoreModel.score: x: .*x\[None\]"):
        model.score(x[0], 0)
    with pytest.raises(ValueError, match=r"labels c in \[0, 2\]"):
        model.score(x, 3)


def test_cnn_takes_images_flat_and_empty():
    model = CNNClassifier(10, features=8)
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(
        model.predict_proba(images), model.predict_proba(images.numpy().reshape(2, 784))
    )
    assert model.predict_proba(torch.empty(0, 1, 28, 28)).shape == (0, 10)


def test_boundary_functions_directly():
    assert as_batch([[1, 2]], in_features=2).dtype == torch.get_default_dtype()
    assert (
        as_batch(np.ones((3, 2), dtype=np.int64), in_features=2, dtype=torch.float64).dtype
        == torch.float64
    )
    with pytest.raises(TypeError, match="floating dtype"):
        as_batch([[1.0]], in_features=1, dtype=torch.int64)
    with pytest.raises(TypeError, match="does not convert"):
        as_batch([[1.0, 2.0], [3.0]], in_features=2)
    assert check_labels(np.array([0.0, 2.0]), 3).tolist() == [0, 2]
    with pytest.raises(TypeError, match="non-integer"):
        check_labels([0.5], 3)
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        check_labels([[0]], 3)


def test_resume_cuts_a_jsonl_metrics_file_back_to_the_checkpoint(iris, tmp_path):
    import json

    metrics = tmp_path / "m.jsonl"
    _resume(iris, tmp_path / "run.pt", epochs=3, metrics_path=metrics)
    with metrics.open("a") as handle:  # a row written after the last checkpoint, and
        handle.write(json.dumps({"epoch": 4, "loss": 0.1}) + "\n")
        handle.write('{"epoch": 5, "lo')  # one cut short by a kill
    _resume(iris, tmp_path / "run.pt", epochs=5, metrics_path=metrics, resume=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[3]["loss"] != 0.1  # the stale row was replaced, not kept


def test_a_deep_copied_layer_gets_its_own_name():
    from ugmm_prob.layers import UGMMLayer

    layer = UGMMLayer(3, 2)
    twin = copy.deepcopy(layer)
    assert twin._pyro_name != layer._pyro_name
    model = UGMMClassifier(4, hidden=(6,), num_classes=3)
    twin_model = copy.deepcopy(model)
    assert twin_model.stack.layers[0]._pyro_name == f"{twin_model._pyro_name}.stack.layers.0"


def test_cli_resuming_another_presets_checkpoint_is_one_line(tmp_path, capsys, mnist_dir):
    assert main(["train", "iris-joint", "--epochs", "1", "--quiet", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    args = ["train", "mnist-mlp", "--epochs", "1", "--subset", "50", "--quiet", "--resume"]
    args += ["--mnist-dir", str(mnist_dir), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a JointScoreModel" in err and "MLPClassifier" in err
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 1


# --------------------------------------------------------------------------------------
# The circuit's entry points
# --------------------------------------------------------------------------------------


def test_circuit_inputs_of_every_kind():
    from ugmm_prob.circuits import UGMMCircuit

    torch.manual_seed(0)
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2)
    x = torch.randn(5, 4)
    expected = circuit.predict_proba(x)
    torch.testing.assert_close(circuit.predict_proba(x.double()), expected)  # float64 in
    torch.testing.assert_close(circuit.predict_proba(x.numpy()), expected)  # NumPy in
    torch.testing.assert_close(circuit.predict_proba(x.tolist()), expected)  # lists in
    assert circuit.predict_proba(torch.zeros(0, 4)).shape == (0, 3)  # empty batch
    assert circuit.log_prob(torch.zeros(0, 4)).shape == (0,)
    assert circuit.sample(0)[0].shape == (0, 4)
    # one example of shape (D,) is the distribution's event shape
    torch.testing.assert_close(circuit.log_prob(x[0]), circuit.log_prob(x)[0])
    # a value far out is improbable, never NaN
    far = circuit.log_prob(torch.full((1, 4), 1e30))
    assert not torch.isnan(far).any() and far.item() == -math.inf
    with pytest.raises(ValueError, match="outside the support"):
        circuit.log_prob(torch.tensor([[0.0, math.inf, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="pass mask="):
        circuit.log_prob(torch.tensor([[0.0, math.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 4\)"):
        circuit.predict_proba(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"classes must be in \[0, 2\]"):
        circuit.sample(3, c=-1)
    with pytest.raises(ValueError, match="num_samples"):
        circuit.sample(-1)
    with pytest.raises(ValueError, match="mask of shape"):
        circuit.log_prob(x, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        circuit.log_prob(x, mask=torch.full((4,), 0.5))


def test_a_deep_copied_circuit_trains_on_its_own_parameters(iris):
    from ugmm_prob.circuits import UGMMCircuit

    x, y = iris
    original = UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2)
    fit(original, x, y, epochs=1, batch_size=32, lr=1e-2, progress=False)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    copied = copy.deepcopy(original)
    assert copied._pyro_name != original._pyro_name
    assert copied.inputs._pyro_name.startswith(copied._pyro_name + ".")
    fit(copied, x, y, epochs=2, batch_size=32, lr=5e-2, progress=False)
    for key, value in original.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, before[k]) for k, v in copied.state_dict().items())
