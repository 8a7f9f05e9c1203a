"""ugmm-prob: uGMM-NN on Pyro, neural networks whose neurons are univariate Gaussian mixtures.

Where things live:

- :mod:`ugmm_prob.kernels`: the numerical core (the fused input-coupled log-density);
- :mod:`ugmm_prob.distributions`: Pyro distributions (the neurons' mixtures);
- :mod:`ugmm_prob.layers`: modules built on them (:class:`UGMMLayer`, component dropout);
- :mod:`ugmm_prob.networks`: classifiers, baselines and the joint-score model;
- :mod:`ugmm_prob.training`, :mod:`ugmm_prob.metrics`: fitting point estimates and scoring;
- :mod:`ugmm_prob.datasets`, :mod:`ugmm_prob.checkpoints`, :mod:`ugmm_prob.plotting`,
  :mod:`ugmm_prob.experiments`, :mod:`ugmm_prob.cli`: data, files, figures and the command.
"""

from ._version import __version__
from .distributions import neuron_mixture
from .kernels import compiled_backend_available, coupled_log_density
from .layers import UGMMLayer, component_dropout
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

__all__ = [
    "CNNClassifier",
    "Classifier",
    "ConvUGMMClassifier",
    "JointScoreModel",
    "MLPClassifier",
    "UGMMClassifier",
    "UGMMLayer",
    "UGMMStack",
    "__version__",
    "compiled_backend_available",
    "component_dropout",
    "coupled_log_density",
    "evaluate",
    "fit",
    "neuron_mixture",
]
