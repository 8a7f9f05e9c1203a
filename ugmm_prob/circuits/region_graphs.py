"""Region graphs: which variables each product unit of a circuit splits.

A region graph here is ``R`` *repetitions*, each a complete binary tree of ``depth`` splits
over the same ``D`` variables. Every node is a *region* (a set of variables); an internal
region is the disjoint union of its two children, so products over siblings are
decomposable and sums over a region's units are smooth. The trees are stored in heap order:
the ``2**depth`` leaf regions of repetition ``r`` are listed left to right, so the children
of region ``q`` one level up are regions ``2q`` and ``2q + 1``; the circuit's layers rely on
that order and on nothing else. The ``R`` top regions (all variables) meet at the roots.

Builders, one per structure:

- :func:`random_binary_trees`: RAT-SPN's random balanced splits (a random permutation of the
  variables halved ``depth`` times per repetition);
- :func:`quad_tree`: an ``H x W`` image cut along its longer side ``depth`` times (two
  cuts make a quad split), so every region is a rectangular patch; repetition 0 cuts at the
  middles, the others at seeded random points near them;
- :func:`data_driven_tree`: balanced spectral bisection of the variables' Gaussian mutual
  information ``-1/2 log(1 - rho^2)``, so strongly correlated variables share regions;
  repetition 0 uses all rows, the others bootstrap resamples.
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


@accepts_old_spellings(renamed={"num_vars": "in_features"})
@dataclass(frozen=True, eq=False)
class RegionGraph:
    """``R`` complete binary trees of ``depth`` splits over ``in_features`` variables.

    Attributes:
        in_features: number of variables ``D``.
        depth: splits per tree; ``2**depth`` leaf regions per repetition.
        leaf_regions: ``(R, 2**depth, D)`` boolean membership: ``leaf_regions[r, p, d]`` is
            True when variable ``d`` lies in leaf region ``p`` of repetition ``r``. Every
            variable lies in exactly one leaf region of each repetition, and no leaf region
            is empty.
        kind: the builder's name, for display (``"random"``, ``"quad"``, ``"data"``,
            ``"custom"``).
    """

    in_features: int
    depth: int
    leaf_regions: torch.Tensor
    kind: str = "custom"

    num_vars = RenamedAttribute("in_features")
    """Deprecated name of :attr:`in_features`."""

    def __post_init__(self) -> None:
        regions = self.leaf_regions
        expected = (2**self.depth, self.in_features)
        if regions.dim() != 3 or tuple(regions.shape[1:]) != expected or len(regions) < 1:
            raise ValueError(
                f"RegionGraph: expected leaf_regions of shape (R >= 1, {expected[0]}, "
                f"{expected[1]}), got {tuple(regions.shape)}"
            )
        if regions.dtype != torch.bool:
            raise TypeError(f"RegionGraph: leaf_regions must be boolean, got {regions.dtype}")
        counts = regions.sum(1)
        if not bool((counts == 1).all()):
            raise ValueError(
                "RegionGraph: every variable must lie in exactly one leaf region of each repetition"
            )
        if not bool(regions.any(2).all()):
            raise ValueError("RegionGraph: a leaf region is empty")

    @property
    def repetitions(self) -> int:
        """Number of trees ``R``."""
        return len(self.leaf_regions)

    @property
    def var_region(self) -> torch.Tensor:
        """``(R, D)``: the leaf region holding each variable, per repetition."""
        return self.leaf_regions.long().argmax(1)

    def regions_at(self, level: int) -> torch.Tensor:
        """``(R, 2**(depth - level), D)`` membership of the regions ``level`` splits up."""
        if not 0 <= level <= self.depth:
            raise ValueError(f"level must be in 0..{self.depth}, got {level}")
        regions = self.leaf_regions
        for _ in range(level):
            regions = regions[:, 0::2] | regions[:, 1::2]
        return regions

    def to_config(self) -> dict[str, Any]:
        """Plain values that :meth:`from_config` rebuilds the graph from (for checkpoints)."""
        return {
            "in_features": self.in_features,
            "depth": self.depth,
            "kind": self.kind,
            "var_region": self.var_region.tolist(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RegionGraph:
        """The graph :meth:`to_config` described."""
        var_region = torch.as_tensor(config["var_region"], dtype=torch.long)
        return cls.from_assignment(var_region, config["depth"], kind=config.get("kind", "custom"))

    @classmethod
    def from_assignment(
        cls, var_region: torch.Tensor, depth: int, *, kind: str = "custom"
    ) -> RegionGraph:
        """A graph from each variable's leaf region ``(R, D)`` (values in ``0..2**depth-1``)."""
        var_region = torch.as_tensor(var_region, dtype=torch.long)
        if var_region.dim() != 2:
            raise ValueError(
                f"RegionGraph: expected var_region (R, D), got {tuple(var_region.shape)}"
            )
        if var_region.numel() and (var_region.min() < 0 or var_region.max() >= 2**depth):
            raise ValueError(f"RegionGraph: leaf regions must lie in 0..{2**depth - 1}")
        reps, in_features = var_region.shape
        regions = torch.zeros(reps, 2**depth, in_features, dtype=torch.bool)
        regions.scatter_(1, var_region[:, None, :], True)
        return cls(in_features, depth, regions, kind)


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
    """``-1/2 log(1 - rho_ij^2)`` for every pair of columns of ``x`` (0 on the diagonal)."""
    x = x.double()
    centred = x - x.mean(0)
    spread = centred.pow(2).mean(0).sqrt().clamp_min(1e-12)
    rho = (centred.T @ centred) / len(x) / (spread[:, None] * spread[None, :])
    information = -0.5 * torch.log1p(-rho.clamp(-1 + 1e-9, 1 - 1e-9).pow(2))
    information.fill_diagonal_(0.0)
    return information


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
        x: training data ``(n >= 2, D)``, finite.
        depth: splits per tree.
        repetitions: number of trees.
        seed: seed of the bootstrap resamples.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or len(x) < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"data_driven_tree: expected data of shape (n >= 2, D), got {shape}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("data_driven_tree: x has NaN or infinite values")
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
