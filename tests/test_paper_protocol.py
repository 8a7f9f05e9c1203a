"""The paper presets' protocol: per-epoch metrics on a validation split carved from the
training data (MNIST: its last 5,000 rows), never on the test split; and the table of
``benchmarks/reproduce_paper.py`` (mean ± sd over seeds, each seed's figure)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ugmm_prob.experiments as experiments
from tests.benchmark_scripts import import_benchmark
from ugmm_prob.experiments import (
    EXPERIMENTS,
    MNIST_VALIDATION_ROWS,
    DataSplits,
    Experiment,
    load_data,
    train_experiment,
    validation_split,
)


def _ids(x: torch.Tensor) -> set[int]:
    """The row ids that _mnist_like writes into the first feature."""
    return {int(v) for v in x[:, 0]}


def _mnist_like(n_train: int = MNIST_VALIDATION_ROWS + 300, n_test: int = 200) -> DataSplits:
    """MNIST-shaped data whose first pixel is the row's id (training 0.., test after)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_test, 784, generator=generator)
    x[:, 0] = torch.arange(n_train + n_test, dtype=torch.float32)
    y = torch.arange(n_train + n_test) % 10
    return DataSplits("mnist", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


class _Stop(Exception):
    """Raised by the fake fit once it has seen its arguments."""


def _capture_fit(monkeypatch) -> dict:
    seen = {}

    def fake_fit(model, x, y, *, x_val, y_val, **settings):
        seen.update(x=x, y=y, x_val=x_val, y_val=y_val, settings=settings)
        raise _Stop

    monkeypatch.setattr(experiments, "fit", fake_fit)
    return seen


def _spy_init(experiment: Experiment, seen: dict) -> Experiment:
    """The experiment with a model whose prototype initialisation records its data."""

    def build():
        model = experiment.build()
        original = model.init_from_data

        def init_from_data(x, y=None, **kwargs):
            seen["init_x"] = x
            return original(x, y, **kwargs)

        model.init_from_data = init_from_data
        return model

    return dataclasses.replace(experiment, build=build)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_test_split_never_reaches_fit(name, monkeypatch):
    experiment = EXPERIMENTS[name]
    data = load_data("iris") if experiment.data == "iris" else _mnist_like()
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Stop):
        train_experiment(_spy_init(experiment, seen), data, seed=3, epochs=1)
    x_val, x_fit = seen["x_val"], seen["x"]
    if experiment.data == "iris":  # no ids: match whole rows
        train_rows = {tuple(r.tolist()) for r in data.x_train}
        test_rows = {tuple(r.tolist()) for r in data.x_test}
        val_rows = {tuple(r.tolist()) for r in x_val}
        assert val_rows <= train_rows and not val_rows & test_rows
        assert len(x_val) + len(x_fit) == len(data.x_train)
        assert seen["settings"]["keep_best"] == "nll"
    else:
        test_ids, val_ids, fit_ids = _ids(data.x_test), _ids(x_val), _ids(x_fit)
        n = len(data.x_train)
        assert val_ids == set(range(n - MNIST_VALIDATION_ROWS, n))  # the last 5,000 rows
        assert fit_ids == set(range(n - MNIST_VALIDATION_ROWS))
        assert not (val_ids | fit_ids) & test_ids
        assert "keep_best" not in seen["settings"]  # the last epoch of the fixed schedule
        torch.testing.assert_close(seen["y_val"], data.y_train[-MNIST_VALIDATION_ROWS:])
    if "init_x" in seen:  # prototype initialisation from the rows trained on only
        assert seen["init_x"] is x_fit


def test_every_mnist_preset_holds_out_the_last_5000_training_images():
    assert MNIST_VALIDATION_ROWS == 5000
    for experiment in EXPERIMENTS.values():
        if experiment.data == "mnist":
            assert experiment.validation_rows == 5000 and experiment.validation == 0
            assert experiment.keep_best is None
    assert EXPERIMENTS["iris-joint"].validation == 0.2


def test_mnist_validation_split_is_the_last_5000_of_60000(mnist_dir):
    data = load_data("mnist", mnist_root=mnist_dir)
    x_fit, _, x_val, y_val = validation_split(
        EXPERIMENTS["mnist-mlp"], data.x_train, data.y_train, seed=7
    )
    assert len(x_fit) == 55_000 and len(x_val) == 5000
    assert torch.equal(x_fit, data.x_train[:55_000]) and torch.equal(y_val, data.y_train[55_000:])
    assert torch.equal(x_val, data.x_train[55_000:])


def test_validation_rows_split_ignores_the_seed_and_refuses_too_little_data():
    data = _mnist_like()
    experiment = EXPERIMENTS["mnist-cnn"]
    first = validation_split(experiment, data.x_train, data.y_train, seed=0)
    second = validation_split(experiment, data.x_train, data.y_train, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(ValueError, match="leaves none to train on"):
        validation_split(experiment, data.x_train[:5000], data.y_train[:5000])


def test_train_rows_shortens_the_fitted_part_only(monkeypatch):
    data = _mnist_like()
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Stop):
        train_experiment(EXPERIMENTS["mnist-mlp"], data, epochs=1, train_rows=100)
    assert _ids(seen["x"]) == set(range(100))
    assert len(seen["x_val"]) == MNIST_VALIDATION_ROWS


@pytest.mark.parametrize(
    ("validation", "rows"), [(0.0, 0), (0.2, 10), (1.5, 0), (0.0, -1)], ids=str
)
def test_an_experiment_needs_exactly_one_validation_split(validation, rows):
    with pytest.raises(ValueError, match="validation"):
        Experiment("x", "iris", lambda: None, None, "", validation=validation, validation_rows=rows)


def test_train_experiment_runs_with_the_mnist_split():
    """A real (tiny) run: the history is on the 5,000 validation rows, one row per epoch."""
    data = _mnist_like(n_train=MNIST_VALIDATION_ROWS + 64, n_test=32)
    _, history, settings = train_experiment(
        EXPERIMENTS["mnist-mlp"], data, epochs=2, progress=False
    )
    assert [row["epoch"] for row in history] == [1, 2]
    assert settings["validation_rows"] == 5000 and "keep_best" not in settings
    assert "best_epoch" not in history[-1]


# --- benchmarks/reproduce_paper.py's table ---------------------------------------------


@pytest.fixture(scope="module")
def reproduce_paper():
    return import_benchmark("reproduce_paper")


def _fake_run(seed: int, test: float, validation: float) -> dict:
    return {
        "experiment": "mnist-mlp",
        "description": "MLP",
        "epochs": 100,
        "paper_epochs": 100,
        "seed": seed,
        "init": "paper",
        "validation": 0.0,
        "validation_rows": 5000,
        "keep_best": None,
        "selected_epoch": 100,
        "validation_accuracy": validation,
        "test_accuracy": test,
        "nll": 0.07,
        "ece": 0.01,
        "paper": 98.15,
        "minutes": 2.0,
    }


def test_table_gives_mean_sd_and_every_seed(reproduce_paper):
    row = reproduce_paper.combine_seeds(
        [_fake_run(0, 98.0, 97.5), _fake_run(1, 99.0, 97.7), _fake_run(2, 100.0, 97.9)]
    )
    assert row["test_accuracy"] == pytest.approx(99.0) and row["test_accuracy_sd"] == 1.0
    assert row["validation_accuracy"] == pytest.approx(97.7)
    table = reproduce_paper.format_table([row])
    assert "| **99.00** ± 1.00 |" in table
    assert "3 seeds: 0: 98.00, 1: 99.00, 2: 100.00" in table
    assert "last 5,000 training rows; last epoch" in table and "| 97.70 |" in table
    assert "best epoch" not in table and "validation accuracy % of the model kept" in table
    assert reproduce_paper.PRE_PROTOCOL not in table
    [record] = reproduce_paper._records([row])
    assert record["sd"] == 1.0 and record["seeds"] == [0, 1, 2] and record["value"] == 99.0


def test_table_marks_rows_from_before_the_protocol(reproduce_paper):
    single = reproduce_paper.combine_seeds([_fake_run(0, 98.22, 98.0)])
    old = {**single, "experiment": "mnist-cnn", "seed": 0, "validation_rows": 0}
    del old["validation_accuracy"], old["test_accuracy_sd"], old["keep_best"]
    table = reproduce_paper.format_table([single, old])
    new_line, old_line = (line for line in table.splitlines() if line.startswith("| `"))
    assert "| **98.22** |" in new_line and "± " not in new_line  # one seed: no sd
    assert reproduce_paper.PRE_PROTOCOL not in new_line
    assert "none: per-epoch metrics on the test split †" in old_line and "| – |" in old_line
    assert "† Run before the validation protocol: single seed" in table
    records = reproduce_paper._records([single, old])
    assert [(r["sd"], r["seeds"]) for r in records] == [(None, [0]), (None, [0])]


# --- benchmarks/generative.py: choosing a setting on validation only ---------------------


@pytest.mark.parametrize("structure", ["quad_tree", "hclt"])
def test_generative_validation_only_never_scores_the_test_split(monkeypatch, capsys, structure):
    import argparse

    generative = import_benchmark("generative")
    data = _mnist_like(n_train=MNIST_VALIDATION_ROWS + 200, n_test=50)
    data.x_train[:, 0] = data.x_test[:, 0] = 0.5  # pixels in [0, 1], not row ids
    monkeypatch.setattr(generative, "load_data", lambda *_, **__: data)
    monkeypatch.setattr(generative, "_EM_FITS", {})

    def forbidden(*_, **__):
        raise AssertionError("--validation-only scored the test split")

    monkeypatch.setattr(generative, "_test_scores", forbidden)
    monkeypatch.setattr(generative, "_figures", forbidden)
    args = argparse.Namespace(
        mnist_dir=None, train_rows=None, val_rows=MNIST_VALIDATION_ROWS, seed=0, alpha=1e-6,
        em_repetitions=10, em_channels=2, em_components=1, em_step_size=0.1, epochs=1,
        device=None, metrics_dir=None, em_inputs=["gaussian"], validation_only=True,
        em_structure=structure, em_batch_size=256, em_step_decay=0.0, em_full_batch_epochs=0,
    )  # fmt: skip
    records, tables = generative.part_mnist_em(args)
    assert records == [] and tables == {}
    printed = capsys.readouterr().out
    assert "EM gaussian (validation only" in printed and "1: " in printed
