"""Building the native kernels as a new user meets it: no CUDA notice on a CPU-only
machine, a missing compiler (or ninja) reported as missing once, and a failed build
remembered per compiler so that later processes do not retry it.

No compiler is removed: the in-process tests replace the compiler lookup
(``native._compiler``) and torch's ``load_inline``; the end-to-end test points ``CXX`` at a
name that does not exist, in fresh processes with their own extension cache.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from torch.utils import cpp_extension

import ugmm_prob
from ugmm_prob import native

REPO = Path(ugmm_prob.__file__).resolve().parents[1]
KERNEL = ("leaf_regions", ("batch_multiple",))
GXX = native.Compiler("g++", "/usr/bin/g++-12", "g++ (Debian 12.2.0-14) 12.2.0")
NO_CXX = native.Compiler("c++", None, None)


@pytest.fixture(autouse=True)
def _own_extension_cache(tmp_path, monkeypatch):
    """Every test here records failures in its own cache folder and starts with no
    once-per-process warning given."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(native, "_warned", set())
    monkeypatch.delenv("UGMM_PROB_NATIVE", raising=False)


def _failing(message: str):
    calls = []

    def load_inline(**options):
        calls.append(options["name"])
        raise RuntimeError(message)

    return load_inline, calls


def _load(kernel=KERNEL):
    """``native.load`` without its per-process cache, and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = native.load.__wrapped__(*kernel)
    return result, [str(w.message) for w in caught if w.category is RuntimeWarning]


def _records(tmp_path) -> list[Path]:
    folder = tmp_path / "extensions" / "ugmm_prob_failed_builds"
    return sorted(folder.glob("*.txt")) if folder.is_dir() else []


def test_a_failed_compilation_is_reported_remembered_and_not_retried(tmp_path, monkeypatch):
    log = "Error building extension 'x': [1/2] g++ ...\nmain.cpp:3:1: error: expected ';'"
    load_inline, calls = _failing(log)
    monkeypatch.setattr(native, "_compiler", lambda: GXX)
    monkeypatch.setattr(cpp_extension, "load_inline", load_inline)
    module, messages = _load()
    assert module is None and len(calls) == 1
    (message,) = messages
    assert "'leaf_regions' could not be built with /usr/bin/g++-12 (g++ (Debian" in message
    assert "error: expected ';'" in message and "plain PyTorch path" in message
    (record,) = _records(tmp_path)
    assert record.name.startswith("ugmm_prob_leaf_regions_") and str(record) in message
    text = record.read_text()
    assert "g++ (Debian 12.2.0-14) 12.2.0" in text and log in text  # the whole build log

    # a later process (here: the per-process state reset) does not build again
    monkeypatch.setattr(native, "_warned", set())
    module, messages = _load()
    assert module is None and len(calls) == 1
    (message,) = messages
    assert "failed to build with /usr/bin/g++-12" in message and "earlier run" in message
    assert "not retried with this compiler" in message and "to retry" in message
    assert _load()[1] == []  # said once per process

    # another compiler version is tried again
    monkeypatch.setattr(native, "_compiler", lambda: GXX._replace(version="g++ 13.1.0"))
    assert _load()[0] is None and len(calls) == 2
    assert len(_records(tmp_path)) == 2


def test_a_missing_compiler_is_reported_as_missing_once(tmp_path, monkeypatch):
    load_inline, calls = _failing("Error building extension 'x': /bin/sh: 1: c++: not found")
    monkeypatch.setattr(native, "_compiler", lambda: NO_CXX)
    monkeypatch.setattr(cpp_extension, "load_inline", load_inline)
    messages = _load()[1] + _load(("categorical_regions", ("f",)))[1]
    (message,) = messages  # two kernels, one report
    assert "no C++ compiler found ('c++' is not on PATH; set CXX" in message
    assert "not compatible" not in message and "plain PyTorch path" in message
    assert len(_records(tmp_path)) == 2 and len(calls) == 2
    # remembered: not retried while the compiler is missing, and said once
    monkeypatch.setattr(native, "_warned", set())
    messages = _load()[1] + _load(("categorical_regions", ("f",)))[1]
    (message,) = messages
    assert "no C++ compiler found" in message and "the next run builds them" in message
    assert len(calls) == 2
    # once a compiler is installed the build is tried again
    monkeypatch.setattr(native, "_compiler", lambda: GXX)
    _load()
    assert len(calls) == 3


def test_missing_ninja_is_named_and_not_remembered(tmp_path, monkeypatch):
    load_inline, calls = _failing(
        "Ninja is required to load C++ extensions (pip install ninja to get it)"
    )
    monkeypatch.setattr(native, "_compiler", lambda: GXX)
    monkeypatch.setattr(cpp_extension, "load_inline", load_inline)
    (message,) = _load()[1] + _load()[1]
    assert "ninja" in message and "is not installed (pip install ninja)" in message
    assert _records(tmp_path) == [] and len(calls) == 2  # installing ninja is enough


def test_an_error_that_is_not_a_compilation_is_not_remembered(tmp_path, monkeypatch):
    load_inline, _ = _failing("No space left on device")
    monkeypatch.setattr(native, "_compiler", lambda: GXX)
    monkeypatch.setattr(cpp_extension, "load_inline", load_inline)
    (message,) = _load()[1]
    assert "could not be built" in message and "No space left on device" in message
    assert _records(tmp_path) == []


def test_the_notice_filter_drops_only_the_cuda_notice_and_a_missing_compilers_banner(
    monkeypatch,
):
    logger = logging.getLogger("torch.utils.cpp_extension")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Collect()
    logger.addHandler(handler)
    banner = cpp_extension.WRONG_COMPILER_WARNING
    try:
        monkeypatch.setattr(native, "_compiler", lambda: NO_CXX)
        with native._quiet_torch_notices():
            logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
            logger.warning(banner, "c++", "g++", "linux", "g++", "c++", "c++")
            logger.warning("Error checking compiler version for %s", "c++")
        assert seen == ["Error checking compiler version for c++"]
        # a compiler that exists but is not the expected one keeps torch's banner
        monkeypatch.setattr(native, "_compiler", lambda: GXX)
        with native._quiet_torch_notices():
            logger.warning(banner, "icpx", "g++", "linux", "g++", "icpx", "icpx")
        assert len(seen) == 2 and "icpx" in seen[1]
        # outside a load nothing is filtered
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        assert len(seen) == 3
    finally:
        logger.removeHandler(handler)


def test_the_compiler_lookup_follows_cxx(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-27")
    assert native._find_compiler() == native.Compiler("no-such-compiler-27", None, None)
    monkeypatch.setenv("CXX", sys.executable)  # an executable that answers --version
    found = native._find_compiler()
    assert found.path == os.path.realpath(sys.executable)
    assert found.version is not None and "Python" in found.version


_SIMULATED_CUDA_BUILD = """
import torch
# What a CUDA build of torch on a machine without a GPU looks like to cpp_extension.
torch.cuda._is_compiled = lambda: True
torch.version.cuda = "12.4"
torch.cuda.is_available = lambda: False
"""


def _python(body: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SIMULATED_CUDA_BUILD) + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
    )


def test_fresh_processes_without_a_compiler_on_a_cuda_build_of_torch(tmp_path):
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"),
        CUDA_HOME=str(tmp_path),  # a CUDA toolkit folder, without a GPU runtime
        CXX="no-such-compiler-27",
    )
    env.pop("UGMM_PROB_NATIVE", None)
    # The simulation is faithful: importing cpp_extension on its own prints the notice.
    plain = _python("import torch.utils.cpp_extension", env)
    assert plain.returncode == 0, plain.stderr
    assert "No CUDA runtime is found" in plain.stderr

    first = _python(
        """
        from ugmm_prob import native
        assert native.load("leaf_regions", ("batch_multiple",)) is None
        assert native.load("categorical_regions", ("categorical_forward",)) is None
        """,
        env,
    )
    assert first.returncode == 0, first.stderr
    assert "No CUDA runtime" not in first.stderr and "not compatible" not in first.stderr
    assert "!! WARNING !!" not in first.stderr
    assert first.stderr.count("no C++ compiler found ('no-such-compiler-27' is not on PATH") == 1
    assert first.stderr.count("Warning") == 1, first.stderr  # nothing else

    second = _python(
        """
        from ugmm_prob import native
        with native._quiet_torch_notices():
            from torch.utils import cpp_extension

        def load_inline(**_):
            raise AssertionError("a remembered failure was built again")

        cpp_extension.load_inline = load_inline
        assert native.load("leaf_regions", ("batch_multiple",)) is None
        assert native.load("categorical_regions", ("categorical_forward",)) is None
        """,
        env,
    )
    assert second.returncode == 0, second.stderr
    assert "No CUDA runtime" not in second.stderr
    assert second.stderr.count("no C++ compiler found") == 1
    assert second.stderr.count("Warning") == 1, second.stderr
