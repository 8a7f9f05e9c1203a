"""ugmm-prob: uGMM-NN on Pyro, neural networks whose neurons are univariate Gaussian mixtures.

The names most code needs are importable from here: the models (:class:`UGMMClassifier`,
:class:`ConvUGMMClassifier`, :class:`JointScoreModel`, the :class:`MLPClassifier` and
:class:`CNNClassifier` baselines, the generative :class:`UGMMCircuit`, the building block
:class:`UGMMLayer`), training (:func:`fit`, :func:`fit_em`, :func:`evaluate`), the Bayesian
treatment (:func:`make_bayesian`, :func:`fit_svi`) and the validation switch
(:func:`enable_validation`, :func:`is_validation_enabled`, :func:`validation_enabled`).
The scikit-learn estimators stay in :mod:`ugmm_prob.sklearn` (imported only when asked
for, since scikit-learn is optional).

Where things live:

- :mod:`ugmm_prob.kernels`: the numerical core (the fused input-coupled log-density);
- :mod:`ugmm_prob.native`: hand-written C++ kernels, built on first use (PyTorch
  fallbacks where no compiler is available);
- :mod:`ugmm_prob.distributions`: Pyro distributions (the neurons' mixtures);
- :mod:`ugmm_prob.layers`: modules built on them (:class:`UGMMLayer`, component dropout);
- :mod:`ugmm_prob.networks`: classifiers, baselines and the joint-score model;
- :mod:`ugmm_prob.circuits`: the normalised generative circuit (region graphs, input, sum
  and product layers, EM);
- :mod:`ugmm_prob.roles`: the interfaces every model implements (density model,
  classifier), through which training and inference reach any model;
- :mod:`ugmm_prob.boundary`, :mod:`ugmm_prob.validation`: the input checks of the public
  methods and the switch that turns them off;
- :mod:`ugmm_prob.training`, :mod:`ugmm_prob.metrics`, :mod:`ugmm_prob.distributed`: the
  training loop and point estimates, scoring, data-parallel training under ``torchrun``;
- :mod:`ugmm_prob.threads`: torch's thread count, adapted to the machine's load;
- :mod:`ugmm_prob.bayes`, :mod:`ugmm_prob.uncertainty`, :mod:`ugmm_prob.arviz_export`:
  priors, SVI and NUTS; predictive uncertainty; the ArviZ export
  (:mod:`ugmm_prob.diagnostics` is its deprecated former name);
- :mod:`ugmm_prob.datasets`, :mod:`ugmm_prob.tables`, :mod:`ugmm_prob.checkpoints`: Iris,
  MNIST and users' own tables; checkpoints;
- :mod:`ugmm_prob.plotting`, :mod:`ugmm_prob.experiments`, :mod:`ugmm_prob.cli`: figures,
  the paper's presets and the ``ugmm-prob`` command;
- :mod:`ugmm_prob.sklearn`: scikit-learn estimators for users' own tables.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .bayes import fit_svi, make_bayesian
from .layers import UGMMLayer
from .networks import (
    Classifier,
    CNNClassifier,
    ConvUGMMClassifier,
    JointScoreModel,
    MLPClassifier,
    UGMMClassifier,
    UGMMStack,
)
from .training import evaluate, fit
from .validation import enable_validation, is_validation_enabled, validation_enabled

if TYPE_CHECKING:
    from .circuits import UGMMCircuit, fit_em

__all__ = [
    "CNNClassifier",
    "Classifier",
    "ConvUGMMClassifier",
    "JointScoreModel",
    "MLPClassifier",
    "UGMMCircuit",
    "UGMMClassifier",
    "UGMMLayer",
    "UGMMStack",
    "__version__",
    "enable_validation",
    "evaluate",
    "fit",
    "fit_em",
    "fit_svi",
    "is_validation_enabled",
    "make_bayesian",
    "validation_enabled",
]

_LAZY = {"UGMMCircuit": "circuits", "fit_em": "circuits"}
"""Exported names imported on first use, so that importing the package (or loading a
classifier's checkpoint) does not import :mod:`ugmm_prob.circuits`."""

_MOVED = {
    "coupled_log_density": "kernels",
    "compiled_backend_available": "kernels",
    "neuron_mixture": "distributions",
    "component_dropout": "layers",
}
"""Names the top level exported before, and the module each lives in."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    # Kernel internals and building blocks left the top level; importing them from here
    # still works, with a DeprecationWarning naming their module.
    if name in _MOVED:
        import warnings

        module = f"{__name__}.{_MOVED[name]}"
        warnings.warn(
            f"ugmm_prob.{name} is deprecated at the top level: import it from {module}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
