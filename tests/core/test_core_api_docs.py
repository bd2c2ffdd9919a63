"""Every public name of the author API has a docstring (the API reference is made from them).

The author API is ``meshext.sdk`` and ``meshext.testing``: the names in their
``__all__``, and the public methods and properties of the classes among them.
``scripts/api-reference.sh`` turns these docstrings into the HTML reference.
"""

from __future__ import annotations

import enum
import inspect
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


@pytest.mark.parametrize("module", API, ids=lambda module: module.__name__)
def test_every_public_name_has_a_docstring(module: ModuleType) -> None:
    assert undocumented(module) == []
