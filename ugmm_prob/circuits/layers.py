"""Product and sum layers of a circuit, over values in log space.

Values of one layer are a tensor ``(B, F, W)``: batch, fold (one region or partition of the
region graph, see :mod:`~ugmm_prob.circuits.compile`), and the ``W`` units of each fold.

- :class:`ProductLayer` multiplies the units of each partition's children (disjoint scopes:
  decomposable): Hadamard (unit ``k`` of every child) or Kronecker (every pair of units of
  two children, ``W_out = W_left * W_right``), gathering the children from any lower layer;
- :class:`SumRoute` reads a sum group's inputs from its level's products (and, going down,
  says which product each input is);
- :class:`SumLayer` gives each region ``S`` normalised mixtures of its ``Q`` inputs (equal
  scopes: smooth), computed with the max shift (log-einsum-exp) so that the inner work is a
  batched matrix product, ``log sum_q w_q e^{v_q} = m + log sum_q w_q e^{v_q - m}``; with
  ``mode="max"`` the max-product value ``max_q (log w_q + v_q)``.

Both also run downwards: :meth:`ProductLayer.child_units` maps a chosen product unit to the
units of its children, :meth:`SumLayer.choose` picks one input of each chosen sum unit
(at random in proportion to ``w_q e^{v_q}`` for sampling, or the best for MPE). A sum layer
also takes part in EM (:mod:`~ugmm_prob.circuits.em`): :meth:`SumLayer.expected_counts` and
the closed-form :meth:`SumLayer.maximise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.nn import PyroModule, PyroParam

from .compile import ProductGroup, SumGroup

__all__ = [
    "MIN_LOG_WEIGHT",
    "ProductLayer",
    "SumLayer",
    "SumRoute",
    "normalised_log_weights",
    "product_logsumexp",
    "region_products",
    "sample_index",
    "weighted_logsumexp",
    "weighted_max",
]

MIN_LOG_WEIGHT = -80.0
"""Log-weights set by an M-step stay above this (``e^-80``: no effect in float32 or float64
sums with a term of order 1), so no weight becomes exactly 0 and no gradient NaN."""

Chooser = Callable[[torch.Tensor], torch.Tensor]
"""Maps unnormalised log-probabilities ``(..., Q)`` to indices ``(...)``."""


def weighted_logsumexp(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``out[b, g, s] = log sum_q exp(log_weights[g, s, q] + values[b, g, q])``.

    ``values`` ``(B, G, Q)``, normalised ``log_weights`` ``(G, S, Q)``. Shifting by
    ``m = max_q values`` makes the sum a batched matrix product of ``exp(values - m)``
    (entries <= 1, at least one equal to 1) with the weights.
    """
    shift = values.amax(dim=-1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    scaled = torch.einsum("bgq,gsq->bgs", (values - shift).exp(), log_weights.exp())
    return scaled.log() + shift


def product_logsumexp(
    left: torch.Tensor, right: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """:func:`weighted_logsumexp` of the products of ``left`` and ``right`` units.

    ``out[b, g, s] = log sum_{u, v} w[g, s, u W + v] exp(left[b, g, u] + right[b, g, v])``
    for ``left``, ``right`` ``(B, G, W)``. The largest product is the product of the two
    largest factors, so each side is shifted by its own max and exponentiated (``2 W``
    exponentials per region instead of ``W^2``), and the outer product is taken in linear
    space: the same shifted terms as :func:`weighted_logsumexp`, without forming or reducing
    the ``W^2`` log-values.
    """

    def shifted(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = values.amax(dim=-1, keepdim=True).detach()
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        return (values - shift).exp(), shift

    (left_exp, left_shift), (right_exp, right_shift) = shifted(left), shifted(right)
    products = (left_exp[..., :, None] * right_exp[..., None, :]).flatten(-2)
    scaled = torch.einsum("bgq,gsq->bgs", products, log_weights.exp())
    return scaled.log() + left_shift + right_shift


def _allowed_index(allowed: torch.Tensor) -> torch.Tensor:
    """``(..., S, A)`` the inputs each sum unit may use, ``A`` the most any unit may; a unit
    with fewer repeats its last allowed input (its weight is dropped in
    :func:`_allowed_logsumexp`)."""
    count = allowed.sum(-1, keepdim=True)
    order = torch.argsort((~allowed).to(torch.int8), dim=-1, stable=True)  # allowed first
    width = int(count.max())
    position = torch.arange(width).expand(*allowed.shape[:-1], width)
    return order[..., :width].gather(-1, torch.minimum(position, count - 1))


def _allowed_logsumexp(
    values: torch.Tensor, log_weights: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``log sum_q w[g, s, q] exp(values[b, g, q])`` over the inputs ``index[g, s]`` that unit
    ``(g, s)`` may use (:func:`_allowed_index`), each unit with its own shift."""
    batch, groups, inputs = values.shape
    sums, width = index.shape[1:]
    picked = values[:, :, None, :].expand(batch, groups, sums, inputs)
    picked = picked.gather(3, index.expand(batch, groups, sums, width))
    log_w = log_weights.gather(-1, index)
    # a repeated index (a unit with fewer allowed inputs than A) counts once
    repeated = torch.zeros_like(index, dtype=torch.bool)
    repeated[..., 1:] = index[..., 1:] == index[..., :-1]
    log_w = log_w.masked_fill(repeated, -math.inf)
    return torch.logsumexp(picked + log_w, dim=-1)


def weighted_max(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The max-product twin of :func:`weighted_logsumexp`: ``max_q (log w + v)``."""
    return (values[:, :, None, :] + log_weights).amax(dim=-1)


def sample_index(logits: torch.Tensor) -> torch.Tensor:
    """An exact draw ``q ~ softmax(logits)`` over the last axis by the Gumbel-max trick
    (``-log E`` with ``E ~ Exp(1)`` is Gumbel distributed); empty batches give empty draws."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)


def normalised_log_weights(
    count: torch.Tensor, pseudo_count: float, current_logits: torch.Tensor
) -> torch.Tensor:
    """The Dirichlet MAP estimate ``log((n + alpha) / sum(n + alpha))`` over the last axis,
    floored at :data:`MIN_LOG_WEIGHT`; rows without any count keep ``current_logits``'
    weights. Negative counts (rounding in an E-step) count as 0.

    In place on one new tensor: the categorical inputs of an MNIST circuit hold 20 M
    weights, and this runs after every minibatch of online EM.
    """
    weights = count.clamp_min(0).add_(pseudo_count)
    total = weights.sum(-1, keepdim=True)
    new = weights.log_().sub_(total.clamp_min(1e-300).log_()).clamp_min_(MIN_LOG_WEIGHT)
    if pseudo_count > 0:  # every row has a positive total (a Python test: no device sync)
        return new
    return torch.where(total > 0, new, torch.log_softmax(current_logits, -1))


def region_products(values: torch.Tensor, region_index: torch.Tensor) -> torch.Tensor:
    """Products over each leaf region's slots: ``(B, N, W) -> (B, L, W)``.

    ``region_index`` ``(L, V)`` lists the slots of leaf region ``l``, padded with ``N``,
    which reads a column of ``log 1 = 0``. A gather and a sum, not a matrix product with a
    0/1 matrix, so that a ``-inf`` log-value cannot become NaN.
    """
    batch, _, width = values.shape
    padded = torch.cat([values, values.new_zeros(batch, 1, width)], dim=1)
    regions, size = region_index.shape
    gathered = padded.index_select(1, region_index.reshape(-1))
    return gathered.reshape(batch, regions, size, width).sum(2)


ValueSource = Callable[[int], torch.Tensor]
"""Maps the index ``i`` of one of a product layer's sources to the values it reads,
``(B, n_i, W)``: its layer's output at :meth:`ProductLayer.positions` ``(i)``."""


class ProductLayer(torch.nn.Module):
    """The products of one product group (:class:`~ugmm_prob.circuits.compile.ProductGroup`):
    ``F`` partitions, each multiplying the units of its children (a sum of log-values).

    ``"hadamard"``: unit ``k`` is the product of unit ``k`` of every child (children of
    equal width ``W``; fewer children simply add fewer terms); ``"kronecker"``: unit
    ``u * W_right + v`` is unit ``u`` of the left child times unit ``v`` of the right one.
    """

    def __init__(self, group: ProductGroup, place: dict[int, tuple[int, int]]) -> None:
        super().__init__()
        self.kind, self.width = group.kind, group.width
        self.child_widths = group.child_widths
        self.folds = len(group.partitions)
        self.arity = group.children.shape[1]
        self.source_layers = [source.layer for source in group.sources]
        self.source_slots = [source.slot for source in group.sources]
        for i, source in enumerate(group.sources):
            self.register_buffer(f"positions_{i}", source.positions, persistent=False)
            self.register_buffer(f"folds_{i}", source.folds, persistent=False)
        # Going down: the layer and position of every child (layer -2 past a fold's arity).
        child_layer = torch.full_like(group.children, -2)
        child_position = torch.zeros_like(group.children)
        for fold, children in enumerate(group.children.tolist()):
            for slot, region in enumerate(children):
                if region >= 0:
                    child_layer[fold, slot], child_position[fold, slot] = place[region]
        self.register_buffer("child_layer", child_layer, persistent=False)
        self.register_buffer("child_position", child_position, persistent=False)
        self.target_layers = sorted({int(v) for v in child_layer.unique()} - {-2})
        # A source that fills every fold in order is read with one index_select.
        self.in_order = [
            len(source.folds) == self.folds
            and bool((source.folds == torch.arange(self.folds)).all())
            for source in group.sources
        ]

    def positions(self, i: int) -> torch.Tensor:
        """The folds of source ``i``'s layer that this product layer reads, ``(n_i,)``."""
        return getattr(self, f"positions_{i}")

    def _gather(self, read: ValueSource, slot: int, width: int) -> torch.Tensor:
        """The children in ``slot`` (Hadamard: all children, summed) as ``(B, F, W)``."""
        out: torch.Tensor | None = None
        for i, own_slot in enumerate(self.source_slots):
            if own_slot != slot:
                continue
            folds = getattr(self, f"folds_{i}")
            values = read(i)
            if self.in_order[i] and out is None:
                out = values
                continue
            if out is None:
                out = values.new_zeros(len(values), self.folds, width)
            out = out.index_add(1, folds, values)
        assert out is not None  # every slot has a source
        return out

    def factors(self, read: ValueSource) -> tuple[torch.Tensor, torch.Tensor]:
        """The left and right children of a Kronecker group, each ``(B, F, W_side)``."""
        return self._gather(read, 0, self.child_widths[0]), self._gather(
            read, 1, self.child_widths[1]
        )

    def forward(self, read: ValueSource) -> torch.Tensor:
        """The log-values of every product unit, ``(B, F, W)``."""
        if self.kind == "hadamard":
            return self._gather(read, 0, self.width)
        left, right = self.factors(read)
        return (left[..., :, None] + right[..., None, :]).flatten(-2)

    def child_units(self, unit: torch.Tensor) -> torch.Tensor:
        """Chosen product units ``(B, F)`` -> the unit of each child ``(B, F, A)``."""
        if self.kind == "hadamard":
            return unit[..., None].expand(*unit.shape, self.arity)
        right = self.child_widths[1]
        return torch.stack([unit // right, unit % right], dim=-1)


class SumRoute(torch.nn.Module):
    """How one sum group reads its inputs from its level's products, and, going down, which
    product each input is (index tensors as buffers, so they follow the circuit's device)."""

    def __init__(self, group: SumGroup) -> None:
        super().__init__()
        self.folds, self.width = len(group.regions), group.inputs
        self.register_buffer("index", group.index, persistent=False)
        self.register_buffer("input_group", group.input_group, persistent=False)
        self.register_buffer("input_fold", group.input_fold, persistent=False)
        self.register_buffer("input_unit", group.input_unit, persistent=False)

    def inputs(self, flat: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B, F, Q)`` from the level's products flattened and concatenated."""
        values = flat if self.index is None else flat.index_select(1, self.index)
        return values.reshape(batch, self.folds, self.width)

    def follow(self, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chosen inputs ``(B, F)`` -> their product group, fold and unit, each ``(B, F)``."""
        folds = torch.arange(self.folds, device=choice.device)[None, :]
        return (
            self.input_group[folds, choice],
            self.input_fold[folds, choice],
            self.input_unit[folds, choice],
        )


class SumLayer(PyroModule):
    """``S`` mixtures of ``Q`` inputs for each of ``F`` regions (folds).

    Parameter ``logits`` ``(F, S, Q)``; the weights are ``softmax(logits, -1)``.

    Args:
        folds, sums, inputs: ``F``, ``S`` and ``Q``.
        init_scale: standard deviation of the random starting logits.
        allowed: optional boolean mask broadcastable to ``(F, S, Q)``: False where a sum
            unit never mixes an input (its weight is exactly 0).
    """

    prior_parameters = {"logits": "sum_logits"}  # noqa: RUF012 - read-only table
    """Attribute -> parameter kind for priors (:mod:`ugmm_prob.bayes`)."""
    sum_kernel = staticmethod(weighted_logsumexp)
    """How ``mode="sum"`` combines values and weights (replaceable, e.g. by benchmarks)."""

    def __init__(
        self,
        folds: int,
        sums: int,
        inputs: int,
        *,
        init_scale: float = 0.1,
        allowed: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.logits = PyroParam(init_scale * torch.randn(folds, sums, inputs))
        # allowed[..., q] False: the sum unit never mixes input q (its weight is exactly 0)
        if allowed is not None:
            shape = tuple(self.logits.shape)
            if allowed.dtype != torch.bool or torch.broadcast_shapes(allowed.shape, shape) != shape:
                raise ValueError(
                    f"SumLayer: allowed must be a boolean mask broadcastable to {shape}, got "
                    f"{allowed.dtype} {tuple(allowed.shape)}"
                )
            if not bool(allowed.expand(shape).any(-1).all()):
                raise ValueError("SumLayer: every sum unit must be allowed at least one input")
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)
            self.register_buffer("input_mask", mask, persistent=False)
            self.register_buffer("input_index", _allowed_index(allowed.expand(shape)), False)
        else:
            self.input_mask = self.input_index = None

    def log_weights(self) -> torch.Tensor:
        """Normalised log-weights ``(F, S, Q)`` (``-inf`` where an input is not allowed)."""
        logits = self.logits if self.input_mask is None else self.logits + self.input_mask
        return torch.log_softmax(logits, dim=-1)

    def forward(self, values: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """``(B, F, Q) -> (B, F, S)``: log-sums (``"sum"``) or max-products (``"max"``)."""
        log_w = self.log_weights()
        if mode == "max":
            return weighted_max(values, log_w)
        if self.input_mask is None:
            return self.sum_kernel(values, log_w)
        # The matrix-product trick shifts by the largest input of any unit; an input a unit
        # may not use can dwarf all of its own and underflow them to log 0. So each unit
        # reduces over its own allowed inputs only (gathered: a fraction of Q).
        return _allowed_logsumexp(values, log_w, self.input_index)

    def sum_of_products(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``self(kronecker(left, right))`` in ``"sum"`` mode without forming the products'
        log-values (:func:`product_logsumexp`) when this layer uses the default kernel and
        no input mask; ``left`` ``(B, F, U)``, ``right`` ``(B, F, V)``, ``Q = U V``."""
        if self.input_mask is not None or self.sum_kernel is not weighted_logsumexp:
            return self((left[..., :, None] + right[..., None, :]).flatten(-2))
        return product_logsumexp(left, right, self.log_weights())

    @torch.no_grad()
    def expected_counts(self, logits_grad: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Expected number of times each sum unit picks each input, ``(F, S, Q)``.

        ``logits_grad`` is the gradient of a log-likelihood (summed over a batch) with respect
        to :attr:`logits`, ``flow`` ``(F, S)`` the flow into each sum unit. With
        ``w = softmax(l)``, ``d L / d l_q = n_q - w_q sum_j n_j``, so ``n_q = d L / d l_q + w_q
        flow``.
        """
        return logits_grad + self.log_weights().exp() * flow[..., None]

    @torch.no_grad()
    def maximise(self, counts: torch.Tensor, *, pseudo_count: float) -> None:
        """M-step: ``w_q = (n_q + alpha) / sum_j (n_j + alpha)`` (a Dirichlet MAP estimate);
        a unit that no example reached (and ``alpha = 0``) keeps its weights."""
        counts = counts.clamp_min(0) + pseudo_count
        if self.input_mask is not None:
            counts = counts.masked_fill(torch.isinf(self.input_mask), 0.0)
        self.logits_unconstrained.copy_(normalised_log_weights(counts, 0.0, self.logits))

    def choose(self, values: torch.Tensor, unit: torch.Tensor, chooser: Chooser) -> torch.Tensor:
        """One input of each chosen sum unit, weighted by ``w_q e^{v_q}``.

        Args:
            values: this layer's inputs ``(B, F, Q)`` (from evidence, or all 0).
            unit: the chosen sum unit of every fold ``(B, F)``, ``-1`` where none is (the
                result there is arbitrary).
            chooser: sampling or argmax over the last dimension.

        Returns:
            The chosen input of every fold ``(B, F)``.
        """
        folds = torch.arange(unit.shape[1], device=unit.device)[None, :]
        log_w = self.log_weights()[folds, unit.clamp_min(0)]  # (B, F, Q)
        return chooser(log_w + values)

    def prior_dims(self, attribute: str) -> list[str]:
        """This layer's ``region``, ``sum`` and ``input`` axes, named after its place in the
        circuit (``sums.0.region``, ``root.sum``, ...)."""
        label = self._pyro_name.split(".", 1)[-1] if self._pyro_name else "sum"
        return [f"{label}.{axis}" for axis in ("region", "sum", "input")]
