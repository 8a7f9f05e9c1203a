"""Region graphs beyond repeated trees: hidden Chow-Liu trees and image quad-graphs.

Both builders return a :class:`~ugmm_prob.circuits.region_graphs.RegionGraph` that
:class:`~ugmm_prob.circuits.circuit.UGMMCircuit` compiles (``graph=...``):

- :func:`hclt`: a *hidden Chow-Liu tree*. :func:`chow_liu_tree` estimates the pairwise mutual
  information ``I(X_i; X_j)`` of the columns of training rows
  (:func:`pairwise_mutual_information`), takes its maximum spanning tree and roots it at the
  tree's centre; :func:`hclt_from_tree` turns any rooted tree into the region graph of
  ``p(x) = sum_z prod_v p(z_v | z_parent(v)) p(x_v | z_v)`` (with ``product="hadamard"`` and
  ``channels = input_channels = H`` latent states per variable);
- :func:`quad_graph`: the rectangles of an image, each cut in halves across both axes (two
  partitions), with one region per distinct rectangle, so sub-rectangles are shared between
  partitions (a DAG, as in the quad-graphs of published image circuits).

Why one module past 400 lines: both builders are small, and most of the module is the
mutual-information estimates and tree routines (spanning tree, centre, rooting) that the
Chow-Liu tree needs and nothing else uses.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from ..boundary import to_tensor
from .region_graphs import RegionGraph, gaussian_mutual_information

__all__ = [
    "chow_liu_tree",
    "hclt",
    "hclt_from_tree",
    "pairwise_mutual_information",
    "quad_graph",
]

_COUNT_BLOCK_ELEMENTS = 2**24
"""Joint counts per block of columns (``k B x D B`` entries, 64 MiB as int32)."""


# -------------------------------------------------------------------------------------
# Mutual information
# -------------------------------------------------------------------------------------
def _check_rows(x: Any, caller: str) -> torch.Tensor:
    """``x`` as a real tensor of shape ``(n >= 2, D >= 1)``, finite or NaN (missing)."""
    x = to_tensor(x, f"{caller}: x")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_complex():
        raise TypeError(f"{caller}: expected real numbers in x, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"{caller}: expected training rows x of shape (n >= 2, D >= 1), got {tuple(x.shape)}"
        )
    if x.dtype.is_floating_point and bool(torch.isinf(x).any()):
        bad = int(torch.isinf(x).sum())
        raise ValueError(
            f"{caller}: x must be finite, it has {bad} infinite values (NaN cells are missing)"
        )
    return x


def _is_integer_valued(x: torch.Tensor) -> bool:
    """Whether every observed (not NaN) value is an integer."""
    return not x.dtype.is_floating_point or bool(((x == torch.round(x)) | torch.isnan(x)).all())


def _bin_codes(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Integer columns as bin codes ``0..B-1`` (``B <= bins``), shape ``(n, D)``; ``-1``
    where a cell is missing (NaN).

    A column whose values span ``m = max - min + 1 <= bins`` integers keeps them
    (``x - min``); a wider one is cut into ``bins`` equal-width bins of ``m / bins``
    integers each: ``floor((x - min) * bins / m)``.
    """
    x = x.to(torch.float64)
    missing = torch.isnan(x)
    low = torch.where(missing, torch.inf, x).amin(0)
    span = torch.where(missing, -torch.inf, x).amax(0) - low + 1  # integers each column takes
    shifted = x - low
    wide = span > bins
    binned = torch.floor(shifted * bins / span).clamp_max(bins - 1)
    codes = torch.where(wide, binned, shifted)
    return torch.where(missing, -1.0, codes).long()


def _joint_counts(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left.T @ right`` of 0/1 one-hot matrices ``(n, P)``, ``(n, Q)``: exact counts.

    On the CPU an int8 matrix product with int32 accumulation (several times faster than
    float32 where the CPU has int8 dot products); elsewhere, or where that kernel is missing,
    float32 (exact for counts below ``2**24``: inputs 0/1 are exact even in TF32).
    """
    if left.device.type == "cpu" and hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(left.T.contiguous(), right)
        except RuntimeError:  # an older torch without the CPU kernel
            pass
    return left.T.float() @ right.float()


def _discrete_mutual_information(codes: torch.Tensor) -> torch.Tensor:
    """Plug-in mutual information of the columns of ``codes`` (``0..B-1``; ``-1``: missing),
    ``(D, D)``.

    With counts ``c_ab`` of the pair ``(X_i = a, X_j = b)`` over the ``n`` rows observing
    both, and their marginal counts ``c_a = sum_b c_ab``, ``c_b = sum_a c_ab``:
    ``I = (sum c_ab log c_ab - sum c_a log c_a - sum c_b log c_b) / n + log n`` (0 where
    ``n = 0``). The counts of all pairs are one product of one-hot matrices ``(n, D B)``
    (a missing cell's row all zeros), computed in blocks of columns (the upper triangle
    only).
    """
    n, count = codes.shape
    device = codes.device
    bins = max(int(codes.max()) + 1, 1)  # binary data: 2 columns per variable, any ``bins``
    dtype = torch.int8 if device.type == "cpu" else torch.float32
    complete = bool((codes >= 0).all())
    # a missing cell's code points at one spare column, cut off afterwards
    one_hot = torch.zeros(n, count, bins + (not complete), dtype=dtype, device=device)
    one_hot.scatter_(2, torch.where(codes < 0, bins, codes)[:, :, None], 1)
    one_hot = one_hot[..., :bins].reshape(n, count * bins)
    if complete:  # every pair is observed in all n rows: the marginals are the columns'
        marginal = one_hot.sum(0, dtype=torch.float64).reshape(count, bins)
        marginal_term = torch.xlogy(marginal, marginal).sum(-1)  # sum_a c_a log c_a, (D,)
    information = torch.zeros(count, count, dtype=torch.float64, device=device)
    block = max(1, _COUNT_BLOCK_ELEMENTS // (count * bins * bins))
    for start in range(0, count, block):
        stop = min(count, start + block)
        joint = _joint_counts(one_hot[:, start * bins : stop * bins], one_hot[:, start * bins :])
        joint = joint.to(torch.float64).reshape(stop - start, bins, count - start, bins)
        joint_term = torch.xlogy(joint, joint).sum((1, 3))  # (k, D - start)
        if complete:
            value = (joint_term - marginal_term[start:stop, None] - marginal_term[None, start:]) / n
            information[start:stop, start:] = value + math.log(n)
            continue
        left, right = joint.sum(3), joint.sum(1)  # c_a (k, B, D'), c_b (k, D', B)
        pairs = left.sum(1)  # rows observing both columns, (k, D - start)
        left_term = torch.xlogy(left, left).sum(1)
        right_term = torch.xlogy(right, right).sum(-1)
        value = (joint_term - left_term - right_term) / pairs.clamp_min(1.0)
        information[start:stop, start:] = torch.where(
            pairs > 0, value + torch.log(pairs.clamp_min(1.0)), 0.0
        )
    information = torch.triu(information, diagonal=1)
    information = information + information.T
    return information.clamp_min(0.0)


def pairwise_mutual_information(
    x: Any,
    *,
    discrete: bool | None = None,
    max_rows: int = 20000,
    bins: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Estimated mutual information ``I(X_i; X_j)`` (nats) of every pair of columns, ``(D, D)``.

    Measured on a random subset of at most ``max_rows`` rows (drawn with ``seed``; all rows
    when there are fewer), on the device of ``x``; 0 on the diagonal.

    - Discrete data (integer values): the plug-in estimate of the empirical joint histograms,
      ``I = sum_ab p_ab log(p_ab / (p_a p_b))``. A column taking at most ``bins`` consecutive
      integers is counted value by value; a wider one (8-bit pixels ``0..255``) is first cut
      into ``bins`` equal-width bins of its range, so what is estimated is the information
      between the binned variables (a lower bound of that of the values), and the ``D^2 B^2``
      joint counts stay cheap (one int8 matrix product of one-hot codes on the CPU).
    - Continuous data: the Gaussian estimate ``-1/2 log(1 - rho_ij^2)`` of the sample
      correlation ``rho_ij`` (exact for jointly Gaussian columns).

    Args:
        x: training rows ``(n >= 2, D)``, finite or NaN (missing: every pair is measured
            on the rows observing both columns).
        discrete: whether ``x`` is discrete; None decides by whether every value is an
            integer.
        max_rows: the most rows used.
        bins: the most bins per discrete column.
        seed: seed of the row subset.

    Raises:
        ValueError: a shape other than ``(n >= 2, D >= 1)``, infinite values,
            ``discrete=True`` with non-integer values, ``max_rows < 2`` or ``bins < 2``.
    """
    return _mutual_information(x, discrete, max_rows, bins, seed, "pairwise_mutual_information")


def _mutual_information(
    x: Any, discrete: bool | None, max_rows: int, bins: int, seed: int, caller: str
) -> torch.Tensor:
    """:func:`pairwise_mutual_information`, its errors naming ``caller``."""
    x = _check_rows(x, caller)
    _check_int(caller, "max_rows", max_rows, 2)
    _check_int(caller, "bins", bins, 2)
    if len(x) > max_rows:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(x), generator=generator)[:max_rows]
        x = x[rows.to(x.device)]
    integer = _is_integer_valued(x)
    if discrete is None:
        discrete = integer
    elif discrete and not integer:
        example = float(x[(x != torch.round(x)) & ~torch.isnan(x)][0])
        raise ValueError(
            f"{caller}: discrete=True expects integer values, got non-integer values such as "
            f"{example} (pass discrete=False for the Gaussian estimate)"
        )
    if discrete:
        return _discrete_mutual_information(_bin_codes(x, bins))
    return gaussian_mutual_information(x)


def _check_int(caller: str, name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{caller}: expected {name} an int >= {least}, got {value!r}")


# -------------------------------------------------------------------------------------
# Chow-Liu trees
# -------------------------------------------------------------------------------------
def _maximum_spanning_tree(weights: torch.Tensor) -> list[tuple[int, int]]:
    """The edges of a maximum spanning tree of the complete graph with ``weights`` ``(D, D)``.

    Prim's algorithm on the dense matrix, ``O(D^2)``: every vertex outside the tree keeps its
    heaviest edge into the tree; each step adds the vertex with the heaviest such edge and
    updates the others with one vectorised maximum (ties: the lowest index).
    """
    count = len(weights)
    weights = weights.detach().to("cpu", torch.float64)
    best = weights[0].clone()
    link = torch.zeros(count, dtype=torch.long)
    outside = torch.ones(count, dtype=torch.bool)
    outside[0] = False
    best[0] = -math.inf
    edges = []
    for _ in range(count - 1):
        vertex = int(torch.argmax(best))
        edges.append((int(link[vertex]), vertex))
        outside[vertex] = False
        best[vertex] = -math.inf
        better = outside & (weights[vertex] > best)
        best = torch.where(better, weights[vertex], best)
        link = torch.where(better, vertex, link)
    return edges


def _breadth_first(neighbours: list[list[int]], root: int) -> tuple[list[int], list[int]]:
    """The vertices of a tree in breadth-first order from ``root``, and each one's parent
    (-1 at ``root``)."""
    parents = [-2] * len(neighbours)
    parents[root] = -1
    order, queue = [], deque([root])
    while queue:
        vertex = queue.popleft()
        order.append(vertex)
        for other in neighbours[vertex]:
            if parents[other] == -2:
                parents[other] = vertex
                queue.append(other)
    return order, parents


def _root_at_centre(count: int, edges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Parents of a tree rooted at a centre (a vertex of least eccentricity, so the rooted
    tree has height ``ceil(diameter / 2)``): the middle of a longest path, found by two
    breadth-first searches (the vertex farthest from any vertex ends a longest path)."""
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    end = _breadth_first(neighbours, 0)[0][-1]
    order, parents = _breadth_first(neighbours, end)
    path = [order[-1]]  # from the other end of a longest path back to ``end``
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    centre = path[len(path) // 2]
    return torch.tensor(_breadth_first(neighbours, centre)[1], dtype=torch.long)


def chow_liu_tree(
    x: Any,
    *,
    discrete: bool | None = None,
    max_rows: int = 20000,
    bins: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """The Chow-Liu tree of the columns of ``x``: the parent of every variable, ``(D,)``.

    The tree maximises ``sum_{(i, j) in tree} I(X_i; X_j)`` over all spanning trees of the
    ``D`` variables, so the tree-shaped distribution ``prod_v p(x_v | x_parent(v))`` closest
    in KL divergence to the data's is the one on it (Chow and Liu, 1968). The information is
    :func:`pairwise_mutual_information` (histograms for integer data, the Gaussian
    ``-1/2 log(1 - rho^2)`` for continuous data; see there for ``discrete``, ``max_rows``,
    ``bins`` and ``seed``); the maximum spanning tree is Prim's algorithm on the dense matrix
    (``O(D^2)``). The tree is rooted at its centre, a vertex whose farthest vertex is
    ``ceil(diameter / 2)`` edges away, so the circuit built on it has as few levels as the
    tree allows.

    Returns:
        ``parents`` (long, on the CPU): ``parents[v]`` is the parent of variable ``v``,
        ``-1`` at the root.
    """
    return _chow_liu_tree(x, discrete, max_rows, bins, seed, "chow_liu_tree")


def _chow_liu_tree(
    x: Any, discrete: bool | None, max_rows: int, bins: int, seed: int, caller: str
) -> torch.Tensor:
    """:func:`chow_liu_tree`, its errors naming ``caller``."""
    information = _mutual_information(x, discrete, max_rows, bins, seed, caller)
    return _root_at_centre(len(information), _maximum_spanning_tree(information))


# -------------------------------------------------------------------------------------
# HCLT region graphs
# -------------------------------------------------------------------------------------
def _check_tree(parents: Any) -> list[int]:
    """``parents`` as a list: a rooted tree over ``0..D-1`` with exactly one root (-1)."""
    caller = "hclt_from_tree"
    parents = to_tensor(parents, f"{caller}: parents")
    if parents.dtype.is_floating_point or parents.dtype == torch.bool or parents.is_complex():
        raise TypeError(f"{caller}: expected integer parents, got dtype {parents.dtype}")
    if parents.dim() != 1 or len(parents) < 1:
        raise ValueError(
            f"{caller}: expected parents of shape (D >= 1,), got {tuple(parents.shape)}"
        )
    values = [int(p) for p in parents.tolist()]
    count = len(values)
    outside = [(v, p) for v, p in enumerate(values) if not -1 <= p < count or p == v]
    if outside:
        v, p = outside[0]
        raise ValueError(
            f"{caller}: parents[v] must be another variable in 0..{count - 1} or -1 (the root); "
            f"parents[{v}] = {p}"
        )
    roots = [v for v, p in enumerate(values) if p == -1]
    if len(roots) != 1:
        raise ValueError(f"{caller}: expected exactly one root (parent -1), got {len(roots)}")
    reaches_root = [False] * count  # each vertex must reach the root without a cycle
    reaches_root[roots[0]] = True
    for start in range(count):
        path, on_path, vertex = [], set(), start
        while not reaches_root[vertex]:
            if vertex in on_path:
                raise ValueError(f"{caller}: the parents form a cycle through variable {vertex}")
            path.append(vertex)
            on_path.add(vertex)
            vertex = values[vertex]
        for member in path:
            reaches_root[member] = True
    return values


def hclt_from_tree(parents: Any) -> RegionGraph:
    """The region graph of a hidden Chow-Liu tree (HCLT) on a rooted tree of variables.

    For every variable ``v``: a leaf region ``L_v = {v}`` (region ``v``) and a region
    ``R_v`` (region ``D + v``) over ``v`` and all its descendants, with one partition whose
    children are ``L_v`` and ``R_c`` for every child ``c`` of ``v`` (arity ``1 + #children``;
    a tree leaf's ``R_v`` has the one child ``L_v``). The root region is ``R_root``.

    Compiled with ``product="hadamard"`` and ``channels = input_channels = H``
    (:class:`~ugmm_prob.circuits.circuit.UGMMCircuit`), it is the latent tree model
    ``p(x) = sum_z p(z_root) prod_{v != root} p(z_v | z_parent(v)) prod_v p(x_v | z_v)``
    with ``z_v in {0..H-1}``: input unit ``k`` of ``L_v`` is ``p(x_v | z_v = k)``, product
    unit ``k`` of ``R_v``'s partition is ``p(x_v | z_v = k) prod_c p(x_desc(c) | z_v = k)``,
    and sum unit ``s`` of ``R_c`` mixes them with weights ``p(z_c = k | z_parent = s)`` (the
    ``H x H`` sum of the edge); the root's sum units (one per class) hold ``p(z_root)``.
    Cost per example: ``O(D H^2)``.

    Args:
        parents: ``(D,)`` integers: the parent of every variable, ``-1`` at the root (e.g.
            from :func:`chow_liu_tree`).

    Raises:
        ValueError: not one root, a parent outside ``0..D-1``, a variable its own parent, or
            a cycle.
    """
    values = _check_tree(parents)
    count = len(values)
    children: list[list[int]] = [[] for _ in range(count)]
    for v, p in enumerate(values):
        if p >= 0:
            children[p].append(v)
    root = values.index(-1)
    below: list[list[int]] = [[v] for v in range(count)]  # each R_v's variables
    for v in _post_order(children, root):
        for c in children[v]:
            below[v].extend(below[c])
    regions = [(v,) for v in range(count)] + [tuple(sorted(b)) for b in below]
    partitions = [(count + v, (v, *(count + c for c in children[v]))) for v in range(count)]
    return RegionGraph(count, tuple(regions), tuple(partitions), count + root, "hclt")


def _post_order(children: list[list[int]], root: int) -> list[int]:
    """The vertices of a rooted tree, every child before its parent."""
    order, stack = [], [root]
    while stack:
        vertex = stack.pop()
        order.append(vertex)
        stack.extend(children[vertex])
    return order[::-1]


def hclt(
    x: Any,
    *,
    discrete: bool | None = None,
    max_rows: int = 20000,
    bins: int = 16,
    seed: int = 0,
) -> RegionGraph:
    """The hidden Chow-Liu tree region graph of training rows ``x`` ``(n, D)``.

    ``hclt_from_tree(chow_liu_tree(x, ...))``: the Chow-Liu tree of the columns of ``x``
    (:func:`chow_liu_tree`: maximum spanning tree of the estimated pairwise mutual
    information, rooted at its centre) made into the region graph of
    ``p(x) = sum_z prod_v p(z_v | z_parent(v)) p(x_v | z_v)`` (:func:`hclt_from_tree`). Build
    the circuit with ``UGMMCircuit(D, graph=hclt(x), channels=H, product="hadamard")``; call
    :func:`chow_liu_tree` itself to keep the tree (e.g. to draw it).

    Args:
        x: training rows ``(n >= 2, D)``, finite or NaN (missing).
        discrete, max_rows, bins, seed: see :func:`pairwise_mutual_information`.
    """
    return hclt_from_tree(_chow_liu_tree(x, discrete, max_rows, bins, seed, "hclt"))


# -------------------------------------------------------------------------------------
# Quad-graphs
# -------------------------------------------------------------------------------------
_Rect = tuple[int, int, int, int]  # first row, rows, first column, columns


def quad_graph(height: int, width: int, *, leaf_size: int = 1) -> RegionGraph:
    """The quad-graph of an ``height x width`` image (variable ``d = row * width + col``).

    Every region is an axis-aligned rectangle of pixels, starting from the whole image. A
    rectangle with a side longer than ``leaf_size`` gets one partition per such side: cut
    across it at the middle (the first half ``length // 2`` long), so a rectangle with both
    sides long enough has two partitions (a horizontal and a vertical cut). Each distinct
    rectangle is one region, shared by every partition that produces it, so the graph is a
    DAG (as the quad-graphs of cirkit and other image circuits). Rectangles of at most
    ``leaf_size x leaf_size`` pixels are the leaves.

    With ``leaf_size=1``, the row intervals that halving produces form a binary tree of
    ``2 height - 1`` intervals (likewise for columns), so there are
    ``(2 height - 1)(2 width - 1)`` regions (3025 for 28 x 28) and ``ceil(log2 height) +
    ceil(log2 width)`` levels. If the whole image is a leaf, the root is a region over all
    pixels whose one partition has that leaf as its child (a circuit's root needs a
    partition).

    Raises:
        ValueError: ``height``, ``width`` or ``leaf_size`` not an int >= 1.
    """
    for name, value in (("height", height), ("width", width), ("leaf_size", leaf_size)):
        _check_int("quad_graph", name, value, 1)
    index: dict[_Rect, int] = {}
    regions: list[tuple[int, ...]] = []
    partitions: list[tuple[int, tuple[int, ...]]] = []

    def region(rect: _Rect) -> int:
        if rect not in index:
            top, rows, left, cols = rect
            index[rect] = len(regions)
            regions.append(
                tuple(
                    r * width + c for r in range(top, top + rows) for c in range(left, left + cols)
                )
            )
            pending.append(rect)
        return index[rect]

    whole: _Rect = (0, height, 0, width)
    pending: deque[_Rect] = deque()
    root = region(whole)
    while pending:
        rect = pending.popleft()
        top, rows, left, cols = rect
        parent = index[rect]
        if rows > leaf_size:
            half = rows // 2
            first, second = (top, half, left, cols), (top + half, rows - half, left, cols)
            partitions.append((parent, (region(first), region(second))))
        if cols > leaf_size:
            half = cols // 2
            first, second = (top, rows, left, half), (top, rows, left + half, cols - half)
            partitions.append((parent, (region(first), region(second))))
    if not partitions:  # the whole image is one leaf
        regions.append(regions[root])
        partitions.append((root, (len(regions) - 1,)))
    return RegionGraph(height * width, tuple(regions), tuple(partitions), root, "quad_graph")
