"""Hand-written C++ kernels, built on first use with the machine's C++ compiler.

:func:`load` compiles a ``.cpp`` file of this folder, preceded by the SIMD helpers of
``vector_math.h`` that the kernels share, with
:func:`torch.utils.cpp_extension.load_inline` (cached under ``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``; later processes load the cached build), with the
SIMD instruction set ATen itself dispatches to on this CPU. Where no compiler or ``ninja``
is available, or ``UGMM_PROB_NATIVE=0`` is set, it returns ``None``, and callers use their
plain PyTorch path; results agree to rounding either way.

What a user sees:

- a build that takes more than a few seconds is announced (a ``logging`` warning of
  ``ugmm_prob.native``), so that the first run does not look stuck;
- torch's notices that do not concern a CPU extension never reach stderr: ``No CUDA
  runtime is found, using CUDA_HOME=...`` (printed by a CUDA build of torch on a machine
  without a GPU when ``torch.utils.cpp_extension`` is imported) and, when the compiler does
  not exist, its banner calling the compiler "not compatible"; every other message of
  torch's, and every build error, is left alone;
- a missing compiler is reported as missing, in one ``RuntimeWarning`` per process, and a
  missing ``ninja`` likewise;
- a failed build is remembered: a small file in ``TORCH_EXTENSIONS_DIR/ugmm_prob_failed_builds``
  named by the kernel and a hash of the compiler (its path and version, or its absence),
  torch's version and the kernel's source and flags holds the build log, and later
  processes do not retry that build (one warning per process says so and where the file
  is; deleting it retries). Installing or changing the compiler, or a new version of the
  kernel, changes the hash, so the build is tried again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

__all__ = ["load", "native_enabled"]

_HERE = Path(__file__).parent
_QUIET_LOAD_SECONDS = 3.0  # longer than loading a cached build, far shorter than a build
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
_FAILED_BUILDS = "ugmm_prob_failed_builds"  # folder of the failure records, in the cache
_FALLBACK = (
    "using the plain PyTorch path instead (slower: 1.3x on the demo, 3-4x on wide layers and "
    "image circuits; results agree to rounding, not bit for bit; see docs/installation.md)"
)
_warned: set[str] = set()  # the once-per-process warnings already given
_warned_lock = threading.Lock()


def native_enabled() -> bool:
    """Whether native kernels may be used (``UGMM_PROB_NATIVE`` is not ``0``)."""
    return os.environ.get("UGMM_PROB_NATIVE", "1") != "0"


def _compile_flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp"]
    if capability in _ISA_FLAGS:
        flags += [*_ISA_FLAGS[capability], f"-DCPU_CAPABILITY_{capability}"]
    return flags


class Compiler(NamedTuple):
    """The C++ compiler torch builds extensions with: the name it runs (``$CXX``, else
    ``c++``; ``cl`` on Windows), the executable it resolves to (None: not found) and its
    version line (None: not found or not telling)."""

    name: str
    path: str | None
    version: str | None


def _find_compiler() -> Compiler:
    """The compiler :func:`torch.utils.cpp_extension.load_inline` will run (the same
    lookup: ``$CXX`` or the platform's default name, on ``PATH``)."""
    name = os.environ.get("CXX") or ("cl" if sys.platform == "win32" else "c++")
    path = shutil.which(name)
    if path is None:
        return Compiler(name, None, None)
    path = os.path.realpath(path)
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        lines = (result.stdout or result.stderr).strip().splitlines()
        version = lines[0].strip() if lines else None
    except (OSError, subprocess.SubprocessError):
        version = None
    return Compiler(name, path, version)


_compiler = functools.cache(_find_compiler)


def _describe(compiler: Compiler) -> str:
    """``/usr/bin/g++-12 (g++ 12.2.0)``: the compiler in a message."""
    if compiler.path is None:
        return repr(compiler.name)
    return f"{compiler.path} ({compiler.version or 'version unknown'})"


def _extensions_root() -> Path:
    """Where torch caches extension builds (``$TORCH_EXTENSIONS_DIR`` or its default)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def _failure_record(module_name: str, sources: list[str], flags: list[str]) -> Path:
    """The file that records a failed build of this kernel with this compiler, torch and
    source (it need not exist)."""
    compiler = _compiler()
    key = json.dumps(
        [
            compiler.name,
            compiler.path,
            compiler.version,
            torch.__version__,
            sys.version_info[:2],
            module_name,
            sources,
            flags,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _extensions_root() / _FAILED_BUILDS / f"{module_name}-{digest}.txt"


def _remember_failure(record: Path, kernel: str, error: BaseException) -> bool:
    """Write the failure record (the compiler, torch's version and the build log);
    False if it cannot be written (a read-only cache: the build is then retried)."""
    compiler = _compiler()
    text = (
        f"ugmm_prob native kernel {kernel!r}: the build failed; it is not retried with this "
        "compiler, torch and kernel source. Delete this file to retry.\n"
        f"compiler: {compiler.name} -> {compiler.path or 'not found'}\n"
        f"compiler version: {compiler.version or 'unknown'}\n"
        f"torch: {torch.__version__}\n\n{type(error).__name__}: {error}\n"
    )
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(record)
    except OSError:
        return False
    return True


def _warn_once(key: str, message: str) -> None:
    """A ``RuntimeWarning`` given at most once per process for ``key``."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class _TorchNoticeFilter(logging.Filter):
    """Drops torch's notices that do not concern building a CPU extension here: the CUDA
    (or ROCm) toolkit found without a GPU runtime, and the "not compatible" banner about a
    compiler that does not exist."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(("No CUDA runtime is found", "No ROCm runtime is found")):
            return False
        return not ("is not compatible with the compiler" in message and not _compiler().path)


_NOTICE_FILTER = _TorchNoticeFilter()
_filter_lock = threading.Lock()
_filter_users = 0


@contextlib.contextmanager
def _quiet_torch_notices() -> Iterator[None]:
    """While inside: :class:`_TorchNoticeFilter` on torch's ``cpp_extension`` logger."""
    global _filter_users
    logger = logging.getLogger("torch.utils.cpp_extension")
    with _filter_lock:
        if _filter_users == 0:
            logger.addFilter(_NOTICE_FILTER)
        _filter_users += 1
    try:
        yield
    finally:
        with _filter_lock:
            _filter_users -= 1
            if _filter_users == 0:
                logger.removeFilter(_NOTICE_FILTER)


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else ""


def _report_failure(name: str, error: Exception, record: Path) -> None:
    """Say why the kernel ``name`` is not built, in plain words, and remember a failed
    compilation so that later processes do not retry it."""
    compiler = _compiler()
    if "Ninja is required" in str(error):  # torch.utils.cpp_extension.verify_ninja_availability
        _warn_once(
            "ninja",
            "ugmm_prob: ninja, the build tool torch compiles C++ extensions with, is not "
            "installed (pip install ninja), so the native CPU kernels are not built; "
            + _FALLBACK
            + ".",
        )
        return
    compile_error = str(error).startswith("Error building extension")
    remembered = compile_error and _remember_failure(record, name, error)
    if compiler.path is None:
        _warn_once("no-compiler", _no_compiler_message(compiler))
        return
    where = f" The full log is in {record}; delete it to retry." if remembered else ""
    warnings.warn(
        f"ugmm_prob: the native kernel {name!r} could not be built with {_describe(compiler)} "
        f"({type(error).__name__}: {_last_line(error)}); {_FALLBACK}.{where}",
        RuntimeWarning,
        stacklevel=3,
    )


def _no_compiler_message(compiler: Compiler) -> str:
    return (
        f"ugmm_prob: no C++ compiler found ({compiler.name!r} is not on PATH; set CXX to use "
        "another), so the native CPU kernels are not built; "
        + _FALLBACK
        + ". Install one (g++ or clang) and the next run builds them."
    )


def _report_remembered(name: str, record: Path) -> None:
    """Say (once per process) that an earlier failure is not retried, and where it is."""
    compiler = _compiler()
    if compiler.path is None:
        _warn_once("no-compiler", _no_compiler_message(compiler))
        return
    _warn_once(
        "remembered",
        f"ugmm_prob: the native kernel {name!r} failed to build with {_describe(compiler)} in "
        f"an earlier run (log: {record}); it is not retried with this compiler (delete the "
        f"files in {record.parent} to retry); {_FALLBACK}.",
    )


@functools.cache
def load(name: str, functions: tuple[str, ...]) -> ModuleType | None:
    """The extension built from ``<name>.cpp`` exposing ``functions``, or ``None``."""
    if not native_enabled():
        return None
    with _quiet_torch_notices():
        # Importing cpp_extension is what prints "No CUDA runtime is found" on a CUDA build
        # of torch without a GPU: it happens inside the filter.
        from torch.utils import cpp_extension

        # The shared header goes in as text, not through an include path, so that a change
        # to it changes the source torch hashes and every kernel that uses it is rebuilt.
        sources = [(_HERE / "vector_math.h").read_text(), (_HERE / f"{name}.cpp").read_text()]
        flags = _compile_flags()
        module_name = f"ugmm_prob_{name}_{torch.backends.cpu.get_cpu_capability().lower()}"
        record = _failure_record(module_name, sources, flags)
        if record.is_file():
            _report_remembered(name, record)
            return None

        def build() -> ModuleType:
            with _quiet_torch_notices():
                return cpp_extension.load_inline(
                    name=module_name,
                    cpp_sources=sources,
                    functions=list(functions),
                    extra_cflags=flags,
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )

        try:
            # A cached build loads in well under a second; a first build takes about a
            # minute, which a user should hear about rather than see as a hang.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(build)
                try:
                    return pending.result(timeout=_QUIET_LOAD_SECONDS)
                except concurrent.futures.TimeoutError:
                    logging.getLogger(__name__).warning(
                        "ugmm_prob: compiling the native kernel %r for this machine (once: "
                        "up to a minute; later runs load the cached build)",
                        name,
                    )
                    return pending.result()
        except Exception as error:  # no compiler, no ninja, a failed build: use the torch path
            _report_failure(name, error, record)
            return None
