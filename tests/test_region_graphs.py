"""Region graphs as DAGs: what construction accepts and refuses, the descriptions users
write (nested tuples, partitions named by variables), serialisation and the compiled levels."""

from __future__ import annotations

import pytest
import torch

from ugmm_prob.circuits import RegionGraph, UGMMCircuit, random_binary_trees
from ugmm_prob.circuits.compile import compile_graph


def _graph(regions, partitions, root=None, in_features=3):
    root = len(regions) - 1 if root is None else root
    return RegionGraph(in_features, tuple(regions), tuple(partitions), root)


def test_construction_refuses_what_would_not_be_a_normalised_circuit():
    whole, left, right = (0, 1, 2), (0, 1), (2,)
    _graph([left, right, (0,), (1,), whole], [(4, (0, 1)), (0, (2, 3))])  # a valid tree
    cases = {
        "overlap": ([left, (1, 2), whole], [(2, (0, 1))]),
        "do not cover": ([left, whole], [(1, (0,))]),
        "cycle": ([left, (0,), (1,), left, right, whole], [(0, (3,)), (3, (0,)), (5, (0, 4))]),
        "cannot be reached": ([left, right, (0,), whole], [(3, (0, 1))]),
        "must hold all 3 variables": ([left, (0,), (1,)], [(0, (1, 2))]),
        "holds no variable": ([(), whole], [(1, (0,))]),
        "outside 0..2": ([(0, 1, 7), whole], [(1, (0,))]),
        "names no child": ([whole], [(0, ())]),
        "its own child": ([whole], [(0, (0,))]),
    }
    for message, (regions, partitions) in cases.items():
        with pytest.raises(ValueError, match=message):
            _graph(regions, partitions)


def test_descriptions_users_write():
    nested = RegionGraph.from_nested(((0, 1), [2, 3]))
    assert nested.regions[nested.root] == (0, 1, 2, 3)
    assert sorted(nested.regions[leaf] for leaf in nested.leaves) == [(0,), (1,), (2, 3)]
    assert nested.is_tree() and nested.depth == 2
    mixed = RegionGraph.from_nested([((0, 1), 2), (0, (1, 2))])  # two trees mixed at the root
    assert mixed.repetitions == 2 and mixed.max_arity == 2
    with pytest.raises(ValueError, match="same variables"):
        RegionGraph.from_nested([((0, 1), 2), (0, 1)])
    with pytest.raises(TypeError, match="expected an int"):
        RegionGraph.from_nested(((0, 1.5),))
    shared = RegionGraph.from_partitions(
        3,
        [
            ((0, 1, 2), [(0,), (1, 2)]),
            ((0, 1, 2), [(0, 1), (2,)]),
            ((1, 2), [(1,), (2,)]),
            ((0, 1), [(0,), (1,)]),
        ],
    )
    assert not shared.is_tree()  # {1} and the rest are reached twice
    assert len(shared.region_partitions[shared.root]) == 2
    with pytest.raises(ValueError, match="no partition splits the region of all 3"):
        RegionGraph.from_partitions(3, [((0, 1), [(0,), (1,)])])


def test_configs_round_trip_and_version_0_configs_still_read():
    graph = RegionGraph.from_nested([((0, 1), 2), (0, (1, 2))])
    again = RegionGraph.from_config(graph.to_config())
    assert again.to_config() == graph.to_config()
    trees = random_binary_trees(6, depth=2, repetitions=2, seed=1)
    old = {"in_features": 6, "depth": 1, "kind": "random", "var_region": [[0, 0, 0, 1, 1, 1]]}
    legacy = RegionGraph.from_config(old)
    assert legacy.repetitions == 1 and sorted(legacy.regions[r] for r in legacy.leaves) == [
        (0, 1, 2),
        (3, 4, 5),
    ]
    assert RegionGraph.from_config(trees.to_config()).to_config() == trees.to_config()
    with pytest.raises(ValueError, match="unknown format"):
        RegionGraph.from_config({"format": 3})


def test_levels_put_every_region_as_late_as_its_parents_allow():
    # a chain whose leaves hang at every level: leaves stay at 0, the rest one below parents
    graph = RegionGraph.from_nested((0, (1, (2, (3, 4)))))
    levels = graph.levels
    for parent, children in graph.partitions:
        for child in children:
            if child in graph.leaves:
                assert levels[child] == 0
            else:
                assert levels[child] == levels[parent] - 1
    compiled = compile_graph(graph, input_width=2, sum_width=2, root_width=1)
    assert len(compiled.levels) == graph.depth == 4
    assert [len(sums) for _, sums in compiled.levels] == [1, 1, 1, 1]


def test_product_kinds_and_their_errors():
    ternary = RegionGraph.from_nested((0, 1, 2))
    assert compile_graph(ternary, input_width=2, sum_width=2, root_width=1).products[0].kind == (
        "hadamard"
    )
    with pytest.raises(ValueError, match="at most two children"):
        compile_graph(ternary, input_width=2, sum_width=2, root_width=1, product="kronecker")
    with pytest.raises(ValueError, match="equal widths"):  # a leaf of 3 units beside sums of 2
        UGMMCircuit(
            3,
            graph=RegionGraph.from_nested((0, (1, 2))),
            channels=2,
            input_channels=3,
            product="hadamard",
        )
    with pytest.raises(ValueError, match="root region has no partition"):
        UGMMCircuit(1, graph=RegionGraph.from_nested(0))
    with pytest.raises(ValueError, match="product must be"):
        compile_graph(ternary, input_width=2, sum_width=2, root_width=1, product="outer")
    # Kronecker: the product of a 3-unit and a 2-unit child has 6 units
    kron = UGMMCircuit(3, graph=RegionGraph.from_nested((0, (1, 2))), channels=2, input_channels=3)
    widths = sorted(group.width for group in kron.compiled.products)
    assert widths == [6, 9]
    x = torch.randn(4, 3)
    assert kron.log_prob(x).shape == (4,)
