"""The import rules control/__init__.py states: what the control plane may use.

(That nothing imports the control plane, tests/core/test_core_layout.py checks.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import meshext.control

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ("meshext.control", "meshext.registry", "meshext.envoy", "meshext.errors", "meshext.paths",
           "meshext.phases", "meshext.wasm_binary", "meshext.extensions", "meshext.sdk.builder.metadata")


def meshext_imports(path: Path) -> set[str]:
    """The meshext modules a source file imports (at any depth: lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "meshext" or name.startswith("meshext.")}


def test_control_imports_only_what_its_docstring_allows() -> None:
    assert all(f"``{name}``" in (meshext.control.__doc__ or "") for name in ALLOWED[1:])
    found = {(path.name, name) for path in (ROOT / "control").glob("*.py") for name in meshext_imports(path)
             if not name.startswith(ALLOWED)}
    assert found == set()

