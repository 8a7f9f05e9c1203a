"""The top-level package: its public surface, and the deprecation path of names it dropped."""

import importlib
import subprocess
import sys

import pytest

import ugmm_prob


def test_every_public_name_is_importable_from_the_top_level():
    for name in ugmm_prob.__all__:
        assert getattr(ugmm_prob, name) is not None, name
    from ugmm_prob.bayes import fit_svi, make_bayesian
    from ugmm_prob.circuits import UGMMCircuit, fit_em
    from ugmm_prob.training import fit

    assert ugmm_prob.UGMMCircuit is UGMMCircuit and ugmm_prob.fit_em is fit_em
    assert ugmm_prob.make_bayesian is make_bayesian and ugmm_prob.fit_svi is fit_svi
    assert ugmm_prob.fit is fit


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("coupled_log_density", "ugmm_prob.kernels"),
        ("compiled_backend_available", "ugmm_prob.kernels"),
        ("neuron_mixture", "ugmm_prob.distributions"),
        ("component_dropout", "ugmm_prob.layers"),
    ],
)
def test_dropped_top_level_names_still_import_with_a_deprecation_warning(name, module):
    with pytest.warns(DeprecationWarning, match=module):
        value = getattr(ugmm_prob, name)
    assert value is getattr(importlib.import_module(module), name)
    assert name not in ugmm_prob.__all__


def test_unknown_names_are_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        ugmm_prob.no_such_name  # noqa: B018


def test_importing_the_package_imports_neither_scikit_learn_nor_the_circuits():
    modules = ("sklearn", "ugmm_prob.sklearn", "ugmm_prob.circuits")
    code = (
        f"import sys, ugmm_prob; print(*(m in sys.modules for m in {modules!r})); "
        "from ugmm_prob import UGMMCircuit; print('ugmm_prob.circuits' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "True"]


def test_the_docstring_names_every_public_module():
    import pkgutil

    modules = {
        info.name
        for info in pkgutil.iter_modules(ugmm_prob.__path__, prefix="ugmm_prob.")
        if not info.name.rpartition(".")[2].startswith("_")
    }
    missing = [name for name in sorted(modules) if f":mod:`{name}`" not in ugmm_prob.__doc__]
    assert missing == []
