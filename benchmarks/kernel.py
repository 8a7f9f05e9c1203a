"""Forward+backward speed and peak memory of one uGMM layer, side by side in one process.

Compared at batch 128, N = 784 inputs, J = 128 neurons, float32, on the CPU:

(a) ``naive``: the plain broadcast formula as the paper's code writes it (materialises
    ``batch x J x N`` tensors, autograd keeps them for backward);
(b) ``eager``, ``compiled`` and ``native``: :func:`ugmm_prob.kernels.coupled_log_density` with
    each backend (``native`` is the hand-written C++ kernel that ``"auto"`` uses on CPU);
(c) ``linear_relu``: ``nn.Linear`` + ReLU of the same shape, for scale.

Timings alternate between the methods round by round (so drifts in machine load hit all of
them alike) and report medians. Peak memory of one step is measured in a fresh subprocess per
method as the rise of the resident-set high-water mark over the process's resident size just
before the step (Linux: ``/proc/self/clear_refs`` resets the mark after warm-up).

    python benchmarks/kernel.py              # full run, prints a table and a final JSON line
    python benchmarks/kernel.py --rounds 5   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from _results import MEMORY_CHILD_ENV, machine, step_peak_mib

from ugmm_prob.kernels import coupled_log_density

METHODS = ("naive", "eager", "compiled", "native", "linear_relu")
BACKENDS = ("eager", "compiled", "native")


def naive_layer(x, loc, scale, logits):
    """The broadcast formula, written as straightforward PyTorch does it."""
    x = x.unsqueeze(1)  # (B, 1, N) against (J, N)
    var = scale**2
    log_probs = -0.5 * torch.log(2 * math.pi * var) - (x - loc) ** 2 / (2 * var)
    log_weights = torch.log_softmax(logits, dim=-1)
    return torch.logsumexp(log_weights + log_probs, dim=-1)


def make_step(method: str, batch: int, n_in: int, n_out: int, input_grad: bool, seed: int = 0):
    """A closure running one forward+backward pass of ``method``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_in, generator=generator).requires_grad_(input_grad)
    if method == "linear_relu":
        linear = torch.nn.Linear(n_in, n_out)

        def step():
            torch.relu(linear(x)).sum().backward()

        return step
    loc = torch.randn(n_out, n_in, generator=generator).requires_grad_()
    scale = (0.05 + torch.rand(n_out, n_in, generator=generator)).requires_grad_()
    logits = torch.rand(n_out, n_in, generator=generator).requires_grad_()
    if method == "naive":

        def step():
            naive_layer(x, loc, scale, logits).sum().backward()

    else:

        def step():
            coupled_log_density(x, loc, scale, logits, backend=method).sum().backward()

    return step


def measure_memory_in_this_process(args: argparse.Namespace) -> dict:
    """Child mode: warm up, then report the rise of the RSS high-water mark over one step."""
    step = make_step(args.measure_memory, args.batch, args.n_in, args.n_out, args.input_grad)
    step()  # warm-up: compilation, first-touch allocations, autograd set-up
    step()
    return {"method": args.measure_memory, "extra_mib": step_peak_mib(step)}


def peak_memory(method: str, args: argparse.Namespace) -> float | None:
    """Peak extra resident memory of one step of ``method`` in MiB (None if unmeasurable)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    command = [
        sys.executable,
        __file__,
        "--measure-memory",
        method,
        "--batch",
        str(args.batch),
        "--n-in",
        str(args.n_in),
        "--n-out",
        str(args.n_out),
    ] + (["--input-grad"] if args.input_grad else [])
    result = subprocess.run(
        command, capture_output=True, text=True, env=MEMORY_CHILD_ENV, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_mib"]


def time_methods(args: argparse.Namespace) -> dict[str, list[float]]:
    steps = {m: make_step(m, args.batch, args.n_in, args.n_out, args.input_grad) for m in METHODS}
    for step in steps.values():  # warm-up (and compilation) outside the timed rounds
        step()
        step()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.rounds):
        for method, step in steps.items():
            start = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-in", type=int, default=784)
    parser.add_argument("--n-out", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--input-grad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also differentiate with respect to the input (a hidden layer); "
        "--no-input-grad times a first layer fed with data",
    )
    parser.add_argument("--measure-memory", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.measure_memory:
        print(json.dumps(measure_memory_in_this_process(args)))
        return

    print(f"machine: {machine()}")
    print(
        f"shape: batch {args.batch}, N {args.n_in}, J {args.n_out}, float32, "
        f"input gradient {'on' if args.input_grad else 'off'}, {args.rounds} alternating rounds"
    )
    times = time_methods(args)
    medians = {m: 1e3 * statistics.median(t) for m, t in times.items()}
    memory = {m: peak_memory(m, args) for m in METHODS}

    print(f"\n{'method':<12} {'median ms':>10} {'peak extra MiB':>15}")
    for m in METHODS:
        mem = "n/a" if memory[m] is None else f"{memory[m]:.1f}"
        print(f"{m:<12} {medians[m]:>10.2f} {mem:>15}")
    speedup = {b: medians["naive"] / medians[b] for b in BACKENDS}
    vs_linear = {b: medians[b] / medians["linear_relu"] for b in BACKENDS}
    memory_ratio = {
        b: (memory[b] / memory["naive"]) if memory[b] is not None and memory["naive"] else None
        for b in BACKENDS
    }
    for b in BACKENDS:
        ratio = "n/a" if memory_ratio[b] is None else f"{memory_ratio[b]:.3f}"
        print(
            f"a/b ({b}): {speedup[b]:.1f}x faster than naive;  b/c: {vs_linear[b]:.1f}x the "
            f"time of Linear+ReLU;  peak extra memory {ratio} of naive's"
        )
    print(
        json.dumps(
            {
                "benchmark": "kernel",
                "machine": machine(),
                "batch": args.batch,
                "in_features": args.n_in,
                "out_features": args.n_out,
                "input_grad": args.input_grad,
                "rounds": args.rounds,
                "median_ms": medians,
                "peak_extra_mib": memory,
                "speedup_over_naive": speedup,
                "time_over_linear_relu": vs_linear,
                "memory_over_naive": memory_ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
