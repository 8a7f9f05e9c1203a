"""The generative uGMM circuit: a normalised density ``p(x, c)`` with exact queries.

Input units are uGMM neurons with tied inputs: for every repetition ``r``, variable ``d`` and
channel ``i`` a univariate Gaussian mixture ``p_{r,d,i}(x_d)`` with ``K`` components (one
batched ``MixtureSameFamily``). A :class:`~ugmm_prob.circuits.RandomBinaryTrees` region
graph multiplies the inputs of each leaf region, then alternates

- product layers: all pairs of channels of two sibling regions (disjoint scopes), and
- sum layers: ``S`` softmax-weighted mixtures of those products (equal scopes),

up to one root per class, which mixes the top products of every repetition. A class prior
gives ``p(x, c) = p(c) p(x | c)``. Every unit is a normalised density over its scope, so one
upward pass in log space gives exact ``log p(x, c)``, ``log p(x)``, ``p(c | x)`` and, with a
missing variable's input units set to ``log 1 = 0``, exact marginals. A downward pass that
picks one child per sum unit (with probability ``weight x child value``) draws exact samples,
conditioned on evidence when the values come from it; with maxima in place of sums it gives
the max-product MPE.

Sum layers are computed with the max-shift (log-einsum-exp) trick, so the inner work is one
batched matrix product per layer: ``log sum_q w_q e^{v_q} = m + log sum_q w_q e^{v_q - m}``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroParam, pyro_method

from ..datasets import check_classification_data
from ..distributions import neuron_mixture
from ..kernels import tied_mixture_log_density
from ..networks import Classifier, constructor_config
from .region_graph import RandomBinaryTrees

__all__ = ["CircuitDistribution", "UGMMCircuit"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _weighted_logsumexp(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``out[b, g, s] = log sum_q exp(log_weights[g, s, q] + values[b, g, q])``.

    ``values`` is ``(B, G, Q)``, ``log_weights`` ``(G, S, Q)`` (normalised over ``q``).
    Shifting by ``m = max_q values`` makes the sum a batched matrix product of
    ``exp(values - m)`` (entries <= 1, at least one equal to 1) with the weights.
    """
    shift = values.amax(dim=-1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    scaled = torch.einsum("bgq,gsq->bgs", (values - shift).exp(), log_weights.exp())
    return scaled.log() + shift


def _weighted_max(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The max-product twin of :func:`_weighted_logsumexp`: ``max_q (w + v)``."""
    return (values[:, :, None, :] + log_weights).amax(dim=-1)


class UGMMCircuit(Classifier):
    """A probabilistic circuit over ``D`` continuous variables (and a class), normalised.

    Args:
        num_vars: number of continuous variables ``D``.
        num_classes: number of classes ``C`` (1 for a plain density model).
        depth: splits per repetition; ``2**depth`` leaf regions (default: as deep as
            leaves of at least 2 variables allow, at most 4).
        repetitions: number of random trees ``R``.
        channels: sum units per region ``S``.
        input_channels: input units per variable ``I`` (default ``channels``).
        components: Gaussian components per input unit ``K`` (``K >= 1``).
        scale_floor: lower bound of every input scale, so the likelihood cannot diverge.
        likelihood_weight: ``lambda`` of the training objective
            ``lambda * NLL / D + (1 - lambda) * cross-entropy of p(c | x)``; 1 is maximum
            likelihood of ``(x, c)``.
        seed: seed of the region graph (not of the parameters).
    """

    def __init__(
        self,
        num_vars: int,
        num_classes: int = 1,
        *,
        depth: int | None = None,
        repetitions: int = 4,
        channels: int = 4,
        input_channels: int | None = None,
        components: int = 2,
        scale_floor: float = 1e-2,
        likelihood_weight: float = 1.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        config = constructor_config(locals())
        super().__init__(name=name)
        if depth is None:
            depth = min(4, max(0, (num_vars // 2).bit_length() - 1))
        input_channels = input_channels or channels
        if min(num_classes, channels, input_channels, components) < 1:
            raise ValueError("UGMMCircuit: num_classes, channels and components must be >= 1")
        if not 0.0 <= likelihood_weight <= 1.0:
            raise ValueError(f"likelihood_weight must be in [0, 1], got {likelihood_weight}")
        self.graph = RandomBinaryTrees.build(
            num_vars, depth=depth, repetitions=repetitions, seed=seed
        )
        self.num_vars, self.num_classes = num_vars, num_classes
        self.likelihood_weight = likelihood_weight
        self.config = {**config, "depth": depth, "input_channels": input_channels}
        self.register_buffer("leaf_vars", self.graph.leaf_vars.clone(), persistent=False)
        self.register_buffer("var_region", self.graph.var_region.clone(), persistent=False)
        # region_matrix[r, d, p] = 1 if variable d is in leaf region p of repetition r, so the
        # products over leaf regions are one batched matrix product (padding row d = D is 0).
        assignment = torch.zeros(repetitions, num_vars + 1, 2**depth)
        assignment[torch.arange(repetitions)[:, None], torch.arange(num_vars), self.var_region] = 1
        self.register_buffer("region_matrix", assignment, persistent=False)

        shape = (repetitions, num_vars, input_channels, components)
        self.leaf_loc = PyroParam(torch.randn(shape))
        self.leaf_scale = PyroParam(
            torch.full(shape, 1.0), constraint=constraints.greater_than(scale_floor)
        )
        self.leaf_logits = PyroParam(torch.zeros(shape))
        # Sum layers: regions 2**(depth-1), ..., 2 (the top product feeds the roots).
        self.channel_widths = [input_channels] + [channels] * max(depth - 1, 0)
        self.num_sum_layers = max(depth - 1, 0)
        for level in range(self.num_sum_layers):
            regions = 2 ** (depth - 1 - level)
            width_in = self.channel_widths[level]
            logits = 0.1 * torch.randn(repetitions, regions, channels, width_in**2)
            setattr(self, f"sum_logits_{level}", PyroParam(logits))
        top_width = self.channel_widths[-1] ** 2 if depth > 0 else input_channels
        self.top_width = top_width
        self.root_logits = PyroParam(0.1 * torch.randn(num_classes, repetitions * top_width))
        self.class_logits = PyroParam(torch.zeros(num_classes))

    # ----------------------------------------------------------------------------------
    # Input units
    # ----------------------------------------------------------------------------------
    @property
    def leaves(self) -> dist.MixtureSameFamily:
        """All input units as one mixture with batch shape ``(R, D, I)``."""
        with self._pyro_context:  # one draw of each parameter when they have priors
            return neuron_mixture(self.leaf_loc, self.leaf_scale, self.leaf_logits)

    def init_leaves_from_data(self, x: torch.Tensor, *, generator=None) -> None:
        """Place the input components at random data values and scale them to the data.

        Each component of variable ``d`` gets the value of ``x[:, d]`` at a random row as
        its mean and the standard deviation of ``x[:, d]`` (at least the scale floor) as its
        scale. Cheap and usually far better than the default ``N(0, 1)`` start.
        """
        x = self._check_x(x).detach()
        shape = self.leaf_loc.shape
        rows = torch.randint(0, len(x), shape, generator=generator).to(x.device)
        loc = x[rows, torch.arange(self.num_vars, device=x.device)[None, :, None, None]]
        spread = x.std(0).clamp_min(2 * self.config["scale_floor"])
        self._set_leaves(loc, spread[None, :, None, None].expand(shape))

    def _set_leaves(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """New input-unit means and scales (scales kept above the floor), in the leaves' dtype."""
        dtype = self.leaf_loc.dtype
        floor = constraints.greater_than(self.config["scale_floor"])
        self.leaf_loc = PyroParam(loc.to(dtype).contiguous())
        self.leaf_scale = PyroParam(scale.to(dtype).contiguous(), constraint=floor)

    @torch.no_grad()
    def init_from_data(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        class_bias: float = 8.0,
    ) -> None:
        """Prototype initialisation: every input channel starts as one training example.

        Repetition ``r`` is given to class ``r mod C``: each of its input channels ``i``
        and components ``k`` takes the values of a random training example of that class
        (all variables of one channel from the same example, so the products over a leaf
        region start as patches of real data), and the roots of class ``c`` start with
        ``class_bias`` more log-weight on the products of the repetitions given to ``c``.
        The structure stays shared: training may move any root's weight anywhere. Every
        scale starts at the median over variables of the pooled within-class standard
        deviation (at least twice the scale floor). Without ``y`` (or with one class) the
        examples are drawn from all rows and the roots are left alone.

        Args:
            x: training inputs ``(n, D)``, finite.
            y: their classes ``(n,)`` in ``0..C-1``, or None.
            generator: random generator for the choice of examples.
            class_bias: extra root log-weight of a class's own repetitions.
        """
        x = self._check_x(x).detach()
        if x.dim() != 2 or len(x) == 0 or not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"UGMMCircuit.init_from_data: expected finite x of shape (n >= 1, "
                f"{self.num_vars}), got {tuple(x.shape)}"
            )
        reps, _, channels, components = self.leaf_loc.shape
        if y is None or self.num_classes == 1:
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
            owner = torch.zeros(reps, dtype=torch.long)
        else:
            check_classification_data(x, y, self.num_classes, name="init_from_data data")
            labels = y.to(x.device)
            owner = torch.arange(reps) % self.num_classes
        rows = torch.empty(reps, channels, components, dtype=torch.long)
        for r in range(reps):
            pool = (labels == int(owner[r])).nonzero().squeeze(1).cpu()
            if len(pool) == 0:  # a class without examples: draw from all rows
                pool = torch.arange(len(x))
            picks = torch.randint(0, len(pool), (channels, components), generator=generator)
            rows[r] = pool[picks]
        loc = x[rows.to(x.device)].permute(0, 3, 1, 2)  # (R, I, K, D) -> (R, D, I, K)
        centred = x - _class_means(x, labels)[labels]
        spread = centred.pow(2).mean(0).sqrt().median().clamp_min(2 * self.config["scale_floor"])
        self._set_leaves(loc, torch.full_like(loc, float(spread)))
        self.leaf_logits = PyroParam(torch.zeros_like(self.leaf_loc))
        if y is not None and self.num_classes > 1:
            bias = torch.zeros_like(self.root_logits).reshape(self.num_classes, reps, -1)
            bias[owner.to(bias.device), torch.arange(reps, device=bias.device)] = class_bias
            self.root_logits = PyroParam(self.root_logits + bias.reshape(self.num_classes, -1))

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"UGMMCircuit: expected a floating tensor x, got {type(x)}")
        if x.shape[-1] != self.num_vars:
            raise ValueError(
                f"UGMMCircuit(num_vars={self.num_vars}): expected x of shape (..., "
                f"{self.num_vars}), got {tuple(x.shape)}"
            )
        return x

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask[..., d]`` is True where ``x[..., d]`` is observed (default: all)."""
        if mask is None:
            if bool(torch.isnan(x).any()):
                raise ValueError(
                    "UGMMCircuit: x has NaN values; pass mask= (True = observed) to treat "
                    "them as missing"
                )
            return torch.ones(x.shape, dtype=torch.bool, device=x.device)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=x.device)
        mask = mask.expand(x.shape)
        if bool((~torch.isfinite(x) & mask).any()):
            raise ValueError("UGMMCircuit: observed entries of x (mask True) must be finite")
        return mask

    def _leaf_values(self, x: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """Input-unit log-values ``(B, R, D + 1, I)``; the last variable is the padding 1."""
        filled = torch.where(mask, x, torch.zeros_like(x))  # no NaN reaches the gradient
        if mode == "sum":
            observed = self._input_layer(filled)
            missing = torch.zeros_like(observed)
        else:  # max-product: the leaf mixture is a sum unit over its components
            log_w = torch.log_softmax(self.leaf_logits, -1)
            components = dist.Normal(self.leaf_loc, self.leaf_scale)
            observed = (log_w + components.log_prob(filled[:, None, :, None, None])).amax(-1)
            peak = log_w - torch.log(self.leaf_scale) - LOG_SQRT_2PI
            missing = peak.amax(-1).expand_as(observed)
        values = torch.where(mask[:, None, :, None], observed, missing)
        padding = values.new_zeros(values.shape[0], values.shape[1], 1, values.shape[3])
        return torch.cat([values, padding], dim=2)

    # ----------------------------------------------------------------------------------
    # Upward pass
    # ----------------------------------------------------------------------------------
    def _sum_log_weights(self, level: int) -> torch.Tensor:
        return torch.log_softmax(getattr(self, f"sum_logits_{level}"), dim=-1)

    # The three layer operations, overridable (the benchmark times straightforward versions).
    def _input_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Input units' log-densities at observed ``x`` ``(B, D)``: ``(B, R, D, I)``."""
        return tied_mixture_log_density(x, self.leaf_loc, self.leaf_scale, self.leaf_logits)

    def _leaf_regions(self, leaf: torch.Tensor) -> torch.Tensor:
        """Products over each leaf region's variables: ``(B, R, D+1, I) -> (B, R, P, I)``."""
        return torch.einsum("brdi,rdp->brpi", leaf, self.region_matrix.to(leaf.dtype))

    def _sum_layer(self, values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """A sum layer: values ``(B, G, Q)``, normalised log-weights ``(G, S, Q)``."""
        return _weighted_logsumexp(values, log_weights)

    def _internal_upward(self, h: torch.Tensor, combine) -> dict[str, Any]:
        """Product and sum layers from leaf regions ``h`` ``(B, R, P, I)`` to the roots."""
        batch, reps = h.shape[:2]
        products = []  # inputs of each sum layer, (B, R, P, Q)
        for level in range(self.graph.depth):
            left, right = h[:, :, 0::2], h[:, :, 1::2]
            prod = (left[..., :, None] + right[..., None, :]).flatten(-2)
            if level == self.graph.depth - 1:
                h = prod
                break
            products.append(prod)
            _, _, regions_out, width = prod.shape
            log_w = self._sum_log_weights(level)
            out = combine(
                prod.reshape(batch, reps * regions_out, width),
                log_w.reshape(reps * regions_out, *log_w.shape[2:]),
            )
            h = out.reshape(batch, reps, regions_out, -1)
        top = h.reshape(batch, reps * self.top_width)  # (B, R * Q_top)
        root_log_w = torch.log_softmax(self.root_logits, dim=-1)
        root = combine(top[:, None, :], root_log_w[None]).squeeze(1)  # (B, C)
        return {"products": products, "top": top, "root": root}

    def _upward(self, x: torch.Tensor, mask: torch.Tensor, mode: str = "sum") -> dict[str, Any]:
        """Values of every layer for flat ``x`` ``(B, D)``; ``mode`` is ``"sum"`` or ``"max"``."""
        combine = self._sum_layer if mode == "sum" else _weighted_max
        leaf = self._leaf_values(x, mask, mode)  # (B, R, D+1, I)
        return {"leaf": leaf, **self._internal_upward(self._leaf_regions(leaf), combine)}

    def _flat(self, x: torch.Tensor, mask: torch.Tensor | None):
        x = self._check_x(x)
        mask = self._check_mask(x, mask)
        batch_shape = x.shape[:-1]
        return x.reshape(-1, self.num_vars), mask.reshape(-1, self.num_vars), batch_shape

    @pyro_method
    def class_log_prior(self) -> torch.Tensor:
        """``log p(c)``, shape ``(C,)``."""
        return torch.log_softmax(self.class_logits, dim=-1)

    @pyro_method
    def joint_log_prob(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x_obs, c)`` for every class, shape ``(..., C)``.

        ``mask`` (broadcastable to ``x``, True = observed) marginalises the other variables
        exactly; their entries of ``x`` are ignored (they may be NaN).
        """
        flat, flat_mask, batch_shape = self._flat(x, mask)
        root = self._upward(flat, flat_mask)["root"]
        return (root + self.class_log_prior()).reshape(*batch_shape, self.num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x, c)``: its softmax over ``c`` is the exact ``p(c | x)``."""
        return self.joint_log_prob(x)

    @pyro_method
    def log_prob(  # type: ignore[override]
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(x)`` (``y`` None) or ``log p(x, y)``; marginal over unobserved variables."""
        joint = self.joint_log_prob(x, mask)
        if y is None:
            return torch.logsumexp(joint, dim=-1)
        y = torch.as_tensor(y, device=joint.device).long()
        return joint.gather(-1, y.expand(joint.shape[:-1])[..., None]).squeeze(-1)

    @pyro_method
    def conditional_log_prob(
        self, x: torch.Tensor, target: torch.Tensor, evidence: torch.Tensor
    ) -> torch.Tensor:
        """``log p(x_A | x_B)`` for boolean masks ``target`` (A) and ``evidence`` (B)."""
        target = torch.as_tensor(target, dtype=torch.bool, device=x.device)
        evidence = torch.as_tensor(evidence, dtype=torch.bool, device=x.device)
        if bool((target & evidence).any()):
            raise ValueError("conditional_log_prob: target and evidence must be disjoint")
        return self.log_prob(x, mask=target | evidence) - self.log_prob(x, mask=evidence)

    def forward(self, c: torch.Tensor | None = None) -> CircuitDistribution:  # type: ignore[override]
        """The distribution of ``x``: ``p(x | c)`` for class ``c`` (any shape), else ``p(x)``."""
        return CircuitDistribution(self, c)

    @pyro_method
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Pyro model: ``c ~ Categorical(p(c))``, ``x ~ p(x | c)`` under ``pyro.plate``.

        Without ``y`` the class site is enumerated in parallel (use ``TraceEnum_ELBO``), so
        its exact marginal over classes is ``p(c | x)``.
        """
        size = len(x) if num_data is None else num_data
        class_logits = self.class_logits
        # log p(x | c) for every class, evaluated now, while the parameters' draws (when
        # they have priors, see ugmm_prob.bayes.make_bayesian) are those of this trace.
        conditional = self.joint_log_prob(x) - torch.log_softmax(class_logits, dim=-1)
        with pyro.plate("data", size=size, subsample=torch.arange(len(x), device=x.device)):
            c = pyro.sample(
                "y",
                dist.Categorical(logits=class_logits),
                obs=y,
                infer={"enumerate": "parallel"} if y is None else {},
            )
            pyro.sample("x", _ObservedCircuit(self, c, x, conditional), obs=x)
        return c

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``lambda * NLL(x, y) / D + (1 - lambda) * CE(p(y | x))``, means in nats.

        The likelihood term is per variable so that the two terms have comparable scales
        whatever ``D`` (per example, ``-log p(x, y)`` grows with ``D`` and would drown the
        cross-entropy); with ``lambda = 1`` this is maximum likelihood.
        """
        joint = self.joint_log_prob(x)
        picked = joint.gather(-1, y[:, None]).squeeze(-1)
        nll = -picked.mean() / self.num_vars
        if self.likelihood_weight == 1.0:
            return nll
        cross_entropy = -(picked - torch.logsumexp(joint, dim=-1)).mean()
        lam = self.likelihood_weight
        return lam * nll + (1 - lam) * cross_entropy

    # ----------------------------------------------------------------------------------
    # Downward pass: sampling and MPE
    # ----------------------------------------------------------------------------------
    def _downward(
        self,
        up: dict[str, Any],
        c: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor,
        choose,
    ) -> torch.Tensor:
        """Select one child per sum unit with ``choose(logits)`` and fill unobserved ``x``.

        ``choose`` maps unnormalised log-probabilities ``(..., Q)`` to indices: sampling for
        exact (conditional) samples, argmax for MPE. Values ``up`` come from evidence.
        """
        batch = x.shape[0]
        arange = torch.arange(batch, device=x.device)
        root_log_w = torch.log_softmax(self.root_logits, dim=-1)[c]  # (B, R*Q_top)
        pick = choose(root_log_w + up["top"])
        rep, q = pick // self.top_width, pick % self.top_width
        if self.graph.depth == 0:
            channels = q[:, None]  # the single leaf region's input channel
        else:
            width = self.channel_widths[-1]
            channels = torch.stack([q // width, q % width], dim=1)  # (B, 2)
            for level in reversed(range(self.num_sum_layers)):
                log_w = self._sum_log_weights(level)[rep]  # (B, P, S, Q)
                regions = channels.shape[1]
                chosen_w = log_w[arange[:, None], torch.arange(regions), channels]  # (B, P, Q)
                values = up["products"][level][arange, rep]  # (B, P, Q)
                q = choose(chosen_w + values)
                width = self.channel_widths[level]
                channels = torch.stack([q // width, q % width], dim=2).flatten(1)
        # channels: (B, 2**depth) input channel of each leaf region of repetition `rep`.
        region_of_var = self.var_region[rep]  # (B, D)
        input_channel = channels.gather(1, region_of_var)  # (B, D)
        variables = torch.arange(self.num_vars, device=x.device)
        index = (rep[:, None], variables[None, :], input_channel)
        loc, scale = self.leaf_loc[index], self.leaf_scale[index]  # (B, D, K)
        log_w = torch.log_softmax(self.leaf_logits[index], dim=-1)
        if choose is _argmax:
            component = (log_w - torch.log(scale)).argmax(-1, keepdim=True)
            value = loc.gather(-1, component).squeeze(-1)
        else:
            component = choose(log_w)[..., None]
            mean, sd = loc.gather(-1, component), scale.gather(-1, component)
            value = (mean + sd * torch.randn_like(mean)).squeeze(-1)
        return torch.where(mask, x, value)

    @torch.no_grad()
    @pyro_method
    def sample(
        self, num_samples: int, c: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ancestral samples ``(x, c)``: ``x`` ``(n, D)``, classes ``(n,)``.

        ``c`` fixes the class (an int or a tensor of ``n`` classes); otherwise classes are
        drawn from the prior.
        """
        device = self.class_logits.device
        if c is None:
            c = dist.Categorical(logits=self.class_logits).sample((num_samples,))
        c = torch.as_tensor(c, device=device).long().expand(num_samples)
        x = torch.zeros(num_samples, self.num_vars, device=device, dtype=self.leaf_loc.dtype)
        mask = torch.zeros_like(x, dtype=torch.bool)
        return self._sample_given(x, mask, c), c

    def _sample_given(self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor):
        up = self._upward(x, mask)
        return self._downward(up, c, x, mask, _sample_categorical)

    @torch.no_grad()
    @pyro_method
    def impute(
        self, x: torch.Tensor, mask: torch.Tensor, *, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One exact sample of the unobserved entries given the observed ones.

        Draws ``c ~ p(c | x_obs)`` (unless given), then ``x_miss ~ p(x_miss | x_obs, c)`` by
        a downward pass whose choices are weighted by the evidence.
        """
        flat, flat_mask, batch_shape = self._flat(x, mask)
        if c is None:
            joint = self._upward(flat, flat_mask)["root"] + self.class_log_prior()
            c = _sample_categorical(joint)
        c = torch.as_tensor(c, device=flat.device).long().expand(len(flat))
        return self._sample_given(flat, flat_mask, c).reshape(*batch_shape, self.num_vars)

    @torch.no_grad()
    @pyro_method
    def mpe(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Max-product MPE of the unobserved variables and the class.

        Maximises over the class, every sum unit's child and every input mixture's component
        (the induced trees of the circuit), then fills each unobserved variable with the mean
        of its chosen component. Returns ``(x_completed, c, log_value)`` where ``log_value``
        is the log of the best induced tree's value at the completion.
        """
        flat, flat_mask, batch_shape = self._flat(x, mask)
        up = self._upward(flat, flat_mask, mode="max")
        joint = up["root"] + self.class_log_prior()
        value, c = joint.max(-1)
        completed = self._downward(up, c, flat, flat_mask, _argmax)
        return (
            completed.reshape(*batch_shape, self.num_vars),
            c.reshape(batch_shape),
            value.reshape(batch_shape),
        )

    # ----------------------------------------------------------------------------------
    # Moments
    # ----------------------------------------------------------------------------------
    def _leaf_selection(self, c: int | None) -> torch.Tensor:
        """Probability that a sample's ``x_d`` comes from input unit ``(r, d, i)``.

        The derivative of ``log p`` with respect to the input units' log-values, with every
        variable marginalised (all values ``log 1 = 0``), is the expected number of times an
        induced tree uses that unit, which for a decomposable circuit is the probability
        that ancestral sampling draws ``x_d`` from it. Shape ``(R, D, I)``.
        """
        reps, _, width, _ = self.leaf_loc.shape
        leaf = self.leaf_loc.new_zeros(1, reps, self.num_vars + 1, width, requires_grad=True)
        with torch.enable_grad():
            root = self._internal_upward(self._leaf_regions(leaf), self._sum_layer)["root"]
            log_p = root[0] + self.class_log_prior()
            target = torch.logsumexp(log_p, -1) if c is None else root[0, c]
            (grad,) = torch.autograd.grad(target, leaf)
        return grad[0, :, : self.num_vars]

    @pyro_method
    def moments(self, c: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and variance of every variable under ``p(x)`` or ``p(x | c)``."""
        selection = self._leaf_selection(c)
        w = torch.softmax(self.leaf_logits, -1)
        first = (w * self.leaf_loc).sum(-1)
        second = (w * (self.leaf_scale**2 + self.leaf_loc**2)).sum(-1)
        mean = (selection * first).sum(dim=(0, 2))
        raw_second = (selection * second).sum(dim=(0, 2))
        return mean, raw_second - mean**2


def _class_means(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the rows of each label, shape ``(max label + 1, D)``."""
    count = torch.bincount(labels).clamp_min(1).to(x.dtype)
    sums = torch.zeros(len(count), x.shape[1], dtype=x.dtype, device=x.device)
    return sums.index_add_(0, labels, x) / count[:, None]


def _sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    return dist.Categorical(logits=logits).sample()


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


class CircuitDistribution(TorchDistribution):
    """``p(x | c)`` (or ``p(x)`` without ``c``) of a :class:`UGMMCircuit`, event shape ``(D,)``.

    The batch shape is that of ``c``, so an enumerated class site (shape ``(C, 1)``) gives
    ``log_prob`` of shape ``(C, batch)`` under ``pyro.plate``.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        circuit: UGMMCircuit,
        c: torch.Tensor | None = None,
        *,
        batch_shape: torch.Size | tuple = (),
        validate_args: bool | None = None,
    ) -> None:
        self.circuit = circuit
        self.c = None if c is None else torch.as_tensor(c).long()
        shape = self.c.shape if self.c is not None else torch.Size(batch_shape)
        super().__init__(shape, torch.Size([circuit.num_vars]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # type: ignore[override]
        """The same distribution with its class (if any) expanded to ``batch_shape``."""
        batch_shape = torch.Size(batch_shape)
        c = None if self.c is None else self.c.expand(batch_shape)
        return CircuitDistribution(self.circuit, c, batch_shape=batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value | c)`` (class-conditional), or ``log p(value)`` without a class."""
        with self.circuit._pyro_context:  # one parameter draw for both terms
            joint = self.circuit.joint_log_prob(value)  # (..., C) = log p(x, c)
            if self.c is None:
                return self._broadcast(torch.logsumexp(joint, dim=-1))
            return self._pick(joint - self.circuit.class_log_prior())

    def _pick(self, conditional: torch.Tensor) -> torch.Tensor:
        """``conditional[..., c]`` for the classes ``c``, broadcast to the batch shape."""
        shape = torch.broadcast_shapes(conditional.shape[:-1], self.c.shape)
        index = self.c.to(conditional.device).expand(shape)[..., None]
        out = conditional.expand(*shape, conditional.shape[-1]).gather(-1, index)[..., 0]
        return self._broadcast(out)

    def _broadcast(self, out: torch.Tensor) -> torch.Tensor:
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:  # type: ignore[override]
        """Exact draws of shape ``sample_shape + batch_shape + (D,)`` (not reparameterised)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        count = shape.numel()
        classes = None if self.c is None else self.c.expand(shape).reshape(-1)
        x, _ = self.circuit.sample(count, classes)
        return x.reshape(*shape, self.circuit.num_vars)

    @property
    def mean(self) -> torch.Tensor:
        """Exact mean of every variable, ``batch_shape + (D,)``."""
        return self._moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        """Exact variance of every variable, ``batch_shape + (D,)``."""
        return self._moments()[1]

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.c is None:
            mean, var = self.circuit.moments()
            return (
                mean.expand(*self.batch_shape, -1),
                var.expand(*self.batch_shape, -1),
            )
        pairs = [self.circuit.moments(int(c)) for c in self.c.reshape(-1)]
        means = torch.stack([m for m, _ in pairs]).reshape(*self.batch_shape, -1)
        variances = torch.stack([v for _, v in pairs]).reshape(*self.batch_shape, -1)
        return means, variances


class _ObservedCircuit(CircuitDistribution):
    """``p(x | c)`` at the observed ``x`` of :meth:`UGMMCircuit.model`, with its values fixed.

    ``conditional[b, c] = log p(x_b | c)`` is computed inside the model, so a Bayesian
    circuit's likelihood uses the parameters drawn in that trace; Pyro evaluates
    ``log_prob`` later, outside it. Any other value falls back to a fresh evaluation.
    """

    def __init__(
        self,
        circuit: UGMMCircuit,
        c: torch.Tensor,
        observed: torch.Tensor,
        conditional: torch.Tensor,
        *,
        batch_shape: torch.Size | tuple | None = None,
    ) -> None:
        super().__init__(
            circuit, c if batch_shape is None else torch.as_tensor(c).expand(batch_shape)
        )
        self.observed, self.conditional = observed, conditional

    def expand(self, batch_shape, _instance=None):  # type: ignore[override]
        return _ObservedCircuit(
            self.circuit, self.c, self.observed, self.conditional, batch_shape=batch_shape
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value is self.observed or (
            value.shape == self.observed.shape and torch.equal(value, self.observed)
        ):
            return self._pick(self.conditional)
        return super().log_prob(value)
