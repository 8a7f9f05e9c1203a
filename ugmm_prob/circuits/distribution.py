"""The circuit as a Pyro distribution: ``p(x | c)`` (or ``p(x)``) with event shape ``(D,)``.

Calling a :class:`~ugmm_prob.circuits.UGMMCircuit` returns a :class:`CircuitDistribution`
(zuko's rule: modules return distributions), so ``circuit(c).log_prob(x)`` reads like the
mathematics and the circuit can stand as an observed site inside any Pyro model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

if TYPE_CHECKING:
    from .circuit import UGMMCircuit

__all__ = ["CircuitDistribution", "ObservedCircuit"]


class CircuitDistribution(TorchDistribution):
    """``p(x | c)`` (or ``p(x)`` without ``c``) of a :class:`UGMMCircuit`, event shape ``(D,)``;
    a class ``-1`` (unknown) gives ``p(x)`` for that entry.

    The batch shape is that of ``c``, so an enumerated class site (shape ``(C, 1)``) gives
    ``log_prob`` of shape ``(C, batch)`` under ``pyro.plate``.
    """

    arg_constraints: ClassVar[dict] = {}
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
        super().__init__(shape, torch.Size([circuit.in_features]), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        """The input units' support for every variable (real or integer vectors)."""
        return constraints.independent(self.circuit.inputs.support, 1)

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

    def _pick(
        self, conditional: torch.Tensor, marginal: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``conditional[..., c]`` for the classes ``c``, broadcast to the batch shape; where
        ``c`` is ``-1`` (unknown) the ``marginal`` ``log p(x)`` (by default
        ``logsumexp_c (conditional + log p(c))``)."""
        shape = torch.broadcast_shapes(conditional.shape[:-1], self.c.shape)
        c = self.c.to(conditional.device).expand(shape)
        index = c.clamp_min(0)[..., None]
        out = conditional.expand(*shape, conditional.shape[-1]).gather(-1, index)[..., 0]
        if bool((c < 0).any()):
            if marginal is None:
                prior = self.circuit.class_log_prior()
                marginal = torch.logsumexp(conditional + prior, -1)
            out = torch.where(c >= 0, out, marginal.expand(shape))
        return self._broadcast(out)

    def _broadcast(self, out: torch.Tensor) -> torch.Tensor:
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:  # type: ignore[override]
        """Exact draws of shape ``sample_shape + batch_shape + (D,)`` (not reparameterised)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        count = shape.numel()
        classes = None if self.c is None else self.c.expand(shape).reshape(-1)
        x, _ = self.circuit.sample(count, classes)
        return x.reshape(*shape, self.circuit.in_features)

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


class ObservedCircuit(CircuitDistribution):
    """``p(x | c)`` at the observed ``x`` of :meth:`UGMMCircuit.model`, values precomputed.

    ``conditional[b, c] = log p(x_b | c)`` (and ``marginal[b] = log p(x_b)``, read for rows
    of unknown class ``-1``) is computed inside the model, so a Bayesian circuit's
    likelihood uses the parameters drawn in that trace; Pyro evaluates ``log_prob`` later,
    outside it. Any other value falls back to a fresh evaluation.
    """

    def __init__(
        self,
        circuit: UGMMCircuit,
        c: torch.Tensor,
        observed: torch.Tensor,
        conditional: torch.Tensor,
        *,
        marginal: torch.Tensor | None = None,
        batch_shape: torch.Size | tuple | None = None,
    ) -> None:
        super().__init__(
            circuit, c if batch_shape is None else torch.as_tensor(c).expand(batch_shape)
        )
        self.observed, self.conditional, self.marginal = observed, conditional, marginal

    def expand(self, batch_shape, _instance=None):  # type: ignore[override]
        """The same distribution, with its class expanded to ``batch_shape``."""
        return ObservedCircuit(
            self.circuit,
            self.c,
            self.observed,
            self.conditional,
            marginal=self.marginal,
            batch_shape=batch_shape,
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The precomputed ``log p(x | c)`` at the observed ``x``; a fresh one elsewhere."""
        if value is self.observed or (
            value.shape == self.observed.shape and torch.equal(value, self.observed)
        ):
            return self._pick(self.conditional, self.marginal)
        return super().log_prob(value)
