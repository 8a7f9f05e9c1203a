"""Bayesian treatment of parameters: priors, guides, SVI, NUTS and posterior summaries.

:func:`make_bayesian` turns the uGMM parameters of any model of the library into random
variables with priors (``PyroSample``), on a copy, so the point-estimate model is left as it
was: the uGMM-NN classifiers and the joint-score model (every
:class:`~ugmm_prob.layers.UGMMLayer`) and the generative
:class:`~ugmm_prob.circuits.UGMMCircuit`. :func:`fit_svi` then fits a guide (``AutoNormal``
by default, ``AutoLowRankMultivariateNormal`` or any callable) by minibatch SVI whose
likelihood is scaled to the full data set, :func:`run_nuts` samples small models exactly,
:func:`sample_posterior` collects parameter draws from either, :func:`predictive_probs`
draws posterior predictive class probabilities and :func:`posterior_log_likelihood` the
posterior-averaged likelihood ``log (1/S) sum_s p(data | theta_s)``.

Where things live:

- :mod:`~ugmm_prob.bayes.priors`: :func:`make_bayesian`, :func:`default_prior` (the
  default priors per parameter kind), :func:`prior_sites`;
- :mod:`~ugmm_prob.bayes.guides`: the variational families named by string;
- :mod:`~ugmm_prob.bayes.svi`: :func:`fit_svi`;
- :mod:`~ugmm_prob.bayes.mcmc`: :func:`run_nuts`;
- :mod:`~ugmm_prob.bayes.posterior`: draws, posterior predictive, posterior-averaged
  likelihoods, :func:`point_model`.

The ArviZ export of the draws is :mod:`ugmm_prob.arviz_export`.
"""

from .mcmc import run_nuts
from .posterior import (
    PosteriorLogLikelihood,
    log_likelihood_from_logits,
    point_model,
    pointwise_log_likelihood,
    posterior_log_likelihood,
    predictive_logits,
    predictive_probs,
    sample_posterior,
)
from .priors import PARAMETER_KINDS as PARAMETER_KINDS
from .priors import PriorFactory as PriorFactory
from .priors import default_prior, make_bayesian, prior_sites
from .svi import _VariationalTrainer as _VariationalTrainer
from .svi import fit_svi

__all__ = [
    "PosteriorLogLikelihood",
    "default_prior",
    "fit_svi",
    "log_likelihood_from_logits",
    "make_bayesian",
    "point_model",
    "pointwise_log_likelihood",
    "posterior_log_likelihood",
    "predictive_logits",
    "predictive_probs",
    "prior_sites",
    "run_nuts",
    "sample_posterior",
]
