"""Throughput of data-parallel training: one process against two (gloo, loopback).

Trains the paper's MNIST uGMM-NN (784-128-64-10, LayerNorm) with ``fit`` at global batch
128 and reports training images per second over the second epoch (the first warms up
``torch.compile`` and the allocator), for three launches of the same job on the same cores:

- ``1 process x 1 thread`` (the baseline),
- ``1 process x T threads`` (what a single process gets from all the cores),
- ``P processes x 1 thread`` (``fit`` under a torchrun-style launch, gloo on loopback).

Each configuration runs in fresh processes; the ranks receive the environment ``torchrun``
would give them. MNIST is read from ``$UGMM_PROB_MNIST_DIR`` or ``../shared/data/mnist``;
without it the script stops with the folder it looked in.

    python benchmarks/distributed.py                   # 6,000 images, prints a table
    python benchmarks/distributed.py --write-docs      # also writes docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import torch
from _results import REPO, default_mnist_dir, machine, replace_block

from ugmm_prob.datasets import load_mnist, mnist_subset
from ugmm_prob.distributed import init_distributed, loopback_environment
from ugmm_prob.networks import UGMMClassifier
from ugmm_prob.training import fit


def worker(args: argparse.Namespace) -> None:
    """One rank: train two epochs and print the second epoch's throughput as JSON."""
    ctx = init_distributed() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    x, y = mnist_subset(*load_mnist("train", root=args.mnist_dir), args.images, seed=0)
    torch.manual_seed(args.seed)
    model = UGMMClassifier(784, hidden=(128, 64), num_classes=10, layer_norm=True)
    history = fit(
        model,
        x,
        y,
        x_val=x[:256],
        y_val=y[:256],
        epochs=2,
        batch_size=args.batch_size,
        lr=1e-2,
        seed=args.seed,
        progress=False,
    )
    if ctx is None or ctx.is_main:
        seconds = history[-1]["seconds"]
        print(json.dumps({"seconds": seconds, "images_per_s": args.images / seconds}))
    if ctx is not None:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace, processes: int, threads: int) -> dict:
    """Run the worker in ``processes`` fresh ranks of ``threads`` threads each."""
    command = [sys.executable, __file__, "--worker", *_shared_flags(args)]
    port = _free_port()
    running = []
    for rank in range(processes):
        env = {
            **os.environ,
            **loopback_environment(rank, processes, port),
            "OMP_NUM_THREADS": str(threads),
        }
        running.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate()[0] for p in running]
    if any(p.returncode for p in running):
        raise SystemExit(f"a rank failed ({processes} x {threads}):\n" + "\n".join(outputs))
    return json.loads(outputs[0].strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--images", str(args.images), "--batch-size", str(args.batch_size),
        "--seed", str(args.seed), "--mnist-dir", str(args.mnist_dir),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128, help="global minibatch")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", default=str(default_mnist_dir()))
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not os.path.isdir(args.mnist_dir):
        raise SystemExit(f"MNIST not found at {args.mnist_dir}; set UGMM_PROB_MNIST_DIR")

    started = time.strftime("%Y-%m-%d")
    p = args.processes
    configs = [(1, 1), (1, p), (p, 1)]
    rows = []
    for processes, threads in configs:
        result = launch(args, processes, threads)
        rows.append((processes, threads, result["images_per_s"]))
        print(f"{processes} process(es) x {threads} thread(s): {result['images_per_s']:.0f} img/s")
    base = rows[0][2]
    command = "python benchmarks/distributed.py" + (
        f" --images {args.images}" if args.images != 6000 else ""
    )
    table = [
        f"Command: `{command} --write-docs` (seed {args.seed}, {args.images:,} MNIST training "
        f"images, global batch {args.batch_size}, second of two epochs timed). "
        f"Machine: {machine()}. Measured {started}.",
        "",
        "| launch | images/s | vs 1 x 1 |",
        "|---|---:|---:|",
    ]
    for processes, threads, rate in rows:
        label = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread"
        label += "s" if threads > 1 else ""
        table.append(f"| {label} | {rate:.0f} | {rate / base:.2f}x |")
    text = "\n".join(table)
    print(text)
    if args.write_docs:
        replace_block("distributed", text, REPO / "docs" / "performance.md")


if __name__ == "__main__":
    main()
