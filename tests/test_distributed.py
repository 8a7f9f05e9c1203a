"""Data-parallel training: two gloo processes on loopback against one process."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from ugmm_prob.checkpoints import load_checkpoint
from ugmm_prob.circuits import fit_em
from ugmm_prob.distributed import (
    DistributedContext,
    context,
    init_distributed,
    loopback_environment,
)
from ugmm_prob.training import fit

from .distributed_setup import EM_SETTINGS, SETTINGS, incomplete_iris_data, iris_data, make_model

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(command: list[str], out: pathlib.Path, world_size: int = 2) -> None:
    """Start ``world_size`` ranks with the environment torchrun would give them."""
    port = _free_port()
    processes = []
    for rank in range(world_size):
        env = {**os.environ, **loopback_environment(rank, world_size, port), "OMP_NUM_THREADS": "1"}
        processes.append(
            subprocess.Popen(
                command, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"


def _worker(mode: str, out: pathlib.Path) -> list[dict]:
    _launch([sys.executable, str(HERE / "_distributed_worker.py"), mode, str(out)], out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("kind", ["fit", "circuit"])
def test_two_processes_equal_one_process_with_the_same_global_batch(kind, tmp_path):
    ranks = _worker(kind, tmp_path)
    x, y = iris_data()
    single = make_model(kind)
    history = fit(single, x, y, **SETTINGS)
    for key, value in single.state_dict().items():
        # Every rank holds the same parameters, equal to the single process's.
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=1e-6, rtol=0)
    for mine, theirs in zip(history, ranks[0]["history"], strict=True):
        # Training loss is reduced over ranks; validation metrics gathered from shards.
        assert theirs["loss"] == pytest.approx(mine["loss"], abs=1e-6)
        assert theirs["accuracy"] == mine["accuracy"]
        assert theirs["nll"] == pytest.approx(mine["nll"], abs=1e-6)

    # The checkpoint rank 0 wrote after the last epoch resumes in a single process.
    checkpoint = load_checkpoint(tmp_path / "run.pt")
    assert checkpoint.epoch == SETTINGS["epochs"] and checkpoint.training_state["world_size"] == 2
    resumed = make_model(kind)
    more = {**SETTINGS, "epochs": SETTINGS["epochs"] + 2}
    fit(resumed, x, y, checkpoint_path=tmp_path / "run.pt", resume=True, **more)
    straight = make_model(kind)
    fit(straight, x, y, **more)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["circuit-missing", "em-missing"])
def test_two_processes_equal_one_process_with_missing_cells_and_unlabelled_rows(kind, tmp_path):
    """Rows with NaN cells and rows labelled -1 split over two ranks train as in one
    process: gradients of log p(x_observed[, y]) averaged (``fit``), and EM statistics with
    the missing cells marginalised summed over the ranks (``fit_em``, multivariate leaves)."""
    ranks = _worker(kind, tmp_path)
    x, y = incomplete_iris_data()
    assert x.isnan().any() and (y == -1).any()
    if kind == "em-missing":
        single = make_model("em-missing")
        history = fit_em(single, x, y, **EM_SETTINGS)
    else:
        single = make_model("circuit")
        history = fit(single, x, y, **SETTINGS)
    tolerance = 1e-9 if kind == "em-missing" else 1e-6  # float64 EM, float32 gradients
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=tolerance, rtol=0)
    assert len(ranks[0]["history"]) == len(history)
    assert all(torch.isfinite(value).all() for value in single.state_dict().values())


def test_svi_averages_gradients_so_ranks_stay_identical(tmp_path):
    ranks = _worker("svi", tmp_path)
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert [row["elbo_loss"] for row in ranks[0]["history"]] == [
        row["elbo_loss"] for row in ranks[1]["history"]
    ]
    # Rank 0's checkpoint holds the guide and, as its model, the network at the median.
    checkpoint = load_checkpoint(tmp_path / "svi.pt")
    assert checkpoint.epoch == 2 and "guide_parameters" in checkpoint.training_state


def test_cli_train_under_torchrun(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_port", str(_free_port()), "-m", "ugmm_prob", "train", "iris-joint",
        "--epochs", "2", "--out", str(tmp_path), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("iris-joint: test accuracy") == 1  # rank 0 reports alone
    assert "2 processes" in result.stdout
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 2


def test_single_process_context_and_clear_errors(monkeypatch):
    assert context() == DistributedContext(rank=0, world_size=1)
    ctx = context()
    rows = torch.arange(10.0)[:, None]
    assert torch.equal(ctx.gather_rows(ctx.shard(rows), 10), rows)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match=r"missing \['RANK'.*torchrun"):
        init_distributed()
    # the refused call left no half-initialised process group behind
    assert not dist.is_initialized() and context() == DistributedContext(rank=0, world_size=1)
