"""Probabilistic circuits with uGMM input units, built from layers over a region graph.

- :mod:`~ugmm_prob.circuits.region_graphs`: which variables each product splits (random
  binary trees, quad-trees over images, data-driven trees);
- :mod:`~ugmm_prob.circuits.structures`: hidden Chow-Liu trees (HCLT) and image
  quad-graphs, region graphs that are not repeated binary trees;
- :mod:`~ugmm_prob.circuits.inputs`: input layers behind one interface (uGMM Gaussian
  mixtures with tied inputs; categorical units for discrete data), and
  :mod:`~ugmm_prob.circuits.multivariate`: full-covariance Gaussians over leaf regions;
- :mod:`~ugmm_prob.circuits.layers`: product and sum layers (log-einsum-exp);
- :mod:`~ugmm_prob.circuits.circuit`: :class:`UGMMCircuit`, assembled from a region graph,
  with one upward and one downward pass over its layers;
- :mod:`~ugmm_prob.circuits.distribution`: :class:`CircuitDistribution`, what calling a
  circuit returns.

A circuit is normalised by construction (smooth and decomposable), so it gives exact
log-likelihoods, marginals, class posteriors, samples and max-product MPE.
"""

from .circuit import UGMMCircuit
from .distribution import CircuitDistribution
from .em import fit_em
from .inputs import CategoricalInput, GaussianMixtureInput, InputLayer
from .layers import ProductLayer, SumLayer
from .multivariate import MultivariateGaussianInput
from .region_graphs import RegionGraph, data_driven_tree, quad_tree, random_binary_trees
from .structures import (
    chow_liu_tree,
    hclt,
    hclt_from_tree,
    pairwise_mutual_information,
    quad_graph,
)

__all__ = [
    "CategoricalInput",
    "CircuitDistribution",
    "GaussianMixtureInput",
    "InputLayer",
    "MultivariateGaussianInput",
    "ProductLayer",
    "RegionGraph",
    "SumLayer",
    "UGMMCircuit",
    "chow_liu_tree",
    "data_driven_tree",
    "fit_em",
    "hclt",
    "hclt_from_tree",
    "pairwise_mutual_information",
    "quad_graph",
    "quad_tree",
    "random_binary_trees",
]
