"""The tree keeps its shape: imports point one way, and tools see the real files.

Rules (README "Layout"): the in-VM SDK imports nothing outside ``meshext.sdk``
and the ``meshext`` package itself; the core modules in ``src/meshext`` import
no room (only ``testing.py``, the test API, sits over the test host); nothing
imports ``meshext.control``.  A type checker run the way an editor runs it
(from anywhere, with the environment's interpreter) resolves ``meshext.*`` to
the files of this checkout.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import meshext

PACKAGE = Path(meshext.__file__).parent
CHECKOUT = PACKAGE.parent.parent
CORE = ("cli", "errors", "envoy", "paths", "phases", "wasm_binary", "wasm_code", "function_profile", "compiled_modules")
ROOMS = ("sdk", "runtime", "registry", "control")


def imports_of(path: Path) -> set[str]:
    """Every module name PATH imports, at any depth (lazy imports in functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_in_vm_sdk_imports_only_itself() -> None:
    sdk = PACKAGE / "sdk"
    host_side = {sdk / "cli.py", *modules_in(sdk / "builder")}
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(name for name in imports_of(path)
                                               if name.startswith("meshext") and name != "meshext"
                                               and not name.startswith("meshext.sdk"))
        for path in modules_in(sdk) if path not in host_side
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_core_modules_import_no_room() -> None:
    offenders = {
        name: sorted(imported for imported in imports_of(PACKAGE / f"{name}.py")
                     if imported.startswith(tuple(f"meshext.{room}" for room in ROOMS)))
        for name in CORE
    }
    assert {name: rooms for name, rooms in offenders.items() if rooms} == {}


def test_nothing_imports_control() -> None:
    outside_control = [path for path in modules_in(PACKAGE) if "control" not in path.relative_to(PACKAGE).parts]
    offenders = [str(path.relative_to(PACKAGE)) for path in outside_control
                 if any(name.startswith("meshext.control") for name in imports_of(path))]
    assert offenders == []


def test_rooms_are_links_to_the_top_level_folders() -> None:
    for room in ROOMS:
        assert (PACKAGE / room).resolve() == (CHECKOUT / room).resolve()


def test_type_checker_resolves_meshext_to_the_checkout(tmp_path: Path) -> None:
    # An editor's type checker starts outside the project with the
    # environment's interpreter; it must find the real module, not Any.
    (tmp_path / "probe.py").write_text("import meshext.sdk.contexts\nreveal_type(meshext.sdk.contexts.HttpContext)\n")
    mypy = Path(sys.executable).parent / "mypy"
    result = subprocess.run([str(mypy), "--no-incremental", "--python-executable", sys.executable, "probe.py"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert 'Revealed type is "def (' in result.stdout, result.stdout + result.stderr
    assert "meshext.sdk.contexts.HttpContext" in result.stdout
