"""The numerical core: the input-coupled log-density of a whole uGMM layer.

Only this module knows how the layer's log-density is computed fast; every model calls
:func:`coupled_log_density`. For inputs ``x`` of shape ``(..., N)`` and a layer of ``J``
neurons it returns

.. math::

    a[..., j] = \\log \\sum_k \\pi_{jk}\\, \\mathcal N(x_k \\mid \\mu_{jk}, \\sigma_{jk}^2)
              = \\operatorname{logsumexp}_k\\big(w_{jk} - \\tfrac12 t_{jk}^2\\big),
    \\qquad t_{jk} = (x_k - \\mu_{jk}) / \\sigma_{jk},
    \\quad w_{jk} = \\log\\pi_{jk} - \\log\\sigma_{jk} - \\tfrac12\\log 2\\pi .

How it stays fast and lean
--------------------------
The plain broadcast formula materialises several ``batch x J x N`` tensors and autograd keeps
them all for the backward pass. Here a custom autograd function saves only ``x``, the
``J x N`` parameters and the ``batch x J`` output, and the backward pass *recomputes* the
responsibilities ``r = exp(z - a)`` block by block. The gradients are then reductions:

* ``d w  = sum_b g r``,  ``d mu = rsigma * sum_b g r t``,  ``d rsigma = -sum_b g r t^2 / rsigma``
  (reductions over the batch),
* ``d x  = -sum_j g r t rsigma`` (a reduction over neurons).

The per-block functions below are the single definition of the arithmetic. Two backends run
them: ``"eager"`` (plain PyTorch, in batch blocks whose size bounds peak memory; always
available, any device) and ``"compiled"`` (the same functions through ``torch.compile``, which
fuses each into one loop that never writes a ``batch x J x N`` tensor; C++/OpenMP on CPU,
Triton on CUDA). A third, ``"native"``, is the same arithmetic written once more by hand in
C++ (``ugmm_prob/native/coupled_layer.cpp``: one call forward, one backward) for CPU tensors:
small and medium layers there cost the eager backend's dozens of tensor operations per call
rather than exponentials. ``"auto"`` picks native on CPU when the extension is built, else
the compiled backend for large layers when it can be used, and falls back to eager, once and
with a warning, if compilation fails. The tests hold every backend to the plain formula.

This module stays one file past 400 lines because its sections share the arithmetic's
constants and dispatch rules: the layer kernel, the tied input units and the fused leaf
regions of the circuit (Gaussian-mixture and categorical inputs) are the library's numerical
core and nothing else lives here.
"""

from __future__ import annotations

import functools
import math
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "Backend",
    "categorical_leaf_region_log_density",
    "compiled_backend_available",
    "coupled_log_density",
    "native_categorical_regions_usable",
    "native_coupled_usable",
    "native_leaf_regions_usable",
    "tied_leaf_region_log_density",
    "tied_mixture_log_density",
]

Backend = Literal["auto", "eager", "compiled", "native"]
"""Kernel backends: ``"auto"`` (native on CPU, else compiled for large layers when available),
eager, compiled, native (hand-written C++, CPU)."""

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# Eager blocks hold a few temporaries of rows x J x N elements; 2**19 float32 elements (2 MiB)
# per temporary keeps a block inside a core's L2 cache on typical CPUs, which measured fastest.
EAGER_BLOCK_ELEMENTS = 2**19
# Below this many batch x J x N elements compiling does not repay its few seconds of start-up.
AUTO_COMPILE_MIN_ELEMENTS = 2**21
# Exponentials are floored at exp(-80) = 1.8e-35. Every sum they enter has a largest term of
# at least 1 (sums of exp(z - max z) or of responsibilities), where such terms are invisible in
# float32 and float64 alike, while computing them exactly costs up to 7x more than other
# exponentials (subnormal results go through slow microcode).
EXP_FLOOR = -80.0
SUPPORTED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# The arithmetic, one definition for every backend and device.
# --------------------------------------------------------------------------------------------
def _exponent(
    x: torch.Tensor, loc: torch.Tensor, rscale: torch.Tensor, log_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z[b,j,k] = w[j,k] - t^2/2`` and ``t[b,j,k] = (x[b,k] - mu[j,k]) / sigma[j,k]``.

    Both are fresh tensors that callers may overwrite: the in-place operations here and
    below spare eager execution an allocation (and its page faults) per step, and
    ``torch.compile`` turns them back into pure functions.
    """
    t = (x[:, None, :] - loc).mul_(rscale)
    return torch.addcmul(log_weights, t, t, value=-0.5), t


def _floored_exp_(v: torch.Tensor) -> torch.Tensor:
    """``exp(max(v, EXP_FLOOR))``, overwriting ``v``.

    Written with ``v`` used once: a ``torch.where`` on ``v`` makes inductor write the whole
    ``batch x J x N`` argument to memory (measured 160 ms against 9 ms for the backward).
    """
    return v.clamp_min_(EXP_FLOOR).exp_()


def _forward_block(
    x: torch.Tensor, loc: torch.Tensor, rscale: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    z, _ = _exponent(x, loc, rscale, log_weights)
    # Shift by the largest term, which is finite: a neuron always keeps a finite log-weight
    # (log_softmax of an all -inf row would already be NaN), however far x lies.
    peak = z.amax(dim=-1)
    return _floored_exp_(z.sub_(peak[..., None])).sum(dim=-1).log_().add_(peak)


def _weighted_responsibilities(
    grad: torch.Tensor,
    x: torch.Tensor,
    loc: torch.Tensor,
    rscale: torch.Tensor,
    log_weights: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``g[b,j] * r[b,j,k]`` with ``r = exp(z - a)`` (sums to 1 over k), and ``t``."""
    z, t = _exponent(x, loc, rscale, log_weights)
    return _floored_exp_(z.sub_(out[..., None])).mul_(grad[..., None]), t


def _batch_moments_block(
    grad: torch.Tensor,
    x: torch.Tensor,
    loc: torch.Tensor,
    rscale: torch.Tensor,
    log_weights: torch.Tensor,
    out: torch.Tensor,
    repeat_for_fusion: bool = False,
) -> torch.Tensor:
    """``stack(sum_b G, sum_b G t, sum_b G t^2)`` for ``G = g r``; shape ``(3, J, N)``.

    With ``repeat_for_fusion`` the responsibilities are written out once per reduction.
    Inductor then fuses the three reductions into one loop (common subexpressions are
    computed once) instead of writing ``G`` to memory: 10 ms against 36 ms at
    128 x 128 x 784 on a 2-core CPU. Eager execution must not repeat them.
    """
    args = (grad, x, loc, rscale, log_weights, out)
    if repeat_for_fusion:
        (g0, _), (g1, t1), (g2, t2) = (_weighted_responsibilities(*args) for _ in range(3))
        return torch.stack([g0.sum(0), (g1 * t1).sum(0), (g2 * t2 * t2).sum(0)])
    weighted, t = _weighted_responsibilities(*args)
    total = weighted.sum(0)
    first = weighted.mul_(t).sum(0)
    second = weighted.mul_(t).sum(0)
    return torch.stack([total, first, second])


def _input_grad_block(
    grad: torch.Tensor,
    x: torch.Tensor,
    loc: torch.Tensor,
    rscale: torch.Tensor,
    log_weights: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """``d a / d x`` contracted with ``grad``: ``-sum_j g r t / sigma``; shape ``(rows, N)``."""
    weighted, t = _weighted_responsibilities(grad, x, loc, rscale, log_weights, out)
    return weighted.mul_(t).mul_(rscale).sum(dim=1).neg_()


# --------------------------------------------------------------------------------------------
# Backends: how the block functions are run.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Runner:
    name: str
    forward: Callable[..., torch.Tensor]
    batch_moments: Callable[..., torch.Tensor]
    input_grad: Callable[..., torch.Tensor]
    blocked: bool  # whether batch blocks are needed to bound temporaries

    def row_blocks(self, rows: int, out_features: int, in_features: int) -> Iterator[slice]:
        step = rows
        if self.blocked:
            step = max(1, EAGER_BLOCK_ELEMENTS // max(1, out_features * in_features))
        for start in range(0, rows, max(step, 1)):
            yield slice(start, min(start + step, rows))


_EAGER = _Runner(
    name="eager",
    forward=_forward_block,
    batch_moments=_batch_moments_block,
    input_grad=_input_grad_block,
    blocked=True,
)


@functools.cache
def _compiled_runner() -> _Runner:
    compile_ = functools.partial(torch.compile, dynamic=None, fullgraph=True)
    return _Runner(
        name="compiled",
        forward=compile_(_forward_block),
        batch_moments=compile_(functools.partial(_batch_moments_block, repeat_for_fusion=True)),
        input_grad=compile_(_input_grad_block),
        blocked=False,
    )


# (device type, dtype) pairs where compilation failed, and (method, device type, dtype)
# triples where it worked: "auto" falls back to eager only before a compiled function worked.
_COMPILE_FAILED: set[tuple[str, torch.dtype]] = set()
_COMPILE_WORKED: set[tuple[str, str, torch.dtype]] = set()


@functools.cache
def compiled_backend_available(device_type: str = "cpu") -> bool:
    """Whether ``torch.compile`` can build the fused kernels for ``device_type``.

    CPU needs a C++ compiler on the PATH; CUDA needs Triton. A ``True`` here is a
    prerequisite, not a promise: a compilation that still fails makes ``"auto"`` fall back
    to eager (with one warning).
    """
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return False
    except Exception:
        return False
    if device_type == "cpu":
        return any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return bool(has_triton())
        except Exception:
            return False
    return False


def _use_compiled(backend: str, device: torch.device, dtype: torch.dtype, work: int) -> bool:
    """Whether ``backend`` asks for the compiled path for ``work`` elements on ``device``."""
    if backend == "eager":
        return False
    if backend == "compiled":
        if not compiled_backend_available(device.type):
            raise RuntimeError(
                f"backend='compiled' needs torch.compile support for device "
                f"'{device.type}' (a C++ compiler on CPU, Triton on CUDA); use "
                "backend='auto' or 'eager'"
            )
        return True
    if backend not in ("auto", "native"):
        raise ValueError(
            f"backend must be 'auto', 'eager', 'compiled' or 'native', got {backend!r}"
        )
    return (
        work >= AUTO_COMPILE_MIN_ELEMENTS
        and (device.type, dtype) not in _COMPILE_FAILED
        and compiled_backend_available(device.type)
        and not torch.compiler.is_compiling()
    )


def _select_runner(backend: str, x: torch.Tensor, out_features: int) -> _Runner:
    work = x.shape[0] * out_features * x.shape[-1]
    return _compiled_runner() if _use_compiled(backend, x.device, x.dtype, work) else _EAGER


def _warn_compile_failed(key: tuple[str, torch.dtype], error: Exception) -> None:
    _COMPILE_FAILED.add(key)
    warnings.warn(
        f"ugmm_prob: torch.compile of the uGMM kernel failed on {key[0]}/{key[1]} "
        f"({type(error).__name__}: {error}); using the eager backend instead",
        RuntimeWarning,
        stacklevel=4,
    )


def _run(runner: _Runner, method: str, fallback: bool, *args: torch.Tensor) -> torch.Tensor:
    """Run ``runner.<method>``.

    With ``fallback`` (backend ``"auto"``), a compiled function that fails before it ever
    worked for this device and dtype is replaced by its eager twin, with one warning, and the
    compiled backend is not tried again for that device and dtype.
    """
    fn = getattr(runner, method)
    x = args[0] if method == "forward" else args[1]
    key = (x.device.type, x.dtype)
    if runner is _EAGER or not fallback or (method, *key) in _COMPILE_WORKED:
        return fn(*args)
    try:
        result = fn(*args)
    except Exception as error:
        _warn_compile_failed(key, error)
        return getattr(_EAGER, method)(*args)
    _COMPILE_WORKED.add((method, *key))
    return result


class _CoupledLogDensity(torch.autograd.Function):
    """Autograd for the layer log-density; saves O(batch*(N+J) + J*N) for backward."""

    @staticmethod
    def forward(ctx, x, loc, rscale, log_weights, backend):  # type: ignore[override]
        runner = _select_runner(backend, x, loc.shape[0])
        fallback = backend == "auto"
        rows, (out_features, in_features) = x.shape[0], loc.shape
        out = x.new_empty(rows, out_features)
        for block in runner.row_blocks(rows, out_features, in_features):
            out[block] = _run(runner, "forward", fallback, x[block], loc, rscale, log_weights)
        ctx.save_for_backward(x, loc, rscale, log_weights, out)
        ctx.backend = backend
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, loc, rscale, log_weights, out = ctx.saved_tensors
        need_x, need_loc, need_rscale, need_weights = ctx.needs_input_grad[:4]
        runner = _select_runner(ctx.backend, x, loc.shape[0])
        fallback = ctx.backend == "auto"
        grad = grad.contiguous()
        rows, (out_features, in_features) = x.shape[0], loc.shape
        blocks = list(runner.row_blocks(rows, out_features, in_features))

        def run(method: str, rows: slice) -> torch.Tensor:
            block = (grad[rows], x[rows], loc, rscale, log_weights, out[rows])
            return _run(runner, method, fallback, *block)

        grad_x = grad_loc = grad_rscale = grad_weights = None
        if need_loc or need_rscale or need_weights:
            moments = sum(run("batch_moments", rows) for rows in blocks)
            # Dropped components (log-weight -inf) see only floored exponentials: their
            # gradients are exactly 0.
            moments = moments.masked_fill(log_weights == -math.inf, 0.0)
            grad_weights = moments[0]
            grad_loc = moments[1] * rscale
            grad_rscale = -moments[2] / rscale
        if need_x:
            grad_x = torch.cat([run("input_grad", rows) for rows in blocks])
        return grad_x, grad_loc, grad_rscale, grad_weights, None


def _coupled_extension():
    from .native import load

    return load("coupled_layer", ("coupled_forward", "coupled_backward"))


def _native_ready(load_extension, *tensors: torch.Tensor) -> bool:
    """What every hand-written C++ kernel needs: all tensors on the CPU in one supported
    dtype, not inside ``torch.compile`` (which cannot trace an opaque extension call), and
    the extension built; ``load_extension`` is called last because it may compile it."""
    dtype = tensors[0].dtype
    return (
        all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
        and dtype in SUPPORTED_DTYPES
        and not torch.compiler.is_compiling()
        and load_extension() is not None
    )


def native_coupled_usable(x: torch.Tensor) -> bool:
    """Whether the hand-written C++ layer kernel can run for ``x``: CPU, float32/float64,
    not inside ``torch.compile``, and the extension built (see :mod:`ugmm_prob.native`)."""
    return _native_ready(_coupled_extension, x)


class _NativeCoupledLogDensity(torch.autograd.Function):
    """Autograd for the C++ layer kernel: one node for the whole layer (the log-softmax of
    the logits and the scale terms are computed inside); saves the inputs and the output."""

    @staticmethod
    def forward(ctx, x, loc, scale, logits):  # type: ignore[override]
        out = _coupled_extension().coupled_forward(x, loc, scale, logits)
        ctx.save_for_backward(x, loc, scale, logits, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        need_x, *need_parameters = ctx.needs_input_grad
        return tuple(
            _coupled_extension().coupled_backward(
                grad, *ctx.saved_tensors, need_x, any(need_parameters)
            )
        )


def _use_native(backend: str, x: torch.Tensor) -> bool:
    if backend == "native":
        if not native_coupled_usable(x):
            raise RuntimeError(
                "backend='native' needs float32/float64 CPU tensors and the C++ extension "
                f"(got {x.dtype} on {x.device}; see ugmm_prob.native); use backend='auto'"
            )
        return True
    return backend == "auto" and native_coupled_usable(x)


def check_kernel_inputs(
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    logits: torch.Tensor,
    *,
    owner: str = "coupled_log_density",
) -> None:
    """Raise a clear error when shapes, dtypes or devices of the kernel's inputs disagree.

    Skipped while validation is disabled (:mod:`ugmm_prob.validation`), as in the inner
    training loop.
    """
    from .validation import is_validation_enabled  # the library's one validation switch

    if not is_validation_enabled():
        return
    for name, tensor in (("x", x), ("loc", loc), ("scale", scale), ("logits", logits)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{owner}: expected {name} to be a torch.Tensor, got {type(tensor)}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{owner}: expected {name} of dtype float32 or float64, got {tensor.dtype}"
            )
    if loc.dim() != 2 or scale.shape != loc.shape or logits.shape != loc.shape:
        raise ValueError(
            f"{owner}: expected loc, scale and logits of one shape (out_features, in_features), "
            f"got {tuple(loc.shape)}, {tuple(scale.shape)}, {tuple(logits.shape)}"
        )
    if x.dim() < 1 or x.shape[-1] != loc.shape[1]:
        raise ValueError(
            f"{owner}: expected input of shape (..., {loc.shape[1]}), got {tuple(x.shape)}"
        )
    dtypes = {x.dtype, loc.dtype, scale.dtype, logits.dtype}
    if len(dtypes) > 1:
        raise TypeError(f"{owner}: input and parameters must share one dtype, got {dtypes}")
    devices = {x.device, loc.device, scale.device, logits.device}
    if len(devices) > 1:
        raise ValueError(f"{owner}: input and parameters must be on one device, got {devices}")


def coupled_log_density(
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    logits: torch.Tensor,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Input-coupled log-density of a layer of uGMM neurons.

    .. math::

        a[..., j] = \\operatorname{logsumexp}_k\\big(\\log\\operatorname{softmax}(l_j)_k
                    + \\log\\mathcal N(x_{...,k} \\mid \\mu_{jk}, \\sigma_{jk}^2)\\big)

    Component ``k`` of neuron ``j`` is evaluated at input ``x[..., k]``. Memory kept for the
    backward pass is ``O(batch * (N + J) + J * N)``: no ``batch x J x N`` tensor is stored.
    Differentiable once (first-order gradients) in ``x``, ``loc``, ``scale`` and ``logits``.

    Args:
        x: inputs of shape ``(..., N)``, float32 or float64.
        loc: means ``mu``, shape ``(J, N)``.
        scale: standard deviations ``sigma > 0``, shape ``(J, N)``.
        logits: mixing logits ``l`` (``pi = softmax(l, -1)``), shape ``(J, N)``; ``-inf``
            drops a component.
        backend: ``"eager"``, ``"compiled"`` (``torch.compile``-fused), ``"native"``
            (hand-written C++, CPU) or ``"auto"``.

    Returns:
        Activations of shape ``(..., J)``.
    """
    check_kernel_inputs(x, loc, scale, logits)
    out_features, in_features = loc.shape
    batch_shape = x.shape[:-1]
    flat = x.reshape(-1, in_features)
    if flat.shape[0] == 0:
        return x.new_empty(*batch_shape, out_features)
    if _use_native(backend, flat):
        parameters = (loc.contiguous(), scale.contiguous(), logits.contiguous())
        out = _NativeCoupledLogDensity.apply(flat.contiguous(), *parameters)
    else:
        log_weights = torch.log_softmax(logits, dim=-1) - torch.log(scale) - LOG_SQRT_2PI
        out = _CoupledLogDensity.apply(
            flat.contiguous(),
            loc.contiguous(),
            scale.reciprocal(),
            log_weights.contiguous(),
            backend,
        )
    return out.reshape(*batch_shape, out_features)


def reference_log_density(
    x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """The plain broadcast formula, materialising ``(..., J, N)``; for tests and benchmarks."""
    log_pi = torch.log_softmax(logits, dim=-1)
    component = torch.distributions.Normal(loc, scale).log_prob(x[..., None, :])
    return torch.logsumexp(log_pi + component, dim=-1)


# --------------------------------------------------------------------------------------------
# Input units with tied inputs (the generative circuit's leaves).
# --------------------------------------------------------------------------------------------
def _tied_formula(
    x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    log_weights = torch.log_softmax(logits, dim=-1) - torch.log(scale) - LOG_SQRT_2PI
    t = (x[:, None, :, None, None] - loc) / scale
    return torch.logsumexp(log_weights - 0.5 * t * t, dim=-1)


@functools.cache
def _compiled_tied_formula() -> Callable[..., torch.Tensor]:
    return torch.compile(_tied_formula, dynamic=None, fullgraph=True)


# Circuits of many shapes (single repetitions, channels or components specialise graphs),
# dtypes and grad modes in one process each cost a graph; dynamo's default limit of 8 per
# function would turn the compiled backend off for the rest of the process.
TIED_RECOMPILE_LIMIT = 64


def tied_mixture_log_density(
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    logits: torch.Tensor,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Log-densities of many univariate Gaussian mixtures, each reading one variable.

    .. math::

        out[b, g, d, u] = \\log \\sum_k \\pi_{gduk}\\, \\mathcal N(x_{bd} \\mid
                          \\mu_{gduk}, \\sigma_{gduk}^2)

    These are uGMM neurons whose inputs are all tied to the same variable ``x_d`` (the input
    units of :class:`~ugmm_prob.circuits.UGMMCircuit`). Equal to
    ``MixtureSameFamily(Categorical(logits), Normal(loc, scale)).log_prob(x[:, None, :, None])``;
    the compiled backend fuses the component axis away, so neither pass materialises
    ``batch x G x D x U x K`` tensors (3x faster than the plain formula for the MNIST
    circuit's input layer on a 2-core CPU).

    Args:
        x: ``(B, D)``; loc, scale, logits: ``(G, D, U, K)``.
        backend: ``"auto"`` (compiled for large inputs when available), ``"eager"`` or
            ``"compiled"``.

    Returns:
        ``(B, G, D, U)``.
    """
    if x.dim() != 2 or loc.dim() != 4 or x.shape[1] != loc.shape[1]:
        raise ValueError(
            "tied_mixture_log_density: expected x (B, D) and parameters (G, D, U, K), got "
            f"{tuple(x.shape)} and {tuple(loc.shape)}"
        )
    work = x.shape[0] * loc.numel()
    if _use_compiled(backend, x.device, x.dtype, work):
        try:
            with torch._dynamo.config.patch(recompile_limit=TIED_RECOMPILE_LIMIT):
                return _compiled_tied_formula()(x, loc, scale, logits)
        except Exception as error:
            if backend != "auto":
                raise
            _warn_compile_failed((x.device.type, x.dtype), error)
    return _tied_formula(x, loc, scale, logits)


# --------------------------------------------------------------------------------------------
# Leaf regions of a circuit: products of tied input units, fused (hand-written C++ on CPU).
# --------------------------------------------------------------------------------------------
_LEAF_FUNCTIONS = ("leaf_regions_forward", "leaf_regions_backward", "batch_multiple")


class _ByRegion(NamedTuple):
    """The data of a batch laid out for the leaf-region kernels (see :func:`_gather_by_region`)."""

    values: torch.Tensor  # (R, P, S, B'): the values of region p's variables, batch last
    keep: torch.Tensor  # (R, P, S, B') bool, True where observed; empty when all are
    sizes: torch.Tensor  # (R, P) int64: how many of the S slots are variables, not padding
    index: torch.Tensor  # (R, P, S) int64: the variables, padding clamped to a valid one


def _gather_by_region(
    x: torch.Tensor, region_index: torch.Tensor, observed: torch.Tensor | None, batch_multiple: int
) -> _ByRegion:
    """``x`` ``(B, D)`` gathered per leaf region, batch last and padded to a multiple of
    ``batch_multiple``; unobserved entries are set to 0 (a value in every support)."""
    batch, num_vars = x.shape
    sizes = (region_index < num_vars).sum(-1)
    index = region_index.clamp_max(num_vars - 1)
    padded = -batch % batch_multiple
    if observed is not None:
        x = torch.where(observed, x, torch.zeros((), dtype=x.dtype))
    values = torch.nn.functional.pad(x.t(), (0, padded))[index].contiguous()
    keep = x.new_empty(0, dtype=torch.bool)
    if observed is not None:
        keep = torch.nn.functional.pad(observed.t(), (0, padded))[index].contiguous()
    return _ByRegion(values, keep, sizes, index)


def _leaf_extension():
    from .native import load

    return load("leaf_regions", _LEAF_FUNCTIONS)


def native_leaf_regions_usable(x: torch.Tensor, loc: torch.Tensor) -> bool:
    """Whether :func:`tied_leaf_region_log_density` can run the fused C++ kernel for these
    tensors: CPU, float32/float64, no gradient needed for ``x``, at most 32 components, and
    the extension built (see :mod:`ugmm_prob.native`)."""
    return not x.requires_grad and loc.shape[-1] <= 32 and _native_ready(_leaf_extension, x, loc)


class _LeafRegions(torch.autograd.Function):
    """Autograd for the fused leaf regions; saves the gathered inputs and parameters only."""

    @staticmethod
    def forward(ctx, x, keep, sizes, log_weights, loc, rscale):  # type: ignore[override]
        ctx.save_for_backward(x, keep, sizes, log_weights, loc, rscale)
        return _leaf_extension().leaf_regions_forward(x, keep, sizes, log_weights, loc, rscale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        grads = _leaf_extension().leaf_regions_backward(grad, *ctx.saved_tensors)
        return None, None, None, *grads


def tied_leaf_region_log_density(
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    logits: torch.Tensor,
    region_index: torch.Tensor,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-densities of the leaf regions of a circuit whose input units are tied mixtures.

    .. math::

        out[b, r, p, i] = \\sum_{d \\in \\text{region}(r, p),\\ x_{bd} \\text{ observed}}
            \\log \\sum_k \\pi_{rdik}\\, \\mathcal N(x_{bd} \\mid \\mu_{rdik}, \\sigma_{rdik}^2)

    The same numbers as :func:`tied_mixture_log_density` followed by a sum over each
    region's variables, but one C++ pass forward and one backward (gradients with respect to
    the parameters, reduced over the batch in the same loop) that never store a
    ``B x R x D x I`` tensor. Use it where :func:`native_leaf_regions_usable` holds.

    Args:
        x: ``(B, D)``; entries that are not observed are ignored (may be NaN).
        loc, scale, logits: ``(R, D, I, K)``.
        region_index: ``(R, P, V)`` the variables of leaf region ``p`` of repetition ``r``,
            padded at the end with ``D``.
        observed: ``(B, D)`` booleans, True where ``x`` is observed; None: all observed.

    Returns:
        ``(B, R, P, I)``.
    """
    batch = len(x)
    reps = loc.shape[0]
    # batch last and padded: one SIMD vector holds one variable in many examples
    lanes = _leaf_extension().batch_multiple()
    values, keep, sizes, index = _gather_by_region(x, region_index, observed, lanes)
    keep = keep.to(x.dtype)
    log_weights = torch.log_softmax(logits, -1) - torch.log(scale) - LOG_SQRT_2PI
    reps_index = torch.arange(reps, device=x.device)[:, None, None]

    def by_region(parameter: torch.Tensor) -> torch.Tensor:
        return parameter[reps_index, index].contiguous()  # (R, P, V, I, K)

    out = _LeafRegions.apply(
        values, keep, sizes, by_region(log_weights), by_region(loc), by_region(scale.reciprocal())
    )
    return out[..., :batch].permute(3, 0, 1, 2)


# --------------------------------------------------------------------------------------------
# Leaf regions of categorical input units: sums of looked-up log-probabilities (C++ on CPU).
# --------------------------------------------------------------------------------------------
_CATEGORICAL_FUNCTIONS = ("categorical_regions_forward", "categorical_regions_backward")


def _categorical_extension():
    from .native import load

    return load(
        "categorical_regions", ("categorical_regions_forward", "categorical_regions_backward")
    )


def native_categorical_regions_usable(x: torch.Tensor, log_probs: torch.Tensor) -> bool:
    """Whether :func:`categorical_leaf_region_log_density` can run for these tensors: CPU,
    float32/float64, no gradient needed for ``x``, and the extension built."""
    return (
        x.device.type == "cpu"
        and not x.requires_grad
        and _native_ready(_categorical_extension, log_probs)
    )


class _CategoricalRegions(torch.autograd.Function):
    """Autograd for the categorical leaf regions; the backward pass is a scatter into the
    table of log-probabilities (nothing of size ``B x R x D x I`` is saved)."""

    @staticmethod
    def forward(ctx, values, keep, sizes, index, log_probs):  # type: ignore[override]
        ctx.save_for_backward(values, keep, sizes, index, log_probs)
        extension = _categorical_extension()
        return extension.categorical_regions_forward(values, keep, sizes, index, log_probs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        extension = _categorical_extension()
        grad_table = extension.categorical_regions_backward(grad, *ctx.saved_tensors)
        return None, None, None, None, grad_table


def categorical_leaf_region_log_density(
    x: torch.Tensor,
    log_probs: torch.Tensor,
    region_index: torch.Tensor,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probabilities of the leaf regions of a circuit with categorical input units.

    .. math::

        out[b, r, p, i] = \\sum_{d \\in \\text{region}(r, p),\\ x_{bd} \\text{ observed}}
            L[r, d, i, x_{bd}]

    The same numbers as looking up every unit's log-probability and summing over each
    region's variables, in one C++ pass forward and one backward (a scatter into ``L``).
    Use it where :func:`native_categorical_regions_usable` holds.

    Args:
        x: ``(B, D)`` integer values (in a floating tensor); entries that are not observed
            are ignored (may be NaN).
        log_probs: ``(R, D, I, V)`` normalised log-probabilities of the units.
        region_index: ``(R, P, S)`` the variables of leaf region ``p`` of repetition ``r``,
            padded at the end with ``D``.
        observed: ``(B, D)`` booleans, True where ``x`` is observed; None: all observed.

    Returns:
        ``(B, R, P, I)``.

    Raises:
        RuntimeError: an observed value outside ``0..V-1``.
    """
    values, keep, sizes, index = _gather_by_region(x, region_index, observed, 1)
    table = log_probs.contiguous()
    out = _CategoricalRegions.apply(values.long(), keep, sizes, index, table)
    return out.permute(3, 0, 1, 2)
