"""Data-parallel training across processes with ``torch.distributed``.

Launch any training of the library with ``torchrun`` (one process per GPU, or several CPU
processes) and :func:`~ugmm_prob.training.fit` and :func:`~ugmm_prob.bayes.fit_svi` split
every minibatch across the processes:

- :func:`init_distributed` joins the process group described by the environment that
  ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``), with NCCL when CUDA is available and gloo otherwise;
- :func:`context` tells a training loop which rank it is and how many there are (rank 0 of
  1 without a process group, so the same code runs in a single process);
- the helpers below shard a global minibatch, sum statistics over ranks and gather rows.

Only rank 0 shows progress bars, writes metrics files and checkpoints; the others wait at a
barrier after each checkpoint so no rank runs ahead of a file it may need to resume from.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "context",
    "init_distributed",
    "launched_by_torchrun",
    "loopback_environment",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its ``rank`` among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports, logs and writes files."""
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's share ``index[rank::world_size]`` of a global minibatch."""
        return index[self.rank :: self.world_size]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``values`` over all ranks (a copy; ``values`` is untouched)."""
        if not self.enabled:
            return values.clone()
        # NCCL reduces only GPU tensors, gloo any: move to this rank's collective device.
        reduced = values.detach().to(self.device(), copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Reassemble a tensor whose rows were sharded with :meth:`shard`.

        ``rows`` holds rank ``r``'s rows ``r, r + W, r + 2W, ...`` of a tensor with ``total``
        rows; every rank receives the whole tensor in its original order.
        """
        if not self.enabled:
            return rows
        # all_gather needs equal sizes: pad every shard to the largest one.
        longest = -(-total // self.world_size)
        padded = rows.new_zeros((longest, *rows.shape[1:]), device=self.device())
        padded[: len(rows)] = rows
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        # stacked[i, r] is row i * W + r of the original tensor.
        stacked = torch.stack(pieces, dim=1).reshape(longest * self.world_size, *rows.shape[1:])
        return stacked[:total].to(rows.device)

    def barrier(self) -> None:
        """Wait until every rank has arrived (nothing to wait for in one process)."""
        if self.enabled:
            dist.barrier()

    def device(self) -> torch.device:
        """This rank's own GPU under NCCL, else the CPU: the default training device and
        where collectives run."""
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def loopback_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables ``torchrun`` would set for ``rank`` of a one-machine launch.

    For starting ranks by hand (tests, benchmarks): ``subprocess.Popen(cmd, env={**os.environ,
    **loopback_environment(r, 2, port)})`` for each ``r``. The ranks rendezvous on
    ``127.0.0.1:port`` and see no GPU, so they choose gloo.
    """
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "",
    }


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process launch (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(
    backend: str | None = None, *, timeout_s: float = 1800.0
) -> DistributedContext:
    """Join the process group that ``torchrun`` described in the environment.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout_s: how long collective operations wait for the other ranks.

    Returns:
        This process's :class:`DistributedContext`. Calling it again, or in a process group
        that is already initialised, returns the current context.

    Raises:
        RuntimeError: the environment lacks the variables ``torchrun`` sets.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"init_distributed expected the environment torchrun sets; missing {missing}. "
            "Launch with `torchrun --nproc_per_node=N ...`"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def context() -> DistributedContext:
    """The current process's rank and world size (rank 0 of 1 without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
