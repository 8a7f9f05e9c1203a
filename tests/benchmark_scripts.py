"""Import a script of ``benchmarks/`` as a module, for tests of its functions (the folder is
not a package; its scripts import each other by plain name)."""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (imported once per process, like any module)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
