"""Expectation-maximisation for circuits: expected statistics by autograd, closed-form M-steps.

E-step. For a batch, let ``L = sum_b log p(x_b, y_b)`` (``log p(x_b)`` without labels). In a
smooth and decomposable circuit the gradient of ``L`` with respect to a unit's log-value is
the expected number of times the unit takes part in an example's induced tree (its *flow*);
with respect to a sum unit's weight logits it is the expected count of each child minus the
weight times the flow, and with respect to a Gaussian input unit's means and scales it is a
responsibility-weighted sum of ``(x - mu)`` and ``(x - mu)^2``. One backward pass of the
ordinary upward computation (the fused input kernel included) therefore gives every expected
sufficient statistic, as EinsumNetworks computes them; zero *probes* added to the layers'
outputs (:class:`~ugmm_prob.circuits.circuit.FlowProbes`) supply the flows.

Incomplete data. With missing cells (NaN in the training data, a ``mask`` here) ``L`` is
``sum_b log p(x_b,observed)``, the missing cells' input units the constant ``log 1``: the
gradients are the exact expected statistics of the observed cells, and an input unit's flow
counts only the examples that observe its data (per-example input probes,
:meth:`InputLayer.observed_flow <ugmm_prob.circuits.inputs.InputLayer.observed_flow>`). A
row labelled ``-1`` (unknown class) contributes ``log p(x_b)``, the log-sum-exp over classes,
whose gradient weights each class's statistics by ``p(c | x_b)``.

Weighted rows. With per-row weights ``w_b`` the E-step differentiates ``sum_b w_b log
p(x_b[, y_b])``, so every expected statistic counts row ``b`` ``w_b`` times (an integer weight
is the row repeated). :func:`fit_em`'s ``unlabelled_weight`` gives the unlabelled rows the
weight ``lambda`` of Nigam et al. (2000), so that many unlabelled rows do not drown the
labelled ones in semi-supervised EM.

M-step. Each layer maximises its own expected complete-data log-likelihood in closed form
(:meth:`SumLayer.maximise <ugmm_prob.circuits.layers.SumLayer.maximise>`,
:meth:`InputLayer.maximise <ugmm_prob.circuits.inputs.InputLayer.maximise>`), with MAP
smoothing: Dirichlet pseudo-counts ``alpha`` on every weight (sum units, mixture components,
categories, classes), a variance pseudo-count towards the current scale, and the scale floor.

:func:`fit_em` runs full-batch EM (statistics summed over the whole training set, one M-step
per epoch; with ``pseudo_count=0`` each epoch never lowers the training likelihood) or
stochastic online EM (an M-step after every minibatch from running statistics
``s <- (1 - eta_t) s + eta_t s_batch``, with ``eta_t = step_size (1 + t)^(-step_decay)``)
through the library's training loop: progress bars, metrics, checkpoints, resumption, the NaN
guard and ``torchrun`` (statistics are summed over ranks).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import torch

from .. import distributed
from ..checkpoints import Checkpoint
from ..roles import UNLABELLED
from ..training import LoopSettings, prepare_training, train_loop
from ..training.checks import has_missing_cells
from .circuit import UGMMCircuit

__all__ = ["expected_statistics", "fit_em", "maximise"]


def expected_statistics(
    circuit: UGMMCircuit,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """E-step on a batch: ``(sum_b w_b log p(x_b,obs[, y_b]), statistics)``.

    ``mask`` ``(B, D)`` (True = observed; None: every cell) marginalises the other cells
    (their entries of ``x`` are never read, NaN included): the statistics are then the
    exact expected statistics of ``log p(x_observed)``. Sum units and classes count every
    example's flow; an input unit counts only the examples that observe its data
    (:meth:`InputLayer.observed_flow <ugmm_prob.circuits.inputs.InputLayer.observed_flow>`,
    which reads per-example flows from a ``(B, L, I)`` probe). Rows labelled
    :data:`~ugmm_prob.roles.UNLABELLED` contribute ``log p(x) = logsumexp_c log p(x, c)``,
    so their statistics are weighted by the class posterior ``p(c | x)``. ``weights``
    ``(B,)`` (``>= 0``; None: every ``w_b = 1``) counts row ``b`` ``w_b`` times in every
    statistic.

    The statistics are sums over the batch, keyed ``"inputs.<name>"``, ``"sums.<level>"``,
    ``"root"`` and ``"class"``, so batches (and ranks) combine by adding them.
    """
    if getattr(circuit, "bayesian_parameters", None):
        raise ValueError("EM fits point estimates; this circuit has priors (make_bayesian)")
    probes = circuit.flow_probes(None if mask is None else len(x))
    params = dict(circuit.named_parameters())
    with torch.enable_grad():
        up = circuit._upward(x, mask, probes=probes)
        joint = up.root + circuit.class_log_prior()
        per_row = circuit.log_likelihood_from_logits(joint, y)
        total = per_row.sum() if weights is None else (weights * per_row).sum()
        leaves = [probes.inputs, *probes.sums, probes.root, *params.values()]
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    flow_names = ["inputs", *(f"sums.{i}" for i in range(len(probes.sums))), "root"]
    flows = dict(zip(flow_names, grads[: len(flow_names)], strict=True))
    named = {
        name: torch.zeros_like(param) if grad is None else grad
        for (name, param), grad in zip(params.items(), grads[len(flows) :], strict=True)
    }
    stats: dict[str, torch.Tensor] = {}
    input_grads = {k.split(".", 1)[1]: v for k, v in named.items() if k.startswith("inputs.")}
    input_flow = circuit.inputs.observed_flow(flows["inputs"], mask)
    for key, value in circuit.inputs.expected_statistics(input_grads, input_flow).items():
        stats[f"inputs.{key}"] = value
    layers = [(f"sums.{i}", layer) for i, layer in enumerate(circuit.sums)]
    for key, layer in [*layers, ("root", circuit.root)]:
        grad = named[f"{key}.logits_unconstrained"]
        stats[key] = layer.expected_counts(grad, flows[key].detach())
    prior = torch.softmax(circuit.class_logits, -1).detach()
    # d total / d logits = sum_b w_b (n_b - prior): add the prior times the weighted rows
    rows = len(x) if weights is None else weights.sum()
    stats["class"] = named["class_logits_unconstrained"] + prior * rows
    return total.detach(), stats


@torch.no_grad()
def maximise(
    circuit: UGMMCircuit,
    stats: dict[str, torch.Tensor],
    *,
    pseudo_count: float = 1e-2,
    variance_pseudo_count: float = 1e-2,
    covariance_pooling: float = 0.0,
) -> None:
    """M-step: set every parameter of ``circuit`` from summed :func:`expected_statistics`."""
    inputs = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("inputs.")}
    circuit.inputs.maximise(
        inputs,
        pseudo_count=pseudo_count,
        variance_pseudo_count=variance_pseudo_count,
        covariance_pooling=covariance_pooling,
    )
    for level, layer in enumerate(circuit.sums):
        layer.maximise(stats[f"sums.{level}"], pseudo_count=pseudo_count)
    circuit.root.maximise(stats["root"], pseudo_count=pseudo_count)
    counts = stats["class"].clamp_min(0) + pseudo_count
    circuit.class_logits_unconstrained.copy_((counts / counts.sum()).log())


def _reduce(stats: dict[str, torch.Tensor], ctx: distributed.DistributedContext) -> None:
    """Sum statistics over ``torchrun`` ranks in place (one collective)."""
    if not ctx.enabled:
        return
    flat = ctx.sum(torch.cat([value.reshape(-1) for value in stats.values()]))
    offset = 0
    for value in stats.values():
        value.copy_(flat[offset : offset + value.numel()].view_as(value))
        offset += value.numel()


class _EMTrainer:
    """:class:`~ugmm_prob.training.Trainer` for EM on a circuit (:func:`fit_em`)."""

    loss_name = "loss"

    def __init__(
        self,
        circuit: UGMMCircuit,
        *,
        online: bool,
        step_size: float,
        step_decay: float,
        pseudo_count: float,
        variance_pseudo_count: float,
        covariance_pooling: float = 0.0,
        missing: bool = False,
        unlabelled_weight: float = 1.0,
    ) -> None:
        self.model = circuit
        self.unlabelled_weight = unlabelled_weight
        self.online, self.step_size, self.step_decay = online, step_size, step_decay
        self.smoothing = {
            "pseudo_count": pseudo_count,
            "variance_pseudo_count": variance_pseudo_count,
        }
        if covariance_pooling:  # absent at 0, so runs saved before it existed still resume
            self.smoothing["covariance_pooling"] = covariance_pooling
        self.ctx = distributed.context()
        self.missing = missing  # the data have NaN cells: E-steps marginalise them
        self.steps = 0  # online M-steps taken
        self.running: dict[str, torch.Tensor] | None = None

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, *, weight: float, num_data: int
    ) -> float:
        mask = torch.isnan(x).logical_not_() if self.missing else None
        weights = None
        if self.unlabelled_weight != 1.0 and y is not None:
            unlabelled = (y == UNLABELLED).to(x.dtype)
            weights = 1.0 - (1.0 - self.unlabelled_weight) * unlabelled
        total, stats = expected_statistics(self.model, x, y, mask=mask, weights=weights)
        used = float(weight > 0)  # a rank with no share joins with a zero-weighted example
        if not used:
            stats = {key: torch.zeros_like(value) for key, value in stats.items()}
        stats["_log_likelihood"] = (total * used).reshape(1)
        stats["_count"] = torch.tensor([len(x) * used], dtype=total.dtype, device=total.device)
        _reduce(stats, self.ctx)
        log_likelihood, count = stats.pop("_log_likelihood"), stats.pop("_count")
        loss = float(-log_likelihood / count / self.model.in_features)
        if not math.isfinite(loss):
            return loss
        if self.online:
            # s <- (1 - eta) s + eta s_batch n / b, in place: the statistics of categorical
            # inputs hold tens of millions of numbers
            scale = num_data / count
            if self.running is None:
                self.running = {key: value.mul_(scale) for key, value in stats.items()}
            else:
                eta = self._eta()
                for key, value in stats.items():
                    self.running[key].mul_(1 - eta).add_(value.mul_(scale * eta))
            self.steps += 1
            maximise(self.model, self.running, **self.smoothing)
        elif self.running is None:
            self.running = stats
        else:
            for key, value in stats.items():
                self.running[key].add_(value)
        return loss

    def run_settings(self) -> dict[str, Any]:
        """What must not change when a run resumes (checked by the training loop)."""
        return {
            "training": "fit_em",
            "online": self.online,
            "step_size": self.step_size,
            "step_decay": self.step_decay,
            **self.smoothing,
            **self._weighting,
        }

    @property
    def _weighting(self) -> dict[str, float]:
        """``unlabelled_weight`` where it is not 1 (absent at 1, so runs saved before it
        existed still resume)."""
        weight = self.unlabelled_weight
        return {"unlabelled_weight": weight} if weight != 1.0 else {}

    def _eta(self) -> float:
        return min(1.0, self.step_size * (1 + self.steps) ** (-self.step_decay))

    def end_epoch(self) -> dict[str, Any]:
        if self.online:
            return {"step_size": self._eta()}
        maximise(self.model, self.running, **self.smoothing)  # one full-batch M-step
        self.running = None
        return {}

    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.validation_outputs(x)

    def snapshot(self) -> Any:
        running = None if self.running is None else copy.deepcopy(self.running)
        return copy.deepcopy(self.model.state_dict()), running, self.steps

    def restore(self, snapshot: Any) -> None:
        state, running, self.steps = snapshot
        self.model.load_state_dict(state)
        self.running = None if running is None else copy.deepcopy(running)

    def checkpoint_model(self) -> UGMMCircuit:
        return self.model

    def training_state(self) -> dict[str, Any]:
        running = {} if self.running is None else {k: v.cpu() for k, v in self.running.items()}
        return {"em_steps": self.steps, "em_running": running}

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.training_state
        if "em_steps" not in state:
            raise ValueError("the checkpoint was not written by fit_em: no EM statistics")
        self.model.load_state_dict(checkpoint.model.state_dict())
        device = self.model.class_logits.device
        self.steps = int(state["em_steps"])
        running = {k: v.to(device) for k, v in state["em_running"].items()}
        self.running = running or None


def fit_em(
    circuit: UGMMCircuit,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    online: bool = True,
    step_size: float = 0.1,
    step_decay: float = 0.0,
    pseudo_count: float = 1e-2,
    variance_pseudo_count: float = 1e-2,
    covariance_pooling: float = 0.0,
    unlabelled_weight: float = 1.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    metrics_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    keep_best: str | None = None,
    patience: int | None = None,
) -> list[dict[str, Any]]:
    """Fit a circuit by maximum likelihood with EM (see the module docstring).

    Args:
        circuit: a :class:`~ugmm_prob.circuits.UGMMCircuit` with ``likelihood_weight=1``
            (EM maximises the likelihood; train the hybrid objective with
            :func:`~ugmm_prob.training.fit`).
        x, y: training data ``(n, D)`` and, optionally, classes ``(n,)``: EM then maximises
            ``log p(x, y)``, else ``log p(x)``. NaN cells of ``x`` are missing: a row
            contributes ``log p(x_observed[, y])``, the E-step marginalising the rest exactly
            (:func:`expected_statistics`); a label ``-1``
            (:data:`~ugmm_prob.roles.UNLABELLED`) marks a row of unknown class, which
            contributes ``log p(x) = logsumexp_c log p(x, c)`` (semi-supervised EM).
        x_val, y_val: held-out data for the per-epoch metrics and ``keep_best``.
        epochs, batch_size: passes over the data and minibatch size (statistics of a
            full-batch epoch are accumulated over its minibatches).
        online: stochastic online EM (an M-step per minibatch), else full-batch EM.
        step_size, step_decay: online EM's ``eta_t = step_size (1 + t)^(-step_decay)``
            (the first step uses ``eta = 1``).
        pseudo_count: Dirichlet pseudo-count ``alpha`` added to every expected count of a
            weight (sum units, mixture components, categories, class prior).
        variance_pseudo_count: weight ``beta`` of the current variance in each variance
            update (keeps rarely used components from collapsing).
        covariance_pooling: pseudo-count ``nu`` of the pooled spread of a leaf's units in
            each variance or covariance update (``0``: maximum likelihood; large: the
            units share one covariance, as a tied ``GaussianMixture``); it regularises
            full-covariance leaves on small tables.
        unlabelled_weight: the weight ``lambda`` of every row labelled ``-1`` in the
            E-step's statistics (labelled rows weigh 1): semi-supervised EM maximises
            ``sum_labelled log p(x, y) + lambda sum_unlabelled log p(x)`` (Nigam et al.,
            2000); ``1`` is plain semi-supervised EM, ``0`` ignores the unlabelled rows.
        device, seed, progress, metrics_path, checkpoint_path, resume, keep_best: as for
            :func:`~ugmm_prob.training.fit`.
        patience: with ``keep_best``, stop once this many epochs pass without a better
            value (early stopping), as for :func:`~ugmm_prob.training.fit`.

    Returns:
        The per-epoch history (``loss`` is the mean ``-log p`` per variable on the training
        minibatches, before each epoch's last M-step; the validation metrics follow).

    Raises:
        TrainingDivergedError: the likelihood became NaN/inf; the circuit is restored to
            the end of the last completed epoch.
    """
    if not isinstance(circuit, UGMMCircuit):
        raise TypeError(f"fit_em fits a UGMMCircuit, got {type(circuit).__name__}")
    if circuit.likelihood_weight != 1.0:
        raise ValueError(
            f"EM maximises the likelihood; this circuit's likelihood_weight is "
            f"{circuit.likelihood_weight} (train the hybrid objective with fit)"
        )
    if not 0 < step_size <= 1 or step_decay < 0:
        raise ValueError(
            f"expected 0 < step_size <= 1 and step_decay >= 0, got {step_size}, {step_decay}"
        )
    if min(pseudo_count, variance_pseudo_count, covariance_pooling, unlabelled_weight) < 0:
        raise ValueError(
            "pseudo_count, variance_pseudo_count, covariance_pooling and unlabelled_weight "
            f"must be >= 0, got {pseudo_count}, {variance_pseudo_count}, {covariance_pooling}, "
            f"{unlabelled_weight}"
        )
    settings = LoopSettings.from_arguments(locals())
    x_val, y_val, device = prepare_training(circuit, x, y, x_val, y_val, settings, device)
    trainer = _EMTrainer(
        circuit,
        online=online,
        step_size=step_size,
        step_decay=step_decay,
        pseudo_count=pseudo_count,
        variance_pseudo_count=variance_pseudo_count,
        covariance_pooling=covariance_pooling,
        missing=has_missing_cells(circuit, x),
        unlabelled_weight=unlabelled_weight,
    )
    return train_loop(trainer, x, y, x_val, y_val, settings, device)
