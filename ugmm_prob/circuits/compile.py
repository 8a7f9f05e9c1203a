"""Compile a region graph into layers folded by level: a few batched operations per pass.

A circuit over a :class:`~ugmm_prob.circuits.region_graphs.RegionGraph` has, for every leaf
region, ``I`` input units; for every partition, product units of its children's units; for
every other region, sum units mixing the products of all its partitions. Evaluating unit by
unit would take thousands of small operations for an image; folding stacks the nodes that
can run together into one tensor operation, as cirkit folds its layers and PyJuice compiles
its circuits:

- every region gets a *level*, as late as its parents allow
  (:attr:`RegionGraph.levels <ugmm_prob.circuits.region_graphs.RegionGraph.levels>`): leaves
  at 0 (the input layer), the root at the top;
- at each level, the partitions of that level's regions form *product groups* (one per
  product kind and child widths), each computed as one gather and one sum (Hadamard
  products: the units of equal index of every child, ``log prod = sum log``) or one outer
  sum (Kronecker products of two children: every pair of units);
- then that level's regions form *sum groups* (one per number of sum units and inputs),
  each one batched log-einsum-exp over its folds
  (:class:`~ugmm_prob.circuits.layers.SumLayer`).

The compiled plan is plain index tensors; :class:`~ugmm_prob.circuits.circuit.UGMMCircuit`
runs its upward pass over it and its downward pass back through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .region_graphs import RegionGraph

__all__ = ["LEAF_LAYER", "CompiledGraph", "ProductGroup", "Source", "SumGroup", "compile_graph"]

LEAF_LAYER = -1
"""The :attr:`Source.layer` of the input layer's leaf-region values."""


@dataclass(frozen=True, eq=False)
class Source:
    """Where some children of a product group come from.

    Attributes:
        layer: :data:`LEAF_LAYER`, or the index of a sum group.
        positions: ``(n,)`` folds of that layer's output to read.
        folds: ``(n,)`` the product fold each value goes to.
        slot: the child slot (0 left, 1 right) for Kronecker products; 0 for Hadamard.
    """

    layer: int
    positions: torch.Tensor
    folds: torch.Tensor
    slot: int


@dataclass(frozen=True, eq=False)
class ProductGroup:
    """Partitions of one level computed by one batched product.

    Attributes:
        level: the level of the regions these partitions split.
        kind: ``"hadamard"`` (unit ``k`` is the product of unit ``k`` of every child) or
            ``"kronecker"`` (two children; unit ``u * W_right + v`` is ``u`` times ``v``).
        partitions: the graph's partitions, one per fold.
        child_widths: units per child: one width (Hadamard) or (left, right) (Kronecker).
        width: product units per fold.
        sources: where the children come from (see :class:`Source`).
        children: ``(F, A)`` the child regions of every fold, ``-1`` past a fold's arity.
    """

    level: int
    kind: str
    partitions: tuple[int, ...]
    child_widths: tuple[int, ...]
    width: int
    sources: tuple[Source, ...]
    children: torch.Tensor


@dataclass(frozen=True, eq=False)
class SumGroup:
    """Regions of one level whose sum units are computed by one batched log-einsum-exp.

    Attributes:
        level: their level.
        regions: the graph's regions, one per fold.
        units: sum units per region ``S`` (the number of classes for the root).
        inputs: inputs per sum unit ``Q``: the products of all the region's partitions.
        index: ``(F * Q,)`` positions in the flattened, concatenated outputs of this
            level's product groups; None when the inputs are exactly those outputs in order.
        input_group, input_fold, input_unit: ``(F, Q)``: which product group, fold and
            unit each input is (what the downward pass follows).
    """

    level: int
    regions: tuple[int, ...]
    units: int
    inputs: int
    index: torch.Tensor | None
    input_group: torch.Tensor
    input_fold: torch.Tensor
    input_unit: torch.Tensor


@dataclass(frozen=True, eq=False)
class CompiledGraph:
    """A region graph as folded layers (see the module docstring).

    Attributes:
        graph: the region graph.
        leaves: the leaf regions, in the order of the input layer's output.
        slot_var: ``(N,)`` the variable of every *slot*, a (leaf region, variable) pair;
            slots are listed leaf by leaf.
        slot_leaf: ``(N,)`` the leaf (position in :attr:`leaves`) of every slot.
        leaf_slots: ``(L, V)`` the slots of every leaf, padded at the end with ``N``.
        products: the product groups, level by level.
        sums: the sum groups, level by level; the last one is the root.
        place: every region's ``(layer, position)``: :data:`LEAF_LAYER` and its leaf
            position, or its sum group and fold.
        levels: the levels in upward order, each ``(product group indices, sum group
            indices)``.
    """

    graph: RegionGraph
    leaves: tuple[int, ...]
    slot_var: torch.Tensor
    slot_leaf: torch.Tensor
    leaf_slots: torch.Tensor
    products: tuple[ProductGroup, ...]
    sums: tuple[SumGroup, ...]
    place: dict[int, tuple[int, int]]
    levels: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


def _leaf_layout(graph: RegionGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``slot_var``, ``slot_leaf`` and the padded ``leaf_slots`` of :class:`CompiledGraph`.

    Slots are ordered by (the leaf's first root partition, variable, leaf), so a RAT-SPN's
    input parameters are laid out ``(repetition, variable)`` as in version 0.x.
    """
    leaves = graph.leaves
    repetition = graph.root_partition_of_leaves().tolist()
    slots = sorted(
        (repetition[position], v, position)
        for position, leaf in enumerate(leaves)
        for v in graph.regions[leaf]
    )
    slot_var = torch.tensor([v for _, v, _ in slots], dtype=torch.long)
    slot_leaf = torch.tensor([position for _, _, position in slots], dtype=torch.long)
    sizes = torch.bincount(slot_leaf, minlength=len(leaves))
    leaf_slots = torch.full((len(leaves), int(sizes.max())), len(slots), dtype=torch.long)
    filled = [0] * len(leaves)
    for slot, position in enumerate(slot_leaf.tolist()):
        leaf_slots[position, filled[position]] = slot
        filled[position] += 1
    return slot_var, slot_leaf, leaf_slots


def compile_graph(
    graph: RegionGraph,
    *,
    input_width: int,
    sum_width: int,
    root_width: int,
    product: str = "auto",
) -> CompiledGraph:
    """Fold ``graph`` into product and sum groups by level.

    Args:
        graph: the region graph; its root must have at least one partition.
        input_width: input units per leaf region ``I``.
        sum_width: sum units per region below the root ``S``.
        root_width: sum units of the root (one per class).
        product: ``"kronecker"`` (every pair of units of two children; partitions of more
            than two children are refused), ``"hadamard"`` (unit ``k`` of every child; all
            children need equal widths, so ``input_width == sum_width`` unless every leaf
            sits under the root alone), or ``"auto"``: Hadamard for a hidden Chow-Liu tree
            (``graph.kind == "hclt"``: its products pair equal latent states) or a graph
            with a partition of more than two children, else Kronecker.

    Raises:
        ValueError: the root is a leaf, an unknown product kind, a Kronecker partition of
            more than two children, or Hadamard children of unequal widths.
    """
    if not graph.region_partitions[graph.root]:
        raise ValueError(
            "compile_graph: the root region has no partition; give it at least one (a "
            "partition of one child mixes that child's units)"
        )
    if product == "auto":
        product = "hadamard" if graph.kind == "hclt" or graph.max_arity > 2 else "kronecker"
    if product not in ("kronecker", "hadamard"):
        raise ValueError(f"product must be 'kronecker', 'hadamard' or 'auto', got {product!r}")
    if product == "kronecker" and graph.max_arity > 2:
        raise ValueError(
            f"Kronecker products take at most two children; this graph has a partition of "
            f"{graph.max_arity} (use product='hadamard')"
        )
    slot_var, slot_leaf, leaf_slots = _leaf_layout(graph)
    leaves = graph.leaves
    place: dict[int, tuple[int, int]] = {leaf: (LEAF_LAYER, i) for i, leaf in enumerate(leaves)}
    width = {leaf: input_width for leaf in leaves}
    levels = graph.levels
    by_level: dict[int, list[int]] = {}
    for region, parts in enumerate(graph.region_partitions):
        if parts:
            by_level.setdefault(levels[region], []).append(region)
    products: list[ProductGroup] = []
    sums: list[SumGroup] = []
    plan: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for level in sorted(by_level):
        regions = by_level[level]
        first_product = len(products)
        partition_place: dict[int, tuple[int, int]] = {}
        for key, members in _product_keys(graph, regions, width, product).items():
            group = _product_group(graph, level, key, members, place)
            for fold, p in enumerate(members):
                partition_place[p] = (len(products), fold)
            products.append(group)
        level_products = tuple(range(first_product, len(products)))
        first_sum = len(sums)
        for (units, inputs), members in _sum_keys(
            graph, regions, products, partition_place, sum_width, root_width
        ).items():
            for fold, region in enumerate(members):
                place[region] = (len(sums), fold)
                width[region] = units
            sums.append(
                _sum_group(
                    graph, level, members, units, inputs, products, level_products, partition_place
                )
            )
        plan.append((level_products, tuple(range(first_sum, len(sums)))))
    return CompiledGraph(
        graph,
        leaves,
        slot_var,
        slot_leaf,
        leaf_slots,
        tuple(products),
        tuple(sums),
        place,
        tuple(plan),
    )


def _product_keys(
    graph: RegionGraph, regions: list[int], width: dict[int, int], product: str
) -> dict[tuple, list[int]]:
    """The partitions of ``regions``, grouped by (kind, child widths), in order."""
    groups: dict[tuple, list[int]] = {}
    for region in regions:
        for p in graph.region_partitions[region]:
            children = graph.partitions[p][1]
            widths = tuple(width[c] for c in children)
            if product == "kronecker" and len(children) == 2:
                key: tuple = ("kronecker", widths)
            else:
                if len(set(widths)) != 1:
                    raise ValueError(
                        f"Hadamard products need children of equal widths; partition {p} "
                        f"of region {region} has children of {widths} units (give the input "
                        "units as many channels as the sum units)"
                    )
                key = ("hadamard", widths[:1])
            groups.setdefault(key, []).append(p)
    return groups


def _product_group(
    graph: RegionGraph,
    level: int,
    key: tuple,
    members: list[int],
    place: dict[int, tuple[int, int]],
) -> ProductGroup:
    """One product group: its sources (children gathered per source layer and slot)."""
    kind, widths = key
    arity = max(len(graph.partitions[p][1]) for p in members)
    children = torch.full((len(members), arity), -1, dtype=torch.long)
    gathered: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for fold, p in enumerate(members):
        for slot, child in enumerate(graph.partitions[p][1]):
            children[fold, slot] = child
            layer, position = place[child]
            positions, folds = gathered.setdefault(
                (layer, slot if kind == "kronecker" else 0), ([], [])
            )
            positions.append(position)
            folds.append(fold)
    sources = tuple(
        Source(layer, torch.tensor(positions), torch.tensor(folds), slot)
        for (layer, slot), (positions, folds) in gathered.items()
    )
    out_width = widths[0] * widths[1] if kind == "kronecker" else widths[0]
    return ProductGroup(level, kind, tuple(members), widths, out_width, sources, children)


def _sum_keys(
    graph: RegionGraph,
    regions: list[int],
    products: list[ProductGroup],
    partition_place: dict[int, tuple[int, int]],
    sum_width: int,
    root_width: int,
) -> dict[tuple[int, int], list[int]]:
    """``regions`` grouped by (sum units, inputs), in order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for region in regions:
        units = root_width if region == graph.root else sum_width
        inputs = sum(products[partition_place[p][0]].width for p in graph.region_partitions[region])
        groups.setdefault((units, inputs), []).append(region)
    return groups


def _sum_group(
    graph: RegionGraph,
    level: int,
    members: list[int],
    units: int,
    inputs: int,
    products: list[ProductGroup],
    level_products: tuple[int, ...],
    partition_place: dict[int, tuple[int, int]],
) -> SumGroup:
    """One sum group: for every fold, its inputs (the products of its partitions in order)
    as positions in the flattened outputs of the level's product groups."""
    offsets, start = {}, 0
    for g in level_products:
        offsets[g] = start
        start += len(products[g].partitions) * products[g].width
    group = torch.empty(len(members), inputs, dtype=torch.long)
    fold_of = torch.empty_like(group)
    unit_of = torch.empty_like(group)
    for f, region in enumerate(members):
        column = 0
        for p in graph.region_partitions[region]:
            g, fold = partition_place[p]
            w = products[g].width
            group[f, column : column + w] = g
            fold_of[f, column : column + w] = fold
            unit_of[f, column : column + w] = torch.arange(w)
            column += w
    flat_offset = torch.tensor([offsets[int(g)] for g in group.reshape(-1)]).reshape(group.shape)
    widths = torch.tensor([products[int(g)].width for g in group.reshape(-1)]).reshape(group.shape)
    index = (flat_offset + fold_of * widths + unit_of).reshape(-1)
    identity = len(index) == start and bool((index == torch.arange(start)).all())
    return SumGroup(
        level,
        tuple(members),
        units,
        inputs,
        None if identity else index,
        group,
        fold_of,
        unit_of,
    )
