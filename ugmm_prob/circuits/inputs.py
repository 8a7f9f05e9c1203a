"""Input layers of a circuit: ``I`` units per leaf region, behind one interface.

A leaf region of the region graph holds one or several variables; a *slot* is one
(leaf region, variable) pair, and the slots are listed in
:class:`~ugmm_prob.circuits.compile.CompiledGraph` (``slot_var``, ``leaf_slots``). For the
univariate kinds, unit ``(n, i)`` is a normalised distribution ``p_{n,i}(x_{var(n)})`` over
the variable of slot ``n``, and input unit ``i`` of a leaf region is the product of unit
``i`` of its slots. :class:`InputLayer` is what the circuit asks of
any kind of unit: log-densities at observed values, their max-product twins and modes (for
MPE), draws of selected units, exact moments, initialisation from training examples, and
what :mod:`ugmm_prob.bayes` and the ArviZ export need to know (which parameters take priors,
their dimension names). A new kind of input is one new subclass.

- :class:`GaussianMixtureInput`: uGMM neurons with tied inputs, ``K``-component univariate
  Gaussian mixtures (the default; continuous data);
- :class:`CategoricalInput`: a categorical distribution over ``0..V-1`` (e.g. 8-bit pixels
  with ``V = 256``), for discrete data;
- :class:`~ugmm_prob.circuits.multivariate.MultivariateGaussianInput` (its own module): a
  full-covariance Gaussian over a whole leaf region, not a product over its slots.

Why one module past 400 lines: the interface and its two univariate implementations are read
side by side (every method of :class:`InputLayer` is answered by both, and they inherit its
leaf-region products). The registry of kinds by name, ``INPUT_TYPES``, lives in
:mod:`ugmm_prob.circuits.circuit`, which imports every kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import pyro.distributions as dist
import torch
from numpy.polynomial.hermite import hermgauss
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from .._deprecation import RenamedAttribute
from ..distributions import neuron_mixture
from ..kernels import (
    categorical_leaf_region_log_density,
    native_categorical_regions_usable,
    native_leaf_regions_usable,
    tied_leaf_region_log_density,
    tied_mixture_log_density,
)
from .layers import normalised_log_weights, region_products, sample_index

__all__ = ["CategoricalInput", "GaussianMixtureInput", "InputLayer"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MEAN_PSEUDO_COUNT = 1e-8
"""Weight of a component's current mean in its M-step: keeps unreached components in place."""

REACHED_FRACTION = 1e-5
"""A component whose expected count is below this fraction of its unit's keeps its mean and
scale in the M-step. Counts come from gradients as ``dL/dl_k + pi_k flow``, exact in
arithmetic but, in float32, off by about 1e-7 of the unit's flow; below this fraction a
component's statistics are that rounding, and dividing them by its count would throw its
mean anywhere (with many components per unit, online EM diverged so)."""


class InputLayer(PyroModule):
    """``I`` input units per leaf region, univariate per slot here (abstract).

    Subclasses define :meth:`log_density`, :meth:`max_log_density`, :meth:`max_missing`,
    :meth:`draw_units`, :meth:`moments`, :meth:`init_from_examples`, :attr:`support` and
    the Bayesian bookkeeping :attr:`prior_parameters` / :meth:`prior_dims`; a kind of unit
    over a whole leaf region (not a product over its slots) overrides
    :meth:`region_log_values` and :meth:`draw` instead.

    Args:
        in_features: number of variables ``D``.
        slot_var: ``(N,)`` the variable of every slot.
        leaf_slots: ``(L, V)`` the slots of every leaf region, padded with ``N``.
        channels: units per leaf region ``I``.
    """

    support: ClassVar[constraints.Constraint]
    """The values one variable can take."""
    prior_parameters: ClassVar[dict[str, str]]
    """Attribute -> parameter kind (``"loc"``, ``"scale"``, ``"logits"``) for priors."""
    examples_per_unit: ClassVar[int] = 1
    """How many training examples :meth:`init_from_examples` reads per unit."""

    num_vars = RenamedAttribute("in_features")
    """Deprecated name of ``in_features``, the number of variables ``D``."""

    def __init__(
        self, in_features: int, slot_var: torch.Tensor, leaf_slots: torch.Tensor, channels: int
    ) -> None:
        super().__init__()
        slot_var = torch.as_tensor(slot_var, dtype=torch.long)
        if min(in_features, len(slot_var), channels) < 1:
            raise ValueError(
                f"{type(self).__name__}: expected in_features, slots and channels >= 1, got "
                f"{in_features}, {len(slot_var)}, {channels}"
            )
        if int(slot_var.min()) < 0 or int(slot_var.max()) >= in_features:
            raise ValueError(
                f"{type(self).__name__}: slot variables must lie in 0..{in_features - 1}"
            )
        self.in_features, self.channels = in_features, channels
        self.num_slots = len(slot_var)
        self.register_buffer("slot_var", slot_var, persistent=False)
        self.register_buffer("leaf_slots", torch.as_tensor(leaf_slots), persistent=False)
        slot_leaf = torch.zeros(self.num_slots, dtype=torch.long)
        for leaf, slots in enumerate(self.leaf_slots.tolist()):
            for slot in slots:
                if slot < self.num_slots:
                    slot_leaf[slot] = leaf
        self.register_buffer("slot_leaf", slot_leaf, persistent=False)
        position = torch.zeros(self.num_slots + 1, dtype=torch.long)
        leaves, width = self.leaf_slots.shape
        columns = torch.arange(width).expand(leaves, width)
        position = position.scatter(0, self.leaf_slots.reshape(-1), columns.reshape(-1))
        self.register_buffer("slot_position", position[: self.num_slots], persistent=False)

    @property
    def num_leaves(self) -> int:
        """The number of leaf regions ``L``."""
        return len(self.leaf_slots)

    def slot_values(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, D)`` read at every slot's variable: ``(B, N)``."""
        return x.index_select(-1, self.slot_var)

    def leaf_observed(self, observed: torch.Tensor) -> torch.Tensor:
        """``(B, L, V)``: position ``k`` of leaf ``l`` holds a variable observed in the
        example (never a padding position); ``observed`` ``(B, D)``."""
        seen = self.slot_values(observed)
        padded = torch.cat([seen, seen.new_zeros(len(seen), 1)], 1)  # padding reads False
        return padded[:, self.leaf_slots]

    def observed_flow(self, flow: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        """The flow that :meth:`expected_statistics` normalises by: of every slot's units,
        ``(N, I)``, counting only the examples that observe the slot's variable.

        A missing cell's unit has the constant value ``log 1``: it takes part in induced
        trees (it receives flow) but its parameters do not enter ``log p(x_observed)``, so
        the exact EM of the observed cells gives it no statistics, of its mixture weights
        (categories, components) or its data moments alike.

        Args:
            flow: the flows of the leaf regions' units, summed over a batch ``(L, I)``
                (``observed`` None: every cell observed) or per example ``(B, L, I)``.
            observed: ``(B, D)``, True where a cell is observed, or None.
        """
        if observed is None:
            summed = flow if flow.dim() == 2 else flow.sum(0)
            return summed.index_select(0, self.slot_leaf)
        seen = self.leaf_observed(observed).to(flow.dtype)  # (B, L, V)
        per_position = torch.einsum("blv,bli->lvi", seen, flow)
        return per_position[self.slot_leaf, self.slot_position]

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """``log p_{n,i}(x_{b,var(n)})`` for ``x`` ``(B, D)`` in the support: ``(B, N, I)``."""
        raise NotImplementedError

    def max_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """The max-product value of each unit at ``x`` (a mixture's best component)."""
        return self.log_density(x)

    def max_missing(self) -> torch.Tensor:
        """``max_v`` of :meth:`max_log_density` over the support, ``(N, I)``."""
        raise NotImplementedError

    def draw(
        self,
        leaf_channel: torch.Tensor,
        x: torch.Tensor,
        observed: torch.Tensor | None,
        *,
        mode: bool,
    ) -> torch.Tensor:
        """Values of every variable from the chosen input units: ``(B, D)``.

        Args:
            leaf_channel: ``(B, L)`` the unit chosen in every leaf region, ``-1`` where the
                leaf is not used (the chosen leaves of an example cover every variable once).
            x, observed: the evidence (a unit over several variables draws its unobserved
                ones given its observed ones; a product of univariate units ignores it).
            mode: sample exactly (False), or give the value at which the unit's
                max-product value peaks (a mixture's most peaked component's mean).
        """
        slot_channel = leaf_channel.index_select(1, self.slot_leaf)  # (B, N)
        batch = len(leaf_channel)
        # the used slot of every variable: scatter slot numbers, unused ones to a spare column
        target = torch.where(slot_channel >= 0, self.slot_var, self.in_features)
        slot = torch.zeros(batch, self.in_features + 1, dtype=torch.long, device=x.device)
        source = torch.arange(self.num_slots, device=x.device).expand(batch, -1)
        slot = slot.scatter(1, target, source)[:, : self.in_features]
        return self.draw_units(slot, slot_channel.gather(1, slot).clamp_min(0), mode=mode)

    def draw_units(self, slot: torch.Tensor, channel: torch.Tensor, *, mode: bool) -> torch.Tensor:
        """One value per variable from unit ``(slot[b, d], channel[b, d])``: ``(B, D)``."""
        raise NotImplementedError

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and second raw moment ``E[x^2]`` of every slot's units, each ``(N, I)``."""
        raise NotImplementedError

    def posterior_mean(
        self, posterior: torch.Tensor, x: torch.Tensor, observed: torch.Tensor
    ) -> torch.Tensor:
        """``(B, D)``: ``sum_i P(unit i of the leaf) E[x_d | x_observed, unit i]`` summed over
        the leaves holding ``d``, the conditional mean of every variable.

        Args:
            posterior: ``(B, L, I)``, the probability that each example's induced tree uses
                each unit (for each example the leaves it uses cover every variable once,
                so the sum over the leaves holding ``d`` is one mixture).
            x, observed: the evidence ``(B, D)``; a unit of one variable is independent of
                the other cells, so its conditional mean is its mean (:meth:`moments`),
                whatever the evidence (a unit over several variables overrides this).
        """
        return self.posterior_expectation(posterior, self.moments()[0])

    def posterior_expectation(
        self, posterior: torch.Tensor, unit_values: torch.Tensor
    ) -> torch.Tensor:
        """``(B, D)``: ``sum_i P(unit i of the leaf) v[n, i]`` summed over the leaves holding
        ``d``, for per-unit values ``unit_values`` ``(N, I)`` (slot ``n`` of variable ``d``),
        e.g. the units' means (:meth:`posterior_mean`) or :meth:`unit_expectations`.

        Args:
            posterior: ``(B, L, I)``, as for :meth:`posterior_mean`.
            unit_values: ``(N, I)``, one value per slot and channel.
        """
        values = unit_values.to(posterior.dtype)
        padded = torch.cat([values, values.new_zeros(1, values.shape[1])])  # padding slot: 0
        leaf_values = padded[self.leaf_slots]  # (L, V, I)
        return self.leaf_positions_to_variables(
            torch.einsum("bli,lvi->blv", posterior, leaf_values)
        )

    def unit_expectations(
        self, function: Callable[[torch.Tensor], torch.Tensor], *, points: int = 64
    ) -> torch.Tensor:
        """``E[f(x)]`` under every univariate unit, ``(N, I)``, for an elementwise ``f``
        (e.g. a map of logit-space pixels back to pixels); ``points``: quadrature nodes
        where the expectation is an integral. Kinds without it raise NotImplementedError."""
        raise NotImplementedError(
            f"{type(self).__name__} has no expectations of functions of its units"
        )

    def leaf_positions_to_variables(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, L, V) -> (B, D)``: the values at every leaf position summed into the
        position's variable (padding positions dropped)."""
        per_slot = values[:, self.slot_leaf, self.slot_position]  # (B, N)
        out = per_slot.new_zeros(len(values), self.in_features)
        return out.index_add(1, self.slot_var, per_slot)

    def init_from_examples(self, examples: torch.Tensor, spread: torch.Tensor) -> None:
        """Start every unit near training values.

        Args:
            examples: ``(N, I, M)`` values of slot ``n``'s variable in ``M =``
                :attr:`examples_per_unit` training rows chosen for unit ``(n, i)``; the
                slots of one leaf region read the same rows.
            spread: ``(N,)`` typical within-group standard deviation of each slot's variable.
        """
        raise NotImplementedError

    def prior_dims(self, attribute: str) -> list[str]:
        """ArviZ dimension names of a parameter that has a prior."""
        raise NotImplementedError

    def expected_statistics(
        self, grads: dict[str, torch.Tensor], flow: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """EM's expected sufficient statistics, additive over examples.

        Args:
            grads: gradient of a log-likelihood of the observed cells, summed over a batch,
                with respect to each parameter, by name (``"loc_unconstrained"``, ...).
            flow: :meth:`observed_flow`: the expected number of times each unit is used in
                the batch by an example that observes its data.
        """
        raise NotImplementedError

    def maximise(
        self,
        stats: dict[str, torch.Tensor],
        *,
        pseudo_count: float,
        variance_pseudo_count: float,
        covariance_pooling: float = 0.0,
    ) -> None:
        """EM's closed-form M-step from :meth:`expected_statistics` (summed over data).

        ``covariance_pooling`` ``nu``: pseudo-count of the pooled spread of a leaf region's
        (or slot's) units in every variance or covariance update, ``Sigma = (S + nu
        S_pooled) / (n + nu)``; ``nu = 0`` is maximum likelihood, a large ``nu`` ties the
        units' spreads (kinds without a spread ignore it)."""
        raise NotImplementedError

    def fill_value(self) -> float:
        """A value in the support, put where a variable is missing before evaluation."""
        return 0.0

    def log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None, mode: str = "sum"
    ) -> torch.Tensor:
        """Every slot's units' log-values ``(B, N, I)`` at ``x`` ``(B, D)``:
        :meth:`log_density` (``mode="sum"``) or :meth:`max_log_density` (``"max"``); where
        ``observed`` is False the units give ``log 1`` (sum) or :meth:`max_missing` (max)."""
        evaluate = self.log_density if mode == "sum" else self.max_log_density
        if observed is None:
            return evaluate(x)
        filled = torch.where(observed, x, self.fill_value())  # no NaN reaches the gradient
        missing = 0.0 if mode == "sum" else self.max_missing()
        return torch.where(self.slot_values(observed)[..., None], evaluate(filled), missing)

    def region_log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None, mode: str = "sum"
    ) -> torch.Tensor:
        """The input units of every leaf region, ``(B, L, I)``: :meth:`log_values`
        multiplied over each leaf's slots (see
        :func:`~ugmm_prob.circuits.layers.region_products`); in ``"sum"`` mode through
        :meth:`fused_region_log_values` where it gives a result."""
        if mode == "sum":
            fused = self.fused_region_log_values(x, observed)
            if fused is not None:
                return fused
        return region_products(self.log_values(x, observed, mode), self.leaf_slots)

    def fused_region_log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The ``"sum"`` leaf-region values from a fused kernel that never forms the
        ``(B, R, D, I)`` unit values, or None where none can run (the default: none)."""
        return None

    def check_values(self, x: torch.Tensor, observed: torch.Tensor | None) -> None:
        """Raise a clear error when an observed entry of ``x`` is not finite or lies outside
        the support."""
        bad = ~(self.support.check(x) & torch.isfinite(x))
        if observed is not None:
            bad &= observed
        if bool(bad.any()):
            raise ValueError(
                f"{type(self).__name__}: {int(bad.sum())} observed value(s) outside the "
                f"support ({self.describe_support()}), e.g. {float(x[bad][0])}"
            )

    def describe_support(self) -> str:
        """The support in words, for error messages."""
        return "finite real numbers"


class GaussianMixtureInput(InputLayer):
    """uGMM neurons with tied inputs: ``p(x_d) = sum_k pi_k N(x_d | mu_k, sigma_k^2)``.

    Parameters ``loc``, ``scale`` (``>= scale_floor``) and mixing ``logits``, each
    ``(N, I, K)`` (slot, channel, component). Log-densities go through the fused kernel
    :func:`~ugmm_prob.kernels.tied_mixture_log_density`.
    """

    support = constraints.real
    prior_parameters: ClassVar[dict[str, str]] = {
        "loc": "loc",
        "scale": "scale",
        "logits": "logits",
    }

    def __init__(
        self,
        in_features: int,
        slot_var: torch.Tensor,
        leaf_slots: torch.Tensor,
        channels: int,
        *,
        components: int = 2,
        scale_floor: float = 1e-2,
    ) -> None:
        super().__init__(in_features, slot_var, leaf_slots, channels)
        if components < 1 or not scale_floor > 0:
            raise ValueError(
                f"GaussianMixtureInput: expected components >= 1 and scale_floor > 0, got "
                f"{components}, {scale_floor}"
            )
        self.scale_floor = float(scale_floor)
        shape = (self.num_slots, channels, components)
        self.loc = PyroParam(torch.randn(shape))
        self.scale = PyroParam(torch.ones(shape), constraint=self._floor())
        self.logits = PyroParam(torch.zeros(shape))

    @property
    def examples_per_unit(self) -> int:  # type: ignore[override]
        """One training value per mixture component."""
        return self.loc.shape[-1]

    def _floor(self) -> constraints.Constraint:
        return constraints.greater_than(self.scale_floor)

    @property
    def mixture(self) -> dist.MixtureSameFamily:
        """Every unit as one mixture with batch shape ``(N, I)``."""
        return neuron_mixture(self.loc, self.scale, self.logits)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """``log sum_k pi_k N(x_n | mu_k, sigma_k^2)``: ``(B, N, I)``."""
        xs = self.slot_values(x)
        return tied_mixture_log_density(xs, self.loc[None], self.scale[None], self.logits[None])[
            :, 0
        ]

    def fused_region_log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Sums of log-densities through the C++ kernel
        :func:`~ugmm_prob.kernels.tied_leaf_region_log_density` where it can run."""
        if not native_leaf_regions_usable(x, self.loc):
            return None
        xs = self.slot_values(x)
        observed = None if observed is None else self.slot_values(observed)
        params = (self.loc[None], self.scale[None], self.logits[None])
        return tied_leaf_region_log_density(xs, *params, self.leaf_slots[None], observed)[:, 0]

    def _component_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x_n | mu_k, sigma_k^2)``: ``(B, N, I, K)``."""
        log_w = torch.log_softmax(self.logits, -1)
        xs = self.slot_values(x)
        return log_w + dist.Normal(self.loc, self.scale).log_prob(xs[:, :, None, None])

    def max_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """The best component: ``max_k (log pi_k + log N(x_d | mu_k, sigma_k^2))``."""
        return self._component_log_density(x).amax(-1)

    def _peaks(self) -> torch.Tensor:
        """Each component's weighted density at its mean, ``log pi_k - log sigma_k - ...``."""
        return torch.log_softmax(self.logits, -1) - torch.log(self.scale) - LOG_SQRT_2PI

    def max_missing(self) -> torch.Tensor:
        """The highest weighted component peak of each unit."""
        return self._peaks().amax(-1)

    def draw_units(self, slot: torch.Tensor, channel: torch.Tensor, *, mode: bool) -> torch.Tensor:
        """A draw (or the most peaked component's mean) of the selected units."""
        index = (slot, channel)
        loc, scale = self.loc[index], self.scale[index]  # (B, D, K)
        if mode:
            component = self._peaks()[index].argmax(-1, keepdim=True)
            return loc.gather(-1, component).squeeze(-1)
        component = sample_index(self.logits[index])[..., None]
        mean, sd = loc.gather(-1, component), scale.gather(-1, component)
        return (mean + sd * torch.randn_like(mean)).squeeze(-1)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[x] = sum_k pi_k mu_k`` and ``E[x^2] = sum_k pi_k (sigma_k^2 + mu_k^2)``."""
        w = torch.softmax(self.logits, -1)
        return (w * self.loc).sum(-1), (w * (self.scale**2 + self.loc**2)).sum(-1)

    @torch.no_grad()
    def unit_expectations(
        self, function: Callable[[torch.Tensor], torch.Tensor], *, points: int = 64
    ) -> torch.Tensor:
        """``sum_k pi_k E_{N(mu_k, sigma_k^2)}[f(x)]`` by Gauss-Hermite quadrature with
        ``points`` nodes per component, ``(N, I)`` (exact for polynomials of degree below
        ``2 points``; for smooth bounded ``f`` such as a sigmoid, to float precision)."""
        nodes, node_weights = (torch.from_numpy(array).to(self.loc) for array in hermgauss(points))
        weights = torch.softmax(self.logits, -1)  # (N, I, K)
        total = torch.zeros_like(self.loc[..., 0])
        for k in range(self.loc.shape[-1]):  # one component at a time: (N, I, points)
            z = self.loc[..., k, None] + math.sqrt(2.0) * self.scale[..., k, None] * nodes
            total += weights[..., k] * (function(z) * node_weights).sum(-1)
        return total / math.sqrt(math.pi)

    @torch.no_grad()
    def init_from_examples(self, examples: torch.Tensor, spread: torch.Tensor) -> None:
        """Component ``k`` of unit ``(r, d, i)`` at the ``k``-th example's value; every scale
        the variable's ``spread`` (at least twice the floor); equal mixing weights."""
        dtype = self.loc.dtype
        scale = spread.to(examples).clamp_min(2 * self.scale_floor)
        self.loc = PyroParam(examples.to(dtype).contiguous())
        self.scale = PyroParam(
            scale[:, None, None].expand_as(examples).to(dtype).contiguous(),
            constraint=self._floor(),
        )
        self.logits = PyroParam(torch.zeros_like(self.loc))

    def prior_dims(self, attribute: str) -> list[str]:
        """``slot, input_channel, component``."""
        return ["slot", "input_channel", "component"]

    @torch.no_grad()
    def expected_statistics(
        self, grads: dict[str, torch.Tensor], flow: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``count = sum f gamma``, ``sum = sum f gamma x``, ``sum_sq = sum f gamma x^2`` per
        component, from the gradients (``f``: flow of the example into the unit, ``gamma``:
        the component's responsibility within the unit).

        With ``t = (x - mu) / sigma``: ``dL/dl_k = n_k - pi_k flow``, ``dL/dmu_k = sum f gamma
        t / sigma`` and ``dL/dsigma_k = sum f gamma (t^2 - 1) / sigma``.
        """
        loc, scale = self.loc, self.scale
        weights = torch.softmax(self.logits, -1)
        count = grads["logits_unconstrained"] + weights * flow[..., None]
        # scale = floor + exp(u): dL/dscale = dL/du / (scale - floor)
        scale_grad = grads["scale_unconstrained"] / (scale - self.scale_floor)
        first = scale**2 * grads["loc_unconstrained"]  # sum f gamma (x - mu)
        second = scale**3 * scale_grad + scale**2 * count  # sum f gamma (x - mu)^2
        return {
            "count": count,
            "sum": first + loc * count,
            "sum_sq": second + 2 * loc * first + loc**2 * count,
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
        """Closed-form M-step of every mixture.

        ``pi_k = (n_k + alpha) / sum_j (n_j + alpha)``; ``mu_k = (s_k + kappa mu_k^old) /
        (n_k + kappa)`` with a vanishing ``kappa`` (so a component no example reached stays
        where it is); ``sigma_k^2 = (sum f gamma (x - mu_k)^2 + beta sigma_k^{old 2}) / (n_k +
        beta)`` with ``beta = variance_pseudo_count`` (plus ``nu = covariance_pooling``
        pseudo-counts of the slot's pooled variance over all its units and components in
        numerator and denominator), and never below the scale floor. The
        two proximal terms are centred on the current values, so with ``alpha = 0`` a step
        never lowers the likelihood. A component with less than :data:`REACHED_FRACTION` of
        its unit's count keeps its mean and scale (a generalised EM step: still never lower).
        """
        count = stats["count"].clamp_min(0)
        loc_old, scale_old = self.loc, self.scale
        reached = count > REACHED_FRACTION * count.sum(-1, keepdim=True)
        loc = (stats["sum"] + MEAN_PSEUDO_COUNT * loc_old) / (count + MEAN_PSEUDO_COUNT)
        loc = torch.where(reached, loc, loc_old)
        spread = (stats["sum_sq"] - 2 * loc * stats["sum"] + loc**2 * count).clamp_min(0)
        beta = max(variance_pseudo_count, 1e-12)
        pooled = spread.sum((-2, -1), keepdim=True) / count.sum((-2, -1), keepdim=True).clamp_min(
            1e-12
        )  # (N, 1, 1): the slot's variance around its units' means
        nu = float(covariance_pooling)
        scale = ((spread + beta * scale_old**2 + nu * pooled) / (count + beta + nu)).sqrt()
        scale = torch.where(reached, scale, scale_old)
        scale = scale.clamp_min(self.scale_floor * (1 + 1e-4) + 1e-12)
        self.loc_unconstrained.copy_(loc)
        self.scale_unconstrained.copy_(torch.log(scale - self.scale_floor))
        self.logits_unconstrained.copy_(normalised_log_weights(count, pseudo_count, self.logits))


class CategoricalInput(InputLayer):
    """A categorical distribution over the integers ``0..V-1``: ``p(x_d = v) = softmax(l)_v``.

    Parameter ``logits`` ``(N, I, V)`` (slot, channel, value). Values must be integers in
    range (stored in a floating tensor like every circuit input, e.g. 8-bit pixels as
    ``0.0 .. 255.0``).
    """

    prior_parameters: ClassVar[dict[str, str]] = {"logits": "logits"}

    def __init__(
        self,
        in_features: int,
        slot_var: torch.Tensor,
        leaf_slots: torch.Tensor,
        channels: int,
        *,
        num_values: int = 256,
    ) -> None:
        super().__init__(in_features, slot_var, leaf_slots, channels)
        if num_values < 2:
            raise ValueError(f"CategoricalInput: expected num_values >= 2, got {num_values}")
        self.num_values = int(num_values)
        self.logits = PyroParam(0.01 * torch.randn(self.num_slots, channels, num_values))

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        """``integer_interval(0, V - 1)``."""
        return constraints.integer_interval(0, self.num_values - 1)

    def describe_support(self) -> str:
        """The support in words."""
        return f"integers 0..{self.num_values - 1}"

    def _log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, -1)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """``log p_{n,i}(x_{var(n)})``, gathered from the normalised logits: ``(B, N, I)``."""
        table = self._log_probs().permute(0, 2, 1)  # (N, V, I)
        slots = torch.arange(self.num_slots, device=x.device)
        return table[slots, self.slot_values(x).long()]  # (B, N, I)

    def fused_region_log_values(
        self, x: torch.Tensor, observed: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Sums of looked-up log-probabilities through the C++ kernel
        :func:`~ugmm_prob.kernels.categorical_leaf_region_log_density` where it can run."""
        if not native_categorical_regions_usable(x, self.logits):
            return None
        xs = self.slot_values(x)
        observed = None if observed is None else self.slot_values(observed)
        log_probs = self._log_probs()[None]
        return categorical_leaf_region_log_density(xs, log_probs, self.leaf_slots[None], observed)[
            :, 0
        ]

    def max_missing(self) -> torch.Tensor:
        """``max_v log p(v)`` of each unit."""
        return self._log_probs().amax(-1)

    def draw_units(self, slot: torch.Tensor, channel: torch.Tensor, *, mode: bool) -> torch.Tensor:
        """A draw (or the most probable value) of the selected units, as floats."""
        logits = self.logits[slot, channel]  # (B, D, V)
        value = logits.argmax(-1) if mode else sample_index(logits)
        return value.to(self.logits.dtype)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[x] = sum_v v p(v)`` and ``E[x^2] = sum_v v^2 p(v)``."""
        p = torch.softmax(self.logits, -1)
        values = torch.arange(self.num_values, dtype=p.dtype, device=p.device)
        return (p * values).sum(-1), (p * values**2).sum(-1)

    @torch.no_grad()
    def unit_expectations(
        self, function: Callable[[torch.Tensor], torch.Tensor], *, points: int = 64
    ) -> torch.Tensor:
        """``sum_v p(v) f(v)``, exactly (``points`` is not used), ``(N, I)``."""
        p = torch.softmax(self.logits, -1)
        values = torch.arange(self.num_values, dtype=p.dtype, device=p.device)
        return (p * function(values)).sum(-1)

    @torch.no_grad()
    def init_from_examples(self, examples: torch.Tensor, spread: torch.Tensor) -> None:
        """Each unit a discretised Gaussian around its example's value with the variable's
        ``spread`` (at least 1), so no value starts with probability 0."""
        values = torch.arange(self.num_values, dtype=self.logits.dtype, device=examples.device)
        centre = examples[..., :1].to(values.dtype)  # (N, I, 1)
        width = spread.to(values).clamp_min(1.0)[:, None, None]
        self.logits = PyroParam((-0.5 * ((values - centre) / width) ** 2).contiguous())

    def prior_dims(self, attribute: str) -> list[str]:
        """``slot, input_channel, value``."""
        return ["slot", "input_channel", "value"]

    @torch.no_grad()
    def expected_statistics(
        self, grads: dict[str, torch.Tensor], flow: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``count[v]``: expected number of examples with ``x_d = v`` the unit explains,
        ``dL/dl_v + p_v flow``."""
        count = torch.softmax(self.logits, -1).mul_(flow[..., None])
        return {"count": count.add_(grads["logits_unconstrained"])}

    @torch.no_grad()
    def maximise(
        self,
        stats: dict[str, torch.Tensor],
        *,
        pseudo_count: float,
        variance_pseudo_count: float,
        covariance_pooling: float = 0.0,
    ) -> None:
        """``p_v = (n_v + alpha) / sum_u (n_u + alpha)`` (Laplace smoothing with ``alpha``)."""
        log_probs = normalised_log_weights(stats["count"], pseudo_count, self.logits)
        self.logits_unconstrained.copy_(log_probs)


def __getattr__(name: str) -> object:
    """``INPUT_TYPES`` moved to :mod:`ugmm_prob.circuits.circuit` (it lists the multivariate
    kind, which imports this module); the old import keeps working."""
    if name == "INPUT_TYPES":
        from .circuit import INPUT_TYPES

        return INPUT_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
