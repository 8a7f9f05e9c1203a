"""Multivariate Gaussian input units: one full-covariance Gaussian per leaf region and channel.

Input unit ``i`` of leaf region ``l`` (variables ``S``, ``|S| = n_l``) is
``N(x_S | mu_{l,i}, Sigma_{l,i})`` with ``Sigma = L L^T``, ``L`` lower triangular with
diagonal ``L_jj = scale_floor + exp(u_jj) > scale_floor``. The floor keeps the likelihood
bounded: every principal block has ``det Sigma_OO >= prod_{j in O} L_jj^2 >=
scale_floor^(2 |O|)`` (Cauchy-Binet on the rows ``O`` of ``L``), so no marginal density
exceeds ``(2 pi)^(-|O|/2) scale_floor^(-|O|)``.

Parameters (see :class:`MultivariateGaussianInput`): the means per slot, ``loc`` ``(N, I)``
(slot ``n`` = a leaf region's variable, as for the univariate kinds, so priors and the
ArviZ export see one mean per variable and unit), and the Cholesky factors per leaf region,
``(L, I, V, V)`` with ``V`` the largest leaf; position ``k`` of a leaf is its ``k``-th slot
(``leaf_slots[l, k]``), and the positions past a leaf's size are padding: their block of
``L`` is the identity, they are never observed, never drawn and never counted.

Queries (``O``: a leaf's observed variables in an example, ``M``: its missing ones):

- ``"sum"`` value: the exact marginal ``log N(x_O | mu_O, Sigma_OO)``; a leaf with nothing
  observed gives ``log 1 = 0``. Examples with every variable of the leaf observed share
  ``L``; an example with some missing needs the Cholesky factor ``C`` of ``Sigma_OO``:
  ``log det Sigma_OO = 2 sum_j log C_jj`` and ``r_O^T Sigma_OO^-1 r_O``, examples with
  equally many observed factorised together, gradients in closed form
  (:meth:`~MultivariateGaussianInput._marginal_terms`).
- ``"max"`` value (max-product): ``max_{x_M} N(x_S) = N(x_O) (2 pi)^(-|M|/2)
  det(Sigma_{M|O})^(-1/2)``; with ``det Sigma = det Sigma_OO det Sigma_{M|O}`` this is
  ``-(n_l/2) log 2 pi - (1/2) log det Sigma - (1/2) r_O^T Sigma_OO^-1 r_O``.
- draws: the missing variables from ``N(x_M | x_O)``, whose mean is
  ``mu_M + Sigma_MO Sigma_OO^-1 (x_O - mu_O)``, by conditioning a joint draw (Matheron's
  rule): ``x* ~ N(mu, Sigma)``, ``x_M = x*_M + Sigma_MO Sigma_OO^-1 (x_O - x*_O)``; with
  ``mode=True`` the conditional mean (where the ``"max"`` value peaks).

EM (:mod:`~ugmm_prob.circuits.em`). The statistics come from the same autograd gradients as
for the other kinds, exactly, missing cells included. For one example with flow ``f`` into
a unit, ``w = Sigma'^-1 r`` (``w_O = Sigma_OO^-1 r_O``, ``w_M = 0``) and ``A`` the embedded
``Sigma_OO^-1``: ``dL/dmu = sum f w`` and ``dL/dSigma = (1/2) sum f (w w^T - A)``, while the
conditional Gaussian gives ``E[x | x_O] - mu = Sigma w`` and ``E[(x - mu)(x - mu)^T | x_O] =
Sigma + Sigma (w w^T - A) Sigma``. Hence ``sum f E[x | x_O] = n mu + Sigma dL/dmu`` and
``sum f E[(x - mu)(x - mu)^T | x_O] = n Sigma + 2 Sigma G Sigma``, ``G = dL/dSigma``
(symmetric), ``n = sum f`` (the flow). The parameters see ``G`` through ``Sigma = L L^T``:
``dL/dL = tril(2 G L)``; with ``Y = L^T dL/dL / 2``, ``P = L^T G L`` is the symmetric matrix
with lower triangle ``tril(Y)`` (``L^T`` times a strictly upper matrix is strictly upper),
and ``2 Sigma G Sigma = 2 L P L^T``. So :meth:`~MultivariateGaussianInput.expected_statistics`
keeps the interface ``(grads, flow)`` of :class:`~ugmm_prob.circuits.inputs.InputLayer` and
needs no batch. ``n`` counts only the examples that observe at least one of the leaf's
variables (:meth:`~MultivariateGaussianInput.observed_flow`): where none is observed the unit
is the constant ``log 1`` of ``log p(x_observed)`` and gets no statistics (the exact EM of
the observed cells, as for the univariate kinds), which would otherwise only pull it towards
its current parameters.

Why one module past 400 lines: one class, whose evaluation per missing pattern, conditional
draws and EM statistics all read the same padded Cholesky layout derived above.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

from ..boundary import NonFiniteError
from .inputs import MEAN_PSEUDO_COUNT, REACHED_FRACTION, InputLayer

__all__ = ["MultivariateGaussianInput"]

LOG_2PI = math.log(2 * math.pi)
"""``log(2 pi)``."""


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a b^T`` over the last axis, batched."""
    return a[..., :, None] * b[..., None, :]


class MultivariateGaussianInput(InputLayer):
    """``I`` full-covariance Gaussians ``N(x_S | mu, L L^T)`` per leaf region ``S``.

    Parameters: ``loc`` ``(N, I)``, the mean of slot ``n``'s variable under unit ``i`` of
    its leaf; ``scale_tril_unconstrained`` ``(L, I, V, V)``, read as the lower-triangular
    factor :attr:`scale_tril` (entries below the diagonal as they are, diagonal
    ``scale_floor + exp(u_jj)``; entries above the diagonal and the padding positions of
    smaller leaves are ignored and get no gradient). See the module docstring for the
    queries and EM. Layout buffers: ``real`` ``(L, V)`` (the position holds a variable, not
    padding), ``leaf_var`` ``(L, V)`` (its variable; ``D`` on padding) and ``slot_position``
    ``(N,)`` (a slot's position in its leaf).

    Args:
        in_features: number of variables ``D``.
        slot_var: ``(N,)`` the variable of every slot.
        leaf_slots: ``(L, V)`` the slots of every leaf region, padded with ``N``.
        channels: units per leaf region ``I``.
        scale_floor: lower bound of every diagonal entry of the Cholesky factors (so every
            conditional standard deviation ``sqrt(Sigma_{j | <j})`` and every marginal one
            exceed it, and the likelihood cannot diverge).
    """

    support = constraints.real
    prior_parameters: ClassVar[dict[str, str]] = {"loc": "loc"}

    def __init__(
        self,
        in_features: int,
        slot_var: torch.Tensor,
        leaf_slots: torch.Tensor,
        channels: int,
        *,
        scale_floor: float = 1e-2,
    ) -> None:
        super().__init__(in_features, slot_var, leaf_slots, channels)
        if not scale_floor > 0:
            raise ValueError(
                f"MultivariateGaussianInput: expected scale_floor > 0, got {scale_floor}"
            )
        self.scale_floor = float(scale_floor)
        leaves, width = self.leaf_slots.shape
        real = self.leaf_slots < self.num_slots
        spare = torch.cat([self.slot_var, self.slot_var.new_tensor([in_features])])
        self.register_buffer("real", real, persistent=False)
        self.register_buffer("leaf_var", spare[self.leaf_slots], persistent=False)
        self.loc = PyroParam(torch.randn(self.num_slots, channels))
        raw = torch.zeros(leaves, channels, width, width)
        start = max(1.0, 2 * self.scale_floor)
        raw.diagonal(dim1=-2, dim2=-1).fill_(math.log(start - self.scale_floor))
        self.scale_tril_unconstrained = torch.nn.Parameter(raw)

    # ------------------------------------------------------------------------------------
    # Parameters in the leaf layout
    # ------------------------------------------------------------------------------------
    @property
    def leaf_size(self) -> torch.Tensor:
        """``(L,)`` the number of variables of every leaf region."""
        return self.real.sum(-1)

    def _pairs(self) -> torch.Tensor:
        """``(L, 1, V, V)``: both positions are variables of the leaf (not padding)."""
        real = self.real[:, None, :]
        return real[..., :, None] & real[..., None, :]

    @property
    def scale_tril(self) -> torch.Tensor:
        """``(L, I, V, V)`` the Cholesky factors ``L``: ``tril(u, -1)`` below the diagonal,
        ``scale_floor + exp(u_jj)`` on it; the identity on padding positions."""
        raw = self.scale_tril_unconstrained
        real = self.real[:, None, :]
        diagonal = self.scale_floor + raw.diagonal(dim1=-2, dim2=-1).exp()
        diagonal = torch.where(real, diagonal, torch.ones_like(diagonal))
        below = torch.where(self._pairs(), raw, torch.zeros_like(raw)).tril(-1)
        return below + torch.diag_embed(diagonal)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """``(L, I, V, V)`` ``Sigma = L L^T`` (the identity on padding positions)."""
        tril = self.scale_tril
        return tril @ tril.mT

    def leaf_loc(self) -> torch.Tensor:
        """``(L, I, V)`` the means in the leaf layout (0 on padding positions)."""
        loc = self.loc
        padded = torch.cat([loc, loc.new_zeros(1, loc.shape[1])])
        return padded[self.leaf_slots].transpose(1, 2)

    def _to_slots(self, leaf_values: torch.Tensor) -> torch.Tensor:
        """``(L, I, V) -> (N, I)``: the value of every slot's position."""
        return leaf_values[self.slot_leaf, :, self.slot_position]

    def _leaf_values(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, D)`` read at every leaf position: ``(B, L, V)`` (0 on padding)."""
        padded = torch.cat([x, x.new_zeros(len(x), 1)], 1)
        return padded[:, self.leaf_var]

    def _leaf_observed(self, observed: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B, L, V)``: the position holds an observed variable (never padding)."""
        if observed is None:
            return self.real.expand(batch, *self.real.shape)
        return self.leaf_observed(observed)

    def observed_flow(self, flow: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        """``(L, I)``: the flow of every unit from the examples that observe at least one of
        its leaf's variables (a unit with none observed has the constant value ``log 1``
        and no statistics; one with some observed gets the conditional Gaussian's)."""
        if observed is None:
            return flow if flow.dim() == 2 else flow.sum(0)
        seen = self.leaf_observed(observed).any(-1).to(flow.dtype)  # (B, L)
        return torch.einsum("bl,bli->li", seen, flow)

    # ------------------------------------------------------------------------------------
    # Upward values
    # ------------------------------------------------------------------------------------
    def log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None, mode: str = "sum"
    ) -> torch.Tensor:
        """Refused: a multivariate unit is over its whole leaf region, not a product over
        slots; use :meth:`region_log_values`."""
        raise NotImplementedError(
            "MultivariateGaussianInput has no per-slot units: its units are Gaussians over "
            "whole leaf regions (use region_log_values)"
        )

    def region_log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None, mode: str = "sum"
    ) -> torch.Tensor:
        """``(B, L, I)``: ``log N(x_O | mu_O, Sigma_OO)`` (``"sum"``), or the max-product
        value ``-(n_l/2) log 2 pi - (1/2) log det Sigma - (1/2) r_O^T Sigma_OO^-1 r_O``
        (``"max"``), with ``O`` each example's observed variables of the leaf and
        ``r = x - mu``."""
        if mode not in ("sum", "max"):
            raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
        loc, tril = self.leaf_loc(), self.scale_tril
        batch = len(x)
        observed_leaf = self._leaf_observed(observed, batch)
        values = torch.where(observed_leaf, self._leaf_values(x), 0.0)  # no NaN reaches a grad
        residual = values[:, :, None, :] - loc
        residual = torch.where(observed_leaf[:, :, None, :], residual, 0.0)  # (B, L, I, V)
        quad, half_log_det = self._marginal_terms(residual, observed_leaf, tril)
        if mode == "sum":
            count = observed_leaf.sum(-1).to(quad.dtype)[..., None]
            return -0.5 * quad - half_log_det - 0.5 * LOG_2PI * count
        full_half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        size = self.leaf_size.to(quad.dtype)[:, None]
        return -0.5 * quad - full_half_log_det - 0.5 * LOG_2PI * size

    def _marginal_terms(
        self, residual: torch.Tensor, observed_leaf: torch.Tensor, tril: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L, I)`` each: ``r_O^T Sigma_OO^-1 r_O`` and ``(1/2) log det Sigma_OO`` for
        every example's observed positions ``O`` of every leaf (``residual`` ``r`` is 0 at
        missing positions and padding).

        Fully observed leaves use ``L`` itself (one triangular solve per unit for the whole
        batch); a leaf with ``o`` of its variables observed and some missing needs the
        Cholesky factor of its ``o x o`` block ``Sigma_OO``. Examples are grouped by ``o``,
        so each group's blocks are gathered without padding and factorised in one batched
        call, with closed-form gradients (:class:`_GroupedQuadraticFormAndLogDet`).

        Why not the cheaper ``min(m, o)``-square Schur complement of the precision when few
        are missing (``Sigma_OO^-1 = P_OO - P_OM P_MM^-1 P_MO``): EM reads its statistics
        from these gradients (``n Sigma + 2 Sigma G Sigma``), and through ``P = Sigma^-1``
        they lose every digit for nearly singular units (tried: a unit of condition number
        6e9 in a breast-cancer fit got a scatter matrix with eigenvalue -134 where the
        largest was 11).
        """
        batch, leaves, _ = observed_leaf.shape
        z = torch.linalg.solve_triangular(tril, residual.permute(1, 2, 3, 0), upper=False)
        full_quad = z.pow(2).sum(2).permute(2, 0, 1)  # (B, L, I)
        full_half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1).expand(batch, -1, -1)
        count = observed_leaf.sum(-1)
        complete = (count == self.leaf_size)[..., None]  # (B, L, 1)
        quad = torch.where(complete, full_quad, 0.0).flatten(0, 1)
        half_log_det = torch.where(complete, full_half_log_det, 0.0).flatten(0, 1)
        partial = ((count > 0) & ~complete[..., 0]).flatten().nonzero().squeeze(1)
        if len(partial):
            size = count.flatten()[partial]
            # the observed positions of each example first (a stable sort keeps their order)
            observed_flat = observed_leaf.flatten(0, 1)[partial]
            order = torch.sort((~observed_flat).to(torch.uint8), dim=-1, stable=True)[1]
            groups = []
            for k in torch.unique(size).tolist():
                member = (size == k).nonzero().squeeze(1)
                groups.append((partial[member], order[member, :k]))
            term, log_det = _GroupedQuadraticFormAndLogDet.apply(
                tril @ tril.mT, residual.flatten(0, 1), groups, leaves
            )
            quad, half_log_det = quad + term, half_log_det + log_det
        return quad.unflatten(0, (batch, leaves)), half_log_det.unflatten(0, (batch, leaves))

    # ------------------------------------------------------------------------------------
    # Downward: draws and modes
    # ------------------------------------------------------------------------------------
    def draw(
        self,
        leaf_channel: torch.Tensor,
        x: torch.Tensor,
        observed: torch.Tensor | None,
        *,
        mode: bool,
    ) -> torch.Tensor:
        """``(B, D)``: every used leaf's unobserved variables drawn from its chosen unit's
        conditional ``N(x_M | x_O)`` (``mode=True``: its mean ``mu_M + Sigma_MO Sigma_OO^-1
        (x_O - mu_O)``), observed ones as given (``observed`` None: all observed).

        A joint draw ``x* = mu + L eps`` is conditioned by Matheron's rule,
        ``x_M = x*_M + Sigma_MO Sigma_OO^-1 (x_O - x*_O)``.
        """
        batch = len(leaf_channel)
        leaves = torch.arange(self.num_leaves, device=leaf_channel.device)[None]
        channel = leaf_channel.clamp_min(0)
        loc = self.leaf_loc()[leaves, channel]  # (B, L, V)
        tril = self.scale_tril[leaves, channel]  # (B, L, V, V)
        observed_leaf = self._leaf_observed(observed, batch)
        values = torch.where(observed_leaf, self._leaf_values(x).to(loc.dtype), 0.0)
        joint = loc
        if not mode:
            joint = loc + (tril @ torch.randn_like(loc)[..., None]).squeeze(-1)
        leaf_values = _conditioned(joint, tril @ tril.mT, values, observed_leaf)
        slot_values = leaf_values[:, self.slot_leaf, self.slot_position]  # (B, N)
        used = (leaf_channel >= 0).index_select(1, self.slot_leaf)
        target = torch.where(used, self.slot_var, self.in_features)
        out = slot_values.new_zeros(batch, self.in_features + 1)
        return out.scatter(1, target, slot_values)[:, : self.in_features]

    def posterior_mean(
        self, posterior: torch.Tensor, x: torch.Tensor, observed: torch.Tensor
    ) -> torch.Tensor:
        """``(B, D)``: as for the univariate kinds, with each unit's mean of a leaf's missing
        variables given the example's observed ones in that leaf, ``mu_M + Sigma_MO
        Sigma_OO^-1 (x_O - mu_O)`` (one conditional Gaussian per example, leaf and unit)."""
        observed_leaf = self._leaf_observed(observed, len(x))[:, :, None, :]  # (B, L, 1, V)
        values = torch.where(observed_leaf, self._leaf_values(x)[:, :, None, :], 0.0)
        mean = _conditioned(self.leaf_loc(), self.covariance_matrix, values, observed_leaf)
        weighted = torch.einsum("bli,bliv->blv", posterior.to(mean.dtype), mean)
        return self.leaf_positions_to_variables(weighted)

    # ------------------------------------------------------------------------------------
    # Moments and initialisation
    # ------------------------------------------------------------------------------------
    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per slot ``(N, I)``: ``E[x_j] = mu_j`` and ``E[x_j^2] = Sigma_jj + mu_j^2`` with
        ``Sigma_jj = sum_k L_jk^2``."""
        variance = self.scale_tril.pow(2).sum(-1)  # (L, I, V)
        loc = self.loc
        return loc, self._to_slots(variance) + loc**2

    @torch.no_grad()
    def init_from_examples(self, examples: torch.Tensor, spread: torch.Tensor) -> None:
        """Unit ``i`` of a leaf centred at its example (``mu = examples[..., 0]``, the slots
        of a leaf reading one training row), covariance ``diag(spread^2)`` with every
        standard deviation at least twice the floor."""
        raw = self.scale_tril_unconstrained
        scale = spread.to(raw).clamp_min(2 * self.scale_floor)
        fresh = torch.zeros_like(raw)
        position = self.slot_position
        fresh[self.slot_leaf, :, position, position] = (scale - self.scale_floor).log()[:, None]
        self.loc_unconstrained.copy_(examples[..., 0].to(raw))
        raw.copy_(fresh)

    def prior_dims(self, attribute: str) -> list[str]:
        """``slot, input_channel`` (the means)."""
        return ["slot", "input_channel"]

    # ------------------------------------------------------------------------------------
    # EM
    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def expected_statistics(
        self, grads: dict[str, torch.Tensor], flow: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per unit: ``count = n = sum f``, ``sum = sum f E[x | x_O]`` ``(L, I, V)`` and
        ``sum_outer = sum f E[x x^T | x_O]`` ``(L, I, V, V)`` (``f``: the example's flow into
        the unit; missing cells by the conditional Gaussian), exactly, from the gradients:
        ``sum f E[x | x_O] = n mu + Sigma dL/dmu`` and ``sum f E[(x - mu)(x - mu)^T | x_O] =
        n Sigma + 2 L P L^T`` (module docstring; padding positions are 0)."""
        loc, tril = self.leaf_loc(), self.scale_tril
        raw = self.scale_tril_unconstrained
        pairs, real = self._pairs(), self.real[:, None, :]
        loc_grad = grads["loc_unconstrained"]
        loc_grad = torch.cat([loc_grad, loc_grad.new_zeros(1, loc_grad.shape[1])])
        loc_grad = loc_grad[self.leaf_slots].transpose(1, 2)  # (L, I, V)
        raw_grad = grads["scale_tril_unconstrained"]
        # L_jj = floor + exp(u_jj): dL/dL_jj = dL/du_jj / exp(u_jj)
        diagonal = raw_grad.diagonal(dim1=-2, dim2=-1) / raw.diagonal(dim1=-2, dim2=-1).exp()
        diagonal = torch.where(real, diagonal, torch.zeros_like(diagonal))
        below = torch.where(pairs, raw_grad, torch.zeros_like(raw_grad)).tril(-1)
        tril_grad = below + torch.diag_embed(diagonal)  # tril(2 G L)
        half = tril.mT @ tril_grad / 2
        symmetric = half.tril() + half.tril(-1).mT  # P = L^T G L
        covariance = tril @ tril.mT
        count = flow.detach().clone()
        n = count[..., None]
        shift = (covariance @ loc_grad[..., None]).squeeze(-1)  # sum f (E[x | x_O] - mu)
        centred = 2 * tril @ symmetric @ tril.mT + n[..., None] * covariance
        first = shift + n * loc
        second = centred + _outer(shift, loc) + _outer(loc, shift) + n[..., None] * _outer(loc, loc)
        return {
            "count": count,
            "sum": torch.where(real, first, torch.zeros_like(first)),
            "sum_outer": torch.where(pairs, second, torch.zeros_like(second)),
        }

    @torch.no_grad()
    def maximise(
        self,
        stats: dict[str, torch.Tensor],
        *,
        pseudo_count: float,
        variance_pseudo_count: float,
        covariance_pooling: float = 0.0,
    ) -> None:
        """Closed-form M-step of every unit (no mixing weights here: ``pseudo_count`` has
        nothing to smooth).

        ``mu = (s_1 + kappa mu_old) / (n + kappa)`` with a vanishing ``kappa``
        (:data:`~ugmm_prob.circuits.inputs.MEAN_PSEUDO_COUNT`), ``T = (S + beta Sigma_old +
        nu P) / (n + beta + nu)`` with the scatter ``S = S_2 - s_1 mu^T - mu s_1^T + n mu
        mu^T``, ``beta = variance_pseudo_count``, ``nu = covariance_pooling`` and ``P`` the
        pooled scatter of the leaf's units, ``sum_i S_i / sum_i n_i`` (the M-step of a
        tied-covariance mixture: ``nu = 0`` is maximum likelihood, ``nu -> inf`` ties the
        units' covariances, and a few rows' worth regularises units that few rows reach, a
        MAP step under an inverse-Wishart prior centred on ``P``); then the floor: with ``T
        = U diag(d)^2 U^T`` (``U`` unit lower triangular, i.e. ``x_j`` regressed on ``x_<j``
        with residual variance ``d_j^2``), the expected log-likelihood separates into one
        regression per ``j``, so its maximiser over ``{L : L_jj >= floor'}`` is ``L = U
        diag(max(d_j, floor'))``, with ``floor' = scale_floor (1 + 1e-4)`` (a hair above the
        floor, so ``log(L_jj - floor)`` stays finite): the step never lowers the likelihood.
        A unit with less than :data:`~ugmm_prob.circuits.inputs.REACHED_FRACTION` of its
        leaf's flow keeps its parameters.
        """
        count = stats["count"].clamp_min(0)
        first, second = stats["sum"], stats["sum_outer"]
        loc_old, tril_old = self.leaf_loc(), self.scale_tril
        covariance_old = tril_old @ tril_old.mT
        reached = count > REACHED_FRACTION * count.sum(-1, keepdim=True)
        n = count[..., None]
        loc = (first + MEAN_PSEUDO_COUNT * loc_old) / (n + MEAN_PSEUDO_COUNT)
        scatter = second - _outer(first, loc) - _outer(loc, first) + n[..., None] * _outer(loc, loc)
        beta, nu = max(variance_pseudo_count, 1e-12), float(covariance_pooling)
        pooled = scatter.sum(1, keepdim=True) / n.sum(1, keepdim=True)[..., None].clamp_min(1e-12)
        target = (scatter + beta * covariance_old + nu * pooled) / (n[..., None] + beta + nu)
        target = 0.5 * (target + target.mT)
        eye = torch.eye(target.shape[-1], dtype=target.dtype, device=target.device)
        target = torch.where(self._pairs(), target, eye)
        tril = torch.where(reached[..., None, None], self._floored_cholesky(target), tril_old)
        loc = torch.where(reached[..., None], loc, loc_old)
        self.loc_unconstrained.copy_(self._to_slots(loc))
        diagonal = tril.diagonal(dim1=-2, dim2=-1)
        real = self.real[:, None, :]
        gap = torch.where(real, diagonal - self.scale_floor, torch.ones_like(diagonal))
        raw = tril.tril(-1) + torch.diag_embed(torch.where(real, gap.log(), 0.0))
        self.scale_tril_unconstrained.copy_(raw)

    def _floored_cholesky(self, matrix: torch.Tensor) -> torch.Tensor:
        """The maximiser ``U diag(max(d, floor'))`` of :meth:`maximise` for symmetric
        positive semi-definite ``matrix`` ``= U diag(d)^2 U^T`` (``floor'`` just above the
        scale floor). A singular matrix (fewer examples than variables and ``beta = 0``)
        first gets the smallest diagonal jitter, from ``eps * max_j T_jj`` up, that
        factorises."""
        width = matrix.shape[-1]
        eye = torch.eye(width, dtype=matrix.dtype, device=matrix.device)
        scale = matrix.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(self.scale_floor**2)
        jitter = torch.zeros_like(scale)
        step = scale * torch.finfo(matrix.dtype).eps * width
        for _ in range(12):
            factor, info = torch.linalg.cholesky_ex(matrix + jitter[..., None, None] * eye)
            failed = info > 0
            if not bool(failed.any()):
                break
            jitter = torch.where(failed, torch.where(jitter > 0, 10 * jitter, step), jitter)
        else:
            raise NonFiniteError(  # a divergence: the training loops restore the last epoch
                "MultivariateGaussianInput.maximise: a covariance update is not positive "
                "semi-definite (non-finite statistics?)"
            )
        diagonal = factor.diagonal(dim1=-2, dim2=-1)
        floored = diagonal.clamp_min(self.scale_floor * (1 + 1e-4) + 1e-12)
        return factor * (floored / diagonal)[..., None, :]


def _conditioned(
    joint: torch.Tensor, covariance: torch.Tensor, values: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:
    """``(..., V)``: ``values`` at observed positions, elsewhere ``joint`` moved by
    ``Sigma_MO Sigma_OO^-1 (x_O - joint_O)``: the conditional mean of ``N(x_M | x_O)`` when
    ``joint`` is the mean, a conditional draw when it is a joint draw (Matheron's rule).
    Shapes broadcast (``covariance`` ``(..., V, V)``)."""
    pair = observed[..., :, None] & observed[..., None, :]
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    factor = _cholesky(torch.where(pair, covariance, eye))
    gap = torch.where(observed, values - joint, 0.0)[..., None]
    correction = (covariance @ torch.cholesky_solve(gap, factor)).squeeze(-1)
    return torch.where(observed, values, joint + correction)


class _GroupedQuadraticFormAndLogDet(torch.autograd.Function):
    """Per example ``e`` and unit ``i``: ``v^T B^-1 v`` and ``(1/2) log det B`` for the
    block ``B = matrix[l, i][K, K]`` (``matrix`` ``(L, I, V, V)``) and vector ``v =
    vectors[e, i][K]`` of every ``(pairs, positions)`` of ``groups`` (``pairs`` ``(G,)`` the
    examples ``e = b * leaves + l``, ``positions`` ``(G, k)`` their ``K``); 0 for examples
    in no group. Closed-form gradients: ``d/dv = 2 B^-1 v``, and ``-w w^T``, ``(1/2) B^-1``
    with respect to ``B`` (``w = B^-1 v``), scattered back into one gradient buffer per
    input; autograd through per-group gathers and ``torch.linalg.cholesky`` would give the
    same numbers at several times the cost (a zero-filled copy of each input per group, and
    triangular solves and masks per block)."""

    @staticmethod
    def forward(ctx, matrix, vectors, groups, leaves):
        term = vectors.new_zeros(vectors.shape[:2])
        log_det = vectors.new_zeros(vectors.shape[:2])
        unit = torch.arange(vectors.shape[1], device=vectors.device)[None, :, None]
        saved = []
        for pair, position in groups:
            index = _block_index(pair % leaves, unit, position[:, None, :])
            factor = _cholesky(matrix[index])  # (G, I, k, k)
            vector = vectors[pair[:, None, None], unit, position[:, None, :]]  # (G, I, k)
            solved = torch.cholesky_solve(vector[..., None], factor).squeeze(-1)  # w
            term[pair] = (vector * solved).sum(-1)
            log_det[pair] = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            saved.append((index, factor, solved))
        ctx.saved = saved, groups, unit
        ctx.shapes = matrix.shape, vectors.shape
        return term, log_det

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, term_grad, log_det_grad):
        saved, groups, unit = ctx.saved
        matrix_grad = term_grad.new_zeros(ctx.shapes[0])
        vectors_grad = term_grad.new_zeros(ctx.shapes[1])
        for (index, factor, solved), (pair, position) in zip(saved, groups, strict=True):
            g_term, g_log_det = term_grad[pair][..., None], log_det_grad[pair][..., None]
            block_grad = 0.5 * g_log_det[..., None] * torch.cholesky_inverse(factor)
            block_grad = block_grad - g_term[..., None] * _outer(solved, solved)
            matrix_grad.index_put_(index, block_grad, accumulate=True)
            vectors_grad[pair[:, None, None], unit, position[:, None, :]] = 2 * g_term * solved
        return matrix_grad, vectors_grad, None, None


def _block_index(
    leaf: torch.Tensor, unit: torch.Tensor, position: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Advanced index of the ``(G, I, k, k)`` blocks ``matrix[leaf, unit][K, K]`` of an
    ``(L, I, V, V)`` matrix (``position`` ``(G, 1, k)`` the positions ``K`` of each example)."""
    return (
        leaf[:, None, None, None],
        unit[..., None],
        position[..., :, None],
        position[..., None, :],
    )


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.cholesky`` with an error that says what failed."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info > 0).any()):
        raise ValueError(
            "MultivariateGaussianInput: a covariance block is not numerically positive "
            "definite (ill-conditioned covariance; use float64 or a larger scale_floor)"
        )
    return factor
