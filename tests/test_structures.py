"""Hidden Chow-Liu trees and quad-graphs (ugmm_prob.circuits.structures), against
independent truths: known trees recovered from their samples, brute force over all spanning
trees, scikit-learn's mutual information, the latent tree formula summed by hand, and
normalisation by enumeration."""

import itertools
import math
import time
from collections import deque

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from ugmm_prob.circuits import (
    UGMMCircuit,
    chow_liu_tree,
    hclt,
    hclt_from_tree,
    pairwise_mutual_information,
    quad_graph,
)
from ugmm_prob.circuits.compile import LEAF_LAYER
from ugmm_prob.circuits.region_graphs import RegionGraph
from ugmm_prob.circuits.structures import _maximum_spanning_tree

# Rooted trees over 7 variables: a chain, a star and a bushy tree (parent of each variable).
CHAIN = [-1, 0, 1, 2, 3, 4, 5]
STAR = [3, 3, 3, -1, 3, 3, 3]
BUSHY = [-1, 0, 0, 1, 1, 2, 5]


def undirected_edges(parents) -> set[frozenset[int]]:
    return {frozenset((v, int(p))) for v, p in enumerate(parents) if int(p) >= 0}


def topological(parents) -> list[int]:
    """Vertices with every parent before its children."""
    order, placed = [], set()
    while len(order) < len(parents):
        for v, p in enumerate(parents):
            if v not in placed and (p < 0 or p in placed):
                order.append(v)
                placed.add(v)
    return order


def gaussian_tree_samples(parents, n: int, rho: float, seed: int) -> torch.Tensor:
    """``x_v = rho x_parent + sqrt(1 - rho^2) e_v``: a Gaussian tree with unit variances."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, len(parents), generator=generator, dtype=torch.float64)
    x = torch.empty_like(noise)
    for v in topological(parents):
        p = parents[v]
        x[:, v] = noise[:, v] if p < 0 else rho * x[:, p] + math.sqrt(1 - rho**2) * noise[:, v]
    return x


def markov_tree_samples(parents, n: int, states: int, stay: float, seed: int) -> torch.Tensor:
    """A tree-structured Markov chain: the root uniform, a child keeps its parent's state
    with probability ``stay``, else takes a uniform state."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.empty(n, len(parents), dtype=torch.long)
    for v in topological(parents):
        uniform = torch.randint(0, states, (n,), generator=generator)
        if parents[v] < 0:
            x[:, v] = uniform
        else:
            keep = torch.rand(n, generator=generator) < stay
            x[:, v] = torch.where(keep, x[:, parents[v]], uniform)
    return x


def tree_distances(parents) -> np.ndarray:
    """All pairwise path lengths of the undirected tree, by a BFS from every vertex."""
    count = len(parents)
    neighbours = [[] for _ in range(count)]
    for a, b in (tuple(e) for e in undirected_edges(parents)):
        neighbours[a].append(b)
        neighbours[b].append(a)
    distance = np.full((count, count), -1)
    for start in range(count):
        distance[start, start] = 0
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in neighbours[v]:
                if distance[start, w] < 0:
                    distance[start, w] = distance[start, v] + 1
                    queue.append(w)
    return distance


def rooted_height(parents) -> int:
    def depth(v: int) -> int:
        return 0 if parents[v] < 0 else 1 + depth(int(parents[v]))

    return max(depth(v) for v in range(len(parents)))


def _find(root: list[int], v: int) -> int:
    while root[v] != v:
        v = root[v]
    return v


def spanning_trees(count: int):
    """Every spanning tree of the complete graph on ``count`` vertices, as edge lists: the
    edge subsets of size ``count - 1`` without a cycle (union-find)."""
    pairs = list(itertools.combinations(range(count), 2))
    for subset in itertools.combinations(pairs, count - 1):
        root = list(range(count))
        acyclic = True
        for a, b in subset:
            ra, rb = _find(root, a), _find(root, b)
            if ra == rb:
                acyclic = False
                break
            root[ra] = rb
        if acyclic:
            yield subset


def randomise(circuit: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in circuit.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))


def all_configurations(count: int, values: int) -> torch.Tensor:
    grid = itertools.product(range(values), repeat=count)
    return torch.tensor(list(grid), dtype=torch.float64)


# -------------------------------------------------------------------------------------
# Mutual information
# -------------------------------------------------------------------------------------
def test_discrete_information_is_sklearns_plug_in_estimate():
    x = markov_tree_samples(BUSHY, 600, states=4, stay=0.6, seed=1)
    x[:, 6] = x[:, 6] % 2  # a binary column beside four-valued ones
    x[:, 4] += 7  # values 7..10: counted from the column's minimum
    information = pairwise_mutual_information(x.double())
    for i, j in itertools.combinations(range(7), 2):
        truth = mutual_info_score(x[:, i].numpy(), x[:, j].numpy())
        assert information[i, j].item() == pytest.approx(truth, abs=1e-10)
        assert information[j, i].item() == pytest.approx(truth, abs=1e-10)
    assert torch.all(information.diagonal() == 0)


def test_wide_integer_columns_are_binned_into_equal_width_bins():
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (500, 4), generator=generator)
    x[:, 1] = (x[:, 0] + torch.randint(0, 40, (500,), generator=generator)).clamp_max(255)
    information = pairwise_mutual_information(x.float(), bins=16)
    low = x.min(0).values
    span = x.max(0).values - low + 1
    binned = ((x - low) * 16) // span  # 16 bins of span / 16 integers each
    for i, j in itertools.combinations(range(4), 2):
        truth = mutual_info_score(binned[:, i].numpy(), binned[:, j].numpy())
        assert information[i, j].item() == pytest.approx(truth, abs=1e-10)
    assert information[0, 1] > 0.3 > information[2, 3]


def test_continuous_information_is_the_gaussian_formula():
    x = gaussian_tree_samples(CHAIN, 300, rho=0.7, seed=3)
    information = pairwise_mutual_information(x)
    rho = np.corrcoef(x.numpy().T)
    np.fill_diagonal(rho, 0.0)
    truth = -0.5 * np.log(1 - rho**2)
    np.testing.assert_allclose(information.numpy(), truth, atol=1e-8)
    # integer-valued data read as continuous on request
    counts = markov_tree_samples(CHAIN, 300, states=3, stay=0.7, seed=3).double()
    rho = np.corrcoef(counts.numpy().T)[0, 1]
    assert pairwise_mutual_information(counts, discrete=False)[0, 1].item() == pytest.approx(
        -0.5 * math.log(1 - rho**2)
    )


def test_counts_without_the_int8_kernel_are_the_same(monkeypatch):
    x = markov_tree_samples(BUSHY, 300, states=5, stay=0.5, seed=12)
    with_kernel = pairwise_mutual_information(x)
    monkeypatch.delattr(torch, "_int_mm", raising=False)  # the float32 path (GPUs, old torch)
    assert torch.equal(pairwise_mutual_information(x), with_kernel)


def test_max_rows_takes_a_seeded_subset():
    x = markov_tree_samples(CHAIN, 400, states=3, stay=0.6, seed=4)
    full = pairwise_mutual_information(x)
    assert torch.equal(pairwise_mutual_information(x, max_rows=400), full)
    part = pairwise_mutual_information(x, max_rows=100, seed=1)
    assert torch.equal(part, pairwise_mutual_information(x, max_rows=100, seed=1))
    assert not torch.equal(part, full)
    assert not torch.equal(part, pairwise_mutual_information(x, max_rows=100, seed=2))


# -------------------------------------------------------------------------------------
# Chow-Liu trees
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tree", [CHAIN, STAR, BUSHY], ids=["chain", "star", "bushy"])
def test_chow_liu_recovers_a_gaussian_tree(tree):
    x = gaussian_tree_samples(tree, 3000, rho=0.8, seed=5)
    parents = chow_liu_tree(x)
    assert parents.dtype == torch.long and parents.shape == (7,)
    assert undirected_edges(parents) == undirected_edges(tree)


@pytest.mark.parametrize("tree", [CHAIN, STAR, BUSHY], ids=["chain", "star", "bushy"])
@pytest.mark.parametrize("pixels", [False, True], ids=["states", "pixels"])
def test_chow_liu_recovers_a_discrete_markov_tree(tree, pixels):
    x = markov_tree_samples(tree, 3000, states=4, stay=0.7, seed=6)
    if pixels:  # 8-bit values: state s anywhere in 64 s .. 64 s + 63
        noise = torch.randint(0, 64, x.shape, generator=torch.Generator().manual_seed(7))
        x = 64 * x + noise
    parents = chow_liu_tree(x.float(), bins=16)
    assert undirected_edges(parents) == undirected_edges(tree)


@pytest.mark.parametrize("seed", range(4))
def test_spanning_tree_maximises_total_information(seed):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(200, 4, generator=generator, dtype=torch.float64) @ mixing
    information = pairwise_mutual_information(x)
    parents = chow_liu_tree(x)
    total = sum(information[v, p].item() for v, p in enumerate(parents.tolist()) if p >= 0)
    trees = list(spanning_trees(4))
    assert len(trees) == 16  # Cayley: 4^(4-2)
    best = max(sum(information[a, b].item() for a, b in t) for t in trees)
    assert total == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_prim_on_random_weights_matches_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(6, 6, generator=generator, dtype=torch.float64)
    weights = weights + weights.T
    edges = _maximum_spanning_tree(weights)
    trees = list(spanning_trees(6))
    assert len(trees) == 6**4
    best = max(sum(weights[a, b].item() for a, b in t) for t in trees)
    assert sum(weights[a, b].item() for a, b in edges) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_the_root_is_a_centre(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 15, generator=generator, dtype=torch.float64)
    parents = chow_liu_tree(x).tolist()
    diameter = int(tree_distances(parents).max())
    assert rooted_height(parents) == math.ceil(diameter / 2)
    assert sorted(undirected_edges(parents)) and len(undirected_edges(parents)) == 14


def test_a_chain_is_rooted_at_its_middle():
    x = gaussian_tree_samples(CHAIN, 2000, rho=0.8, seed=8)
    parents = chow_liu_tree(x).tolist()
    assert parents.index(-1) == 3
    assert rooted_height(parents) == 3


def test_prim_is_fast_for_784_variables():
    weights = torch.rand(784, 784, dtype=torch.float64)
    weights = weights + weights.T
    start = time.perf_counter()
    edges = _maximum_spanning_tree(weights)
    elapsed = time.perf_counter() - start
    print(f"Prim on 784 variables: {elapsed:.3f} s")
    assert len(edges) == 783 and elapsed < 1.0


def test_one_variable_is_its_own_tree():
    assert chow_liu_tree(torch.randn(10, 1)).tolist() == [-1]
    graph = hclt(torch.randn(10, 1))
    assert graph.regions == ((0,), (0,)) and graph.partitions == ((1, (0,)),)


# -------------------------------------------------------------------------------------
# HCLT region graphs and circuits
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tree", [CHAIN, STAR, BUSHY], ids=["chain", "star", "bushy"])
def test_hclt_graph_invariants(tree):
    graph = hclt_from_tree(tree)
    count = len(tree)
    children = {v: [c for c, p in enumerate(tree) if p == v] for v in range(count)}

    def descendants(v: int) -> list[int]:
        return [v] + [d for c in children[v] for d in descendants(c)]

    assert graph.kind == "hclt" and graph.in_features == count
    assert len(graph.regions) == 2 * count and len(graph.partitions) == count
    assert sorted(graph.leaves) == list(range(count))  # one leaf per variable, L_v = v
    assert all(graph.regions[v] == (v,) for v in range(count))
    assert graph.root == count + tree.index(-1)
    assert graph.regions[graph.root] == tuple(range(count))
    for v in range(count):
        (partition,) = graph.region_partitions[count + v]  # R_v: one partition
        _, kids = graph.partitions[partition]
        assert graph.regions[count + v] == tuple(sorted(descendants(v)))
        assert len(kids) == 1 + len(children[v])
        assert kids == (v, *(count + c for c in children[v]))
    assert graph.is_tree()
    assert graph.depth == rooted_height(tree) + 1
    assert RegionGraph.from_config(graph.to_config()).partitions == graph.partitions


def latent_tree_log_prob(circuit: UGMMCircuit, parents: list[int], x: torch.Tensor):
    """``log sum_z p(z_root) prod_v p(z_v | z_parent) p(x_v | z_v)`` summed over every
    latent assignment, read from the circuit's own parameters (R_v is region ``D + v``)."""
    compiled, count = circuit.compiled, len(parents)

    def log_weights(region: int) -> torch.Tensor:
        group, fold = compiled.place[region]
        layer = circuit.root if group == len(circuit.sums) else circuit.sums[group]
        return layer.log_weights()[fold]  # (S, H): unit s mixes the H products

    tables = []
    for v in range(count):
        layer, position = compiled.place[v]
        assert layer == LEAF_LAYER
        slot = int(compiled.leaf_slots[position, 0])
        assert int(circuit.inputs.slot_var[slot]) == v
        tables.append(torch.log_softmax(circuit.inputs.logits[slot], -1))  # (H, V)
    edge = [log_weights(count + v) for v in range(count)]
    root = parents.index(-1)
    states = edge[root].shape[1]
    out = []
    for row in x.long().tolist():
        terms = []
        for z in itertools.product(range(states), repeat=count):
            term = edge[root][0, z[root]]
            for v in range(count):
                if v != root:
                    term = term + edge[v][z[parents[v]], z[v]]
                term = term + tables[v][z[v], row[v]]
            terms.append(term)
        out.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)


@pytest.mark.parametrize(
    "parents", [[1, -1, 1, 2], [2, 2, -1, 2], None], ids=["chain", "star", "from-data"]
)
def test_hclt_circuit_is_the_latent_tree_model(parents):
    if parents is None:
        x = markov_tree_samples([-1, 0, 1, 1], 500, states=3, stay=0.7, seed=9)
        parents = chow_liu_tree(x).tolist()
        graph = hclt(x)
    else:
        graph = hclt_from_tree(torch.tensor(parents))
    circuit = UGMMCircuit(
        4, graph=graph, channels=3, product="hadamard", inputs="categorical", num_values=3
    ).double()
    randomise(circuit, seed=10)
    x = all_configurations(4, 3)
    with torch.no_grad():
        log_p = circuit.log_prob(x)
        truth = latent_tree_log_prob(circuit, parents, x)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(log_p, truth, rtol=0, atol=1e-12)


def sample_frequencies(circuit: UGMMCircuit, count: int, values: int) -> torch.Tensor:
    samples, _ = circuit.sample(count)
    digits = values ** torch.arange(circuit.in_features - 1, -1, -1)
    code = (samples.long() * digits).sum(1)
    return torch.bincount(code, minlength=values**circuit.in_features).double() / count


@pytest.mark.parametrize("structure", ["hclt", "quad_graph"])
def test_samples_follow_the_circuits_probabilities(structure):
    if structure == "hclt":
        graph, product = hclt_from_tree([1, -1, 1, 1]), "hadamard"
    else:
        graph, product = quad_graph(2, 2), "kronecker"
    circuit = UGMMCircuit(
        4, graph=graph, channels=2, product=product, inputs="categorical", num_values=2
    ).double()
    randomise(circuit, seed=13)
    with torch.no_grad():
        p = circuit.log_prob(all_configurations(4, 2)).exp()
    count = 40000
    frequency = sample_frequencies(circuit, count, 2)
    z = (frequency - p) / torch.sqrt(p * (1 - p) / count)
    assert z.abs().max() < 4.5


# -------------------------------------------------------------------------------------
# Quad-graphs
# -------------------------------------------------------------------------------------
def rectangle(variables, width: int) -> tuple[int, int, int, int] | None:
    """``(top, rows, left, cols)`` if ``variables`` fill an axis-aligned rectangle."""
    rows = sorted({v // width for v in variables})
    cols = sorted({v % width for v in variables})
    full = {r * width + c for r in rows for c in cols}
    contiguous = rows == list(range(rows[0], rows[-1] + 1)) and cols == list(
        range(cols[0], cols[-1] + 1)
    )
    if set(variables) != full or not contiguous:
        return None
    return rows[0], len(rows), cols[0], len(cols)


@pytest.mark.parametrize(
    ("height", "width", "leaf_size"), [(2, 3, 1), (5, 7, 1), (5, 7, 2), (6, 4, 3), (4, 4, 2)]
)
def test_quad_graph_regions_are_shared_rectangles(height, width, leaf_size):
    graph = quad_graph(height, width, leaf_size=leaf_size)
    assert graph.kind == "quad_graph" and graph.in_features == height * width
    rects = [rectangle(region, width) for region in graph.regions]
    assert None not in rects
    assert len(set(rects)) == len(rects)  # one region per distinct rectangle
    assert rects[graph.root] == (0, height, 0, width)
    parents_of = [0] * len(graph.regions)
    for parent, children in graph.partitions:
        assert len(children) == 2
        (top, rows, left, cols) = rects[parent]
        first, second = rects[children[0]], rects[children[1]]
        if first[1] != rows:  # a cut across the rows, at the middle rounded down
            assert first == (top, rows // 2, left, cols)
            assert second == (top + rows // 2, rows - rows // 2, left, cols)
        else:
            assert first == (top, rows, left, cols // 2)
            assert second == (top, rows, left + cols // 2, cols - cols // 2)
        for c in children:
            parents_of[c] += 1
    for region, (_, rows, _, cols) in enumerate(rects):
        cuts = (rows > leaf_size) + (cols > leaf_size)
        assert len(graph.region_partitions[region]) == cuts
    assert max(parents_of) == 2  # sub-rectangles shared by two partitions: a DAG
    assert not graph.is_tree()


def test_quad_graph_of_4x4_with_2x2_leaves():
    graph = quad_graph(4, 4, leaf_size=2)
    assert len(graph.regions) == 9 and len(graph.partitions) == 6
    assert sorted(graph.regions[leaf] for leaf in graph.leaves) == [
        (0, 1, 4, 5),
        (2, 3, 6, 7),
        (8, 9, 12, 13),
        (10, 11, 14, 15),
    ]
    assert graph.depth == 2


def test_quad_graph_of_28x28_is_small_and_quick():
    start = time.perf_counter()
    graph = quad_graph(28, 28)
    elapsed = time.perf_counter() - start
    print(
        f"quad_graph(28, 28): {len(graph.regions)} regions, {len(graph.partitions)} "
        f"partitions, depth {graph.depth}, {elapsed:.3f} s"
    )
    # row intervals of halving 28: a binary tree of 2 * 28 - 1 = 55 intervals, 27 of them cut
    assert len(graph.regions) == 55 * 55
    assert len(graph.partitions) == 2 * 27 * 55
    assert len(graph.leaves) == 28 * 28
    assert graph.depth == 10  # 28 -> 14 -> 7 -> 4 -> 2 -> 1 along each axis
    assert elapsed < 1.0


def test_a_one_leaf_image_gets_a_root_partition():
    graph = quad_graph(2, 2, leaf_size=2)
    assert graph.regions == ((0, 1, 2, 3), (0, 1, 2, 3))
    assert graph.partitions == ((0, (1,)),)
    circuit = UGMMCircuit(4, graph=graph, channels=2, inputs="categorical", num_values=2)
    with torch.no_grad():
        total = torch.logsumexp(circuit.log_prob(all_configurations(4, 2).float()), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("product", "channels", "input_channels"), [("hadamard", 3, 3), ("kronecker", 2, 3)]
)
def test_quad_graph_circuit_is_normalised(product, channels, input_channels):
    graph = quad_graph(2, 3)
    circuit = UGMMCircuit(
        6,
        graph=graph,
        channels=channels,
        input_channels=input_channels,
        product=product,
        inputs="categorical",
        num_values=2,
        num_classes=2,
    ).double()
    randomise(circuit, seed=11)
    x = all_configurations(6, 2)
    with torch.no_grad():
        joint = circuit.joint_log_prob(x)  # (64, 2)
        prior = circuit.class_log_prior()
    totals = torch.logsumexp(joint - prior, 0)  # sum_x p(x | c) for every class
    torch.testing.assert_close(totals, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", [chow_liu_tree, hclt, pairwise_mutual_information])
def test_bad_rows_are_refused(builder):
    x = torch.randn(20, 3)
    x[4, 1] = math.inf  # NaN is a missing cell (see the pairwise-complete test), inf is not
    with pytest.raises(ValueError, match=rf"{builder.__name__}: x must be finite, it has 1 inf"):
        builder(x)
    with pytest.raises(ValueError, match=r"shape \(n >= 2, D >= 1\), got \(20,\)"):
        builder(torch.randn(20))
    with pytest.raises(ValueError, match=r"got \(1, 3\)"):
        builder(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"got \(5, 0\)"):
        builder(torch.randn(5, 0))
    with pytest.raises(ValueError, match=r"discrete=True expects integer values"):
        builder(torch.randn(20, 3), discrete=True)
    with pytest.raises(ValueError, match=r"bins an int >= 2, got 1"):
        builder(torch.zeros(20, 3), bins=1)
    with pytest.raises(ValueError, match=r"max_rows an int >= 2, got 0"):
        builder(torch.zeros(20, 3), max_rows=0)
    with pytest.raises(TypeError, match=rf"{builder.__name__}: x: expected a tensor.*got dict"):
        builder({"rows": 1})


@pytest.mark.parametrize(
    ("parents", "message"),
    [
        ([-1, 0, -1], r"exactly one root \(parent -1\), got 2"),
        ([1, 2, 0], r"exactly one root \(parent -1\), got 0"),
        ([-1, 2, 1], r"cycle"),
        ([-1, 5, 0], r"parents\[1\] = 5"),
        ([-1, 1, 0], r"parents\[1\] = 1"),
        ([], r"shape \(D >= 1,\), got \(0,\)"),
        ([[-1, 0]], r"shape \(D >= 1,\), got \(1, 2\)"),
    ],
)
def test_bad_trees_are_refused(parents, message):
    with pytest.raises(ValueError, match=message):
        hclt_from_tree(torch.tensor(parents, dtype=torch.long))


def test_a_tree_of_floats_is_refused():
    with pytest.raises(TypeError, match=r"integer parents, got dtype torch.float32"):
        hclt_from_tree(torch.tensor([-1.0, 0.0]))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 3), {}, r"height an int >= 1, got 0"),
        ((3, -1), {}, r"width an int >= 1, got -1"),
        ((3, 3), {"leaf_size": 0}, r"leaf_size an int >= 1, got 0"),
        ((2.5, 3), {}, r"height an int >= 1, got 2.5"),
        ((True, 3), {}, r"height an int >= 1, got True"),
    ],
)
def test_bad_image_sizes_are_refused(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quad_graph(*args, **kwargs)
