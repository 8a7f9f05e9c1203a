"""Probabilistic circuits with uGMM input units: region graphs, the circuit, its queries.

:class:`UGMMCircuit` is normalised by construction (smooth and decomposable), so it gives
exact log-likelihoods, marginals, class posteriors, samples and max-product MPE; calling it
returns a :class:`CircuitDistribution` (a Pyro distribution over ``x``).
"""

from .circuit import CircuitDistribution, UGMMCircuit
from .region_graph import RandomBinaryTrees

__all__ = ["CircuitDistribution", "RandomBinaryTrees", "UGMMCircuit"]
