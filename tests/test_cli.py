"""The ugmm-prob command: demo, train, evaluate and its error messages."""

import argparse
import subprocess
import sys

import pytest
import torch

from ugmm_prob._version import __version__
from ugmm_prob.checkpoints import load_checkpoint
from ugmm_prob.cli import _common, build_parser, main
from ugmm_prob.datasets import MNIST_ENV


def test_demo_prints_posteriors_and_saves_a_plot(tmp_path, capsys, monkeypatch):
    from ugmm_prob.cli import _presets

    figures = []

    def save_figure(fig, path):
        figures.append(fig)
        return _common.save_figure(fig, path)

    monkeypatch.setattr(_presets, "save_figure", save_figure)
    assert main(["demo", "--quiet", "--epochs", "30", "--show", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "exact posterior accuracy" in out and "/30" in out
    assert out.count("setosa") >= 2  # header and at least one row
    png = tmp_path / "iris_demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure: the kept epoch marked, axes saying what they show, legends off the data
    (fig,) = figures
    fig.canvas.draw()
    posteriors, training, first_layer, second_layer, twin = fig.axes  # twin: made last
    kept = int(out.split("model of epoch ")[1].split(",")[0])
    assert [line.get_xdata()[0] for line in training.get_lines()][-1] == kept
    assert f"epoch kept ({kept})" in [t.get_text() for t in training.get_legend().get_texts()]
    assert twin.get_ylabel() == "accuracy on held-out training flowers"
    assert "held-out" in training.get_title()
    assert first_layer.get_title().endswith("neurons 0-7 of 10")
    assert second_layer.get_title() == "mixtures of UGMMLayer(in_features=10, out_features=5)"
    for ax in (posteriors, training):
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent())


def test_console_script_entry_point_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ugmm_prob",
            "demo",
            "--quiet",
            "--epochs",
            "5",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "exact posterior accuracy" in result.stdout


def test_train_then_evaluate_iris(tmp_path, capsys):
    args = ["train", "iris-joint", "--epochs", "5", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "iris-joint: test accuracy" in out and "(best validation NLL) saved to" in out
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "history.png").exists()
    assert main(["evaluate", str(tmp_path / "checkpoint.pt")]) == 0
    assert "after 5 epochs on the iris test split" in capsys.readouterr().out
    # the reported model, of the epoch kept on the held-out training flowers
    kept = load_checkpoint(tmp_path / "best.pt")
    assert 1 <= kept.epoch <= 5 and kept.epoch == int(out.split("model of epoch ")[1].split()[0])
    # resuming to more epochs continues from epoch 5
    assert main([*args[:3], "8", *args[4:], "--resume"]) == 0
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 8


def test_train_mnist_subset(tmp_path, capsys, mnist_dir):
    args = [
        "train",
        "mnist-mlp",
        "--epochs",
        "1",
        "--subset",
        "2000",
        "--quiet",
        "--mnist-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert "mnist-mlp: test accuracy" in capsys.readouterr().out


def test_missing_mnist_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(MNIST_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    code = main(["train", "mnist-mlp", "--mnist-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "MNIST IDX files not found" in err and "nowhere" in err
    # the fix is named in the command's terms, not the loader's Python arguments
    assert f"--mnist-dir {tmp_path / 'nowhere'}: no such folder" in err
    assert "Pass --mnist-dir FOLDER" in err and MNIST_ENV in err
    assert "root=" not in err and "download=True" not in err
    assert err.count("\n") == 1
    # evaluate says the same
    run = tmp_path / "run"
    assert main(["train", "iris-joint", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    checkpoint = str(run / "checkpoint.pt")
    args = ["evaluate", checkpoint, "--data", "mnist", "--mnist-dir", str(tmp_path / "nowhere")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ugmm-prob evaluate: error: MNIST IDX files not found" in err
    assert "Pass --mnist-dir FOLDER" in err and "root=" not in err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    assert "not a readable ugmm-prob checkpoint" in capsys.readouterr().err


def test_unknown_experiment_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["train", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err


def test_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["train", "iris-joint", "--epochs", "1", "--quiet", "--device", "cuda"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_has_a_description_and_every_option_help():
    parser = build_parser()
    commands = _subcommands(parser)
    assert set(commands) >= {"demo", "train", "evaluate", "fit", "score", "sample"}
    undocumented = []
    for name, sub in {"": parser, **commands}.items():
        if name and not (sub.description or "").strip():
            undocumented.append(f"{name}: no description")
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                where = "/".join(action.option_strings) or action.dest
                undocumented.append(f"{name or 'ugmm-prob'} {where}: no help")
    # every subcommand also has its one-line summary in the top-level --help
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in action._choices_actions}
    undocumented += [f"{n}: no summary" for n in commands if not (summaries.get(n) or "").strip()]
    assert not undocumented, undocumented


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ugmm-prob {__version__}"
