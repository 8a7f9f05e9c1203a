"""The roles a model plays, and the small interface every other part of the library uses.

Training (:func:`ugmm_prob.training.fit`, :func:`ugmm_prob.bayes.fit_svi`), the Bayesian
treatment, the ArviZ export and the command line never ask *which* model they hold; they call
the methods of its role:

- :class:`Model`, every model: a ``PyroModule`` under a Pyro name of its own, ``config`` (the
  constructor arguments that rebuild it), ``training_loss(x, y)``, per-example
  ``validation_outputs`` and the ``validation_metrics`` computed from them,
  ``log_likelihood(x, y)`` (the likelihood of the data it models, for posterior
  log-likelihoods and ArviZ) and ``likelihood_site`` (``"y"`` or ``"x"``);
- a *classifier* (:class:`ugmm_prob.networks.Classifier`) models ``p(y | x)``: it needs labels,
  its likelihood is ``log p(y | x)`` and its metrics are accuracy, NLL and ECE;
- a :class:`DensityModel` models ``x`` itself (and, with ``C > 1`` classes, ``p(x, c)``): it
  trains without labels, its likelihood is ``log p(x)`` or ``log p(x, y)``, its metrics are
  the negative log-likelihood per example and bits per dimension, plus the class posterior's
  accuracy, NLL and ECE when there are labels and classes.

Incomplete data. A density model marginalises exactly, so it takes two kinds of holes in
its training and validation data (:attr:`Model.accepts_missing_cells`,
:attr:`Model.accepts_unlabelled_rows`): NaN cells in ``x`` (the row contributes
``log p(x_observed)``) and the label :data:`UNLABELLED` (``-1``, scikit-learn's
semi-supervised marker) for a row whose class is unknown (it contributes
``log p(x) = logsumexp_c log p(x, c)``). A classifier can do neither and refuses both.
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ._deprecation import RenamedAttribute, accepts_old_spellings
from .layers import FreshPyroNameOnCopy, unique_pyro_name
from .metrics import classification_metrics

__all__ = [
    "UNLABELLED",
    "DensityModel",
    "Model",
    "density_metrics",
    "labelled_log_likelihood",
    "labelled_rows",
    "missing_mask",
]

UNLABELLED = -1
"""The label of a row whose class is unknown (scikit-learn's semi-supervised convention)."""


def missing_mask(x: torch.Tensor) -> torch.Tensor | None:
    """``~isnan(x)`` (True = observed) where ``x`` has a NaN cell, else None.

    None keeps the complete-data path (no mask to apply); the test costs one host
    synchronisation, so training steps ask their trainer (which checked the data set once)
    instead of calling this per minibatch.
    """
    observed = ~torch.isnan(x)
    return None if bool(observed.all()) else observed


def labelled_rows(y: torch.Tensor) -> torch.Tensor:
    """``y != UNLABELLED``: the rows whose class is known."""
    return y != UNLABELLED


class Model(FreshPyroNameOnCopy, PyroModule):
    """What every model of the library answers (see the module docstring).

    Subclasses record their constructor arguments in ``self.config`` (plain Python values),
    which is what checkpoints store to rebuild them. A deep copy gets a Pyro name of its own
    (:class:`~ugmm_prob.layers.FreshPyroNameOnCopy`), so it never shares parameters with the
    original.
    """

    config: dict[str, Any]
    num_classes: int
    in_features: int | None = None
    """Values per example the model takes (4 for Iris, 784 for MNIST), or None where the
    model does not say. Every model of the library names its number of inputs so."""
    requires_labels: bool = True
    """Whether :meth:`training_loss` needs labels ``y``."""
    accepts_missing_cells: bool = False
    """Whether training and validation data may have NaN cells (marginalised exactly)."""
    accepts_unlabelled_rows: bool = False
    """Whether labels may be :data:`UNLABELLED` (the row's class marginalised exactly)."""
    likelihood_site: str = "y"
    """The observed Pyro site of :meth:`model`: ``"y"`` (labels) or ``"x"`` (the inputs)."""

    def __init__(self, name: str | None = None) -> None:
        # A distinct Pyro name per instance: see ugmm_prob.layers.unique_pyro_name.
        super().__init__(name=name or unique_pyro_name(type(self).__name__))

    input_size = RenamedAttribute("in_features")
    """Deprecated name of :attr:`in_features`."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised class log-probabilities ``(n, C)``: ``softmax`` gives ``p(c | x)``."""
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar :func:`~ugmm_prob.training.fit` minimises on a minibatch."""
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p`` of each example of the data this model describes, shape ``(n,)``."""
        return self.log_likelihood_from_logits(self.logits(x), y)

    def log_likelihood_from_logits(
        self, logits: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """:meth:`log_likelihood` from ``self.logits(x)``, for callers that have them."""
        raise NotImplementedError

    @torch.no_grad()
    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example outputs ``{name: (n, ...)}`` from which :meth:`validation_metrics`
        scores a model (rows can be gathered across ``torchrun`` ranks)."""
        raise NotImplementedError

    def outputs_from_logit_draws(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`validation_outputs` of the posterior predictive, from ``(S, n, C)`` logits
        under ``S`` parameter draws."""
        raise NotImplementedError

    def validation_metrics(
        self, outputs: dict[str, torch.Tensor], y: torch.Tensor | None
    ) -> dict[str, float]:
        """Metrics (plain floats) of :meth:`validation_outputs` against labels ``y``."""
        raise NotImplementedError

    def metric_names(self, labelled: bool) -> tuple[str, ...]:
        """The names :meth:`validation_metrics` returns (``keep_best`` picks among them)."""
        raise NotImplementedError


def labelled_log_likelihood(joint: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``log p(x, y)`` from ``joint[..., c] = log p(x, c)``: the entry of ``y``, or
    ``log p(x) = logsumexp_c log p(x, c)`` where ``y`` is :data:`UNLABELLED` (every row
    when ``y`` is None): the one place that reads a label, for training losses, EM and
    metrics alike (so an unlabelled row's EM statistics are weighted by its class
    posterior, the gradient of the log-sum-exp)."""
    marginal = torch.logsumexp(joint, dim=-1)
    if y is None:
        return marginal
    y = torch.as_tensor(y, device=joint.device).long().expand(joint.shape[:-1])
    known = labelled_rows(y)
    picked = joint.gather(-1, torch.where(known, y, 0)[..., None]).squeeze(-1)
    return torch.where(known, picked, marginal)


@accepts_old_spellings(renamed={"num_vars": "in_features"})
def density_metrics(
    joint: torch.Tensor, y: torch.Tensor | None, in_features: int
) -> dict[str, float]:
    """Metrics of a density model from ``joint[i, c] = log p(x_i, c)`` ``(n, C)``.

    ``nll``: mean ``-log p(x_i, y_i)`` (``-log p(x_i)`` without labels, and for the rows
    labelled :data:`UNLABELLED`) in nats per example (of the observed cells, when
    ``joint`` was computed with missing cells marginalised); ``bits_per_dim``: the same in
    bits per variable (``in_features`` of them); with labels and ``C > 1`` also the class
    posterior's ``accuracy``, ``class_nll`` and ``ece`` on the labelled rows.
    """
    joint = joint.double()
    y = None if y is None else y.to(joint.device)
    nll = float(-labelled_log_likelihood(joint, y).mean())
    metrics = {"nll": nll, "bits_per_dim": nll / (in_features * math.log(2))}
    known = None if y is None else labelled_rows(y)
    if y is not None and joint.shape[-1] > 1 and bool(known.any()):
        classes = classification_metrics(torch.softmax(joint[known], -1), y[known])
        metrics |= {
            "accuracy": classes["accuracy"],
            "class_nll": classes["nll"],
            "ece": classes["ece"],
        }
    return metrics


class DensityModel(Model):
    """A normalised density ``p(x)`` (and ``p(x, c)`` with ``C`` classes).

    Subclasses implement :meth:`joint_log_prob` (``log p(x, c)`` for every class, with
    ``mask`` marginalising unobserved variables), set ``in_features`` (the number of
    variables ``D``) and ``num_classes``, and implement :meth:`sample`. Labels are optional
    everywhere: without them the likelihood is ``log p(x)``.
    """

    requires_labels = False
    accepts_missing_cells = True
    accepts_unlabelled_rows = True
    likelihood_site = "x"
    in_features: int
    num_vars = RenamedAttribute("in_features")
    """Deprecated name of :attr:`in_features`."""

    def joint_log_prob(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x_obs, c)`` for every class, shape ``(..., C)``."""
        raise NotImplementedError

    def sample(
        self, num_samples: int, c: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples ``(x, c)``."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x, c)``: its softmax over ``c`` is the exact ``p(c | x)`` (NaN cells
        marginalised: ``log p(x_observed, c)``)."""
        x = self.as_input(x)
        return self.joint_log_prob(x, missing_mask(x))

    def log_prob(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(x)`` (``y`` None) or ``log p(x, y)``; marginal over unobserved variables."""
        return self.log_likelihood_from_logits(self.joint_log_prob(x, mask), y)

    def log_likelihood_from_logits(
        self, logits: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """``log p(x, y)`` (the entry of ``y``) or ``log p(x)`` (log-sum-exp over ``c``,
        also for rows labelled :data:`UNLABELLED`): :func:`labelled_log_likelihood`."""
        return labelled_log_likelihood(logits, y)

    def class_log_prior(self) -> torch.Tensor:
        """``log p(c)``, shape ``(C,)``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """The exact class posterior ``p(c | x_observed) = softmax_c log p(x_observed, c)``,
        ``(n, C)``; NaN cells are missing (marginalised)."""
        return torch.softmax(self._joint_in_batches(x, batch_size), dim=-1)

    def predict(self, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """The most probable class ``argmax_c p(c | x)`` of each row, ``(n,)``."""
        return self.predict_proba(x, batch_size=batch_size).argmax(-1)

    def as_input(self, x: Any) -> torch.Tensor:
        """``x`` as the model's query methods take it (a checked tensor)."""
        return x

    def _joint_in_batches(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``log p(x_observed, c)`` ``(n, C)`` in batches, NaN cells marginalised (the
        evaluation paths: validation metrics, ``predict_proba``; a direct
        :meth:`joint_log_prob` asks for an explicit ``mask``)."""
        x = self.as_input(x)
        parts = []
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            parts.append(self.joint_log_prob(chunk, missing_mask(chunk)))
        if not parts:
            return x.new_empty(0, self.num_classes)
        return torch.cat(parts)

    @torch.no_grad()
    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"joint": log p(x_i, c)}`` ``(n, C)`` (of the observed cells where ``x`` has
        NaN cells)."""
        return {"joint": self._joint_in_batches(x, 4096)}

    def outputs_from_logit_draws(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The posterior-averaged joint ``log (1/S) sum_s p(x_i, c | theta_s)``."""
        return {"joint": torch.logsumexp(logits, 0) - math.log(len(logits))}

    def validation_metrics(
        self, outputs: dict[str, torch.Tensor], y: torch.Tensor | None
    ) -> dict[str, float]:
        """:func:`density_metrics` of the joint."""
        return density_metrics(outputs["joint"], y, self.in_features)

    def metric_names(self, labelled: bool) -> tuple[str, ...]:
        """``nll``, ``bits_per_dim``, and with labels and classes ``accuracy``,
        ``class_nll``, ``ece``."""
        names = ("nll", "bits_per_dim")
        if labelled and self.num_classes > 1:
            names += ("accuracy", "class_nll", "ece")
        return names

    def forward(self, c: torch.Tensor | None = None) -> dist.Distribution:
        """The distribution of ``x``: ``p(x | c)``, or ``p(x)`` without ``c``."""
        raise NotImplementedError
