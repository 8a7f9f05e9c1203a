"""The installed version of ugmm-prob (``0.0.0+unknown`` in a source tree never installed).

Its own module, so that modules needing it (checkpoints record it) import it without
importing the package's ``__init__``.
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("ugmm-prob")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
