"""The fused kernel against the plain broadcast formula, finite differences and stress cases."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ugmm_prob import kernels
from ugmm_prob.kernels import coupled_log_density, reference_log_density


def _plain(x, loc, scale, logits):
    """The formula written out term by term, independently of the library."""
    log_pi = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    z = (
        log_pi
        - torch.log(scale)
        - 0.5 * math.log(2 * math.pi)
        - (x[..., None, :] - loc) ** 2 / (2 * scale**2)
    )
    return torch.logsumexp(z, dim=-1)


def _params(out_features, in_features, dtype=torch.float64, seed=0, scale_low=0.05):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(out_features, in_features, generator=g, dtype=dtype)
    scale = scale_low + torch.rand(out_features, in_features, generator=g, dtype=dtype)
    logits = torch.randn(out_features, in_features, generator=g, dtype=dtype)
    return loc, scale, logits


@pytest.mark.parametrize("batch_shape", [(), (1,), (7,), (3, 5), (2, 1, 4)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (16, 9)])
def test_matches_plain_formula_in_float64(batch_shape, shape):
    loc, scale, logits = _params(*shape)
    x = 2 * torch.randn(*batch_shape, shape[1], dtype=torch.float64)
    out = coupled_log_density(x, loc, scale, logits, backend="eager")
    assert out.shape == (*batch_shape, shape[0])
    torch.testing.assert_close(out, _plain(x, loc, scale, logits), rtol=1e-12, atol=1e-12)


def test_blocks_cover_the_batch(monkeypatch):
    """Many small eager blocks give the same values and gradients as a single one."""
    loc, scale, logits = _params(6, 5)
    x = torch.randn(37, 5, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in (loc, scale, logits)]
    monkeypatch.setattr(kernels, "EAGER_BLOCK_ELEMENTS", 6 * 5 * 4)  # blocks of 4 rows
    out = coupled_log_density(x, *params, backend="eager")
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    ref = _plain(x, *params)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *params])
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_float32_agrees_with_float64_reference():
    loc, scale, logits = _params(8, 30)
    x = torch.randn(20, 30, dtype=torch.float64)
    want = _plain(x, loc, scale, logits)
    got = coupled_log_density(x.float(), loc.float(), scale.float(), logits.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_gradcheck_in_all_arguments():
    loc, scale, logits = _params(3, 4)
    x = torch.randn(5, 4, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    assert torch.autograd.gradcheck(
        lambda *a: coupled_log_density(*a, backend="eager"), args, eps=1e-6, atol=1e-7
    )


def test_gradients_match_autograd_of_plain_formula():
    loc, scale, logits = _params(7, 11, seed=3)
    x = torch.randn(2, 6, 11, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    upstream = torch.randn(2, 6, 7, dtype=torch.float64)
    got = torch.autograd.grad((coupled_log_density(*args) * upstream).sum(), args)
    want = torch.autograd.grad((_plain(*args) * upstream).sum(), args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_only_requested_gradients_are_computed():
    loc, scale, logits = _params(3, 4)
    x = torch.randn(5, 4, dtype=torch.float64)
    loc.requires_grad_()
    out = coupled_log_density(x, loc, scale, logits)
    (grad,) = torch.autograd.grad(out.sum(), [loc])
    (want,) = torch.autograd.grad(_plain(x, loc, scale, logits).sum(), [loc])
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10)


def test_identity_equal_inputs_give_the_neuron_mixture():
    """If every input equals y, the activation is log P_j(y) of the neuron's own mixture."""
    loc, scale, logits = _params(4, 6)
    y = torch.linspace(-3, 3, 13, dtype=torch.float64)
    x = y[:, None].expand(13, 6)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Normal(loc, scale),
        validate_args=False,  # its support check cannot reshape an empty batch
    )
    torch.testing.assert_close(
        coupled_log_density(x, loc, scale, logits), mixture.log_prob(y[:, None])
    )


def test_saved_memory_has_no_batch_by_neuron_by_input_tensor():
    batch, out_features, in_features = 64, 32, 48
    loc, scale, logits = (p.float().requires_grad_() for p in _params(out_features, in_features))
    x = torch.randn(batch, in_features, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        coupled_log_density(x, loc, scale, logits, backend="eager")
    bound = 4 * (batch * (in_features + out_features) + out_features * in_features)
    assert sum(saved) <= bound
    assert max(saved) < batch * out_features * in_features

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reference_log_density(x, loc, scale, logits)
    assert max(saved) >= batch * out_features * in_features  # the hook does see big tensors


def test_dropped_components_with_minus_inf_logits():
    loc, scale, logits = _params(5, 8)
    logits[:, ::2] = -math.inf
    logits[0, 1:] = -math.inf  # neuron 0 keeps only component 0... which is dropped above
    logits[0, 0] = 0.3  # so revive it: one finite logit left
    x = torch.randn(9, 8, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    out = coupled_log_density(*args)
    torch.testing.assert_close(out, _plain(x, loc, scale, logits))
    grads = torch.autograd.grad(out.sum(), args)
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert (grads[3][:, 2::2] == 0).all()  # dropped components get no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["far", "random"])
def test_stress_inputs_up_to_1e4(dtype, where):
    """All components far from the input (no -inf - -inf NaN) and |x| up to 1e4."""
    loc, scale, logits = _params(6, 10, scale_low=1e-3)
    scale = scale * 0.1
    if where == "far":
        x = torch.full((4, 10), 1e4, dtype=torch.float64)
        x[1] = -1e4
    else:
        x = (torch.rand(50, 10, dtype=torch.float64) * 2 - 1) * 1e4
    want = _plain(x, loc, scale, logits)
    assert torch.isfinite(want).all()
    if where == "far":
        assert (want < -1e9).all()  # every component is thousands of scales away
    args = [t.to(dtype).requires_grad_() for t in (x, loc, scale, logits)]
    got = coupled_log_density(*args)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(
        got.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
    )
    for grad in torch.autograd.grad(got.sum(), args):
        assert torch.isfinite(grad).all()


NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(
        not kernels.native_coupled_usable(torch.zeros(1)), reason="native kernel not built"
    ),
)


@pytest.mark.parametrize("backend", ["eager", NATIVE])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (10, 5), (17, 19), (4, 40)])
def test_backends_match_plain_formula_and_its_gradients(backend, dtype, shape):
    """Values and all four gradients against autograd of the term-by-term formula, for
    layers narrower and wider than a SIMD vector, with a dropped component."""
    out_features, in_features = shape
    loc, scale, logits = _params(out_features, in_features, seed=5)
    if in_features > 1:
        logits[0, 0] = -math.inf
    x = torch.randn(23, in_features, dtype=torch.float64)
    upstream = torch.randn(23, out_features, dtype=torch.float64)
    args = [t.to(dtype).requires_grad_() for t in (x, loc, scale, logits)]
    got = coupled_log_density(*args, backend=backend)
    got_grads = torch.autograd.grad((got * upstream.to(dtype)).sum(), args)
    reference = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    want = _plain(*reference)
    want_grads = torch.autograd.grad((want * upstream).sum(), reference)
    tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {}
    torch.testing.assert_close(got.double(), want, **(tolerance or {"rtol": 1e-5, "atol": 1e-5}))
    for g, w in zip(got_grads, want_grads, strict=True):
        w = w.nan_to_num(0.0)  # the plain formula's gradient of a -inf logit is NaN
        torch.testing.assert_close(g.double(), w, **(tolerance or {"rtol": 1e-4, "atol": 1e-4}))
    if in_features > 1:
        assert got_grads[3][0, 0] == 0 and got_grads[1][0, 0] == 0


@pytest.mark.parametrize("backend", ["eager", NATIVE])
def test_backend_gradcheck(backend):
    loc, scale, logits = _params(3, 11, seed=2)
    x = torch.randn(6, 11, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    assert torch.autograd.gradcheck(
        lambda *a: coupled_log_density(*a, backend=backend), args, eps=1e-6, atol=1e-7
    )


def test_native_backend_is_one_autograd_node_saving_no_large_tensor():
    if not kernels.native_coupled_usable(torch.zeros(1)):
        pytest.skip("native kernel not built")
    batch, out_features, in_features = 64, 32, 48
    loc, scale, logits = (p.float().requires_grad_() for p in _params(out_features, in_features))
    x = torch.randn(batch, in_features, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        out = coupled_log_density(x, loc, scale, logits, backend="native")
    (node, _), *_ = out.grad_fn.next_functions  # past the reshape to the batch shape
    assert type(node).__name__ == "_NativeCoupledLogDensityBackward"
    assert sum(saved) == batch * (in_features + out_features) + 3 * out_features * in_features


def test_auto_uses_eager_without_the_native_kernel_and_native_says_why(monkeypatch):
    monkeypatch.setattr(kernels, "_coupled_extension", lambda: None)
    loc, scale, logits = _params(3, 4)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(
        coupled_log_density(x, loc, scale, logits), _plain(x, loc, scale, logits)
    )
    with pytest.raises(RuntimeError, match="backend='native' needs"):
        coupled_log_density(x, loc, scale, logits, backend="native")


def test_empty_batch():
    loc, scale, logits = _params(3, 4)
    assert coupled_log_density(
        torch.zeros(0, 4, dtype=torch.float64), loc, scale, logits
    ).shape == (0, 3)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.zeros(2, 5, dtype=torch.float64), ValueError, r"\(\.\.\., 4\), got \(2, 5\)"),
        (torch.zeros(2, 4, dtype=torch.int64), TypeError, "float32 or float64, got torch.int64"),
        (torch.zeros(2, 4, dtype=torch.float32), TypeError, "share one dtype"),
    ],
)
def test_bad_inputs_are_named(x, error, match):
    with pytest.raises(error, match=match):
        coupled_log_density(x, *_params(3, 4))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be"):
        coupled_log_density(torch.zeros(2, 4, dtype=torch.float64), *_params(3, 4), backend="fast")


def test_auto_falls_back_to_eager_when_compilation_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    fake = kernels._Runner("compiled", broken, broken, broken, blocked=False)
    monkeypatch.setattr(kernels, "_coupled_extension", lambda: None)  # as on a GPU
    monkeypatch.setattr(kernels, "_compiled_runner", lambda: fake)
    monkeypatch.setattr(kernels, "compiled_backend_available", lambda device_type: True)
    monkeypatch.setattr(kernels, "AUTO_COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(kernels, "_COMPILE_FAILED", set())
    monkeypatch.setattr(kernels, "_COMPILE_WORKED", set())
    loc, scale, logits = (p.requires_grad_() for p in _params(3, 4))
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="using the eager backend"):
        out = coupled_log_density(x, loc, scale, logits)
    torch.testing.assert_close(out, _plain(x, loc, scale, logits))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; later calls go straight to eager
        out = coupled_log_density(x, loc, scale, logits)
        out.sum().backward()
    assert torch.isfinite(loc.grad).all()


@settings(max_examples=40, deadline=None)
@given(
    batch_shape=st.lists(st.integers(0, 4), max_size=3),
    out_features=st.integers(1, 6),
    in_features=st.integers(1, 6),
)
def test_shapes_property(batch_shape, out_features, in_features):
    loc, scale, logits = _params(out_features, in_features)
    x = torch.randn(*batch_shape, in_features, dtype=torch.float64)
    out = coupled_log_density(x, loc, scale, logits)
    assert out.shape == (*batch_shape, out_features)
    if out.numel():
        torch.testing.assert_close(out, _plain(x, loc, scale, logits))


@pytest.mark.compiled
@pytest.mark.skipif(not kernels.compiled_backend_available("cpu"), reason="no C++ compiler")
def test_compiled_backend_matches_plain_formula_and_gradients():
    loc, scale, logits = _params(12, 40, seed=5)
    x = torch.randn(33, 40, dtype=torch.float64)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        args = [t.to(dtype).requires_grad_() for t in (x, loc, scale, logits)]
        out = coupled_log_density(*args, backend="compiled")
        got = torch.autograd.grad((out * out).sum(), args)
        ref_args = [t.detach().double().requires_grad_() for t in args]
        ref = _plain(*ref_args)
        want = torch.autograd.grad((ref * ref).sum(), ref_args)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=tol * 10, atol=tol * 10)


def test_explicit_compiled_backend_does_not_hide_failures(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    fake = kernels._Runner("compiled", broken, broken, broken, blocked=False)
    monkeypatch.setattr(kernels, "_coupled_extension", lambda: None)  # as on a GPU
    monkeypatch.setattr(kernels, "_compiled_runner", lambda: fake)
    monkeypatch.setattr(kernels, "compiled_backend_available", lambda device_type: True)
    with pytest.raises(RuntimeError, match="no compiler here"):
        coupled_log_density(
            torch.zeros(2, 4, dtype=torch.float64), *_params(3, 4), backend="compiled"
        )


@pytest.mark.parametrize(
    "backend",
    [
        "eager",
        pytest.param(
            "compiled",
            marks=[
                pytest.mark.compiled,
                pytest.mark.skipif(
                    not kernels.compiled_backend_available("cpu"), reason="no C++ compiler"
                ),
            ],
        ),
    ],
)
def test_tied_mixture_log_density_equals_pyro_mixture(backend):
    g = torch.Generator().manual_seed(2)
    loc = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    scale = 0.2 + torch.rand(2, 5, 3, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    logits[0, 0, 0, 1] = -math.inf
    x = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, loc, scale, logits)]
    got = kernels.tied_mixture_log_density(*args, backend=backend)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=args[3]), torch.distributions.Normal(*args[1:3])
    )
    want = mixture.log_prob(args[0][:, None, :, None])
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(
        torch.autograd.grad(got.sum(), args[:3]),
        torch.autograd.grad(want.sum(), args[:3]),
        strict=True,
    ):
        torch.testing.assert_close(g_got, g_want)
    with pytest.raises(ValueError, match="expected x"):
        kernels.tied_mixture_log_density(x[:, :4], loc, scale, logits)


# --------------------------------------------------------------------------------------------
# Leaf regions of a circuit: the fused C++ kernel against the plain formula
# --------------------------------------------------------------------------------------------
def _leaf_extension_or_skip():
    if kernels._leaf_extension() is None:
        pytest.skip("the native leaf-region kernel could not be built here (no C++ compiler?)")


def _leaf_case(batch, components, dtype, seed=0, reps=2, num_vars=9, channels=3):
    """Parameters ``(R, D, I, K)``, data with about a third missing, and uneven regions."""
    g = torch.Generator().manual_seed(seed)
    shape = (reps, num_vars, channels, components)
    loc = torch.randn(shape, generator=g, dtype=dtype)
    scale = 0.2 + torch.rand(shape, generator=g, dtype=dtype)
    logits = torch.randn(shape, generator=g, dtype=dtype)
    x = 2 * torch.randn(batch, num_vars, generator=g, dtype=dtype)
    observed = torch.rand(batch, num_vars, generator=g) > 0.3
    # repetition r: a random partition of the variables into regions of sizes 5, 1 and 3
    index = torch.full((reps, 3, 5), num_vars, dtype=torch.long)
    for r in range(reps):
        order = torch.randperm(num_vars, generator=g)
        index[r, 0, :5], index[r, 1, :1], index[r, 2, :3] = order[:5], order[5:6], order[6:]
    return x, observed, loc, scale, logits, index


def _plain_leaf_regions(x, observed, loc, scale, logits, index):
    """Mixture log-densities of every unit summed over each region's observed variables,
    written out with Python loops (independent of the library)."""
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Normal(loc, scale),
        validate_args=False,  # its support check cannot reshape an empty batch
    )
    filled = torch.where(observed, x, torch.zeros_like(x))
    units = mixture.log_prob(filled[:, None, :, None])  # (B, R, D, I)
    units = units * observed[:, None, :, None]
    num_vars = x.shape[1]
    regions = [
        [units[:, r, [v for v in index[r, p].tolist() if v < num_vars]].sum(1) for p in range(3)]
        for r in range(index.shape[0])
    ]
    return torch.stack([torch.stack(row, 1) for row in regions], 1)  # (B, R, P, I)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("components", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [0, 1, 17, 40])
@pytest.mark.parametrize("missing", [False, True])
def test_leaf_regions_match_plain_formula(dtype, components, batch, missing):
    _leaf_extension_or_skip()
    x, observed, loc, scale, logits, index = _leaf_case(batch, components, dtype)
    if not missing:
        observed = torch.ones_like(observed)
    out = kernels.tied_leaf_region_log_density(
        x, loc, scale, logits, index, observed if missing else None
    )
    expected = _plain_leaf_regions(
        x.double(), observed, loc.double(), scale.double(), logits.double(), index
    )
    # float32: a sum of up to five units, each rounded once
    tolerance = (
        {"rtol": 1e-12, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 4e-6, "atol": 4e-5}
    )
    torch.testing.assert_close(out.double(), expected, **tolerance)
    assert out.dtype == dtype and out.shape == (batch, 2, 3, 3)


@pytest.mark.parametrize("components", [1, 2, 4])
def test_leaf_region_gradients_match_autograd_of_plain_formula(components):
    _leaf_extension_or_skip()
    x, observed, *params, index = _leaf_case(23, components, torch.float64, seed=1)
    fused = [p.clone().requires_grad_() for p in params]
    plain = [p.clone().requires_grad_() for p in params]
    weights = torch.randn(23, 2, 3, 3, dtype=torch.float64)
    out = kernels.tied_leaf_region_log_density(x, *fused, index, observed)
    (out * weights).sum().backward()
    (_plain_leaf_regions(x, observed, *plain, index) * weights).sum().backward()
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_leaf_region_gradcheck():
    _leaf_extension_or_skip()
    x, observed, *params, index = _leaf_case(5, 2, torch.float64, seed=2, num_vars=9)
    params = [p.requires_grad_() for p in params]

    def run(loc, scale, logits):
        return kernels.tied_leaf_region_log_density(x, loc, scale, logits, index, observed)

    assert torch.autograd.gradcheck(run, params)


def test_leaf_regions_do_not_use_the_native_kernel_where_it_cannot_serve():
    x, _, loc, *_ = _leaf_case(4, 2, torch.float64)
    assert not kernels.native_leaf_regions_usable(x.requires_grad_(), loc)  # no input gradient
    assert not kernels.native_leaf_regions_usable(x.detach().float(), loc)  # mixed dtypes


def test_a_slow_native_build_is_announced_and_a_quick_load_is_not(monkeypatch, caplog):
    import time
    from types import SimpleNamespace

    from torch.utils import cpp_extension

    from ugmm_prob import native

    def build(seconds):
        def load_inline(**_):
            time.sleep(seconds)
            return SimpleNamespace(built=True)

        return load_inline

    monkeypatch.setattr(native, "_QUIET_LOAD_SECONDS", 0.05)
    monkeypatch.setattr(cpp_extension, "load_inline", build(0.0))
    with caplog.at_level("WARNING", logger="ugmm_prob.native"):
        assert native.load.__wrapped__("leaf_regions", ("batch_multiple",)).built
    assert not caplog.records
    monkeypatch.setattr(cpp_extension, "load_inline", build(0.3))
    with caplog.at_level("WARNING", logger="ugmm_prob.native"):
        assert native.load.__wrapped__("leaf_regions", ("batch_multiple",)).built
    assert "compiling the native kernel 'leaf_regions'" in caplog.text


def test_native_build_failure_warns_and_returns_none(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    from ugmm_prob import native

    def broken(**_):
        raise RuntimeError("no compiler here")

    # a failed build may be recorded in the extension cache: keep it out of the real one
    # (tests/test_native_build.py tests the record and the messages)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load_inline", broken)
    with pytest.warns(RuntimeWarning, match="could not be built.*no compiler here"):
        assert native.load.__wrapped__("leaf_regions", ("batch_multiple",)) is None
    monkeypatch.setenv("UGMM_PROB_NATIVE", "0")
    assert native.load.__wrapped__("leaf_regions", ("batch_multiple",)) is None


def test_every_native_kernel_is_built_after_the_shared_vector_helpers(monkeypatch):
    from pathlib import Path
    from types import SimpleNamespace

    from torch.utils import cpp_extension

    from ugmm_prob import native

    built = {}

    def load_inline(**options):
        built[options["name"]] = options["cpp_sources"]
        return SimpleNamespace()

    monkeypatch.setattr(cpp_extension, "load_inline", load_inline)
    for kernel in ("coupled_layer", "leaf_regions"):
        native.load.__wrapped__(kernel, ("unused",))
    header = (Path(native.__file__).parent / "vector_math.h").read_text()
    assert len(built) == 2
    for header_text, kernel_text in built.values():
        # The header is part of the source torch hashes, so changing it rebuilds the kernel,
        # and the helpers it defines are defined there only.
        assert header_text == header
        for helper in ("floored_exp(", "lane_sum(", "lane_max("):
            assert f"inline T {helper}" not in kernel_text
            assert f"inline Vectorized<T> {helper}" not in kernel_text


# --- categorical leaf regions ---------------------------------------------------------------
def _categorical_extension_or_skip():
    if kernels._categorical_extension() is None:
        pytest.skip("the native categorical kernel could not be built here (no C++ compiler?)")


def _categorical_case(batch, dtype, seed=0, num_values=6):
    """Logits ``(R, D, I, V)``, integer data with about a third missing, uneven regions
    (those of :func:`_leaf_case`)."""
    g = torch.Generator().manual_seed(seed)
    _, observed, loc, *_, index = _leaf_case(batch, 1, dtype, seed=seed)
    reps, num_vars, channels, _ = loc.shape
    logits = torch.randn(reps, num_vars, channels, num_values, generator=g, dtype=dtype)
    x = torch.randint(0, num_values, (batch, num_vars), generator=g).to(dtype)
    return x, observed, logits, index


def _plain_categorical_regions(x, observed, logits, index):
    """Each unit's log-probability of its variable's value, summed over each region's
    observed variables, with Python loops (independent of the library)."""
    log_probs = torch.log_softmax(logits, -1)
    batch, num_vars = x.shape
    reps, regions, _ = index.shape
    out = torch.zeros(batch, reps, regions, logits.shape[2], dtype=logits.dtype)
    for b in range(batch):
        for r in range(reps):
            for p in range(regions):
                for d in index[r, p].tolist():
                    if d < num_vars and (observed is None or observed[b, d]):
                        out[b, r, p] = out[b, r, p] + log_probs[r, d, :, int(x[b, d])]
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [0, 1, 13])
@pytest.mark.parametrize("missing", [False, True])
def test_categorical_regions_match_plain_formula_and_its_gradients(dtype, batch, missing):
    _categorical_extension_or_skip()
    x, observed, logits, index = _categorical_case(batch, dtype)
    observed = observed if missing else None
    if missing:
        x = torch.where(observed, x, torch.nan)  # missing cells are ignored, even NaN
    fused, plain = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out = kernels.categorical_leaf_region_log_density(
        x, torch.log_softmax(fused, -1), index, observed
    )
    expected = _plain_categorical_regions(x, observed, plain, index)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tolerance)
    assert out.shape == (batch, 2, 3, 3) and out.dtype == dtype
    weights = torch.randn(out.shape, dtype=dtype)
    (out * weights).sum().backward()
    if batch:  # an empty batch: the loops add nothing, so there is no graph; the grad is 0
        (expected * weights).sum().backward()
    expected_grad = torch.zeros_like(logits) if plain.grad is None else plain.grad
    torch.testing.assert_close(fused.grad, expected_grad, **tolerance)


def test_categorical_regions_gradcheck_with_a_variable_in_two_regions():
    _categorical_extension_or_skip()
    x, observed, logits, index = _categorical_case(4, torch.float64, seed=3)
    index = index.clone()
    index[:, 1, 1] = index[:, 0, 0]  # region 1 also reads region 0's first variable
    log_probs = torch.log_softmax(logits, -1).requires_grad_()

    def run(table):
        return kernels.categorical_leaf_region_log_density(x, table, index, observed)

    torch.testing.assert_close(
        run(log_probs), _plain_categorical_regions(x, observed, logits, index)
    )
    assert torch.autograd.gradcheck(run, (log_probs,))


def test_categorical_regions_reject_a_value_outside_the_table():
    _categorical_extension_or_skip()
    x, _, logits, index = _categorical_case(3, torch.float64, num_values=6)
    x[1, 4] = 6.0
    with pytest.raises(RuntimeError, match=r"a value outside 0\.\.5"):
        kernels.categorical_leaf_region_log_density(x, torch.log_softmax(logits, -1), index)
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[1, 4] = False  # the same cell, missing: ignored
    kernels.categorical_leaf_region_log_density(x, torch.log_softmax(logits, -1), index, observed)


def test_categorical_circuit_gives_the_same_values_and_em_step_with_and_without_the_kernel(
    monkeypatch,
):
    _categorical_extension_or_skip()
    from ugmm_prob.circuits import UGMMCircuit, inputs
    from ugmm_prob.circuits.em import expected_statistics

    torch.manual_seed(0)
    circuit = UGMMCircuit(
        9, num_classes=2, depth=2, repetitions=2, channels=3, inputs="categorical", num_values=5
    ).double()
    x = torch.randint(0, 5, (11, 9)).double()
    y = torch.randint(0, 2, (11,))
    mask = torch.rand(11, 9) > 0.2

    def run():
        total, stats = expected_statistics(circuit, x, y)
        return circuit.joint_log_prob(x, mask), total, stats

    native = run()
    monkeypatch.setattr(inputs, "native_categorical_regions_usable", lambda *_: False)
    plain = run()
    torch.testing.assert_close(native[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(native[1], plain[1], rtol=1e-12, atol=1e-12)
    for key in plain[2]:
        torch.testing.assert_close(native[2][key], plain[2][key], rtol=1e-10, atol=1e-10)
