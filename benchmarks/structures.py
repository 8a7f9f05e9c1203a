"""The circuit structures of the library at MNIST size, and the region-graph figure of the docs.

For 8-bit MNIST (784 pixels, 256 values), every structure's region graph and compiled circuit:
regions, partitions, compiled levels, product and sum layers, parameters and the build time of
the graph; then the figure of docs/concepts.md (an HCLT over seven correlated columns and the
quad-graph of a 3 x 3 image) as ``docs/region_graphs.png``.

    python benchmarks/structures.py             # table in docs/concepts.md, the figure
    python benchmarks/structures.py --no-write  # print only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import REPO, default_mnist_dir, machine, replace_block

from ugmm_prob.circuits import (
    UGMMCircuit,
    hclt,
    quad_graph,
    quad_tree,
)
from ugmm_prob.datasets import DatasetNotFoundError, load_mnist
from ugmm_prob.plotting import figure_grid, plot_region_graph

FIGURE = REPO / "docs" / "region_graphs.png"


def mnist_images(folder: Path, rows: int) -> tuple[torch.Tensor, str]:
    """The first ``rows`` 8-bit MNIST training images, or random ones when absent."""
    try:
        images, _ = load_mnist("train", root=folder)
    except DatasetNotFoundError:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (rows, 784), generator=generator).float(), "random"
    return (images[:rows] * 255).round(), "MNIST"


def structure_table(folder: Path) -> str:
    x, source = mnist_images(folder, 20_000)
    builders = {
        "quad-tree, depth 4, 10 repetitions (the MNIST rows of results.md)": (
            lambda: quad_tree(28, 28, depth=4, repetitions=10),
            {"channels": 10, "product": "kronecker"},
        ),
        "quad-graph, single-pixel leaves, K = 16": (
            lambda: quad_graph(28, 28),
            {"channels": 16, "product": "hadamard"},
        ),
        "HCLT, H = 32": (lambda: hclt(x), {"channels": 32}),
    }
    rows = []
    for name, (build, options) in builders.items():
        start = time.perf_counter()
        graph = build()
        seconds = time.perf_counter() - start
        circuit = UGMMCircuit(784, graph=graph, inputs="categorical", **options)
        parameters = sum(p.numel() for p in circuit.parameters())
        rows.append(
            f"| {name} | {len(graph.regions):,} | {len(graph.partitions):,} | "
            f"{len(circuit.compiled.levels)} | {len(circuit.products)} / "
            f"{len(circuit.sums) + 1} | {parameters:,} | {seconds:.2f} |"
        )
    return "\n".join(
        [
            "Command: `python benchmarks/structures.py`; 784 pixels with 256 values "
            f"(categorical inputs, one class); the HCLT's tree from the first 20,000 {source} "
            "training images.",
            "",
            "| structure | regions | partitions | levels | product / sum layers | parameters "
            "| graph built in s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


def draw_figure(path: Path) -> None:
    """An HCLT over seven correlated columns beside the quad-graph of a 3 x 3 image."""
    generator = torch.Generator().manual_seed(0)
    x = torch.cumsum(torch.randn(2000, 7, generator=generator), 1)  # a random walk's steps
    x[:, 5] = x[:, 2] + 0.3 * torch.randn(2000, generator=generator)
    fig, axes = figure_grid(1, 2, size=(14, 5))
    plot_region_graph(hclt(x), ax=axes[0, 0], title="HCLT over 7 variables")
    plot_region_graph(quad_graph(3, 3), ax=axes[0, 1], title="quad-graph of a 3 x 3 image")
    fig.savefig(path, dpi=90)


def main() -> None:
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mnist-dir", default=None, help="default: $UGMM_PROB_MNIST_DIR or ../shared/data/mnist"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    table = structure_table(Path(args.mnist_dir or default_mnist_dir()))
    print(f"machine: {machine()}\n{table}")
    if not args.no_write:
        draw_figure(FIGURE)
        replace_block(
            "structures-mnist", f"{table}\n\nMachine: {machine()}.", REPO / "docs" / "concepts.md"
        )


if __name__ == "__main__":
    main()
