"""Circuits for the shared property suite and the EM tests: every region graph, depth 1-4
and input type, with parameters spread away from their symmetric start."""

from __future__ import annotations

import itertools

import pytest
import torch

from ugmm_prob.circuits import UGMMCircuit, data_driven_tree, quad_tree, random_binary_trees

GRAPHS = ("random", "quad", "data")
DEPTHS = (1, 2, 3, 4)
INPUTS = ("gaussian", "categorical")
IMAGE_SHAPES = {1: (1, 2), 2: (2, 2), 3: (2, 4), 4: (4, 4)}  # 2**depth pixels
VALUES = {1: 5, 2: 4, 3: 3, 4: 2}  # categories: V**D configurations stay enumerable


def build(graph_kind: str, depth: int, inputs: str, *, classes: int = 2, seed: int = 0):
    """A float64 circuit with ``2**depth`` variables and parameters spread off their start."""
    in_features = 2**depth
    generator = torch.Generator().manual_seed(seed)
    if graph_kind == "random":
        graph = random_binary_trees(in_features, depth=depth, repetitions=2, seed=seed)
    elif graph_kind == "quad":
        graph = quad_tree(*IMAGE_SHAPES[depth], depth=depth, repetitions=2, seed=seed)
    else:
        mixing = torch.randn(in_features, in_features, generator=generator)
        data = torch.randn(300, in_features, generator=generator) @ mixing
        graph = data_driven_tree(data, depth=depth, repetitions=2, seed=seed)
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
            else:  # mixing, sum, root and class logits
                param.normal_(0, 1)
    return circuit


CASES = [
    pytest.param(g, d, i, id=f"{g}-depth{d}-{i}")
    for g, d, i in itertools.product(GRAPHS, DEPTHS, INPUTS)
]
