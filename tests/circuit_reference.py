"""A plain recursive evaluation of a circuit's definition, the truth the property suites
compare the folded layers with: loops over regions, partitions, units and classes on the
region graph itself, no compiled layout but where each region's parameters are stored."""

from __future__ import annotations

import torch

from ugmm_prob.circuits import UGMMCircuit


def unit_log_values(
    circuit: UGMMCircuit, x: torch.Tensor, observed: torch.Tensor | None = None, mode: str = "sum"
) -> list[list[float]]:
    """``log p_{n,i}(x_{var(n)})`` of every slot ``n`` and input channel ``i``, by the
    textbook formula for the input kind; ``mode="max"`` gives the max-product value (the
    best mixture component; for a missing variable, the best component's peak or the most
    probable value), ``"sum"`` gives ``log 1 = 0`` for a missing variable."""
    inputs = circuit.inputs
    reduce = torch.logsumexp if mode == "sum" else (lambda v, dim: v.amax(dim))
    values = []
    for n, variable in enumerate(inputs.slot_var.tolist()):
        value, seen = x[variable], observed is None or bool(observed[variable])
        if not seen and mode == "sum":
            values.append([0.0] * inputs.channels)
        elif "loc" in inputs.prior_parameters:
            log_w = torch.log_softmax(inputs.logits[n], -1)
            normal = torch.distributions.Normal(inputs.loc[n], inputs.scale[n])
            at = value if seen else inputs.loc[n]  # a component peaks at its mean
            values.append(reduce(log_w + normal.log_prob(at), -1).tolist())
        else:
            table = torch.log_softmax(inputs.logits[n], -1)  # (I, V)
            values.append((table[:, int(value)] if seen else table.amax(-1)).tolist())
    return values


def multivariate_leaf_values(
    circuit: UGMMCircuit, x: torch.Tensor, observed: torch.Tensor | None, mode: str
) -> list[list[float]]:
    """Every leaf's Gaussian units at ``x`` by the textbook formulas: the marginal density of
    the observed block (``"sum"``), or that times the peak of the conditional Gaussian of the
    missing block (``"max"``)."""
    inputs, values = circuit.inputs, []
    for leaf, slots in enumerate(inputs.leaf_slots.tolist()):
        slots = [n for n in slots if n < inputs.num_slots]
        variables = inputs.slot_var[slots]
        seen = torch.ones(len(slots), dtype=torch.bool) if observed is None else observed[variables]
        row = []
        for i in range(inputs.channels):
            mean = inputs.loc[slots, i]
            factor = inputs.scale_tril[leaf, i, : len(slots), : len(slots)]
            cov = factor @ factor.T
            o, m = seen.nonzero()[:, 0], (~seen).nonzero()[:, 0]
            value = 0.0
            if len(o):
                normal = torch.distributions.MultivariateNormal(mean[o], cov[o][:, o])
                value += float(normal.log_prob(x[variables[o]]))
            if mode == "max" and len(m):
                conditional = cov[m][:, m]
                if len(o):
                    conditional = conditional - cov[m][:, o] @ torch.linalg.solve(
                        cov[o][:, o], cov[o][:, m]
                    )
                value += float(
                    -0.5 * len(m) * torch.log(torch.tensor(2 * torch.pi, dtype=cov.dtype))
                    - 0.5 * torch.logdet(conditional)
                )
            row.append(value)
        values.append(row)
    return values


def reference_joint(
    circuit: UGMMCircuit, x: torch.Tensor, observed: torch.Tensor | None = None, mode: str = "sum"
) -> torch.Tensor:
    """``log p(x_obs, c)`` of one example ``x`` ``(D,)`` for every class, shape ``(C,)``;
    with ``mode="max"`` the max-product value (the best induced tree, latent choices and
    missing values) instead of the sum over them."""
    compiled = circuit.compiled
    if hasattr(circuit.inputs, "scale_tril"):  # a Gaussian over each leaf's variables
        rows = multivariate_leaf_values(circuit, x, observed, mode)
        leaf_values = {leaf: rows[position] for position, leaf in enumerate(compiled.leaves)}
    else:
        leaf_values = _products_over_slots(circuit, unit_log_values(circuit, x, observed, mode))
    return _upward(circuit, leaf_values, mode)


def _products_over_slots(circuit: UGMMCircuit, units: list[list[float]]) -> dict[int, list]:
    """Each leaf's input units: the products (sums of logs) of its slots' units."""
    graph, compiled = circuit.graph, circuit.compiled
    leaf_values = {}
    for position, leaf in enumerate(compiled.leaves):
        slots = [n for n, owner in enumerate(compiled.slot_leaf.tolist()) if owner == position]
        assert sorted(compiled.slot_var[slots].tolist()) == list(graph.regions[leaf])
        leaf_values[leaf] = [
            sum(units[n][i] for n in slots) for i in range(circuit.inputs.channels)
        ]
    return leaf_values


def _upward(circuit: UGMMCircuit, leaf_values: dict[int, list], mode: str) -> torch.Tensor:
    """Regions from the leaves up by recursion on the graph; ``log p(c) +`` the root's."""
    graph, compiled = circuit.graph, circuit.compiled
    kinds = {p: group.kind for group in compiled.products for p in group.partitions}
    memo: dict[int, list[float]] = dict(leaf_values)

    def value(region: int) -> list[float]:
        if region in memo:
            return memo[region]
        products: list[float] = []
        for p in graph.region_partitions[region]:
            children = [value(c) for c in graph.partitions[p][1]]
            if kinds[p] == "kronecker":
                left, right = children
                products += [u + v for u in left for v in right]
            else:
                products += [sum(child[k] for child in children) for k in range(len(children[0]))]
        group, fold = compiled.place[region]
        layer = circuit.root if group == len(circuit.sums) else circuit.sums[group]
        log_w = layer.log_weights()[fold]  # (S, Q)
        terms = torch.tensor(products, dtype=torch.float64)
        reduce = torch.logsumexp if mode == "sum" else (lambda v, dim: v.amax(dim))
        memo[region] = [float(reduce(log_w[s] + terms, 0)) for s in range(len(log_w))]
        return memo[region]

    root = torch.tensor(value(graph.root), dtype=torch.float64)
    return torch.log_softmax(circuit.class_logits, -1) + root
