"""Product and sum layers of a circuit, over values in log space.

Values of one level are a tensor ``(B, R, P, W)``: batch, repetition, region (in heap order,
see :mod:`~ugmm_prob.circuits.region_graphs`), and the ``W`` units of each region.

- :class:`ProductLayer` multiplies every unit of region ``2q`` with every unit of its
  sibling ``2q + 1`` (disjoint scopes: decomposable), ``W_out = W_left * W_right``;
- :class:`SumLayer` gives each region ``S`` normalised mixtures of its ``Q`` inputs (equal
  scopes: smooth), computed with the max shift (log-einsum-exp) so that the inner work is a
  batched matrix product, ``log sum_q w_q e^{v_q} = m + log sum_q w_q e^{v_q - m}``; with
  ``mode="max"`` the max-product value ``max_q (log w_q + v_q)``.

Both also run downwards: :meth:`ProductLayer.child_units` maps a chosen product unit to the
units of the two children, :meth:`SumLayer.choose` picks one input of each chosen sum unit
(at random in proportion to ``w_q e^{v_q}`` for sampling, or the best for MPE). A sum layer
also takes part in EM (:mod:`~ugmm_prob.circuits.em`): :meth:`SumLayer.expected_counts` and
the closed-form :meth:`SumLayer.maximise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.nn import PyroModule, PyroParam

__all__ = [
    "MIN_LOG_WEIGHT",
    "ProductLayer",
    "SumLayer",
    "normalised_log_weights",
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


def _broadcast_logsumexp(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """:func:`weighted_logsumexp` with a shift of its own per sum unit (materialises
    ``(B, G, S, Q)``): exact when weights of 0 sit beside much larger inputs."""
    return torch.logsumexp(values[:, :, None, :] + log_weights, dim=-1)


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
    weights."""
    weights = count + pseudo_count
    total = weights.sum(-1, keepdim=True)
    new = (weights / total.clamp_min(1e-300)).log().clamp_min(MIN_LOG_WEIGHT)
    return torch.where(total > 0, new, torch.log_softmax(current_logits, -1))


class ProductLayer(torch.nn.Module):
    """Products of sibling regions: ``(B, R, 2P, W) -> (B, R, P, W * W)``.

    Unit ``u * W + v`` of region ``q`` is unit ``u`` of region ``2q`` times unit ``v`` of
    region ``2q + 1`` (a sum of log-values).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = int(width)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """The log-values of all products of sibling units."""
        left, right = values[:, :, 0::2], values[:, :, 1::2]
        return (left[..., :, None] + right[..., None, :]).flatten(-2)

    def child_units(self, unit: torch.Tensor) -> torch.Tensor:
        """Chosen product units ``(B, P)`` -> the child units they multiply ``(B, 2P)``."""
        return torch.stack([unit // self.width, unit % self.width], dim=-1).flatten(-2)


class SumLayer(PyroModule):
    """``S`` mixtures per region of the region's ``Q`` input units, for ``R x P`` regions.

    Parameter ``logits`` ``(R, P, S, Q)``; the weights are ``softmax(logits, -1)``.
    """

    prior_parameters = {"logits": "sum_logits"}  # noqa: RUF012 - read-only table
    """Attribute -> parameter kind for priors (:mod:`ugmm_prob.bayes`)."""
    sum_kernel = staticmethod(weighted_logsumexp)
    """How ``mode="sum"`` combines values and weights (replaceable, e.g. by benchmarks)."""

    def __init__(
        self,
        repetitions: int,
        regions: int,
        sums: int,
        inputs: int,
        *,
        init_scale: float = 0.1,
        allowed: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.logits = PyroParam(init_scale * torch.randn(repetitions, regions, sums, inputs))
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
        else:
            self.input_mask = None

    def log_weights(self) -> torch.Tensor:
        """Normalised log-weights ``(R, P, S, Q)`` (``-inf`` where an input is not allowed)."""
        logits = self.logits if self.input_mask is None else self.logits + self.input_mask
        return torch.log_softmax(logits, dim=-1)

    def forward(self, values: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """``(B, R, P, Q) -> (B, R, P, S)``: log-sums (``"sum"``) or max-products (``"max"``)."""
        batch, reps, regions, inputs = values.shape
        log_w = self.log_weights()
        if mode == "max":
            combine = weighted_max
        elif self.input_mask is None:
            combine = self.sum_kernel
        else:
            # The matrix-product trick shifts by the largest input of any unit; an input a
            # unit may not use can dwarf all of its own and underflow them to log 0.
            combine = _broadcast_logsumexp
        out = combine(
            values.reshape(batch, reps * regions, inputs),
            log_w.reshape(reps * regions, *log_w.shape[2:]),
        )
        return out.reshape(batch, reps, regions, log_w.shape[2])

    @torch.no_grad()
    def expected_counts(self, logits_grad: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Expected number of times each sum unit picks each input, ``(R, P, S, Q)``.

        ``logits_grad`` is the gradient of a log-likelihood (summed over a batch) with respect
        to :attr:`logits`, ``flow`` ``(R, P, S)`` the flow into each sum unit. With
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

    def choose(
        self, values: torch.Tensor, rep: torch.Tensor, unit: torch.Tensor, chooser: Chooser
    ) -> torch.Tensor:
        """One input of each chosen sum unit, weighted by ``w_q e^{v_q}``.

        Args:
            values: this layer's inputs ``(B, R, P, Q)`` (from evidence, or all 0).
            rep: repetition of each example ``(B,)``.
            unit: chosen sum unit of every region ``(B, P)``.
            chooser: sampling or argmax over the last dimension.

        Returns:
            The chosen input of every region ``(B, P)``.
        """
        batch = torch.arange(len(rep), device=rep.device)
        regions = torch.arange(unit.shape[1], device=rep.device)[None, :]
        log_w = self.log_weights()[rep[:, None], regions, unit]  # (B, P, Q)
        return chooser(log_w + values[batch, rep])

    def prior_dims(self, attribute: str) -> list[str]:
        """This layer's ``repetition``, ``region``, ``sum`` and ``input`` axes, named after
        its place in the circuit (``sums.0.region``, ``root.sum``, ...)."""
        label = self._pyro_name.split(".", 1)[-1] if self._pyro_name else "sum"
        return [f"{label}.{axis}" for axis in ("repetition", "region", "sum", "input")]
