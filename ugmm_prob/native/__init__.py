"""Hand-written C++ kernels, built on first use with the machine's C++ compiler.

:func:`load` compiles a ``.cpp`` file of this folder, preceded by the SIMD helpers of
``vector_math.h`` that the kernels share, with
:func:`torch.utils.cpp_extension.load_inline` (cached under ``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``; later processes load the cached build), with the
SIMD instruction set ATen itself dispatches to on this CPU. Where no compiler or ``ninja``
is available, or ``UGMM_PROB_NATIVE=0`` is set, it warns once and returns ``None``, and
callers use their plain PyTorch path; results agree to rounding either way.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["load", "native_enabled"]

_HERE = Path(__file__).parent
_QUIET_LOAD_SECONDS = 3.0  # longer than loading a cached build, far shorter than a build
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def native_enabled() -> bool:
    """Whether native kernels may be used (``UGMM_PROB_NATIVE`` is not ``0``)."""
    return os.environ.get("UGMM_PROB_NATIVE", "1") != "0"


def _compile_flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp"]
    if capability in _ISA_FLAGS:
        flags += [*_ISA_FLAGS[capability], f"-DCPU_CAPABILITY_{capability}"]
    return flags


@functools.cache
def load(name: str, functions: tuple[str, ...]) -> ModuleType | None:
    """The extension built from ``<name>.cpp`` exposing ``functions``, or ``None``."""
    if not native_enabled():
        return None
    from torch.utils import cpp_extension

    # The shared header goes in as text, not through an include path, so that a change to it
    # changes the source torch hashes and every kernel that uses it is rebuilt.
    sources = [(_HERE / "vector_math.h").read_text(), (_HERE / f"{name}.cpp").read_text()]
    flags = _compile_flags()
    module_name = f"ugmm_prob_{name}_{torch.backends.cpu.get_cpu_capability().lower()}"

    def build() -> ModuleType:
        return cpp_extension.load_inline(
            name=module_name,
            cpp_sources=sources,
            functions=list(functions),
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )

    try:
        # A cached build loads in well under a second; a first build takes about a minute,
        # which a user should hear about rather than see as a hang.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(build)
            try:
                return pending.result(timeout=_QUIET_LOAD_SECONDS)
            except concurrent.futures.TimeoutError:
                logging.getLogger(__name__).warning(
                    "ugmm_prob: compiling the native kernel %r for this machine (once: about a "
                    "minute; later runs load the cached build)",
                    name,
                )
                return pending.result()
    except Exception as error:  # no compiler, no ninja, a failed build: use the torch path
        warnings.warn(
            f"ugmm_prob: the native kernel {name!r} could not be built ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); using the "
            "plain PyTorch path (slower, same results)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
