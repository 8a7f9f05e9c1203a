"""Networks built from uGMM layers, the paper's baselines and the joint-score model.

Every network here is a :class:`Classifier`: it computes class logits, its ``forward``
returns the predictive ``Categorical`` distribution (so ``net(x).log_prob(y)`` reads like the
mathematics), it is a Pyro model through :meth:`Classifier.model`, and it answers
``log_prob``, ``predict_proba`` and ``predict``. Training, checkpoints and the Bayesian
treatment use only that interface plus :attr:`Classifier.config`.

- :class:`UGMMStack`: uGMM layers with optional LayerNorm and per-layer component dropout;
- :class:`UGMMClassifier`: the fully connected uGMM-NN (784-128-64-10 in the paper);
- :class:`ConvUGMMClassifier`: a standard convolutional feature extractor with a uGMM head;
- :class:`MLPClassifier`, :class:`CNNClassifier`: the paper's baselines;
- :class:`JointScoreModel`: the label fed in as an extra input, an unnormalised joint score
  ``s(x, c)`` and the exact class posterior ``p(c | x) = softmax_c s(x, c)``.

Why one module past 400 lines: checkpoints record each network as
``ugmm_prob.networks:<class>``, so moving a class would break every stored model, and the
networks are short subclasses of one base read together.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ._deprecation import RenamedAttribute, accepts_old_spellings
from .boundary import NonFiniteError, as_batch, check_labels
from .kernels import Backend
from .layers import FreshPyroNameOnCopy, LayerNorm, UGMMLayer
from .metrics import classification_metrics
from .roles import Model
from .validation import is_validation_enabled

__all__ = [
    "CNNClassifier",
    "Classifier",
    "ConvUGMMClassifier",
    "JointScoreModel",
    "MLPClassifier",
    "UGMMClassifier",
    "UGMMStack",
]

_MOVED_TO_CHECKPOINTS = (
    "LOADABLE_MODEL_CLASSES",
    "build_model",
    "model_class_path",
    "resolve_model_class",
)


def __getattr__(name: str) -> Any:
    # The checkpoint allow-list and class resolution live in ugmm_prob.checkpoints now.
    if name in _MOVED_TO_CHECKPOINTS:
        import warnings

        from . import checkpoints

        warnings.warn(
            f"ugmm_prob.networks.{name} moved to ugmm_prob.checkpoints.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Classifier(Model):
    """Base class: a network mapping inputs ``x`` to class logits (the classifier role).

    Subclasses implement :meth:`logits` and record their constructor arguments in
    ``self.config`` (plain Python values), which is what checkpoints store to rebuild them.
    Subclasses that know their input width set ``self.in_features``; their public
    methods then take inputs through :func:`ugmm_prob.boundary.as_batch` (tensors,
    NumPy arrays or lists; shape ``(n, features...)``; a 1-D ``x`` is refused, pass
    ``x[None]`` for one example). ``copy.deepcopy`` gives the copy a fresh Pyro name, so a
    copy never shares Pyro's parameter store with its original.
    """

    def _batch(self, x: Any, method: str) -> Any:
        """``x`` through the input boundary (:func:`~ugmm_prob.boundary.as_batch`)."""
        if self.in_features is None:
            return x
        reference = next(self.parameters(), None)
        if reference is None:
            reference = next(self.buffers(), None)
        return as_batch(
            x,
            in_features=self.in_features,
            name=f"{type(self).__name__}.{method}: x",
            dtype=None if reference is None else reference.dtype,
            device=None if reference is None else reference.device,
        )

    def _checked_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if is_validation_enabled() and not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).sum())
            raise NonFiniteError(
                f"{type(self).__name__}: {bad} class logit(s) are NaN or infinite for finite "
                "inputs (the parameters have diverged?)"
            )
        return logits

    def forward(self, x: torch.Tensor) -> dist.Categorical:
        """The predictive distribution ``p(y | x)``: ``Categorical(logits=self.logits(x))``.

        Raises :class:`~ugmm_prob.layers.NonFiniteError` if the logits are not finite.
        """
        return dist.Categorical(logits=self._checked_logits(self.logits(x)))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` for each row, shape ``(n,)``."""
        x = self._batch(x, "log_prob")
        if self.in_features is not None:
            y = check_labels(
                y,
                self.num_classes,
                num_examples=len(x),
                name=f"{type(self).__name__}.log_prob: y",
                device=x.device,
            )
            if len(x) == 0:
                return x.new_zeros(0)
        return self(x).log_prob(y)

    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Pyro model: ``y_i ~ Categorical(logits(x_i))`` under ``pyro.plate("data")``.

        ``num_data`` is the size of the whole data set when ``x`` is a minibatch: the
        plate then scales the log-likelihood by ``num_data / len(x)``.
        """
        logits = self._checked_logits(self.logits(x))
        size = len(x) if num_data is None else num_data
        subsample = torch.arange(len(x), device=x.device)
        with pyro.plate("data", size=size, subsample=subsample):
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def init_from_data(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        """Data-dependent initialisation of the uGMM layers (prototype init); see
        :meth:`UGMMStack.init_from_data`. Models without uGMM layers raise."""
        raise NotImplementedError(f"{type(self).__name__} has no data-dependent initialisation")

    def training_loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The objective minimised by :func:`ugmm_prob.training.fit`: mean ``-log p(y | x)``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} is a classifier: training needs labels y")
        return -self.log_prob(x, y).mean()

    def log_likelihood_from_logits(
        self, logits: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """``log p(y_i | x_i) = log_softmax(logits)[y_i]``; ``y`` is required."""
        if y is None:
            raise ValueError(f"{type(self).__name__} is a classifier: give the labels y")
        return torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)

    def validation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"probs": p(y | x)}`` ``(n, C)``."""
        return {"probs": self.predict_proba(x)}

    def outputs_from_logit_draws(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The posterior predictive ``(1/S) sum_s softmax(logits_s)``."""
        return {"probs": torch.softmax(logits, -1).mean(0)}

    def validation_metrics(
        self, outputs: dict[str, torch.Tensor], y: torch.Tensor | None
    ) -> dict[str, float]:
        """Accuracy, NLL and ECE of the predicted probabilities."""
        if y is None:
            raise ValueError(f"{type(self).__name__} is a classifier: metrics need labels y")
        return classification_metrics(outputs["probs"], y)

    def metric_names(self, labelled: bool) -> tuple[str, ...]:
        """``accuracy``, ``nll`` and ``ece``."""
        return ("accuracy", "nll", "ece")

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """``p(y | x)`` in evaluation mode (no dropout), shape ``(n, num_classes)``.

        ``x`` is a tensor, NumPy array or list ``(n, features...)``; an empty batch gives an
        empty ``(0, num_classes)`` result.
        """
        x = self._batch(x, "predict_proba")
        if batch_size < 1:
            raise ValueError(f"predict_proba: expected batch_size >= 1, got {batch_size}")
        if len(x) == 0:
            reference = next(self.parameters(), None)
            dtype = x.dtype if reference is None else reference.dtype
            return torch.zeros(0, self.num_classes, dtype=dtype, device=x.device)
        was_training = self.training
        self.eval()
        try:
            parts = [self.logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        return torch.softmax(torch.cat(parts), dim=-1)

    def predict(self, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """Most probable class for each row, shape ``(n,)`` (empty for an empty batch)."""
        return self.predict_proba(x, batch_size=batch_size).argmax(-1)


def constructor_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A model's constructor arguments as plain values, for ``self.config``.

    Call as ``constructor_config(locals())`` first thing in ``__init__``: checkpoints store
    the result and rebuild the model with ``cls(**config)``.
    """
    skip = {"self", "__class__", "name"}
    return {
        key: list(value) if isinstance(value, (tuple, list)) else value
        for key, value in arguments.items()
        if key not in skip
    }


_STACK_OPTIONS = ("layer_norm", "dropout", "scale_floor", "backend")
"""The constructor arguments a network hands on to its :class:`UGMMStack` unchanged (read
back from its ``config``, so each stays an explicit, documented argument of the network)."""


def _stack_options(config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`_STACK_OPTIONS` of a network's ``config``, as keywords for
    :class:`UGMMStack`."""
    return {key: config[key] for key in _STACK_OPTIONS}


class UGMMStack(FreshPyroNameOnCopy, PyroModule):
    """uGMM layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    LayerNorm (optional, after every layer but the last) rescales the wide range of
    log-density activations, which the paper found essential for training. Component dropout
    is given per layer (a single number applies to the first layer only, as in the paper).

    Args:
        sizes: layer widths including the input width, e.g. ``(784, 128, 64, 10)``.
        layer_norm: LayerNorm after each hidden layer.
        dropout: component-dropout probability, per layer or for the first layer.
        scale_floor, backend: passed to every :class:`~ugmm_prob.layers.UGMMLayer`.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        layer_norm: bool = True,
        dropout: float | Sequence[float] = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"UGMMStack: expected at least two sizes, got {sizes}")
        count = len(sizes) - 1
        if isinstance(dropout, (int, float)):  # the first layer only, as in the paper
            dropout = [float(dropout)] + [0.0] * (count - 1)
        rates = [float(rate) for rate in dropout]
        if len(rates) != count:
            raise ValueError(f"expected {count} dropout values (one per layer), got {len(rates)}")
        self.layers = PyroModule[nn.ModuleList](
            [
                UGMMLayer(n_in, n_out, dropout=p, scale_floor=scale_floor, backend=backend)
                for n_in, n_out, p in zip(sizes[:-1], sizes[1:], rates, strict=True)
            ]
        )
        self.norms = PyroModule[nn.ModuleList](
            [LayerNorm(width) for width in sizes[1:-1]] if layer_norm else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's activations, ``(n, sizes[-1])``, of inputs ``(n, sizes[0])``."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.norms):
                x = self.norms[index](x)
        return x

    @torch.no_grad()
    def init_from_data(
        self,
        x: torch.Tensor,
        *,
        spread: float = 1.5,
        max_rows: int = 2048,
        generator: torch.Generator | None = None,
    ) -> None:
        """Prototype initialisation of every layer (:meth:`UGMMLayer.init_from_data`).

        Layers are initialised in order, each from the activations that the layers below
        it (already initialised, in evaluation mode) give for up to ``max_rows`` rows of
        ``x``, so every layer starts matched to what it will actually receive.
        """
        if x.dim() != 2 or len(x) == 0:
            raise ValueError(f"UGMMStack: expected data of shape (n >= 1, d), got {tuple(x.shape)}")
        was_training = self.training
        self.eval()
        try:
            keep = torch.randperm(len(x), generator=generator)[:max_rows]
            h = x[keep.to(x.device)]
            for index, layer in enumerate(self.layers):
                layer.init_from_data(h, spread=spread, generator=generator)
                h = layer(h.to(layer.loc.device))
                if index < len(self.norms):
                    h = self.norms[index](h)
        finally:
            self.train(was_training)


class UGMMClassifier(Classifier):
    """Fully connected uGMM-NN: the last layer's activations are the class logits.

    ``UGMMClassifier(784, hidden=(128, 64), num_classes=10, layer_norm=True, dropout=0.3)``
    is the paper's MNIST network (98.34% reported). The logits are log-densities of each
    class neuron's mixture at the previous layer's activations; they are scores, not a
    likelihood of ``x``.

    Args:
        in_features: values per example (4 for Iris, 784 for MNIST).
        hidden: widths of the hidden uGMM layers.
        num_classes: number of classes, the width of the output layer.
        layer_norm, dropout, scale_floor, backend: as for :class:`UGMMStack`.
    """

    @accepts_old_spellings(formerly_positional=("hidden", "num_classes"))
    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (128, 64),
        num_classes: int = 10,
        layer_norm: bool = True,
        dropout: float | Sequence[float] = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.config = config
        self.stack = UGMMStack([in_features, *hidden, num_classes], **_stack_options(config))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Output-layer activations (log-densities of the class neurons), ``(n, C)``."""
        return self.stack(self._batch(x, "logits"))

    def init_from_data(self, x, y=None, *, generator=None) -> None:
        """Prototype initialisation from training inputs ``x`` (labels unused)."""
        self.stack.init_from_data(x.flatten(1), generator=generator)


class MLPClassifier(Classifier):
    """The paper's baseline: ``Linear -> ReLU -> Dropout`` per hidden layer, then ``Linear``.

    Args:
        in_features: values per example.
        hidden: widths of the hidden layers (``()``: a logistic regression).
        num_classes: number of classes.
        dropout: dropout probability after every hidden layer.
    """

    @accepts_old_spellings(formerly_positional=("hidden", "num_classes"))
    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (128, 64),
        num_classes: int = 10,
        dropout: float = 0.2,
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.config = config
        widths = [in_features, *hidden]
        blocks: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(widths):
            blocks += [PyroModule[nn.Linear](n_in, n_out), nn.ReLU(), nn.Dropout(dropout)]
        blocks.append(PyroModule[nn.Linear](widths[-1], num_classes))  # hidden=(): logistic
        self.net = PyroModule[nn.Sequential](*blocks)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the flattened inputs, ``(n, C)``."""
        return self.net(self._batch(x, "logits"))


class ConvFeatures(PyroModule):
    """Standard MNIST feature extractor: two conv/ReLU/max-pool blocks and a dense layer.

    ``(n, 1, 28, 28)`` (or flat ``(n, 784)``) to ``(n, features)``.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, features: int = 128) -> None:
        super().__init__()
        self.image_size, self.channels = image_size, channels
        reduced = image_size // 4
        self.net = PyroModule[nn.Sequential](
            PyroModule[nn.Conv2d](channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            PyroModule[nn.Conv2d](32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            PyroModule[nn.Linear](64 * reduced * reduced, features),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat images
            x = x.reshape(len(x), self.channels, self.image_size, self.image_size)
        return self.net(x)


class CNNClassifier(Classifier):
    """The CNN baseline: :class:`ConvFeatures`, dropout, then a dense layer to the classes.

    It takes MNIST-shaped images, so its ``in_features`` is fixed (``1 x 28 x 28 = 784``)
    and its constructor has no ``in_features`` argument; ``num_classes`` is its only
    positional argument, as there is nothing to confuse it with.

    Args:
        num_classes: number of classes.
        features: width of the feature extractor's dense layer.
        dropout: dropout probability before the output layer.
    """

    def __init__(
        self, num_classes: int = 10, *, features: int = 128, dropout: float = 0.25
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        self.num_classes = num_classes
        self.config = config
        self.features = ConvFeatures(features=features)
        self.in_features = self.features.channels * self.features.image_size**2
        self.head = PyroModule[nn.Sequential](
            nn.Dropout(dropout), PyroModule[nn.Linear](features, num_classes)
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``(n, channels, size, size)`` (or flat), shape ``(n, C)``."""
        return self.head(self.features(self._batch(x, "logits")))


class ConvUGMMClassifier(Classifier):
    """:class:`ConvFeatures` with a uGMM head (``features -> head_hidden -> classes``).

    Like :class:`CNNClassifier`, it takes MNIST-shaped images (``in_features`` is 784).

    Args:
        num_classes: number of classes.
        features: width of the feature extractor's dense layer (the head's inputs).
        head_hidden: widths of the head's hidden uGMM layers.
        layer_norm, dropout, scale_floor, backend: as for :class:`UGMMStack` (the head).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        features: int = 128,
        head_hidden: Sequence[int] = (64,),
        layer_norm: bool = True,
        dropout: float | Sequence[float] = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        self.num_classes = num_classes
        self.config = config
        self.features = ConvFeatures(features=features)
        self.in_features = self.features.channels * self.features.image_size**2
        # LayerNorm brings the ReLU features to the scale of the uGMM initialisation.
        self.feature_norm = LayerNorm(features)
        self.head = UGMMStack([features, *head_hidden, num_classes], **_stack_options(config))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The uGMM head's output activations on the normalised CNN features, ``(n, C)``."""
        return self.head(self.feature_norm(self.features(self._batch(x, "logits"))))

    @torch.no_grad()
    def init_from_data(self, x, y=None, *, generator=None) -> None:
        """Prototype initialisation of the uGMM head from the (current) conv features of
        up to 2048 rows of ``x``."""
        was_training = self.training
        self.eval()
        try:
            keep = torch.randperm(len(x), generator=generator)[:2048].to(x.device)
            features = self.feature_norm(self.features(x[keep]))
        finally:
            self.train(was_training)
        self.head.init_from_data(features, generator=generator)


class JointScoreModel(Classifier):
    """The paper's "generative" uGMM-NN: the label is an extra input to the network.

    The root neuron's activation is the joint score ``s(x, c)`` of features ``x`` and label
    ``c`` (fed in as the number ``c``). **``s`` is not a normalised density of ``x``**: a uGMM
    neuron on several inputs is a log-density in each coordinate but its integral over
    ``R^N`` diverges (see the concepts page), so ``exp s(x, c)`` cannot be integrated to a
    likelihood. What is exact is the posterior over the finitely many labels, in which the
    unknown normaliser cancels:

    .. math::  p(c \\mid x) = \\frac{\\exp s(x, c)}{\\sum_{c'} \\exp s(x, c')}

    computed for all candidate labels in one batched pass (:meth:`logits` returns
    ``s(x, c)`` for every ``c``). For exact likelihoods of ``x``, use the generative circuit.

    Training objectives (``objective``):

    - ``"score"``: maximise ``s(x, y)`` at the observed label, as the paper does. This is
      *not* maximum likelihood: nothing normalises ``s``.
    - ``"conditional"``: maximise ``log p(y | x)`` (cross-entropy over candidate labels),
      the exact conditional likelihood of this model.

    Args:
        in_features: number of features ``D``; the network has ``D + 1`` inputs.
        num_classes: number of labels ``C``.
        hidden: hidden widths (the paper's Iris model: ``(10, 5)``, root width 1).
        objective: the training objective, ``"score"`` or ``"conditional"`` (above).
        layer_norm, dropout, scale_floor, backend: as for :class:`UGMMStack`.
    """

    num_features = RenamedAttribute("in_features")
    """Deprecated name of :attr:`in_features`."""

    @accepts_old_spellings(
        renamed={"num_features": "in_features"}, formerly_positional=("num_classes", "hidden")
    )
    def __init__(
        self,
        in_features: int,
        *,
        num_classes: int,
        hidden: Sequence[int] = (10, 5),
        objective: str = "score",
        layer_norm: bool = False,
        dropout: float | Sequence[float] = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
    ) -> None:
        config = constructor_config(locals())
        super().__init__()
        if objective not in ("score", "conditional"):
            raise ValueError(f"objective must be 'score' or 'conditional', got {objective!r}")
        self.in_features, self.num_classes, self.objective = in_features, num_classes, objective
        self.config = config
        self.stack = UGMMStack([in_features + 1, *hidden, 1], **_stack_options(config))

    def score(self, x: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
        """Joint score ``s(x, c)``: ``x`` is ``(n, D)``; labels ``c`` broadcast with ``(n,)``.

        ``x`` goes through the input boundary (:func:`~ugmm_prob.boundary.as_batch`);
        ``c`` must hold labels in ``[0, C)``.
        """
        x = self._batch(x, "score")
        c = torch.as_tensor(c, device=x.device)
        if c.is_floating_point() or c.dtype == torch.bool or c.is_complex():
            raise TypeError(f"JointScoreModel.score: expected integer labels c, got {c.dtype}")
        checked = c.numel() and is_validation_enabled()
        if checked and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise ValueError(
                f"JointScoreModel.score: expected labels c in [0, {self.num_classes - 1}], "
                f"got min {int(c.min())} and max {int(c.max())}"
            )
        return self._score(x, c)

    def _score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_tensors(x[..., 0], c)[0].shape  # broadcast_shapes is slower
        inputs = torch.cat(
            [x.expand(*batch, x.shape[-1]), c.to(x.dtype).expand(batch)[..., None]], dim=-1
        )
        return self.stack(inputs).squeeze(-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``s(x, c)`` for every candidate label ``c``, shape ``(n, C)``, in one pass."""
        x = self._batch(x, "logits")
        labels = torch.arange(self.num_classes, device=x.device)
        return self._score(x[None], labels[:, None]).transpose(0, 1)

    def init_from_data(self, x, y=None, *, generator=None) -> None:
        """Prototype initialisation from training pairs: the first layer's neurons start
        centred on ``(x_i, y_i)`` of random examples, so each one already prefers a label."""
        if y is None:
            raise ValueError("JointScoreModel.init_from_data needs the labels y")
        inputs = torch.cat([x, torch.as_tensor(y, device=x.device).to(x.dtype)[:, None]], -1)
        self.stack.init_from_data(inputs, generator=generator)

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``p(c | x)``, shape ``(n, C)`` (evaluation mode, no gradient; empty for an
        empty batch)."""
        return self.predict_proba(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``-mean s(x, y)`` for ``objective="score"``, else ``-mean log p(y | x)``."""
        if self.objective == "score":
            return -self.score(x, y).mean()
        return super().training_loss(x, y)

    def joint_model(self, x: torch.Tensor) -> torch.Tensor:
        """Pyro model of the unnormalised joint: ``c ~ Uniform{0..C-1}``, factor ``s(x, c)``.

        With the label site enumerated (``config_enumerate``), Pyro's exact marginal of
        ``c`` equals :meth:`posterior`. Used to check the posterior against Pyro itself.
        """
        uniform = torch.zeros(self.num_classes, device=x.device, dtype=x.dtype)
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=uniform))
            pyro.factor("score", self.score(x, c))
        return c
