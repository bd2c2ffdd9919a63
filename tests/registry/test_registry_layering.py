"""The import rules registry/__init__.py states: what the registry room may use."""

from __future__ import annotations

import ast
from pathlib import Path

import meshext.registry

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ("meshext.registry", "meshext.errors", "meshext.paths", "meshext.phases", "meshext.sdk.builder.metadata")


def test_registry_imports_only_what_its_docstring_allows() -> None:
    assert all(f"``{name}``" in (meshext.registry.__doc__ or "") for name in ALLOWED[1:])
    found = set()
    for path in (ROOT / "registry").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):  # lazy imports inside functions count
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            found |= {(path.name, name) for name in names
                      if name.startswith("meshext") and not name.startswith(ALLOWED)}
    assert found == set()
