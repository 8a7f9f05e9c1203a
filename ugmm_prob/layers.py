"""Building blocks (``PyroModule``\\ s): the uGMM layer and component dropout.

A :class:`UGMMLayer` of ``J`` neurons on ``N`` inputs holds ``3 * J * N`` parameters and maps
inputs ``x`` of shape ``(..., N)`` to the activations ``a(x)`` of shape ``(..., J)`` computed by
:func:`ugmm_prob.kernels.coupled_log_density`. Its neurons' own distributions are available
as one ``MixtureSameFamily`` through :attr:`UGMMLayer.mixture`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.runtime import am_i_wrapped
from torch.distributions import transform_to

from .boundary import NonFiniteError
from .distributions import neuron_mixture
from .kernels import Backend, check_kernel_inputs, coupled_log_density
from .validation import is_validation_enabled

__all__ = [
    "FreshPyroNameOnCopy",
    "LayerNorm",
    "NonFiniteError",
    "UGMMLayer",
    "component_dropout",
    "parameter_value",
    "rename_pyro_module",
    "unique_pyro_name",
]

_instance_counter = itertools.count()


def unique_pyro_name(prefix: str) -> str:
    """A fresh name for a top-level ``PyroModule``, e.g. ``"UGMMLayer_3"``.

    ``PyroModule``\\ s sync their parameters with Pyro's global parameter store by name, and a
    module that finds its names already in the store takes those values over. Two unnamed
    models built in one process would therefore share (and overwrite) each other's
    parameters; a distinct default name per instance keeps every model's parameters its own.
    Submodules are renamed by their parent (``"UGMMClassifier_0.stack.layers.0.loc"``).
    """
    return f"{prefix}_{next(_instance_counter)}"


def rename_pyro_module(module: PyroModule, name: str) -> None:
    """Give ``module`` the Pyro name ``name`` and its Pyro submodules ``name.path``.

    PyroModules sync their parameters with Pyro's global store by name, so two modules
    under one name share (and overwrite) each other's parameters once either is trained.
    """
    module._pyro_name = name
    for key, child in module._modules.items():
        if isinstance(child, PyroModule):
            rename_pyro_module(child, f"{name}.{key}")


@functools.lru_cache(maxsize=1024)
def _transform_to(constraint: constraints.Constraint) -> torch.distributions.Transform:
    """``transform_to(constraint)``, built once per constraint object: the transforms it
    returns keep no state (no cache), and building one costs more than applying it to a
    small parameter."""
    return transform_to(constraint)


def parameter_value(module: PyroModule, name: str) -> torch.Tensor:
    """``getattr(module, name)`` for a parameter of a ``PyroModule``, cheaply when it can be.

    Pyro computes a parameter through its effect machinery on every access (settings, the
    parameter store, ``pyro.param``, a ``PyroParam``'s constraint transform): tens of
    microseconds, which a small network's training step pays for every parameter. When no
    Pyro handler is active (plain PyTorch training and prediction) and the parameter store
    holds the module's own tensor under the parameter's name, all that machinery returns
    ``transform_to(constraint)(tensor)``, computed here directly: the same operations on the
    same tensor. Otherwise (inside SVI, MCMC, ``pyro.condition``, priors from
    :func:`~ugmm_prob.bayes.make_bayesian`, a store holding other values, a parameter not
    yet registered or None) the attribute is read as usual.
    """
    if not am_i_wrapped():
        if name in module.__dict__["_pyro_params"]:
            tensor = module._parameters.get(f"{name}_unconstrained")
        else:
            tensor = module._parameters.get(name)
        prefix = module._pyro_name
        fullname = f"{prefix}.{name}" if prefix else name
        store = pyro.get_param_store()
        if tensor is not None and store._params.get(fullname) is tensor:
            return _transform_to(store._constraints[fullname])(tensor)
    return getattr(module, name)


class LayerNorm(PyroModule[torch.nn.LayerNorm]):
    """``torch.nn.LayerNorm`` as a ``PyroModule`` (its weight and bias in Pyro's parameter
    store, learnable by SVI) whose forward reads them through :func:`parameter_value`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``layer_norm(x)`` over the last ``normalized_shape`` dimensions."""
        weight, bias = parameter_value(self, "weight"), parameter_value(self, "bias")
        return torch.nn.functional.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class FreshPyroNameOnCopy:
    """Mixin for the library's ``PyroModule``\\ s: ``copy.deepcopy`` gives a fresh Pyro name.

    A plain deep copy keeps the original's Pyro name, so the copy and the original would
    sync their parameters with the same entries of Pyro's parameter store: training the
    copy would then do nothing or overwrite the original. The copy made here is the default
    deep copy, renamed with :func:`unique_pyro_name` (its submodules by their paths), so it
    never shares parameters with the original. Deep-copied as part of a larger model, a
    module is renamed again by that model's copy.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        cls = type(self)
        copied = cls.__new__(cls)
        memo[id(self)] = copied
        state = self.__getstate__()  # PyroModule drops its weak references here
        copied.__setstate__(copy.deepcopy(state, memo))
        rename_pyro_module(copied, unique_pyro_name(cls.__name__))
        return copied


def component_dropout(
    logits: torch.Tensor, p: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Drop mixture components as the paper defines it.

    Each component's logit becomes ``-inf`` with probability ``p``; the mixing weights of the
    survivors renormalise through the softmax (there is no ``1 / (1 - p)`` rescaling). A
    neuron whose every component would be dropped keeps all of them, since an empty mixture
    has no density. One mask is drawn per call and shared by the whole minibatch.

    Args:
        logits: mixing logits of shape ``(..., J, N)``.
        p: drop probability in ``[0, 1)``.
        generator: optional random generator for the mask.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"component_dropout: expected p in [0, 1), got {p}")
    if p == 0.0:
        return logits
    drop = torch.rand(logits.shape, device=logits.device, generator=generator) < p
    drop &= ~drop.all(dim=-1, keepdim=True)
    return logits.masked_fill(drop, -math.inf)


class UGMMLayer(FreshPyroNameOnCopy, PyroModule):
    """A layer of uGMM neurons: each neuron is a univariate Gaussian mixture over its inputs.

    .. math::

        a_j(x) = \\log \\sum_{k=1}^{N} \\pi_{jk}
                 \\mathcal N(x_k \\mid \\mu_{jk}, \\sigma_{jk}^2),
        \\qquad \\pi_j = \\operatorname{softmax}(l_j)

    Component ``k`` of neuron ``j`` is evaluated at input ``x_k`` (one component per
    connection). ``a_j`` is a log-density in each coordinate but not a normalised density of
    the vector ``x`` (see the concepts page); the neuron's own mixture ``P_j(y)`` is, and is
    returned by :attr:`mixture`. If every input equals ``y`` then ``a_j(x) = log P_j(y)``.

    Parameters are ``PyroParam``\\ s, so the layer can be used inside Pyro models and have
    priors put on them: ``loc`` (``mu``, real), ``scale`` (``sigma > scale_floor``) and
    ``logits`` (real). They start from the paper's initialisation: ``mu ~ N(0, 1)``,
    ``sigma ~ U(scale_floor, 1)`` and logits ``~ U(0, 1)``.

    Args:
        in_features: number of inputs ``N``.
        out_features: number of neurons ``J``.
        dropout: component-dropout probability in training mode (see
            :func:`component_dropout`).
        scale_floor: lower bound on every ``sigma``, so variances cannot collapse.
        backend: kernel backend, ``"auto"``, ``"eager"``, ``"compiled"`` or ``"native"``.
        device, dtype: where and in which floating type the parameters live.
        name: prefix of the layer's Pyro parameter names (``"{name}.loc"`` etc.); by default
            a fresh one per instance (see :func:`unique_pyro_name`). Layers inside a
            network are named by their attribute path.

    Example:
        >>> layer = UGMMLayer(4, 3)
        >>> layer(torch.randn(10, 4)).shape
        torch.Size([10, 3])
        >>> layer.mixture.batch_shape
        torch.Size([3])
    """

    prior_parameters = {"loc": "loc", "scale": "scale", "logits": "logits"}  # noqa: RUF012
    """Attribute -> parameter kind for priors (:mod:`ugmm_prob.bayes`)."""

    def prior_dims(self, attribute: str) -> list[str]:
        """ArviZ dimension names of a parameter: ``{layer}.neuron``, ``{layer}.input``."""
        short = self._pyro_name.split(".", 1)[-1]
        return [f"{short}.neuron", f"{short}.input"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dropout: float = 0.0,
        scale_floor: float = 1e-3,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or unique_pyro_name(type(self).__name__))
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UGMMLayer: expected {name} a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UGMMLayer: expected dropout in [0, 1), got {dropout}")
        if not (0.0 < scale_floor < 1.0):
            raise ValueError(f"UGMMLayer: expected scale_floor in (0, 1), got {scale_floor}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"UGMMLayer: expected a floating dtype, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.dropout = dropout
        self.scale_floor = scale_floor
        self.backend = backend
        self.reset_parameters(device=device, dtype=dtype)

    def reset_parameters(
        self,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """(Re)draw the parameters from the paper's initialisation.

        ``mu ~ N(0, 1)``, ``sigma ~ U(scale_floor, 1)``, logits ``~ U(0, 1)``. Replaces the
        parameter objects: build optimisers after calling it.
        """
        if device is None or dtype is None:
            current = getattr(self, "loc_unconstrained", None)
            device = device or (current.device if current is not None else None)
            dtype = dtype or (current.dtype if current is not None else None)
        shape = (self.out_features, self.in_features)
        kw = {"device": device, "dtype": dtype}
        loc = torch.randn(shape, generator=generator, **kw)
        floor = self.scale_floor
        # Strictly above the floor: the constraint's inverse transform is log(sigma - floor).
        unit = torch.rand(shape, generator=generator, **kw).clamp_min(1e-6)
        scale = floor + (1.0 - floor) * unit
        logits = torch.rand(shape, generator=generator, **kw)
        self.loc = PyroParam(loc, constraint=constraints.real)
        self.scale = PyroParam(scale, constraint=constraints.greater_than(floor))
        self.logits = PyroParam(logits, constraint=constraints.real)

    @torch.no_grad()
    def init_from_data(
        self,
        x: torch.Tensor,
        *,
        spread: float = 1.5,
        generator: torch.Generator | None = None,
    ) -> None:
        """Prototype initialisation: each neuron starts centred on one example of ``x``.

        Neuron ``j`` takes the inputs of a randomly drawn row ``i_j`` as its means,
        ``mu_j = x[i_j]``, and every scale becomes ``spread * std(x)`` (the standard deviation
        over all entries, at least twice the scale floor). Each neuron then starts as a soft
        template detector: ``a_j(x)`` is largest for inputs resembling its prototype, and
        gradients reach many components from the first step. On MNIST this learns several
        times faster than the paper's ``N(0, 1)`` means, whose components mostly sit where
        no pixel value ever falls (see ``docs/howto.md``). Mixing logits are kept.

        Args:
            x: inputs of shape ``(n, in_features)``, ``n >= 1``.
            spread: scales in units of the data's standard deviation.
            generator: random generator for the choice of rows.
        """
        if x.dim() != 2 or x.shape[1] != self.in_features or len(x) == 0:
            raise ValueError(
                f"{self.label}: init_from_data expected data of shape (n >= 1, "
                f"{self.in_features}), got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.label}: init_from_data expected finite data")
        if not spread > 0:
            raise ValueError(f"{self.label}: expected spread > 0, got {spread}")
        current = self.loc
        x = x.to(device=current.device, dtype=current.dtype)
        rows = torch.randint(0, len(x), (self.out_features,), generator=generator)
        loc = x[rows.to(x.device)].clone()
        std = float(x.std()) if x.numel() > 1 else 1.0
        scale_value = max(spread * std, 2 * self.scale_floor)
        scale = torch.full_like(current, scale_value)
        self.loc = PyroParam(loc, constraint=constraints.real)
        self.scale = PyroParam(scale, constraint=constraints.greater_than(self.scale_floor))

    @property
    def label(self) -> str:
        """How errors name this layer."""
        name = type(self).__name__
        return f"{name}(in_features={self.in_features}, out_features={self.out_features})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations, shape ``(..., out_features)``, of ``x`` of shape ``(..., in_features)``."""
        loc, scale, logits = (self._parameter(name) for name in ("loc", "scale", "logits"))
        if is_validation_enabled():  # off in the inner training loop: no host sync there
            check_kernel_inputs(x, loc, scale, logits, owner=self.label)
            if not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise NonFiniteError(
                    f"{self.label}: expected finite inputs, got {bad} NaN or inf value(s) "
                    f"in an input of shape {tuple(x.shape)}"
                )
        if self.training and self.dropout > 0:
            logits = component_dropout(logits, self.dropout)
        return coupled_log_density(x, loc, scale, logits, backend=self.backend)

    def _parameter(self, name: str) -> torch.Tensor:
        """``getattr(self, name)`` for ``loc``, ``scale`` or ``logits``, through
        :func:`parameter_value` (cheap outside Pyro inference)."""
        return parameter_value(self, name)

    @property
    def mixture(self) -> dist.MixtureSameFamily:
        """The neurons' own mixtures ``P_j(y)``: batch shape ``(out_features,)``."""
        return neuron_mixture(self.loc, self.scale, self.logits)

    def extra_repr(self) -> str:
        """The constructor settings shown by ``print(layer)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dropout={self.dropout}, scale_floor={self.scale_floor}, backend={self.backend!r}"
        )
