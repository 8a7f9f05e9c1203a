"""Region graphs: which variables each product unit of a circuit splits.

:class:`RandomBinaryTrees` is the RAT-SPN region graph: for each of ``R`` repetitions, a
random permutation of the ``D`` variables is split in halves ``depth`` times, giving
``2**depth`` leaf regions of (nearly) equal size. Sibling regions hold disjoint variables,
so products over them are decomposable; every region of one level covers the union of its
two children, so sums over a region's channels are smooth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RandomBinaryTrees"]


@dataclass(frozen=True)
class RandomBinaryTrees:
    """Random balanced binary splits of ``num_vars`` variables, ``repetitions`` times.

    Attributes:
        leaf_vars: ``(R, 2**depth, V)`` variable index of each slot of each leaf region;
            regions smaller than ``V`` are padded with ``num_vars``, an extra variable whose
            input units are the constant 1 (log 0), so padding changes no density.
        var_region: ``(R, num_vars)`` leaf region holding each variable, per repetition.
    """

    num_vars: int
    depth: int
    repetitions: int
    seed: int
    leaf_vars: torch.Tensor
    var_region: torch.Tensor

    @classmethod
    def build(
        cls, num_vars: int, *, depth: int, repetitions: int, seed: int = 0
    ) -> RandomBinaryTrees:
        """Draw the ``repetitions`` random trees of ``depth`` splits (seeded by ``seed``).

        Raises:
            ValueError: non-positive sizes, or more leaf regions (``2**depth``) than
                variables.
        """
        if num_vars < 1 or repetitions < 1 or depth < 0:
            raise ValueError(
                f"RandomBinaryTrees: expected num_vars >= 1, repetitions >= 1, depth >= 0; "
                f"got {num_vars}, {repetitions}, {depth}"
            )
        regions = 2**depth
        if regions > num_vars:
            raise ValueError(
                f"RandomBinaryTrees: depth {depth} makes {regions} leaf regions, more than the "
                f"{num_vars} variables; use depth <= {num_vars.bit_length() - 1}"
            )
        generator = torch.Generator().manual_seed(seed)
        width = -(-num_vars // regions)
        leaf_vars = torch.full((repetitions, regions, width), num_vars, dtype=torch.long)
        var_region = torch.empty(repetitions, num_vars, dtype=torch.long)
        for r in range(repetitions):
            order = torch.randperm(num_vars, generator=generator)
            for p, chunk in enumerate(torch.tensor_split(order, regions)):
                leaf_vars[r, p, : len(chunk)] = chunk
                var_region[r, chunk] = p
        return cls(num_vars, depth, repetitions, seed, leaf_vars, var_region)

    @property
    def num_regions(self) -> int:
        """Number of leaf regions per repetition, ``2**depth``."""
        return 2**self.depth
