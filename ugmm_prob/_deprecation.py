"""Old spellings of the public API, kept working for a while with a warning that names the new one.

The library calls the number of input variables of a model ``in_features`` everywhere (the
name ``torch.nn.Linear`` and :class:`~ugmm_prob.layers.UGMMLayer` use), and every model
takes its arguments after ``in_features`` by keyword, so that
``UGMMClassifier(4, hidden=(8,), num_classes=3)`` and
``JointScoreModel(4, num_classes=3, hidden=(10, 5))`` cannot be misread. The former names
(``num_vars``, ``num_features``, ``input_size``) and positional calls still work:

- :func:`accepts_old_spellings` wraps a function, or a class's ``__init__``, so that renamed
  keywords and formerly positional arguments are translated, with an
  :class:`OldSpellingWarning`;
- :class:`RenamedAttribute` is a read-only alias of a renamed attribute that warns on use;
- :func:`with_current_names` renames the keys of a stored constructor ``config`` silently,
  so checkpoints written before the rename load without a warning the user cannot act on.

The warning is a :class:`FutureWarning` rather than a ``DeprecationWarning``: the old
spellings sit in users' scripts and their own modules, and Python hides a
``DeprecationWarning`` raised from code outside ``__main__`` by default, so most users
would only learn of the change when the old spelling is removed.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["OldSpellingWarning", "RenamedAttribute", "accepts_old_spellings", "with_current_names"]

Target = TypeVar("Target", bound=Callable[..., Any])

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40  # a value in a message, not a dump of a tensor


class OldSpellingWarning(FutureWarning):
    """An argument or attribute was used under its former name, or an argument that is now
    keyword-only was passed by position; the message names the current spelling."""


def _owner_name(function: Callable[..., Any]) -> str:
    """``UGMMCircuit`` for ``UGMMCircuit.__init__``, the function's name otherwise."""
    return function.__qualname__.removesuffix(".__init__")


def _warn(message: str) -> None:
    # stacklevel 3: past this helper and the wrapper, at the caller's line.
    warnings.warn(message, OldSpellingWarning, stacklevel=3)


def _move_positional_to_keywords(
    owner: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    accepted: int,
    formerly_positional: Sequence[str],
    is_method: bool,
) -> tuple[tuple[Any, ...], str | None]:
    """Give the arguments past the ``accepted`` positional ones their keyword names (in
    ``kwargs``); returns the remaining positional arguments and the warning to give."""
    extra = args[accepted:]
    if not extra or len(extra) > len(formerly_positional):
        return args, None  # nothing to translate, or too many: the call raises TypeError
    names = formerly_positional[: len(extra)]
    others = bool(kwargs)
    for name, value in zip(names, extra, strict=True):
        if name in kwargs:
            raise TypeError(f"{owner}() got multiple values for argument {name!r}")
        kwargs[name] = value
    shown = [_SHORT.repr(value) for value in args[int(is_method) : accepted]]
    shown += [f"{name}={_SHORT.repr(value)}" for name, value in zip(names, extra, strict=True)]
    shown += ["..."] if others else []
    message = (
        f"{owner}: passing {', '.join(names)} by position is deprecated and will stop "
        f"working; write {owner}({', '.join(shown)})"
    )
    return args[:accepted], message


def accepts_old_spellings(
    *, renamed: Mapping[str, str] | None = None, formerly_positional: Sequence[str] = ()
) -> Callable[[Target], Target]:
    """Decorator: accept the former spellings of a function's (or a class's) arguments.

    Args:
        renamed: ``{old keyword: new keyword}``; a call with the old keyword is translated
            and warns.
        formerly_positional: the keyword-only arguments that callers used to pass by
            position, in their former order; surplus positional arguments are given these
            names and the call warns.

    Applied to a class, it wraps the class's ``__init__``. The wrapper records ``renamed``
    as ``renamed_arguments``, which :func:`with_current_names` reads.
    """
    renames = dict(renamed or {})

    def decorate(target: Target) -> Target:
        if isinstance(target, type):
            target.__init__ = decorate(target.__init__)  # type: ignore[misc]
            return target
        owner = _owner_name(target)
        is_method = target.__name__ == "__init__"
        accepted = sum(p.kind in _POSITIONAL for p in inspect.signature(target).parameters.values())

        @functools.wraps(target)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if formerly_positional:
                args, message = _move_positional_to_keywords(
                    owner, args, kwargs, accepted, formerly_positional, is_method
                )
                if message:
                    _warn(message)
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}: pass {new}= only (not also {old}=)")
                    kwargs[new] = kwargs.pop(old)
                    _warn(f"{owner}: the argument {old}= is deprecated; use {new}=")
            return target(*args, **kwargs)

        wrapper.renamed_arguments = renames  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def with_current_names(target: Callable[..., Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` (e.g. a checkpoint's stored ``config``) with renamed keys brought up to
    date for ``target`` (a class or function decorated with :func:`accepts_old_spellings`),
    silently: a stored file is not something its reader can edit."""
    function = target.__init__ if isinstance(target, type) else target
    renames: Mapping[str, str] = getattr(function, "renamed_arguments", {})
    return {renames.get(key, key): value for key, value in arguments.items()}


class RenamedAttribute:
    """A read-only alias of an attribute under its former name, warning on every read.

    ``num_vars = RenamedAttribute("in_features")`` in a class body makes ``obj.num_vars``
    return ``obj.in_features`` with an :class:`OldSpellingWarning`; assigning to the old
    name raises ``AttributeError`` naming the new one.
    """

    def __init__(self, new: str) -> None:
        self.new = new
        self.old = ""
        self.__doc__ = f"Deprecated name of ``{new}``."

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        warnings.warn(
            f"{type(instance).__name__}.{self.old} is deprecated; use .{self.new}",
            OldSpellingWarning,
            stacklevel=2,
        )
        return getattr(instance, self.new)

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(
            f"{type(instance).__name__}.{self.old} is a deprecated read-only name; set .{self.new}"
        )
