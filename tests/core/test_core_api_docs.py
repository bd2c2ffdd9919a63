"""Every public name of the author API has a docstring (the API reference is made from them),
and every function's and method's docstring names each of its arguments.

The author API is ``meshext.sdk`` and ``meshext.testing``: the names in their
``__all__``, and the public methods and properties of the classes among them.
``scripts/api-reference.sh`` turns these docstrings into the HTML reference
(pdoc shows each signature above its docstring).
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Callable
from types import ModuleType

import pytest

import meshext.sdk
import meshext.testing

API = (meshext.sdk, meshext.testing)


def public_members(cls: type) -> list[str]:
    """Names of the public methods and properties CLS itself defines (not its enum members)."""
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_") or (isinstance(cls, enum.EnumMeta) and name in cls.__members__):
            continue
        if callable(value) or isinstance(value, (property, classmethod, staticmethod)):
            names.append(name)
    return names


def undocumented(module: ModuleType) -> list[str]:
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if not (inspect.getdoc(value) or "").strip():
            missing.append(name)
        if inspect.isclass(value):
            missing.extend(f"{name}.{member}" for member in public_members(value)
                           if not (inspect.getdoc(getattr(value, member)) or "").strip())
    return missing


def functions(module: ModuleType) -> list[tuple[str, Callable[..., object]]]:
    """The public functions of ``module.__all__`` and the public methods of its classes, by name."""
    found: list[tuple[str, Callable[..., object]]] = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value):
            found.extend((f"{name}.{member}", getattr(value, member)) for member in public_members(value)
                         if inspect.isroutine(getattr(value, member)))
        elif inspect.isroutine(value):
            found.append((name, value))
    return found


def unnamed_arguments(module: ModuleType) -> list[str]:
    """``function(argument)`` for each argument its docstring does not name."""
    missing = []
    for name, function in functions(module):
        doc = inspect.getdoc(function) or ""
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in ("self", "cls") or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                        parameter.VAR_KEYWORD):
                continue
            if not re.search(rf"\b{parameter.name}\b", doc):
                missing.append(f"{name}({parameter.name})")
    return missing


@pytest.mark.parametrize("module", API, ids=lambda module: module.__name__)
def test_every_public_name_has_a_docstring(module: ModuleType) -> None:
    assert undocumented(module) == []


@pytest.mark.parametrize("module", API, ids=lambda module: module.__name__)
def test_every_argument_is_named_in_its_docstring(module: ModuleType) -> None:
    assert functions(module), "no functions found: the walk is broken"
    assert unnamed_arguments(module) == []
