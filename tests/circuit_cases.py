"""Circuits for the shared property suite and the EM tests: every region graph, depth 1-4
and input type, with parameters spread away from their symmetric start.

Structures: a RAT-SPN's random trees, image quad-trees, data-driven trees (all repeated
binary trees, Kronecker products), a DAG whose regions are intervals split at two points
(shared sub-regions, regions with two partitions, Kronecker products), ternary trees
(partitions of three children, Hadamard products), hidden Chow-Liu trees (one latent per
variable, Hadamard products) and image quad-graphs (single-pixel leaves, rectangles shared
between a horizontal and a vertical cut)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ugmm_prob.circuits import (
    RegionGraph,
    UGMMCircuit,
    data_driven_tree,
    hclt,
    quad_graph,
    quad_tree,
    random_binary_trees,
)

GRAPHS = ("random", "quad", "data", "dag", "ternary", "hclt", "quad_graph")
DEPTHS = (1, 2, 3, 4)
INPUTS = ("gaussian", "categorical", "multivariate")
IMAGE_SHAPES = {1: (1, 2), 2: (2, 2), 3: (2, 4), 4: (4, 4)}  # 2**depth pixels
VALUES = {1: 5, 2: 4, 3: 3, 4: 2}  # categories: V**D configurations stay enumerable


def interval_dag(in_features: int) -> RegionGraph:
    """Every interval of two or more variables split after its first and before its last
    variable (once for two variables): sub-intervals are shared between partitions, so
    the graph is a DAG with ``O(D^2)`` regions."""
    partitions = []
    for length in range(2, in_features + 1):
        for start in range(in_features - length + 1):
            cuts = sorted({1, length - 1})
            for cut in cuts:
                parent = range(start, start + length)
                partitions.append((parent, [parent[:cut], parent[cut:]]))
    needed, kept = {tuple(range(in_features))}, []
    for parent, children in reversed(partitions):  # only regions reachable from the root
        if tuple(parent) in needed:
            kept.append((tuple(parent), [tuple(c) for c in children]))
            needed.update(tuple(c) for c in children)
    return RegionGraph.from_partitions(in_features, kept, kind="dag")


def ternary_tree(in_features: int) -> RegionGraph:
    """Variables split into (up to) three parts until single; the root mixes two such trees
    over different orders (alternatives at the root)."""

    def split(variables: list[int]):
        if len(variables) == 1:
            return variables[0]
        if len(variables) == 2:
            return (variables[0], variables[1])
        third = -(-len(variables) // 3)
        parts = [variables[i : i + third] for i in range(0, len(variables), third)]
        return tuple(split(part) for part in parts)

    order = list(range(in_features))
    return RegionGraph.from_nested([split(order), split(order[::-1])], kind="ternary")


def build(graph_kind: str, depth: int, inputs: str, *, classes: int = 2, seed: int = 0):
    """A float64 circuit with ``2**depth`` variables and parameters spread off their start."""
    in_features = 2**depth
    generator = torch.Generator().manual_seed(seed)
    if graph_kind == "random":
        graph = random_binary_trees(in_features, depth=depth, repetitions=2, seed=seed)
    elif graph_kind == "quad":
        graph = quad_tree(*IMAGE_SHAPES[depth], depth=depth, repetitions=2, seed=seed)
    elif graph_kind in ("data", "hclt"):
        mixing = torch.randn(in_features, in_features, generator=generator)
        data = torch.randn(300, in_features, generator=generator) @ mixing
        if graph_kind == "data":
            graph = data_driven_tree(data, depth=depth, repetitions=2, seed=seed)
        else:
            graph = hclt(data)
    elif graph_kind == "quad_graph":
        graph = quad_graph(*IMAGE_SHAPES[depth])
    elif graph_kind == "dag":
        graph = interval_dag(in_features)
    else:
        graph = ternary_tree(in_features)
    torch.manual_seed(seed)
    circuit = UGMMCircuit(
        in_features,
        num_classes=classes,
        graph=graph,
        channels=2,
        inputs=inputs,
        components=2,
        num_values=VALUES[depth],
    ).double()
    with torch.no_grad():
        for name, param in circuit.named_parameters():
            if name == "inputs.loc_unconstrained":
                param.normal_(0, 1.5)
            elif name == "inputs.scale_unconstrained":
                param.uniform_(-0.5, 0.3)
            elif name == "inputs.scale_tril_unconstrained":  # log-diagonal and correlations
                param.normal_(0.0, 0.3)  # scales of 0.4-2.5: the quadratures reach the tails
            else:  # mixing, sum, root and class logits
                param.normal_(0, 1)
    return circuit


CASES = [
    pytest.param(g, d, i, id=f"{g}-depth{d}-{i}")
    for g, d, i in itertools.product(GRAPHS, DEPTHS, INPUTS)
]
