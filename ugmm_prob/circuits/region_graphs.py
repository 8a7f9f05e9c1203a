"""Region graphs: which variables each product unit of a circuit splits.

A :class:`RegionGraph` is a DAG of *regions* (sets of variables) and *partitions* (a split
of one region into one or more disjoint children that cover it). Product units live on
partitions, sum units on regions, input units on the leaf regions (regions no partition
splits), which may hold one variable or several. The rules that make every unit of a circuit
a normalised density (decomposable products, smooth sums) follow from the graph alone and
are checked when it is built. Nothing downstream assumes binary splits, trees or an order:
:mod:`~ugmm_prob.circuits.compile` folds any such graph into layers.

Repeated binary trees (RAT-SPN and its relatives), one builder per structure; each tree's
top regions meet at the root, which has one partition per tree (*repetition*):

- :func:`random_binary_trees`: RAT-SPN's random balanced splits (a random permutation of the
  variables halved ``depth`` times per repetition);
- :func:`quad_tree`: an ``H x W`` image cut along its longer side ``depth`` times (two
  cuts make a quad split), so every region is a rectangular patch; repetition 0 cuts at the
  middles, the others at seeded random points near them;
- :func:`data_driven_tree`: balanced spectral bisection of the variables' Gaussian mutual
  information ``-1/2 log(1 - rho^2)``, so strongly correlated variables share regions;
  repetition 0 uses all rows, the others bootstrap resamples.

Any other structure: :meth:`RegionGraph.from_partitions` (partitions named by their
variables; regions named twice are shared), :meth:`RegionGraph.from_nested` (nested tuples),
or the constructor; hidden Chow-Liu trees and quad-graphs are built in
:mod:`~ugmm_prob.circuits.structures`.

Why one module past 400 lines: the graph class (its checks, serialisation and constructors
from descriptions) and the repeated-tree builders that produce it are read together (every
builder ends in :meth:`RegionGraph.from_assignment`); builders from other ideas live in
:mod:`~ugmm_prob.circuits.structures`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._deprecation import RenamedAttribute, accepts_old_spellings

__all__ = [
    "RegionGraph",
    "data_driven_tree",
    "default_depth",
    "quad_tree",
    "random_binary_trees",
]


@dataclass(frozen=True, eq=False)
class RegionGraph:
    """A region graph: a DAG of regions (sets of variables) and partitions.

    A *partition* splits one region into one or more disjoint child regions whose union is
    the parent; a region with no partition is a *leaf* (its units are input units over its
    variables). A region with several partitions mixes them (its sum units take the products
    of all its partitions as inputs), and a region may be the child of several partitions
    (a quad-graph shares sub-regions). Regions are nodes, not scopes: two regions may hold
    the same variables (the repetitions of a RAT-SPN, or an HCLT's variable region above its
    leaf), each with parameters of its own.

    Checked on construction: every partition's children are disjoint and cover their parent
    (so products are decomposable and sums smooth), the graph has no cycle, every region is
    reachable from the root, and the root holds every variable.

    Attributes:
        in_features: number of variables ``D``.
        regions: each region's variables, sorted (region ``i`` is ``regions[i]``).
        partitions: ``(parent, children)`` pairs of region indices.
        root: the region over all variables, whose sum units are the circuit's roots.
        kind: the builder's name, for display (``"random"``, ``"quad"``, ``"data"``,
            ``"quad_graph"``, ``"hclt"``, ``"custom"``).
    """

    in_features: int
    regions: tuple[tuple[int, ...], ...]
    partitions: tuple[tuple[int, tuple[int, ...]], ...]
    root: int
    kind: str = "custom"

    num_vars = RenamedAttribute("in_features")
    """Deprecated name of :attr:`in_features`."""

    def __post_init__(self) -> None:
        regions = tuple(tuple(sorted(int(v) for v in region)) for region in self.regions)
        partitions = tuple(
            (int(parent), tuple(int(c) for c in children)) for parent, children in self.partitions
        )
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "partitions", partitions)
        _check_graph(self.in_features, regions, partitions, self.root)

    # -- structure ---------------------------------------------------------------------
    @functools.cached_property
    def region_partitions(self) -> tuple[tuple[int, ...], ...]:
        """The partitions of every region (indices into :attr:`partitions`), in order."""
        own: list[list[int]] = [[] for _ in self.regions]
        for index, (parent, _) in enumerate(self.partitions):
            own[parent].append(index)
        return tuple(tuple(p) for p in own)

    @property
    def leaves(self) -> tuple[int, ...]:
        """The leaf regions (no partition), in index order."""
        return tuple(i for i, parts in enumerate(self.region_partitions) if not parts)

    @property
    def max_arity(self) -> int:
        """The most children any partition has."""
        return max((len(children) for _, children in self.partitions), default=0)

    @functools.cached_property
    def heights(self) -> tuple[int, ...]:
        """Each region's height: 0 for a leaf, else one more than its highest child."""
        height = [0] * len(self.regions)
        for region in self.bottom_up():
            below = [
                height[c] for p in self.region_partitions[region] for c in self.partitions[p][1]
            ]
            height[region] = 1 + max(below) if below else 0
        return tuple(height)

    @property
    def depth(self) -> int:
        """The root's height: the most partitions on a path from the root to a leaf."""
        return self.heights[self.root]

    def bottom_up(self) -> list[int]:
        """Regions in an order where every child comes before its parents."""
        order: list[int] = []
        seen = [False] * len(self.regions)
        stack = [(self.root, False)]
        while stack:
            region, expanded = stack.pop()
            if expanded:
                order.append(region)
                continue
            if seen[region]:
                continue
            seen[region] = True
            stack.append((region, True))
            for p in reversed(self.region_partitions[region]):
                stack.extend((c, False) for c in reversed(self.partitions[p][1]) if not seen[c])
        return order

    @functools.cached_property
    def levels(self) -> tuple[int, ...]:
        """Each region's level in the compiled circuit: as late as its parents allow (the
        root at :attr:`depth`, any other region one below its lowest parent; leaves 0), so
        a partition's children are, apart from leaves, computed by the level just below."""
        level = [0] * len(self.regions)
        level[self.root] = self.depth
        for region in reversed(self.bottom_up()):
            for p in self.region_partitions[region]:
                for child in self.partitions[p][1]:
                    if self.region_partitions[child]:
                        candidate = level[region] - 1
                        level[child] = (
                            candidate if level[child] == 0 else min(level[child], candidate)
                        )
        return tuple(level)

    @property
    def repetitions(self) -> int:
        """The root's number of partitions (a RAT-SPN's repetitions; 1 for a leaf root)."""
        return max(1, len(self.region_partitions[self.root]))

    def root_partition_of_leaves(self) -> torch.Tensor:
        """``(L,)``: for every leaf (in :attr:`leaves` order), the first root partition it
        lies under (0 when the root is a leaf): a RAT-SPN leaf's repetition."""
        owner = [-1] * len(self.regions)
        for index, p in enumerate(self.region_partitions[self.root]):
            stack = list(self.partitions[p][1])
            while stack:
                region = stack.pop()
                if owner[region] >= 0:
                    continue
                owner[region] = index
                for q in self.region_partitions[region]:
                    stack.extend(self.partitions[q][1])
        return torch.tensor([max(owner[leaf], 0) for leaf in self.leaves], dtype=torch.long)

    def is_tree(self) -> bool:
        """Whether every region but the root is the child of exactly one partition."""
        parents = [0] * len(self.regions)
        for _, children in self.partitions:
            for c in children:
                parents[c] += 1
        return all(n == 1 for i, n in enumerate(parents) if i != self.root)

    # -- serialisation -----------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """Plain values that :meth:`from_config` rebuilds the graph from (for checkpoints)."""
        return {
            "format": 2,
            "in_features": self.in_features,
            "regions": [list(r) for r in self.regions],
            "partitions": [[parent, list(children)] for parent, children in self.partitions],
            "root": self.root,
            "kind": self.kind,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RegionGraph:
        """The graph :meth:`to_config` described; also reads the repeated-tree format of
        version 0.x (``depth`` and each variable's leaf region per repetition)."""
        if "var_region" in config:  # written before general region graphs
            var_region = torch.as_tensor(config["var_region"], dtype=torch.long)
            return cls.from_assignment(
                var_region, config["depth"], kind=config.get("kind", "custom")
            )
        if config.get("format") != 2:
            raise ValueError(
                f"RegionGraph.from_config: unknown format {config.get('format')!r} (this version "
                "reads format 2 and the repeated trees of earlier versions)"
            )
        partitions = [(parent, tuple(children)) for parent, children in config["partitions"]]
        return cls(
            config["in_features"],
            tuple(tuple(r) for r in config["regions"]),
            tuple(partitions),
            config["root"],
            config.get("kind", "custom"),
        )

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_assignment(
        cls, var_region: torch.Tensor, depth: int, *, kind: str = "custom"
    ) -> RegionGraph:
        """``R`` complete binary trees of ``depth`` splits whose top regions meet at the root.

        ``var_region[r, d]`` is the leaf region (``0..2**depth-1``, left to right) holding
        variable ``d`` in tree ``r``; sibling leaf regions ``2q`` and ``2q + 1`` are the
        children of region ``q`` one level up. Regions are numbered tree by tree, each tree
        from its leaves up in heap order, and the root last, so circuits on these graphs lay
        out their parameters as the repeated-tree circuits of version 0.x did.
        """
        var_region = torch.as_tensor(var_region, dtype=torch.long)
        if var_region.dim() != 2 or len(var_region) < 1:
            raise ValueError(
                f"RegionGraph: expected var_region (R >= 1, D), got {tuple(var_region.shape)}"
            )
        if depth < 0:
            raise ValueError(f"RegionGraph: expected depth >= 0, got {depth}")
        if var_region.numel() and (var_region.min() < 0 or var_region.max() >= 2**depth):
            raise ValueError(f"RegionGraph: leaf regions must lie in 0..{2**depth - 1}")
        reps, in_features = var_region.shape
        regions: list[tuple[int, ...]] = []
        partitions: list[tuple[int, tuple[int, ...]]] = []
        tops: list[tuple[int, ...]] = []
        for r in range(reps):
            level = []
            for p in range(2**depth):
                members = (var_region[r] == p).nonzero()[:, 0].tolist()
                if not members:
                    raise ValueError(f"RegionGraph: leaf region {p} of tree {r} is empty")
                regions.append(tuple(members))
                level.append(len(regions) - 1)
            while len(level) > 2:
                merged = []
                for q in range(len(level) // 2):
                    pair = (level[2 * q], level[2 * q + 1])
                    regions.append(regions[pair[0]] + regions[pair[1]])
                    partitions.append((len(regions) - 1, pair))
                    merged.append(len(regions) - 1)
                level = merged
            tops.append(tuple(level))
        regions.append(tuple(range(in_features)))
        root = len(regions) - 1
        partitions.extend((root, top) for top in tops)
        return cls(in_features, tuple(regions), tuple(partitions), root, kind)

    @classmethod
    def from_partitions(
        cls,
        in_features: int,
        partitions: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
        *,
        kind: str = "custom",
    ) -> RegionGraph:
        """A graph from partitions named by their variables: ``(parent, [child, ...])``.

        Regions are identified by their variable sets, so a region named in several
        partitions is shared (a DAG); a region that no partition splits is a leaf. The
        root is the region over all ``in_features`` variables.

        Example: ``RegionGraph.from_partitions(3, [((0, 1, 2), [(0,), (1, 2)]),
        ((0, 1, 2), [(0, 1), (2,)]), ((1, 2), [(1,), (2,)]), ((0, 1), [(0,), (1,)])])``.
        """
        index: dict[frozenset[int], int] = {}

        def region(variables: Sequence[int]) -> int:
            key = frozenset(int(v) for v in variables)
            if len(key) != len(variables):
                raise ValueError(f"RegionGraph: region {tuple(variables)} repeats a variable")
            return index.setdefault(key, len(index))

        parts = [
            (region(parent), tuple(region(c) for c in children)) for parent, children in partitions
        ]
        root_key = frozenset(range(in_features))
        if root_key not in index:
            if index:
                raise ValueError(
                    f"RegionGraph.from_partitions: no partition splits the region of all "
                    f"{in_features} variables"
                )
            index[root_key] = 0
        regions = tuple(tuple(sorted(key)) for key in index)
        return cls(in_features, regions, tuple(parts), index[root_key], kind)

    @classmethod
    def from_nested(
        cls, spec: Any, *, in_features: int | None = None, kind: str = "custom"
    ) -> RegionGraph:
        """A tree-shaped graph from nested tuples: a tuple splits its region into its
        elements, an int is a one-variable leaf, a list of ints a leaf over those variables.

        ``((0, 1), [2, 3])`` splits ``{0, 1, 2, 3}`` into ``{0, 1}`` (itself split into the
        leaves ``{0}`` and ``{1}``) and the leaf ``{2, 3}``. A list of several such
        descriptions at the top (``[spec_a, spec_b]`` with tuple elements) gives the root one
        partition per description (alternative structures mixed at the root).
        """
        regions: list[tuple[int, ...]] = []
        partitions: list[tuple[int, tuple[int, ...]]] = []

        def build(node: Any) -> int:
            if isinstance(node, bool):
                raise TypeError("RegionGraph.from_nested: variables are ints, got a bool")
            if isinstance(node, int):
                regions.append((node,))
                return len(regions) - 1
            if isinstance(node, list) and all(isinstance(v, int) for v in node):
                if not node:
                    raise ValueError("RegionGraph.from_nested: a leaf holds no variable")
                regions.append(tuple(node))
                return len(regions) - 1
            if isinstance(node, tuple) and node:
                children = tuple(build(child) for child in node)
                regions.append(tuple(v for c in children for v in regions[c]))
                partitions.append((len(regions) - 1, children))
                return len(regions) - 1
            raise TypeError(
                "RegionGraph.from_nested: expected an int, a non-empty list of ints or a "
                f"non-empty tuple, got {node!r}"
            )

        alternatives = (
            spec
            if isinstance(spec, list) and spec and all(isinstance(s, tuple) for s in spec)
            else [spec]
        )
        tops = [build(alt) for alt in alternatives]
        variables = sorted(regions[tops[0]])
        count = len(variables) if in_features is None else in_features
        if len(tops) == 1:
            root = tops[0]
        else:
            regions.append(tuple(variables))
            root = len(regions) - 1
            for top in tops:
                if sorted(regions[top]) != variables:
                    raise ValueError(
                        "RegionGraph.from_nested: every alternative must cover the same variables"
                    )
                partitions.append((root, (top,)))
        return cls(count, tuple(regions), tuple(partitions), root, kind)


def _check_graph(
    in_features: int,
    regions: tuple[tuple[int, ...], ...],
    partitions: tuple[tuple[int, tuple[int, ...]], ...],
    root: int,
) -> None:
    """Raise a ValueError naming the first rule the graph breaks."""
    if in_features < 1 or not regions:
        raise ValueError(
            f"RegionGraph: expected in_features >= 1 and at least one region, got "
            f"{in_features} and {len(regions)} regions"
        )
    if not 0 <= root < len(regions):
        raise ValueError(f"RegionGraph: root {root} is not a region (0..{len(regions) - 1})")
    for i, region in enumerate(regions):
        if not region:
            raise ValueError(f"RegionGraph: region {i} holds no variable")
        if len(set(region)) != len(region):
            raise ValueError(f"RegionGraph: region {i} repeats a variable: {region}")
        if region[0] < 0 or region[-1] >= in_features:
            raise ValueError(
                f"RegionGraph: region {i} holds variables outside 0..{in_features - 1}: {region}"
            )
    if regions[root] != tuple(range(in_features)):
        raise ValueError(
            f"RegionGraph: the root region must hold all {in_features} variables, it holds "
            f"{len(regions[root])}"
        )
    children_of: list[list[int]] = [[] for _ in regions]
    for parent, children in partitions:
        bad = [r for r in (parent, *children) if not 0 <= r < len(regions)]
        if bad or not children:
            raise ValueError(
                f"RegionGraph: partition {(parent, children)} names no child or a region "
                f"outside 0..{len(regions) - 1}"
            )
        joined = [v for c in children for v in regions[c]]
        if len(set(joined)) != len(joined):
            raise ValueError(
                f"RegionGraph: the children {children} of region {parent} overlap "
                "(a product of them would not be decomposable)"
            )
        if sorted(joined) != list(regions[parent]):
            raise ValueError(
                f"RegionGraph: the children {children} of region {parent} do not cover it "
                f"exactly (they hold {sorted(joined)}, it holds {list(regions[parent])})"
            )
        if parent in children:
            raise ValueError(f"RegionGraph: region {parent} is its own child")
        children_of[parent].extend(children)
    # Reachability and acyclicity in one depth-first search from the root.
    state = [0] * len(regions)  # 0 unseen, 1 on the path, 2 done
    stack = [(root, iter(children_of[root]))]
    state[root] = 1
    while stack:
        region, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            state[region] = 2
            stack.pop()
        elif state[child] == 1:
            raise ValueError(f"RegionGraph: a cycle passes through region {child}")
        elif state[child] == 0:
            state[child] = 1
            stack.append((child, iter(children_of[child])))
    unreachable = [i for i, s in enumerate(state) if s == 0]
    if unreachable:
        raise ValueError(
            f"RegionGraph: {len(unreachable)} region(s) cannot be reached from the root, "
            f"e.g. region {unreachable[0]}"
        )


@accepts_old_spellings(renamed={"num_vars": "in_features"})
def default_depth(in_features: int) -> int:
    """As deep as leaf regions of at least two variables allow, at most 4."""
    return min(4, max(0, (in_features // 2).bit_length() - 1))


def _check_sizes(builder: str, in_features: int, depth: int, repetitions: int) -> None:
    if in_features < 1 or repetitions < 1 or depth < 0:
        raise ValueError(
            f"{builder}: expected in_features >= 1, repetitions >= 1, depth >= 0; got "
            f"{in_features}, {repetitions}, {depth}"
        )
    if 2**depth > in_features:
        raise ValueError(
            f"{builder}: depth {depth} makes {2**depth} leaf regions, more than the "
            f"{in_features} variables; use depth <= {in_features.bit_length() - 1}"
        )


def _graph_from_leaves(
    in_features: int, depth: int, leaves: Sequence[Sequence[torch.Tensor]], kind: str
) -> RegionGraph:
    """A graph from each repetition's leaf regions as variable-index tensors, in heap order."""
    var_region = torch.empty(len(leaves), in_features, dtype=torch.long)
    for r, regions in enumerate(leaves):
        for p, members in enumerate(regions):
            var_region[r, members] = p
    return RegionGraph.from_assignment(var_region, depth, kind=kind)


@accepts_old_spellings(renamed={"num_vars": "in_features"})
def random_binary_trees(
    in_features: int, *, depth: int, repetitions: int, seed: int = 0
) -> RegionGraph:
    """RAT-SPN region graph: each repetition halves a random permutation ``depth`` times.

    Raises:
        ValueError: non-positive sizes, or more leaf regions (``2**depth``) than variables.
    """
    _check_sizes("random_binary_trees", in_features, depth, repetitions)
    generator = torch.Generator().manual_seed(seed)
    leaves = []
    for _ in range(repetitions):
        order = torch.randperm(in_features, generator=generator)
        leaves.append(torch.tensor_split(order, 2**depth))
    return _graph_from_leaves(in_features, depth, leaves, "random")


def quad_tree(
    height: int, width: int, *, depth: int, repetitions: int = 1, seed: int = 0
) -> RegionGraph:
    """Rectangular patches of an ``height x width`` image (variable ``d = row * width + col``).

    Each split cuts a patch across its longer side (rows on ties), so two levels make a
    quad split. Repetition 0 cuts at the middle; the others at a seeded random point within
    an eighth of the side from the middle, so repetitions see differently placed patch
    borders. Only cuts that leave both parts enough pixels for the remaining levels are
    used.
    """
    if height < 1 or width < 1:
        raise ValueError(f"quad_tree: expected a positive image size, got {height} x {width}")
    _check_sizes("quad_tree", height * width, depth, repetitions)
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(height * width).reshape(height, width)

    @functools.cache
    def feasible(rows: int, cols: int, levels: int) -> bool:
        """Whether a ``rows x cols`` patch can be cut ``levels`` more times."""
        return levels == 0 or bool(cuts(rows, cols, levels))

    def cuts(rows: int, cols: int, levels: int) -> list[int]:
        """Cut positions across the longer side that leave both parts cuttable."""
        axis = 0 if rows >= cols else 1
        side = (rows, cols)[axis]
        sizes = [
            ((c, cols), (rows - c, cols)) if axis == 0 else ((rows, c), (rows, cols - c))
            for c in range(1, side)
        ]
        return [
            c
            for c, (a, b) in zip(range(1, side), sizes, strict=True)
            if feasible(*a, levels - 1) and feasible(*b, levels - 1)
        ]

    def split(patch: torch.Tensor, levels: int, jitter: bool) -> list[torch.Tensor]:
        if levels == 0:
            return [patch.reshape(-1)]
        rows, cols = patch.shape
        options = cuts(rows, cols, levels)
        if not options:
            raise ValueError(
                f"quad_tree: a {height} x {width} image cannot be cut {depth} times into "
                "patches of at least one pixel; lower depth"
            )
        axis = 0 if rows >= cols else 1
        side = patch.shape[axis]
        middle = min(options, key=lambda c: (abs(c - side / 2), c))
        cut = middle
        if jitter:
            reach = max(1, side // 8)
            near = [c for c in options if abs(c - middle) <= reach]
            cut = near[int(torch.randint(0, len(near), (), generator=generator))]
        first, second = patch.split([cut, side - cut], dim=axis)
        return split(first, levels - 1, jitter) + split(second, levels - 1, jitter)

    leaves = [split(index, depth, r > 0) for r in range(repetitions)]
    return _graph_from_leaves(height * width, depth, leaves, "quad")


def gaussian_mutual_information(x: torch.Tensor) -> torch.Tensor:
    """``-1/2 log(1 - rho_ij^2)`` for every pair of columns of ``x`` (0 on the diagonal).

    NaN cells are missing: ``rho_ij`` is the correlation of the rows where both columns
    are observed (pairwise-complete), 0 for a pair observed together in fewer than 2 rows.
    """
    x = x.double()
    observed = ~torch.isnan(x)
    if bool(observed.all()):
        centred = x - x.mean(0)
        spread = centred.pow(2).mean(0).sqrt().clamp_min(1e-12)
        rho = (centred.T @ centred) / len(x) / (spread[:, None] * spread[None, :])
    else:
        rho = _pairwise_complete_correlation(torch.where(observed, x, 0.0), observed.double())
    information = -0.5 * torch.log1p(-rho.clamp(-1 + 1e-9, 1 - 1e-9).pow(2))
    information.fill_diagonal_(0.0)
    return information


def _pairwise_complete_correlation(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Correlation ``(D, D)`` of every pair of columns over the rows observing both
    (``values`` 0 where missing, ``seen`` 1 where observed): with ``n_ij`` such rows,
    ``S_i^(j) = sum x_i``, ``Q_i^(j) = sum x_i^2`` and ``P_ij = sum x_i x_j`` over them,
    ``rho = (P/n - S_i S_j / n^2) / sqrt((Q_i/n - (S_i/n)^2) (Q_j/n - (S_j/n)^2))``."""
    count = seen.T @ seen  # n_ij
    share = count.clamp_min(1.0)
    first = (values.T @ seen) / share  # [i, j]: mean of x_i over the rows observing both
    second = (values.pow(2).T @ seen) / share
    variance = (second - first.pow(2)).clamp_min(0.0)
    covariance = (values.T @ values) / share - first * first.T
    spread = (variance * variance.T).sqrt().clamp_min(1e-24)
    return torch.where(count >= 2, covariance / spread, 0.0)


def _bisect(members: torch.Tensor, affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``members`` into halves of equal size (first one larger by at most one) that cut
    little affinity: the spectral bisection by the Fiedler vector of the graph Laplacian."""
    sub = affinity[members][:, members]
    laplacian = torch.diag(sub.sum(1)) - sub
    _, vectors = torch.linalg.eigh(laplacian)
    fiedler = vectors[:, 1] if len(members) > 1 else vectors[:, 0]
    # Sort by the Fiedler coordinate (ties by index, so the split is deterministic).
    order = sorted(range(len(members)), key=lambda i: (float(fiedler[i]), int(members[i])))
    half = math.ceil(len(members) / 2)
    first = members[torch.tensor(order[:half])]
    second = members[torch.tensor(order[half:])]
    return first.sort().values, second.sort().values


def data_driven_tree(
    x: torch.Tensor, *, depth: int, repetitions: int = 1, seed: int = 0
) -> RegionGraph:
    """Balanced binary trees that keep strongly dependent variables in one region.

    Every region is split in two halves of equal size by spectral bisection of the
    variables' Gaussian mutual information ``-1/2 log(1 - rho^2)`` (the weight of a pair is
    what a Chow-Liu tree would use), which cuts as little dependence as a balanced split
    can. Repetition 0 measures it on all rows of ``x``, repetition ``r > 0`` on a bootstrap
    resample drawn with ``seed``, so repetitions differ where the data leave the split in
    doubt.

    Args:
        x: training data ``(n >= 2, D)``, finite or NaN (missing: pairs are measured on
            the rows observing both).
        depth: splits per tree.
        repetitions: number of trees.
        seed: seed of the bootstrap resamples.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or len(x) < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"data_driven_tree: expected data of shape (n >= 2, D), got {shape}")
    if bool(torch.isinf(x).any()):
        raise ValueError("data_driven_tree: x has infinite values (NaN cells are missing)")
    in_features = x.shape[1]
    _check_sizes("data_driven_tree", in_features, depth, repetitions)
    generator = torch.Generator().manual_seed(seed)
    leaves = []
    for r in range(repetitions):
        rows = x if r == 0 else x[torch.randint(0, len(x), (len(x),), generator=generator)]
        affinity = gaussian_mutual_information(rows)
        regions = [torch.arange(in_features)]
        for _ in range(depth):
            regions = [half for region in regions for half in _bisect(region, affinity)]
        leaves.append(regions)
    return _graph_from_leaves(in_features, depth, leaves, "data")
