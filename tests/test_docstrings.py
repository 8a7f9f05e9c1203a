"""Every public name of the package has a docstring, so the API reference documents it.

Public names are those in the ``__all__`` of each module; for a public class, also the public
methods and properties its own body defines. Module-level constants need an attribute
docstring (a string literal right after the assignment), which the API reference shows.
"""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import ugmm_prob

MODULES = ["ugmm_prob"] + [
    info.name
    for info in pkgutil.walk_packages(ugmm_prob.__path__, prefix="ugmm_prob.")
    if not info.name.endswith("__main__")
]


def _attribute_docstrings(module) -> set[str]:
    """Names assigned at module level and followed by a string literal."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    documented = set()
    for statement, following in zip(tree.body, tree.body[1:], strict=False):
        if isinstance(statement, ast.Assign):
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            targets = [statement.target.id]
        else:
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        ):
            documented.update(targets)
    return documented


def _has_doc(obj) -> bool:
    return bool((getattr(obj, "__doc__", None) or "").strip())


def _missing(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = [] if _has_doc(module) else [f"{module_name} (module)"]
    if not hasattr(module, "__all__"):
        return [*missing, f"{module_name} has no __all__"]
    for name in module.__all__:
        if name.startswith("__"):
            continue  # __version__ and the like
        obj = getattr(module, name)
        where = f"{module_name}.{name}"
        if inspect.isclass(obj):
            if not _has_doc(obj):
                missing.append(where)
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                function = value.fget if isinstance(value, property) else value
                function = getattr(function, "__func__", function)  # static/class methods
                if callable(function) and not _has_doc(function):
                    missing.append(f"{where}.{attr}")
        elif inspect.isfunction(obj) or inspect.isfunction(getattr(obj, "__wrapped__", None)):
            if not _has_doc(obj):  # functions, and functools wrappers of functions
                missing.append(where)
        elif not inspect.ismodule(obj):
            # A constant or type alias: it needs an attribute docstring where it is defined
            # (here, or in the module this one re-exports it from).
            if not any(name in _attribute_docstrings_cache(m) for m in MODULES):
                missing.append(f"{where} (constant without an attribute docstring)")
    return missing


_CACHE: dict[str, set[str]] = {}


def _attribute_docstrings_cache(module_name: str) -> set[str]:
    if module_name not in _CACHE:
        _CACHE[module_name] = _attribute_docstrings(importlib.import_module(module_name))
    return _CACHE[module_name]


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_docstrings(module_name):
    assert _missing(module_name) == []


def test_every_module_is_in_the_api_reference():
    """docs/api/ has one page per public module, so nothing public is left out of the site
    (a private module such as ``ugmm_prob._version`` is not part of the API)."""
    pages = Path(__file__).resolve().parents[1] / "docs" / "api"
    documented = {
        path.read_text(encoding="utf-8").split(":::", 1)[1].split()[0]
        for path in pages.glob("*.md")
        if ":::" in path.read_text(encoding="utf-8")
    }
    public = {name for name in MODULES if not name.rpartition(".")[2].startswith("_")}
    assert public <= documented, sorted(public - documented)


def test_site_pages_have_no_escaped_pipe_inside_code():
    """The site's Markdown (Python-Markdown, and mistune for notebooks) keeps the backslash
    of ``\\|`` inside a code span, so ``p(c \\| x)`` would show a literal backslash."""
    import json
    import re

    root = Path(__file__).resolve().parents[1]
    texts = {path: path.read_text(encoding="utf-8") for path in (root / "docs").glob("*.md")}
    for path in (root / "tutorials").glob("*.ipynb"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts[path] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    escaped = re.compile(r"`[^`\n]*\\\|[^`\n]*`")
    found = [
        f"{path.name}: {m.group()}" for path, text in texts.items() for m in escaped.finditer(text)
    ]
    assert found == []
