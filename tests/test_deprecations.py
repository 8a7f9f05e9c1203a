"""The former spellings of the public API (issue 18) still work, warn, and build the same thing.

Every model names its number of inputs ``in_features`` and takes everything after it by
keyword; ``num_vars=``, ``num_features=``, ``.num_vars``, ``.num_features``, ``.input_size``
and positional calls keep working for now with an :class:`OldSpellingWarning` (a
``FutureWarning``) that names the current spelling. Checkpoints stored under the old names
load silently.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ugmm_prob import JointScoreModel, MLPClassifier, UGMMClassifier
from ugmm_prob._deprecation import OldSpellingWarning
from ugmm_prob.boundary import as_batch
from ugmm_prob.checkpoints import build_model, load_checkpoint, save_checkpoint
from ugmm_prob.circuits import (
    UGMMCircuit,
    random_binary_trees,
)
from ugmm_prob.circuits.region_graphs import default_depth
from ugmm_prob.roles import density_metrics
from ugmm_prob.sklearn.net import UGMMNetCommittee


def _built(make) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and weights of ``make()`` under a fixed seed, so two spellings compare."""
    torch.manual_seed(0)
    model = make()
    return model.config, model.state_dict()


def _assert_same_model(old, new) -> None:
    (old_config, old_state), (new_config, new_state) = old, new
    assert old_config == new_config
    assert old_state.keys() == new_state.keys()
    for key in old_state:
        assert torch.equal(old_state[key], new_state[key]), key


SPELLINGS = {
    "classifier positional": (
        lambda: UGMMClassifier(4, (6,), 3, layer_norm=False),
        lambda: UGMMClassifier(4, hidden=(6,), num_classes=3, layer_norm=False),
        "UGMMClassifier(4, hidden=(6,), num_classes=3, ...)",
    ),
    "mlp positional": (
        lambda: MLPClassifier(4, (5,), 3),
        lambda: MLPClassifier(4, hidden=(5,), num_classes=3),
        "MLPClassifier(4, hidden=(5,), num_classes=3)",
    ),
    "joint positional": (
        lambda: JointScoreModel(4, 3, (5, 2)),
        lambda: JointScoreModel(4, num_classes=3, hidden=(5, 2)),
        "JointScoreModel(4, num_classes=3, hidden=(5, 2))",
    ),
    "joint num_features": (
        lambda: JointScoreModel(num_features=4, num_classes=3),
        lambda: JointScoreModel(in_features=4, num_classes=3),
        "use in_features=",
    ),
    "circuit positional": (
        lambda: UGMMCircuit(4, 3, depth=1, repetitions=2),
        lambda: UGMMCircuit(4, num_classes=3, depth=1, repetitions=2),
        "UGMMCircuit(4, num_classes=3, ...)",
    ),
    "circuit num_vars": (
        lambda: UGMMCircuit(num_vars=4, num_classes=2),
        lambda: UGMMCircuit(in_features=4, num_classes=2),
        "use in_features=",
    ),
    "committee positional": (
        lambda: UGMMNetCommittee(4, (3,), 2, members=2),
        lambda: UGMMNetCommittee(4, hidden=(3,), num_classes=2, members=2),
        "UGMMNetCommittee(4, hidden=(3,), num_classes=2, ...)",
    ),
}


@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_old_constructor_spellings_warn_and_build_the_same_model(case):
    old, new, advice = SPELLINGS[case]
    with pytest.warns(OldSpellingWarning, match=advice.replace("(", r"\(").replace(")", r"\)")):
        before = _built(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling is silent
        after = _built(new)
    _assert_same_model(before, after)


def test_the_warning_is_a_future_warning_at_the_callers_line():
    with pytest.warns(FutureWarning) as caught:
        UGMMClassifier(4, (3,), 2)
    assert caught[0].filename == __file__


def test_building_blocks_accept_their_old_keywords():
    with pytest.warns(OldSpellingWarning, match="in_features="):
        assert default_depth(num_vars=8) == default_depth(8) == 2
    with pytest.warns(OldSpellingWarning, match="in_features="):
        old = random_binary_trees(num_vars=6, depth=1, repetitions=2, seed=3)
    new = random_binary_trees(6, depth=1, repetitions=2, seed=3)
    assert old.to_config() == new.to_config()


def test_functions_accept_their_old_keywords():
    joint = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    y = torch.tensor([0, 1])
    with pytest.warns(OldSpellingWarning, match="in_features="):
        old = density_metrics(joint, y, num_vars=2)
    assert old == density_metrics(joint, y, 2)
    # bits per dimension: the NLL in nats over (variables * ln 2), written out
    assert old["bits_per_dim"] == pytest.approx(0.75 / (2 * 0.6931471805599453))
    x = [[1.0, 2.0], [3.0, 4.0]]
    with pytest.warns(OldSpellingWarning, match="in_features="):
        assert torch.equal(as_batch(x, num_features=2), as_batch(x, in_features=2))


def test_old_attribute_names_read_the_new_ones_and_refuse_assignment():
    circuit = UGMMCircuit(5, num_classes=2, depth=1, repetitions=2)
    joint = JointScoreModel(4, num_classes=3)
    cases = [
        (circuit, "num_vars", 5),
        (circuit, "input_size", 5),
        (circuit.graph, "num_vars", 5),
        (circuit.inputs, "num_vars", 5),
        (joint, "num_features", 4),
        (joint, "input_size", 4),
        (UGMMClassifier(7, hidden=(3,), num_classes=2), "input_size", 7),
    ]
    for owner, old, expected in cases:
        assert owner.in_features == expected
        with pytest.warns(OldSpellingWarning, match=rf"{type(owner).__name__}\.{old} .*\.in_f"):
            assert getattr(owner, old) == expected
    with pytest.raises(AttributeError, match="in_features"):
        circuit.num_vars = 3


def test_both_spellings_at_once_or_too_many_positions_are_errors():
    with pytest.raises(TypeError, match="in_features"):
        UGMMCircuit(in_features=4, num_vars=4)
    with pytest.raises(TypeError, match="multiple values"):
        JointScoreModel(4, 3, num_classes=3)
    with pytest.raises(TypeError):
        UGMMCircuit(4, 2, 3)  # never had a third positional argument


def _version_0_graph_config(graph) -> dict:
    """The repeated binary trees of ``graph`` as version 0.1 stored them: each variable's leaf
    region per repetition (leaves listed repetition by repetition, left to right)."""
    repetition = graph.root_partition_of_leaves().tolist()
    var_region = [[0] * graph.in_features for _ in range(graph.repetitions)]
    seen = [0] * graph.repetitions
    for leaf, r in zip(graph.leaves, repetition, strict=True):
        for variable in graph.regions[leaf]:
            var_region[r][variable] = seen[r]
        seen[r] += 1
    depth = graph.depth
    return {
        "num_vars": graph.in_features,
        "depth": depth,
        "kind": graph.kind,
        "var_region": var_region,
    }


def test_configs_stored_under_the_old_names_rebuild_silently():
    torch.manual_seed(0)
    circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2)
    joint = JointScoreModel(4, num_classes=3, hidden=(5,))
    # What a checkpoint of the earlier release stored: the old keys, inside the graph too.
    old_circuit = {**circuit.config, "graph": _version_0_graph_config(circuit.graph)}
    old_circuit["num_vars"] = old_circuit.pop("in_features")
    del old_circuit["product"]  # a later option: its default reads the old configs
    old_joint = {**joint.config}
    old_joint["num_features"] = old_joint.pop("in_features")
    x = torch.randn(6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model, old_config in ((circuit, old_circuit), (joint, old_joint)):
            rebuilt = build_model(type(model).__name__, old_config)
            assert rebuilt.config == model.config  # stored again under the current names
            rebuilt.load_state_dict(model.state_dict())
            torch.testing.assert_close(rebuilt.eval().logits(x), model.eval().logits(x))


def test_a_checkpoint_file_written_with_old_config_keys_loads(tmp_path):
    torch.manual_seed(0)
    circuit = UGMMCircuit(4, num_classes=2, depth=1, repetitions=2, channels=2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    current = dict(circuit.config)
    circuit.config = {"num_vars": current["in_features"]}  # the earlier release's key
    circuit.config |= {key: value for key, value in current.items() if key != "in_features"}
    path = save_checkpoint(tmp_path / "old.pt", circuit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_checkpoint(path).model
    assert loaded.config == current
    torch.testing.assert_close(loaded.log_prob(x), circuit.log_prob(x), rtol=0, atol=0)
