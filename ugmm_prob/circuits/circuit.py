"""The generative uGMM circuit: a normalised density ``p(x, c)`` with exact queries.

:class:`UGMMCircuit` assembles, from a :class:`~ugmm_prob.circuits.region_graphs.RegionGraph`,

- an input layer (:mod:`~ugmm_prob.circuits.inputs`): ``I`` units per leaf region (a
  product of univariate units over its variables, or a multivariate unit);
- product and sum layers folded by level (:mod:`~ugmm_prob.circuits.compile`,
  :mod:`~ugmm_prob.circuits.layers`): the products of every partition, and ``S`` sum units
  per region mixing the products of all its partitions;
- one root per class: the sum units of the root region; and a class prior ``p(c)``, so
  ``p(x, c) = p(c) p(x | c)``.

Every unit is a normalised density over its scope, so one upward pass in log space gives
exact ``log p(x, c)``, ``log p(x)``, ``p(c | x)`` and, with a missing variable's input
units set to ``log 1 = 0``, exact marginals. One downward pass, written once over the
layers, picks a child of every sum unit on the way down: at random in proportion to
``weight x child value`` for exact (conditional) samples, the best one for the max-product
MPE.

Why one module of some 950 lines: it is one class, whose upward pass, downward pass,
initialisation and input checks all read the same compiled layout (the folded groups, the
slots of the input layer, the order of the layers), and checkpoints name the class
``ugmm_prob.circuits.circuit:UGMMCircuit``. The layers, region graphs, input units,
distribution wrapper and EM it builds on are modules of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam, pyro_method

from .._deprecation import accepts_old_spellings
from ..boundary import to_tensor
from ..datasets import check_classification_data
from ..networks import constructor_config
from ..roles import UNLABELLED, DensityModel, labelled_rows, missing_mask
from ..validation import is_validation_enabled
from .compile import LEAF_LAYER, CompiledGraph, compile_graph
from .distribution import CircuitDistribution, ObservedCircuit
from .inputs import CategoricalInput, GaussianMixtureInput, InputLayer
from .layers import Chooser, ProductLayer, SumLayer, SumRoute, sample_index
from .multivariate import MultivariateGaussianInput
from .region_graphs import (
    RegionGraph,
    data_driven_tree,
    default_depth,
    quad_tree,
    random_binary_trees,
)
from .structures import hclt, quad_graph

__all__ = [
    "IMPUTATION_METHODS",
    "INPUT_TYPES",
    "SEEDINGS",
    "FlowProbes",
    "UGMMCircuit",
    "UpwardPass",
]

IMPUTATION_METHODS = ("mean", "mpe", "sample")
"""What :meth:`UGMMCircuit.impute` fills missing cells with: the conditional mean, the
max-product completion, or exact conditional draws."""

SEEDINGS = ("random_from_data", "k-means++", "kmeans")
"""Where :meth:`UGMMCircuit.init_from_data` starts the input units (``seeding``; the names
of ``GaussianMixture``'s ``init_params``)."""

INPUT_TYPES: dict[str, type[InputLayer]] = {
    "gaussian": GaussianMixtureInput,
    "categorical": CategoricalInput,
    "multivariate": MultivariateGaussianInput,
}
"""Input layers by the name :class:`UGMMCircuit` takes (``inputs=``)."""


@dataclass
class UpwardPass:
    """Values of every layer for a batch: what the downward pass reads.

    Attributes:
        sum_inputs: the inputs ``(B, F, Q)`` of every sum group (the root's last), when
            they were kept (``keep_products``), else Nones.
        root: ``log p(x | c)`` (or its max-product value) ``(B, C)``.
    """

    sum_inputs: list[torch.Tensor | None]
    root: torch.Tensor


@dataclass
class FlowProbes:
    """Zeros added to the outputs of the input layer, every sum layer and the roots.

    They change no value; the gradient of a log-likelihood summed over a batch with respect
    to a probe is the expected number of times each of those units takes part in an
    induced tree (its *flow*), the normaliser that expectation-maximisation needs
    (:mod:`~ugmm_prob.circuits.em`).

    Attributes:
        inputs: ``(L, I)``, one per leaf region's input unit (summed flows), or
            ``(B, L, I)`` (each example's flows: what EM with missing cells needs); sums:
            one ``(F, S)`` per sum layer below the root; root: ``(1, C)``.
    """

    inputs: torch.Tensor
    sums: list[torch.Tensor]
    root: torch.Tensor


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


class UGMMCircuit(DensityModel):
    """A probabilistic circuit over ``D`` variables (and a class), normalised by construction.

    Args:
        in_features: number of variables ``D``.
        num_classes: number of classes ``C`` (1 for a plain density model).
        graph: the region graph (a :class:`~ugmm_prob.circuits.region_graphs.RegionGraph`
            or its ``to_config()`` dict), any DAG of regions and partitions (see
            :mod:`~ugmm_prob.circuits.structures` for HCLT and quad-graphs); default:
            :func:`random_binary_trees` with ``depth``, ``repetitions`` and ``seed``. See
            also :meth:`for_images` and :meth:`from_data`.
        depth: splits per repetition of the default graph (default: as deep as leaf
            regions of at least 2 variables allow, at most 4).
        repetitions: trees ``R`` of the default graph.
        channels: sum units per region ``S`` (an HCLT's latent states ``H``).
        input_channels: input units per leaf region ``I`` (default ``channels``).
        inputs: the input units (:data:`INPUT_TYPES`): ``"gaussian"`` (uGMM mixtures, a
            leaf region's unit the product of one per variable; continuous data),
            ``"categorical"`` (integers ``0..num_values-1``, one per variable; e.g. 8-bit
            pixels) or ``"multivariate"`` (one full-covariance Gaussian over each leaf
            region's variables, :class:`~ugmm_prob.circuits.multivariate.MultivariateGaussianInput`;
            continuous data, correlations within a leaf).
        components: Gaussian components per input unit ``K`` (``"gaussian"``).
        num_values: categories per variable (``"categorical"``).
        scale_floor: lower bound of every Gaussian input scale (``"gaussian"``), or of the
            diagonal of every Cholesky factor (``"multivariate"``: every conditional and
            marginal standard deviation), so the likelihood cannot diverge.
        likelihood_weight: ``lambda`` of the training objective
            ``lambda * NLL / D + (1 - lambda) * cross-entropy of p(c | x)``; 1 is maximum
            likelihood of ``(x, c)``.
        shared_structure: whether every class's root may mix the products of every
            partition of the root region (True), or only of the partitions ``r`` (a
            RAT-SPN's repetitions) with ``r mod C = c`` (False: on a graph whose root
            partitions share no region, ``p(x | c)`` is then a circuit of its own per class,
            which keeps maximum likelihood from blurring the classes).
        product: how a partition multiplies its children's units: ``"kronecker"`` (every
            pair of units of two children), ``"hadamard"`` (unit ``k`` of every child; an
            HCLT's products), or ``"auto"``: Hadamard for an HCLT or where a partition has
            more than two children, else Kronecker (see
            :func:`~ugmm_prob.circuits.compile.compile_graph`).
        seed: seed of the default region graph (not of the parameters).
    """

    @accepts_old_spellings(
        renamed={"num_vars": "in_features"}, formerly_positional=("num_classes",)
    )
    def __init__(
        self,
        in_features: int,
        *,
        num_classes: int = 1,
        graph: RegionGraph | dict[str, Any] | None = None,
        depth: int | None = None,
        repetitions: int = 4,
        channels: int = 4,
        input_channels: int | None = None,
        inputs: str = "gaussian",
        components: int = 2,
        num_values: int = 256,
        scale_floor: float = 1e-2,
        likelihood_weight: float = 1.0,
        shared_structure: bool = True,
        product: str = "auto",
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        config = constructor_config(locals())
        super().__init__(name=name)
        input_channels = input_channels or channels
        _check_options(num_classes, channels, input_channels, likelihood_weight, inputs)
        graph = _region_graph(graph, in_features, depth=depth, repetitions=repetitions, seed=seed)
        self.graph = graph
        self.in_features, self.num_classes = in_features, num_classes
        self.likelihood_weight = likelihood_weight
        self.config = {
            **config,
            "graph": graph.to_config(),
            "depth": graph.depth,
            "repetitions": graph.repetitions,
            "input_channels": input_channels,
        }
        self.compiled = compile_graph(
            graph,
            input_width=input_channels,
            sum_width=channels,
            root_width=num_classes,
            product=product,
        )
        if inputs == "gaussian":
            options: dict[str, Any] = {"components": components, "scale_floor": scale_floor}
        elif inputs == "multivariate":
            options = {"scale_floor": scale_floor}
        else:
            options = {"num_values": num_values}
        compiled = self.compiled
        self.inputs: InputLayer = INPUT_TYPES[inputs](
            in_features, compiled.slot_var, compiled.leaf_slots, input_channels, **options
        )
        self._add_internal_layers(shared_structure)
        self.class_logits = PyroParam(torch.zeros(num_classes))
        self.register_load_state_dict_pre_hook(_reshape_version_0_state)

    def _add_internal_layers(self, shared_structure: bool) -> None:
        """A product layer per product group, a sum layer per sum group below the root
        (``sums``), the root, and the routes from products to sums
        (:class:`~ugmm_prob.circuits.layers.SumRoute`)."""
        compiled = self.compiled
        self.products = torch.nn.ModuleList(
            [ProductLayer(group, compiled.place) for group in compiled.products]
        )
        self.sums = PyroModule[torch.nn.ModuleList](
            [SumLayer(len(g.regions), g.units, g.inputs) for g in compiled.sums[:-1]]
        )
        root = compiled.sums[-1]
        self.register_buffer("root_partition", _root_input_partition(compiled), persistent=False)
        allowed = None
        if not shared_structure:
            allowed = _own_partitions(self.root_partition, self.graph.repetitions, root.units)
        self.root = SumLayer(1, root.units, root.inputs, allowed=allowed)
        self.routes = torch.nn.ModuleList([SumRoute(group) for group in compiled.sums])
        # the product layers' reads of leaf values, in one order (see _internal_upward)
        self.leaf_readers = [
            (g, i)
            for g, layer in enumerate(self.products)
            for i, source in enumerate(layer.source_layers)
            if source == LEAF_LAYER
        ]
        order = [self.products[g].positions(i) for g, i in self.leaf_readers]
        self.leaf_read_sizes = [len(positions) for positions in order]
        order = torch.cat(order)
        in_place = len(order) == len(compiled.leaves) and bool(
            (order == torch.arange(len(order))).all()
        )
        self.register_buffer("leaf_order", None if in_place else order, persistent=False)

    def _sum_layer(self, group: int) -> SumLayer:
        """The sum layer of sum group ``group`` (the last one is the root)."""
        return self.root if group == len(self.sums) else self.sums[group]

    prior_parameters = {"class_logits": "class_logits"}  # noqa: RUF012 - read-only table
    """Attribute -> parameter kind for priors (:mod:`ugmm_prob.bayes`)."""

    def prior_dims(self, attribute: str) -> list[str]:
        """``class`` for the class logits."""
        return ["class"]

    # ----------------------------------------------------------------------------------
    # Constructors for structures that fit the data
    # ----------------------------------------------------------------------------------
    @classmethod
    def for_images(
        cls,
        height: int,
        width: int,
        num_classes: int = 1,
        *,
        structure: str = "quad_tree",
        depth: int | None = None,
        repetitions: int = 4,
        seed: int = 0,
        **options: Any,
    ) -> UGMMCircuit:
        """A circuit over ``height x width`` images (flattened row by row) whose regions are
        patches of neighbouring pixels: ``structure="quad_tree"`` (``repetitions`` trees of
        ``depth`` cuts, :func:`~ugmm_prob.circuits.region_graphs.quad_tree`) or
        ``"quad_graph"`` (every rectangle cut across both axes down to single pixels, shared
        sub-rectangles, :func:`~ugmm_prob.circuits.structures.quad_graph`; ``depth`` and
        ``repetitions`` do not apply). ``options`` go to the constructor."""
        if structure == "quad_graph":
            graph = quad_graph(height, width)
        elif structure == "quad_tree":
            depth = default_depth(height * width) if depth is None else depth
            graph = quad_tree(height, width, depth=depth, repetitions=repetitions, seed=seed)
        else:
            raise ValueError(
                f"for_images: structure must be 'quad_tree' or 'quad_graph', got {structure!r}"
            )
        return cls(height * width, num_classes=num_classes, graph=graph, seed=seed, **options)

    @classmethod
    def from_data(
        cls,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        num_classes: int | None = None,
        *,
        structure: str = "tree",
        depth: int | None = None,
        repetitions: int = 4,
        seed: int = 0,
        generator: torch.Generator | None = None,
        seeding: str = "random_from_data",
        **options: Any,
    ) -> UGMMCircuit:
        """A circuit for tabular data whose structure follows the dependence between the
        columns of ``x``, initialised from its rows (:meth:`init_from_data`).

        ``structure="tree"``: ``repetitions`` data-driven trees of ``depth`` splits
        (:func:`~ugmm_prob.circuits.region_graphs.data_driven_tree`, correlated variables in
        one region); ``"hclt"``: a hidden Chow-Liu tree
        (:func:`~ugmm_prob.circuits.structures.hclt`, one latent per variable with
        ``channels`` states; ``depth`` and ``repetitions`` do not apply). ``num_classes``
        defaults to ``max(y) + 1`` (1 without ``y``); ``options`` go to the constructor.
        NaN cells of ``x`` are missing (dependence is measured on the rows observing both
        columns of a pair) and labels ``-1`` unknown. ``seeding``: where the input units
        start (random rows, k-means++ rows or k-means centroids; :meth:`init_from_data`).
        """
        x = torch.as_tensor(x)
        if num_classes is None:
            num_classes = 1 if y is None else int(torch.as_tensor(y).max()) + 1
        if structure == "hclt":
            graph = hclt(x)
        elif structure == "tree":
            depth = default_depth(x.shape[-1]) if depth is None else depth
            graph = data_driven_tree(x, depth=depth, repetitions=repetitions, seed=seed)
        else:
            raise ValueError(f"from_data: structure must be 'tree' or 'hclt', got {structure!r}")
        circuit = cls(x.shape[-1], num_classes=num_classes, graph=graph, seed=seed, **options)
        circuit.init_from_data(
            x.to(circuit.class_logits.dtype), y, generator=generator, seeding=seeding
        )
        return circuit

    # ----------------------------------------------------------------------------------
    # Initialisation
    # ----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_leaves_from_data(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> None:
        """Start every input unit at data values: each of its examples is the value of its
        variable in a random row (drawn per variable), its spread the variable's standard
        deviation. Cheap and usually far better than the default start. NaN cells are
        missing (each first takes the value of its column in a random row observing it)."""
        x = self._check_data(x, "init_leaves_from_data")
        x = _fill_missing_cells(x, torch.zeros(len(x), dtype=torch.long), generator)
        inputs = self.inputs
        shape = (inputs.num_slots, inputs.channels, inputs.examples_per_unit)
        rows = torch.randint(0, len(x), shape, generator=generator).to(x.device)
        variables = inputs.slot_var[:, None, None]
        inputs.init_from_examples(x[rows, variables], x.std(0)[inputs.slot_var])

    @torch.no_grad()
    def init_from_data(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        class_bias: float = 8.0,
        seeding: str = "random_from_data",
    ) -> None:
        """Prototype initialisation: every input channel starts as one training example.

        Partition ``r`` of the root region (a RAT-SPN's repetition ``r``; every leaf counts
        as under the first root partition it lies under) is given to class ``r mod C``:
        each input channel of its leaves takes the values of random training examples of
        that class (all variables of one channel from the same examples, so the products
        over leaf regions start as patches of real data), and the roots of class ``c``
        start with ``class_bias`` more log-weight on the products of the partitions given
        to ``c``. The structure stays shared:
        training may move any root's weight anywhere. The spread of every unit is the
        median over variables of the pooled within-class standard deviation. Without ``y``,
        with one class, or when the root has a single partition (an HCLT), the examples are
        drawn from all rows and the roots are left alone.

        NaN cells of ``x`` are missing: each first takes the value of its column in a random
        row of the same class that observes it (hot-deck), so the units still start at real
        values. Rows labelled ``-1`` (unlabelled) serve every class's draws but none's own.

        Args:
            x: training inputs ``(n, D)``, finite or NaN (missing).
            y: their classes ``(n,)`` in ``0..C-1`` (or ``-1``: unknown), or None.
            generator: random generator for the choice of examples.
            class_bias: extra root log-weight of a class's own repetitions.
            seeding: where each partition's units start, among its pool of rows (the
                names of ``GaussianMixture``'s ``init_params``): ``"random_from_data"``
                (rows drawn independently), ``"k-means++"`` (rows drawn by D^2 sampling,
                Arthur and Vassilvitskii 2007: each next with probability proportional to
                its squared distance, in column standard deviations, to the nearest drawn
                so far) or ``"kmeans"`` (those rows moved to the centroids of k-means,
                Lloyd's iterations, one cluster per unit and example), so that EM starts
                from a clustering of the rows rather than from rows that may share a
                cluster.
        """
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding must be one of {SEEDINGS}, got {seeding!r}")
        x = self._check_data(x, "init_from_data")
        reps, channels = self.graph.repetitions, self.inputs.channels
        per_unit = self.inputs.examples_per_unit
        labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if y is not None and self.num_classes > 1:
            check_classification_data(
                x,
                y,
                self.num_classes,
                name="init_from_data data",
                allow_missing=True,
                allow_unlabelled=True,
            )
            # unlabelled rows form a group of their own (C) for the class means
            labels = torch.where(labelled_rows(y), y, self.num_classes).to(x.device)
        x = _fill_missing_cells(x, labels, generator)
        # a root of one partition (an HCLT) cannot be shared out among classes
        classwise = y is not None and self.num_classes > 1 and reps > 1
        owner = torch.arange(reps) % self.num_classes if classwise else torch.zeros(reps).long()
        # the starting values (reps, channels, per_unit, D) of each root partition's units
        starts = x.new_empty(reps, channels, per_unit, x.shape[1])
        for r in range(reps):
            pool = torch.arange(len(x))
            if classwise:
                pool = (labels == int(owner[r])).nonzero().squeeze(1).cpu()
                if len(pool) == 0:  # a class without examples: draw from all rows
                    pool = torch.arange(len(x))
            if seeding == "random_from_data":  # only the drawn rows are copied
                picks = torch.randint(0, len(pool), (channels * per_unit,), generator=generator)
                values = x[pool[picks].to(x.device)]
            else:
                values = _spread_starts(
                    x[pool.to(x.device)], channels * per_unit, generator, seeding
                )
            starts[r] = values.view(channels, per_unit, -1)
        slot_rep = self.graph.root_partition_of_leaves().to(x.device)[self.inputs.slot_leaf]
        # (N, I, M): a slot reads its variable in its root partition's starts
        examples = starts[slot_rep][torch.arange(len(slot_rep)), :, :, self.inputs.slot_var]
        centred = x - _class_means(x, labels)[labels]
        spread = centred.pow(2).mean(0).sqrt().median()
        self.inputs.init_from_examples(examples, spread.expand(self.inputs.num_slots))
        if classwise:
            mine = (
                owner.to(x.device)[self.root_partition]
                == torch.arange(self.num_classes, device=x.device)[:, None]
            )  # (C, Q): the root inputs of each class's own partitions
            logits = self.root.logits + class_bias * mine.to(self.root.logits)
            self.root.logits = PyroParam(logits)

    def _check_data(self, x: torch.Tensor, caller: str) -> torch.Tensor:
        x = self._check_x(x).detach()
        if x.dim() != 2 or len(x) == 0 or bool(torch.isinf(x).any()):
            raise ValueError(
                f"UGMMCircuit.{caller}: expected x of shape (n >= 1, {self.in_features}) with "
                f"finite or NaN (missing) cells, got shape {tuple(x.shape)}"
                + (" with infinite cells" if x.numel() and bool(torch.isinf(x).any()) else "")
            )
        return x

    # ----------------------------------------------------------------------------------
    # Input checks
    # ----------------------------------------------------------------------------------
    def _check_x(self, x: Any) -> torch.Tensor:
        """``x`` (tensor, NumPy array or list; a shape ``(..., D)``) as a tensor in the
        circuit's dtype and on its device."""
        x = to_tensor(x, "UGMMCircuit: x")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"UGMMCircuit: expected real numbers in x, got dtype {x.dtype}")
        reference = self.class_logits
        x = x.to(dtype=reference.dtype, device=reference.device)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"UGMMCircuit(in_features={self.in_features}): expected x of shape (..., "
                f"{self.in_features}), got {tuple(x.shape)}"
            )
        return x

    def as_input(self, x: Any) -> torch.Tensor:
        """``x`` checked and converted as every query method does."""
        return self._check_x(x)

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """``mask[..., d]`` is True where ``x[..., d]`` is observed; None: all observed."""
        validate = is_validation_enabled()  # off in training loops: no host sync per step
        if mask is None:
            if validate and bool(torch.isnan(x).any()):
                raise ValueError(
                    "UGMMCircuit: x has NaN values; pass mask= (True = observed) to treat "
                    "them as missing"
                )
            if validate:
                self.inputs.check_values(x, None)
            return None
        mask = to_tensor(mask, "UGMMCircuit: mask")
        if mask.dtype != torch.bool:
            raise TypeError(
                f"UGMMCircuit: mask must be boolean (True = observed), got dtype {mask.dtype}"
            )
        try:
            mask = mask.to(x.device).expand(x.shape)
        except RuntimeError as error:
            raise ValueError(
                f"UGMMCircuit: mask of shape {tuple(mask.shape)} does not broadcast to x of "
                f"shape {tuple(x.shape)}"
            ) from error
        if validate and bool((~torch.isfinite(x) & mask).any()):
            raise ValueError("UGMMCircuit: observed entries of x (mask True) must be finite")
        if validate:
            self.inputs.check_values(torch.where(mask, x, self.inputs.fill_value()), mask)
        return mask

    def _flat(self, x: torch.Tensor, mask: torch.Tensor | None):
        x = self._check_x(x)
        mask = self._check_mask(x, mask)
        batch_shape = x.shape[:-1]
        flat_mask = None if mask is None else mask.reshape(-1, self.in_features)
        return x.reshape(-1, self.in_features), flat_mask, batch_shape

    # ----------------------------------------------------------------------------------
    # Upward pass
    # ----------------------------------------------------------------------------------
    def _leaf_region_values(
        self, x: torch.Tensor, mask: torch.Tensor | None, mode: str
    ) -> torch.Tensor:
        """The input units of every leaf region, ``(B, L, I)``; a missing variable's units
        give ``log 1`` (``"sum"``) or their highest value (``"max"``)."""
        return self.inputs.region_log_values(x, mask, mode)

    def _internal_upward(
        self,
        leaf: torch.Tensor,
        mode: str = "sum",
        probes: FlowProbes | None = None,
        keep_products: bool = False,
    ) -> UpwardPass:
        """Product and sum layers, level by level, from the leaf regions' input units
        ``leaf`` ``(B, L, I)`` to the roots.

        A level of one Kronecker group feeding one sum group fold for fold (a RAT-SPN's
        levels) runs as one sum of products that never forms the products' log-values
        (:meth:`SumLayer.sum_of_products`), unless ``keep_products`` asks for every sum
        layer's inputs (the downward pass reads them) or ``mode`` is ``"max"``.
        """
        batch = len(leaf)
        outputs: list[torch.Tensor | None] = [None] * len(self.routes)
        kept: list[torch.Tensor | None] = [None] * len(self.routes)
        # Every read of the leaves in one gather, split per reader: a gather per level would
        # cost a zero-filled leaf-sized gradient per level in the backward pass (an HCLT
        # reads leaves at each of its ~45 levels; this was 60% of its training step). Either
        # way the pieces come out contiguous: the native kernels hand back batch-innermost
        # strides, on which the levels' gathers and sums would be several times slower.
        if self.leaf_order is None:
            gathered = leaf.contiguous()
        else:
            gathered = leaf.index_select(1, self.leaf_order)
        leaf_reads = dict(
            zip(self.leaf_readers, gathered.split(self.leaf_read_sizes, 1), strict=True)
        )

        def reader(g: int):
            layer = self.products[g]

            def read(i: int) -> torch.Tensor:
                source = layer.source_layers[i]
                if source == LEAF_LAYER:
                    return leaf_reads[g, i]
                return outputs[source].index_select(1, layer.positions(i))  # type: ignore[union-attr]

            return read

        for product_ids, sum_ids in self.compiled.levels:
            fused = mode == "sum" and not keep_products and self._fusable(product_ids, sum_ids)
            if fused:
                left, right = self.products[product_ids[0]].factors(reader(product_ids[0]))
                results = [self._sum_layer(sum_ids[0]).sum_of_products(left, right)]
            else:
                products = [self.products[g](reader(g)).flatten(1) for g in product_ids]
                flat = products[0] if len(products) == 1 else torch.cat(products, 1)
                results = []
                for g in sum_ids:
                    values = self.routes[g].inputs(flat, batch)
                    if keep_products:
                        kept[g] = values
                    results.append(self._sum_layer(g)(values, mode))
            for g, out in zip(sum_ids, results, strict=True):
                if probes is not None:
                    out = out + (probes.root if g == len(self.sums) else probes.sums[g])
                outputs[g] = out
        root = outputs[-1]
        assert root is not None
        return UpwardPass(kept, root.reshape(batch, self.num_classes))

    def _fusable(self, product_ids: tuple[int, ...], sum_ids: tuple[int, ...]) -> bool:
        """Whether a level is one Kronecker group whose folds are one sum group's folds."""
        if len(product_ids) != 1 or len(sum_ids) != 1:
            return False
        group = self.compiled.products[product_ids[0]]
        route = self.compiled.sums[sum_ids[0]]
        return (
            group.kind == "kronecker"
            and route.index is None
            and len(route.regions) == len(group.partitions)
        )

    def _upward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        mode: str = "sum",
        probes: FlowProbes | None = None,
        keep_products: bool = False,
    ) -> UpwardPass:
        """Values of every layer for flat ``x`` ``(B, D)``; ``mode`` is ``"sum"`` or ``"max"``
        (see :meth:`_internal_upward` for ``keep_products``)."""
        leaf = self._leaf_region_values(x, mask, mode)
        if probes is not None:
            leaf = leaf + probes.inputs
        return self._internal_upward(leaf, mode, probes, keep_products)

    def flow_probes(self, batch: int | None = None) -> FlowProbes:
        """Zero probes (with gradients) for every unit whose flow EM needs; with ``batch``,
        one input probe per example (see :class:`FlowProbes`)."""
        like = self.class_logits

        def zeros(*shape: int) -> torch.Tensor:
            return like.new_zeros(shape, requires_grad=True)

        per_example = () if batch is None else (batch,)
        return FlowProbes(
            inputs=zeros(*per_example, self.inputs.num_leaves, self.inputs.channels),
            sums=[zeros(*layer.logits.shape[:2]) for layer in self.sums],
            root=zeros(1, self.num_classes),
        )

    @pyro_method
    def class_log_prior(self) -> torch.Tensor:
        """``log p(c)``, shape ``(C,)``."""
        return torch.log_softmax(self.class_logits, dim=-1)

    @pyro_method
    def joint_log_prob(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x_obs, c)`` for every class, shape ``(..., C)``.

        ``mask`` (broadcastable to ``x``, True = observed) marginalises the other variables
        exactly; their entries of ``x`` are ignored (they may be NaN).
        """
        flat, flat_mask, batch_shape = self._flat(x, mask)
        root = self._upward(flat, flat_mask).root
        return (root + self.class_log_prior()).reshape(*batch_shape, self.num_classes)

    @pyro_method
    def log_prob(  # type: ignore[override]
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(x)`` (``y`` None) or ``log p(x, y)``; marginal over unobserved variables."""
        return super().log_prob(x, y, mask=mask)

    @pyro_method
    def conditional_log_prob(
        self, x: torch.Tensor, target: torch.Tensor, evidence: torch.Tensor
    ) -> torch.Tensor:
        """``log p(x_A | x_B)`` for boolean masks ``target`` (A) and ``evidence`` (B)."""
        target = torch.as_tensor(target, dtype=torch.bool, device=x.device)
        evidence = torch.as_tensor(evidence, dtype=torch.bool, device=x.device)
        if bool((target & evidence).any()):
            raise ValueError("conditional_log_prob: target and evidence must be disjoint")
        return self.log_prob(x, mask=target | evidence) - self.log_prob(x, mask=evidence)

    def forward(self, c: torch.Tensor | None = None) -> CircuitDistribution:  # type: ignore[override]
        """The distribution of ``x``: ``p(x | c)`` for class ``c`` (any shape), else ``p(x)``."""
        return CircuitDistribution(self, c)

    @pyro_method
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Pyro model: ``c ~ Categorical(p(c))``, ``x ~ p(x | c)`` under ``pyro.plate``.

        Without ``y`` the class site is enumerated in parallel (use ``TraceEnum_ELBO``), so
        its exact marginal over classes is ``p(c | x)``; a row labelled ``-1``
        (:data:`~ugmm_prob.roles.UNLABELLED`) is scored ``log p(x)`` at the ``x`` site and
        nothing at the class site. NaN cells of ``x`` are missing: the ``x`` site scores
        the observed cells, ``log p(x_observed | c)``.
        """
        size = len(x) if num_data is None else num_data
        class_logits = self.class_logits
        # log p(x | c) for every class, evaluated now, while the parameters' draws (when
        # they have priors, see ugmm_prob.bayes.make_bayesian) are those of this trace;
        # NaN cells are missing (SVI's steps read the loss anyway: the test costs no sync
        # that the step does not already pay).
        joint = self.joint_log_prob(x, missing_mask(x))
        conditional = joint - torch.log_softmax(class_logits, dim=-1)
        with pyro.plate("data", size=size, subsample=torch.arange(len(x), device=x.device)):
            if y is None:
                c = pyro.sample(
                    "y",
                    dist.Categorical(logits=class_logits),
                    infer={"enumerate": "parallel"},
                )
                marginal = None
            else:
                # a row labelled -1 scores nothing at the class site and log p(x) at the
                # x site (the marginal over classes, precomputed with this trace's draws)
                known = labelled_rows(y)
                with poutine.mask(mask=known):
                    pyro.sample(
                        "y", dist.Categorical(logits=class_logits), obs=torch.where(known, y, 0)
                    )
                c, marginal = y, torch.logsumexp(joint, -1)
            pyro.sample("x", ObservedCircuit(self, c, x, conditional, marginal=marginal), obs=x)
        return c

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``lambda * NLL(x, y) / D + (1 - lambda) * CE(p(y | x))``, means in nats.

        The likelihood term is per variable so that the two terms have comparable scales
        whatever ``D`` (per example, ``-log p(x, y)`` grows with ``D`` and would drown the
        cross-entropy); with ``lambda = 1`` this is maximum likelihood. Without labels it
        is ``-log p(x) / D`` (maximum likelihood of ``x``). ``mask`` (True = observed)
        makes every term one of the observed cells, ``log p(x_observed, y)``; a row labelled
        :data:`~ugmm_prob.roles.UNLABELLED` contributes ``log p(x) = logsumexp_c
        log p(x, c)`` to the likelihood and nothing to the cross-entropy.
        """
        joint = self.joint_log_prob(x, mask)
        if y is None and self.likelihood_weight < 1.0 and self.num_classes > 1:
            raise ValueError(
                f"likelihood_weight={self.likelihood_weight} mixes in the cross-entropy of "
                "p(c | x), which needs labels y"
            )
        picked = self.log_likelihood_from_logits(joint, y)
        nll = -picked.mean() / self.in_features
        if self.likelihood_weight == 1.0 or y is None:
            return nll
        # an unlabelled row's picked value is the log-sum-exp itself: no cross-entropy
        cross_entropy = -(picked - torch.logsumexp(joint, dim=-1)).mean()
        lam = self.likelihood_weight
        return lam * nll + (1 - lam) * cross_entropy

    # ----------------------------------------------------------------------------------
    # Downward pass: sampling, imputation and MPE
    # ----------------------------------------------------------------------------------
    def _downward(
        self,
        up: UpwardPass,
        c: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        chooser: Chooser,
    ) -> torch.Tensor:
        """Choose one child of every sum unit on the way down and fill unobserved ``x``.

        ``chooser`` maps unnormalised log-probabilities ``(..., Q)`` to indices: sampling for
        exact (conditional) samples, argmax for MPE. The values ``up`` come from evidence
        (with every sum layer's inputs kept). Each example's choices form an induced tree,
        which visits a region at most once (decomposability), so every region holds one
        chosen unit or ``-1``; the layers are walked from the top, and each writes the units
        its chosen products use into the layers below.
        """
        batch = len(c)

        def unset(size: int) -> torch.Tensor:  # one spare column takes the writes of no unit
            return torch.full((batch, size + 1), -1, dtype=torch.long, device=c.device)

        chosen = [unset(len(group.regions)) for group in self.compiled.sums]
        chosen.append(unset(self.inputs.num_leaves))  # LEAF_LAYER == -1: the last entry
        chosen[-2][:, 0] = c
        for product_ids, sum_ids in reversed(self.compiled.levels):
            picked = {g: unset(self.products[g].folds) for g in product_ids}
            for g in sum_ids:
                unit = chosen[g][:, :-1]
                values = up.sum_inputs[g]
                assert values is not None
                choice = self._sum_layer(g).choose(values, unit, chooser)  # (B, F)
                product, fold, product_unit = self.routes[g].follow(choice)
                for p in product_ids:
                    use = (unit >= 0) & (product == p)
                    target = torch.where(use, fold, self.products[p].folds)
                    picked[p].scatter_(1, target, torch.where(use, product_unit, -1))
            for p in product_ids:
                layer = self.products[p]
                unit = picked[p][:, :-1]
                child_unit = layer.child_units(unit.clamp_min(0))  # (B, F, A)
                used = (unit >= 0)[..., None] & (layer.child_layer >= LEAF_LAYER)
                for target_layer in layer.target_layers:
                    mine = used & (layer.child_layer == target_layer)
                    size = chosen[target_layer].shape[1] - 1
                    target = torch.where(mine, layer.child_position, size).flatten(1)
                    chosen[target_layer].scatter_(
                        1, target, torch.where(mine, child_unit, -1).flatten(1)
                    )
        leaf_channel = chosen[LEAF_LAYER][:, :-1]
        value = self.inputs.draw(leaf_channel, x, mask, mode=chooser is _argmax).to(x.dtype)
        return x if mask is None else torch.where(mask, x, value)  # None: all observed

    def _sample_given(self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor):
        up = self._upward(x, mask, keep_products=True)
        return self._downward(up, c, x, mask, sample_index)

    @torch.no_grad()
    @pyro_method
    def sample(
        self, num_samples: int, c: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ancestral samples ``(x, c)``: ``x`` ``(n, D)``, classes ``(n,)``.

        ``c`` fixes the class (an int or a tensor of ``n`` classes); otherwise classes are
        drawn from the prior.
        """
        device, dtype = self.class_logits.device, self.class_logits.dtype
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"sample: expected num_samples an int >= 0, got {num_samples!r}")
        if c is None:
            c = dist.Categorical(logits=self.class_logits).sample((max(num_samples, 1),))
            c = c[:num_samples]
        c = self._check_classes(c, num_samples)
        x = torch.full((num_samples, self.in_features), self.inputs.fill_value(), device=device)
        mask = torch.zeros_like(x, dtype=torch.bool)
        return self._sample_given(x.to(dtype), mask, c), c

    @torch.no_grad()
    @pyro_method
    def impute(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        c: torch.Tensor | int | None = None,
        method: str = "sample",
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """``x`` with its unobserved cells filled (observed cells unchanged), exactly.

        Args:
            x: ``(..., D)``.
            mask: True where a cell is observed (broadcastable to ``x``); None: the NaN
                cells of ``x`` are the missing ones.
            c: the class of every row (an int or ``(n,)``; ``-1``: unknown), or None: not
                known, so it is marginalised (``"mean"``), drawn from ``p(c | x_obs)``
                (``"sample"``) or chosen with the cells (``"mpe"``).
            method: ``"sample"``: an exact draw ``x_M ~ p(x_M | x_O)`` by a downward pass
                whose choices are weighted by the evidence; ``"mean"``: the conditional
                mean ``E[x_M | x_O] = sum_u P(u | x_O) E[x_M | x_O, u]`` over the input
                units ``u``, ``P(u | x_O)`` the flow of ``log p(x_O)`` into ``u`` (its
                gradient with respect to ``u``'s log-value, :meth:`_input_posterior`), the
                best completion in squared error; ``"mpe"``: the max-product completion
                (:meth:`mpe`; with ``c``, the best induced tree of that class).
            num_samples: ``k`` independent draws (``"sample"`` only): the result is then
                ``(k, ..., D)`` (multiple imputation); None: one, shaped like ``x``.
        """
        if method not in IMPUTATION_METHODS:
            raise ValueError(
                f"impute: method must be one of {', '.join(map(repr, IMPUTATION_METHODS))}, "
                f"got {method!r}"
            )
        if num_samples is not None and (
            method != "sample"
            or isinstance(num_samples, bool)
            or not isinstance(num_samples, int)
            or num_samples < 1
        ):
            raise ValueError(
                f"impute: num_samples must be an int >= 1 with method='sample', got "
                f"{num_samples!r} with method={method!r}"
            )
        flat, flat_mask, batch_shape = self._flat_evidence(x, mask)
        classes = None if c is None else self._check_classes(c, len(flat), unknown=True)
        if method == "mean":
            filled = self._conditional_mean(flat, flat_mask, classes)
        elif method == "mpe":
            filled = self._max_product(flat, flat_mask, classes)[0]
        else:
            copies = 1 if num_samples is None else num_samples
            flat = flat.repeat(copies, 1)
            flat_mask = None if flat_mask is None else flat_mask.repeat(copies, 1)
            classes = None if classes is None else classes.repeat(copies)
            if classes is None or bool((classes == UNLABELLED).any()):
                joint = self._upward(flat, flat_mask).root + self.class_log_prior()
                drawn = sample_index(joint)  # c ~ p(c | x_obs)
                classes = drawn if classes is None else torch.where(classes >= 0, classes, drawn)
            filled = self._sample_given(flat, flat_mask, classes)
            if num_samples is not None:
                batch_shape = (num_samples, *batch_shape)
        return filled.reshape(*batch_shape, self.in_features)

    def _flat_evidence(self, x: torch.Tensor, mask: torch.Tensor | None):
        """:meth:`_flat`, where ``mask`` None means that the NaN cells of ``x`` are missing."""
        if mask is None:
            x = self._check_x(x)
            mask = missing_mask(x)
        return self._flat(x, mask)

    def _input_posterior(self, leaf: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """``(B, L, I)``: the probability that example ``b``'s induced tree uses input unit
        ``i`` of leaf ``l`` given its evidence, from the units' log-values ``leaf``.

        In a smooth, decomposable circuit this is the flow ``d log p(x_b,obs[, c_b]) / d
        leaf[b, l, i]`` (its derivative with respect to the unit's log-value); the rows of
        a batch are independent, so one backward pass of the summed log-likelihood gives
        every row's. ``c`` (``-1``: unknown) conditions on the class; None marginalises it.
        """
        leaf = leaf.detach().requires_grad_(True)
        with torch.enable_grad():
            joint = self._internal_upward(leaf).root + self.class_log_prior()
            target = self.log_likelihood_from_logits(joint, c).sum()
            (grad,) = torch.autograd.grad(target, leaf)
        return grad

    def _evidence_posterior(
        self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor | None
    ) -> torch.Tensor:
        """:meth:`_input_posterior` given the observed cells of flat ``x``: ``(B, L, I)``."""
        return self._input_posterior(self._leaf_region_values(x, mask, "sum"), c)

    def _conditional_mean(
        self, x: torch.Tensor, mask: torch.Tensor | None, c: torch.Tensor | None
    ) -> torch.Tensor:
        """``E[x_M | x_O (, c)]`` at the unobserved cells of flat ``x``, ``x`` elsewhere."""
        if mask is None:
            return x
        posterior = self._evidence_posterior(x, mask, c)
        mean = self.inputs.posterior_mean(posterior, x, mask).to(x.dtype)
        return torch.where(mask, x, mean)

    @torch.no_grad()
    @pyro_method
    def conditional_expectation(
        self,
        x: torch.Tensor,
        function: Callable[[torch.Tensor], torch.Tensor],
        mask: torch.Tensor | None = None,
        *,
        c: torch.Tensor | int | None = None,
        points: int = 64,
    ) -> torch.Tensor:
        """``E[f(x_d) | x_O]`` at every unobserved cell ``d``, ``f(x_d)`` at the observed ones.

        For an elementwise ``f`` this is ``sum_u P(u | x_O) E_u[f(x_d)]`` over the input
        units ``u`` of ``d``, with the flows of :meth:`impute`'s ``"mean"`` and each unit's
        expectation from :meth:`InputLayer.unit_expectations
        <ugmm_prob.circuits.inputs.InputLayer.unit_expectations>` (Gauss-Hermite quadrature
        with ``points`` nodes per Gaussian component; a sum over the values of categorical
        units). With ``f`` the identity it is ``impute(x, mask, method="mean")``; with
        ``f`` the map of a transformed variable back to its own space (for instance
        :func:`~ugmm_prob.distributions.pixel_logit_transform` for logit-space pixels), the
        conditional mean there, which is not ``f`` of the conditional mean.

        Args:
            x: ``(..., D)``.
            function: an elementwise map of tensors (applied to the observed cells too).
            mask: True where a cell is observed (broadcastable to ``x``); None: the NaN
                cells of ``x`` are the missing ones.
            c: the class of every row (an int or ``(n,)``; ``-1``: unknown), or None:
                marginalised.
            points: quadrature nodes per Gaussian component.
        """
        flat, flat_mask, batch_shape = self._flat_evidence(x, mask)
        classes = None if c is None else self._check_classes(c, len(flat), unknown=True)
        observed = function(flat)
        if flat_mask is not None:
            posterior = self._evidence_posterior(flat, flat_mask, classes)
            unit_values = self.inputs.unit_expectations(function, points=points)
            expected = self.inputs.posterior_expectation(posterior, unit_values)
            observed = torch.where(flat_mask, observed, expected.to(observed.dtype))
        return observed.reshape(*batch_shape, self.in_features)

    def _check_classes(self, c: Any, count: int, *, unknown: bool = False) -> torch.Tensor:
        """Classes ``c`` (an int or ``count`` of them) as a long tensor of length ``count``;
        with ``unknown``, ``-1`` (:data:`~ugmm_prob.roles.UNLABELLED`) is allowed too."""
        c = to_tensor(c, "UGMMCircuit: c").to(self.class_logits.device)
        if c.dtype.is_floating_point or c.dtype == torch.bool:
            raise TypeError(f"UGMMCircuit: classes must be integers, got dtype {c.dtype}")
        lowest = UNLABELLED if unknown else 0
        if c.numel() and (int(c.min()) < lowest or int(c.max()) >= self.num_classes):
            also = f" or {UNLABELLED} (unknown)" if unknown else ""
            raise ValueError(
                f"UGMMCircuit: classes must be in [0, {self.num_classes - 1}]{also}, got "
                f"{c.unique().tolist()[:5]}"
            )
        try:
            return c.long().expand(count)
        except RuntimeError as error:
            raise ValueError(
                f"UGMMCircuit: expected one class or {count} classes, got shape {tuple(c.shape)}"
            ) from error

    @torch.no_grad()
    @pyro_method
    def mpe(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Max-product MPE of the unobserved variables and the class.

        Maximises over the class, every sum unit's child and every input unit's latent
        choice (a mixture's component) — the induced trees of the circuit — then fills each
        unobserved variable with its chosen unit's mode. ``mask`` is True where a cell is
        observed; None: the NaN cells of ``x`` are the unobserved ones. Returns
        ``(x_completed, c, log_value)`` where ``log_value`` is the log of the best induced
        tree's value at the completion.
        """
        flat, flat_mask, batch_shape = self._flat_evidence(x, mask)
        completed, c, value = self._max_product(flat, flat_mask, None)
        return (
            completed.reshape(*batch_shape, self.in_features),
            c.reshape(batch_shape),
            value.reshape(batch_shape),
        )

    def _max_product(
        self, x: torch.Tensor, mask: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat ``(completed, c, log_value)`` of :meth:`mpe`; ``c`` (``-1``: choose it)
        fixes the class of the induced tree."""
        up = self._upward(x, mask, mode="max", keep_products=True)
        joint = up.root + self.class_log_prior()
        value, best = joint.max(-1)
        if c is not None:
            known = labelled_rows(c)
            best = torch.where(known, c, best)
            value = joint.gather(-1, best[:, None]).squeeze(-1)
        return self._downward(up, best, x, mask, _argmax), best, value

    # ----------------------------------------------------------------------------------
    # Moments
    # ----------------------------------------------------------------------------------
    def _leaf_selection(self, c: int | None) -> torch.Tensor:
        """Probability that a sample draws its leaf-region values from input unit ``i`` of
        leaf ``l``, ``(L, I)``: :meth:`_input_posterior` with every variable marginalised
        (all values ``log 1 = 0``), for a decomposable circuit the probability that
        ancestral sampling (of class ``c``, if given) draws from that unit.
        """
        inputs = self.inputs
        leaf = self.class_logits.new_zeros(1, inputs.num_leaves, inputs.channels)
        classes = None if c is None else torch.tensor([c], device=leaf.device)
        return self._input_posterior(leaf, classes)[0]

    @pyro_method
    def moments(self, c: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and variance of every variable under ``p(x)`` or ``p(x | c)``."""
        inputs = self.inputs
        selection = self._leaf_selection(c).index_select(0, inputs.slot_leaf)  # (N, I)
        first, second = inputs.moments()
        zeros = selection.new_zeros(self.in_features)
        mean = zeros.index_add(0, inputs.slot_var, (selection * first).sum(-1))
        raw_second = zeros.index_add(0, inputs.slot_var, (selection * second).sum(-1))
        return mean, raw_second - mean**2


def _check_options(
    num_classes: int, channels: int, input_channels: int, likelihood_weight: float, inputs: str
) -> None:
    """Refuse constructor values no circuit can have."""
    if min(num_classes, channels, input_channels) < 1:
        raise ValueError(
            "UGMMCircuit: expected num_classes, channels and input_channels >= 1, got "
            f"{num_classes}, {channels}, {input_channels}"
        )
    if not 0.0 <= likelihood_weight <= 1.0:
        raise ValueError(f"likelihood_weight must be in [0, 1], got {likelihood_weight}")
    if inputs not in INPUT_TYPES:
        raise ValueError(f"inputs must be one of {sorted(INPUT_TYPES)}, got {inputs!r}")


def _region_graph(
    graph: RegionGraph | dict[str, Any] | None,
    in_features: int,
    *,
    depth: int | None,
    repetitions: int,
    seed: int,
) -> RegionGraph:
    """The given graph (or its ``to_config()`` dict), else the default random binary trees;
    it must cover ``in_features`` variables."""
    if isinstance(graph, dict):
        graph = RegionGraph.from_config(graph)
    if graph is None:
        depth = default_depth(in_features) if depth is None else depth
        graph = random_binary_trees(in_features, depth=depth, repetitions=repetitions, seed=seed)
    if graph.in_features != in_features:
        raise ValueError(
            f"UGMMCircuit: the region graph covers {graph.in_features} variables, not {in_features}"
        )
    return graph


def _root_input_partition(compiled: CompiledGraph) -> torch.Tensor:
    """``(Q,)``: the root partition (position among the root's partitions) of every input of
    the root (a RAT-SPN's repetition)."""
    graph, root = compiled.graph, compiled.sums[-1]
    position = {p: j for j, p in enumerate(graph.region_partitions[graph.root])}
    partition = [
        position[compiled.products[int(g)].partitions[int(f)]]
        for g, f in zip(root.input_group[0], root.input_fold[0], strict=True)
    ]
    return torch.tensor(partition, dtype=torch.long)


def _own_partitions(
    root_partition: torch.Tensor, partitions: int, num_classes: int
) -> torch.Tensor:
    """``(C, Q)``: which root inputs each class's root may mix when classes share no
    structure (``shared_structure=False``): those of the root partitions ``r mod C = c``."""
    if partitions < num_classes:
        raise ValueError(
            f"UGMMCircuit: shared_structure=False gives each class its own partitions of the "
            f"root (repetitions); {partitions} cannot serve {num_classes} classes"
        )
    owner = root_partition % num_classes  # partition r serves class r mod C
    return owner[None, :] == torch.arange(num_classes)[:, None]


def _reshape_version_0_state(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Read the parameters of a repeated-tree circuit saved by version 0.x.

    Its input parameters were ``(R, D, I, K)``, its sum layers ``(R, P, S, Q)`` and its root
    ``(1, 1, C, R Q)``; a graph built by :meth:`RegionGraph.from_assignment
    <ugmm_prob.circuits.region_graphs.RegionGraph.from_assignment>` lays out the same
    numbers as ``(R D, I, K)``, ``(R P, S, Q)`` and ``(1, C, R Q)``, so a reshape reads them.
    """
    own = dict(module.named_parameters())
    for key, value in list(state_dict.items()):
        name = key[len(prefix) :]
        if not key.startswith(prefix) or name not in own:
            continue
        target = own[name]
        if value.shape != target.shape and value.numel() == target.numel():
            state_dict[key] = value.reshape(target.shape)


def _fill_missing_cells(
    x: torch.Tensor, groups: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``x`` with every NaN cell set to its column's value in a random row of the same group
    that observes it (of any group where none does; 0 where the column is never observed):
    a hot-deck fill, so that initial units sit at values the data take, with their spread.
    ``x`` itself where nothing is missing."""
    missing = torch.isnan(x)
    if not bool(missing.any()):
        return x
    x = x.clone()
    for d in missing.any(0).nonzero().squeeze(1).tolist():
        column = x[:, d]
        seen = ~missing[:, d]
        for group in groups[missing[:, d]].unique().tolist():
            holes = (missing[:, d] & (groups == group)).nonzero().squeeze(1)
            donors = (seen & (groups == group)).nonzero().squeeze(1)
            if len(donors) == 0:
                donors = seen.nonzero().squeeze(1)
            if len(donors) == 0:
                column[holes] = 0.0
                continue
            pick = torch.randint(0, len(donors), (len(holes),), generator=generator)
            column[holes] = column[donors[pick.to(donors.device)]]
    return x


def _spread_starts(
    rows: torch.Tensor, count: int, generator: torch.Generator | None, seeding: str
) -> torch.Tensor:
    """``(count, D)`` starting values drawn from ``rows`` ``(n, D)``, distances measured in
    column standard deviations. ``"k-means++"``: rows by D^2 sampling (the first uniformly,
    each next with probability proportional to its squared distance to the nearest drawn
    so far; uniformly once every row coincides with a drawn one); ``"kmeans"``: those
    seeds moved by Lloyd's iterations to the centroids of the rows nearest to each (until
    no row changes cluster, at most :data:`_LLOYD_ITERATIONS`; an emptied cluster keeps
    its centre)."""
    scale = rows.std(0).nan_to_num(1.0).clamp_min(1e-12) if len(rows) > 1 else 1.0
    z = (rows / scale).cpu()
    picks = torch.empty(count, dtype=torch.long)
    picks[0] = torch.randint(0, len(z), (1,), generator=generator)
    nearest = (z - z[picks[0]]).pow(2).sum(-1)
    for k in range(1, count):
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        picks[k] = torch.multinomial(weights, 1, generator=generator)
        nearest = torch.minimum(nearest, (z - z[picks[k]]).pow(2).sum(-1))
    centres = z[picks]
    if seeding == "kmeans":
        assignment = None
        for _ in range(_LLOYD_ITERATIONS):
            new = torch.cdist(z, centres).argmin(1)
            if assignment is not None and torch.equal(new, assignment):
                break
            assignment = new
            counts = torch.bincount(assignment, minlength=count).to(z.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assignment, z)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return (centres.to(rows.device) * scale).to(rows.dtype)


_LLOYD_ITERATIONS = 100
"""The most Lloyd iterations of ``seeding="kmeans"`` (small tables settle in a few)."""


def _class_means(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the rows of each label, shape ``(max label + 1, D)``."""
    count = torch.bincount(labels).clamp_min(1).to(x.dtype)
    sums = torch.zeros(len(count), x.shape[1], dtype=x.dtype, device=x.device)
    return sums.index_add_(0, labels, x) / count[:, None]
