"""scikit-learn estimators: the library's models on your own tables.

Four estimators follow scikit-learn's conventions (the constructor stores its parameters,
``fit`` returns ``self``, fitted attributes end in ``_``, NumPy arrays or pandas frames in and
NumPy arrays out, ``random_state``, ``get_params``/``set_params``, ``clone``, ``pickle``), so
they work inside ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``:

- :class:`~ugmm_prob.sklearn.density.UGMMCircuitDensity`: a density estimator like
  ``GaussianMixture``, the generative circuit (:class:`~ugmm_prob.circuits.UGMMCircuit`) on
  a region graph chosen for the data, trained by EM; exact ``score_samples`` (``log p(x)``
  in the original units), ``sample``, ``bic``/``aic``, missing values (NaN) marginalised
  exactly, ``impute`` by exact conditional sampling or the max-product mode;
- :class:`~ugmm_prob.sklearn.classifiers.UGMMCircuitClassifier`: the same circuit with one
  root per class, a generative classifier whose ``predict_proba`` is the exact
  ``p(c | x)``, also for rows with NaN cells; with ``unlabelled_label=-1`` (scikit-learn's
  semi-supervised convention) it also learns from rows of unknown class;
- :class:`~ugmm_prob.sklearn.imputer.UGMMCircuitImputer`: a transformer that fills NaN cells
  from a circuit fitted to the incomplete table itself (``strategy="mean"``: the exact
  conditional mean; ``"mpe"``; ``"sample"``), for a ``Pipeline`` in place of
  ``SimpleImputer`` or ``IterativeImputer``;
- :class:`~ugmm_prob.sklearn.net.UGMMNetClassifier`: the paper's uGMM-NN
  (:class:`~ugmm_prob.networks.UGMMClassifier`), a discriminative classifier: a committee of
  networks, each early-stopped on its own held-out rows, whose probabilities are averaged.

Each standardises the columns inside (with the training rows' mean and standard deviation)
and reports densities in the original units: ``log p(x) = log p_z(z) - sum_d log sd_d`` over
the observed columns (the exact Jacobian of the standardisation). With ``early_stopping``
(default) a ``validation_fraction`` of the training rows is held out and the parameters of
the epoch with the best held-out negative log-likelihood are kept (``keep_best="nll"``).
Missing (NaN) cells: the circuit estimators fit rows with missing cells as they are (EM of
``log p(x_observed)``, the missing cells marginalised exactly; standardisation by each
column's observed cells) and marginalise them at prediction (``score_samples``,
``predict_proba``); ``impute`` fills them (``"mean"``, ``"mpe"``, ``"sample"``) and
``conditional_sample`` draws ``k`` completions (multiple imputation). The uGMM-NN cannot
marginalise them and refuses NaN cells in ``fit`` and ``predict`` with a message saying what
to use instead.

An int ``random_state`` fixes every random choice of ``fit`` (the region graph, the
initialisation, the data order, the validation split) and of ``sample``/``impute``: the
same data give bit-identical models in any process on the same machine and thread count
(every draw comes from generators seeded from ``random_state``, inside
``torch.random.fork_rng``, so torch's global generator is left as it was).

A pickled estimator holds its model's class path, configuration and weights (never a torch
module), so the model rebuilt on unpickling gets a Pyro name of its own.
:func:`~ugmm_prob.sklearn.persistence.save_estimator` and
:func:`~ugmm_prob.sklearn.persistence.load_estimator` write and read a fitted estimator as a
digest-verified checkpoint (:mod:`ugmm_prob.checkpoints`).

Modules: :mod:`~ugmm_prob.sklearn.base` (shared machinery: validation, standardisation,
the validation split, pickling), :mod:`~ugmm_prob.sklearn.density`,
:mod:`~ugmm_prob.sklearn.classifiers`, :mod:`~ugmm_prob.sklearn.net`,
:mod:`~ugmm_prob.sklearn.persistence`.

scikit-learn is an optional dependency (``pip install "scikit-learn>=1.3"``): this package
imports without it, and fitting an estimator then raises an ``ImportError`` saying so.
"""

from ugmm_prob.sklearn.base import (
    _require_sklearn,  # noqa: F401 (``ugmm-prob fit`` calls it)
    count_free_parameters,
)
from ugmm_prob.sklearn.classifiers import UGMMCircuitClassifier
from ugmm_prob.sklearn.density import UGMMCircuitDensity
from ugmm_prob.sklearn.imputer import UGMMCircuitImputer
from ugmm_prob.sklearn.net import UGMMNetClassifier
from ugmm_prob.sklearn.persistence import load_estimator, save_estimator

__all__ = [
    "UGMMCircuitClassifier",
    "UGMMCircuitDensity",
    "UGMMCircuitImputer",
    "UGMMNetClassifier",
    "count_free_parameters",
    "load_estimator",
    "save_estimator",
]
