"""ugmm-prob: uGMM-NN on Pyro, neural networks whose neurons are univariate Gaussian mixtures.

Where things live:

- :mod:`ugmm_prob.kernels`: the numerical core (the fused input-coupled log-density);
- :mod:`ugmm_prob.distributions`: Pyro distributions (the neurons' mixtures);
- :mod:`ugmm_prob.layers`: modules built on them (:class:`UGMMLayer`, component dropout).
"""

from importlib.metadata import PackageNotFoundError, version

from .distributions import neuron_mixture
from .kernels import compiled_backend_available, coupled_log_density
from .layers import UGMMLayer, component_dropout

try:
    __version__ = version("ugmm-prob")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "UGMMLayer",
    "__version__",
    "compiled_backend_available",
    "component_dropout",
    "coupled_log_density",
    "neuron_mixture",
]
