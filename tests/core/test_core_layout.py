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
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """Every source file under FOLDER, through the room links (``Path.rglob`` does not follow them
    before Python 3.13, which once left these checks looking at the 14 core files only), without
    the tests of filter projects."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(name for name in dirs if name not in ("__pycache__", "tests", "node_modules"))
        found += [Path(root) / name for name in files if name.endswith(".py")]
    return sorted(found)


def module_name(path: Path) -> str:
    """PATH's import name as the links make it (``extensions/3scale/cli.py``: ``meshext.extensions.threescale.cli``)."""
    parts = ("meshext", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolved_imports_of(path: Path) -> set[str]:
    """Like :func:`imports_of`, with relative imports (``from ..control import x``) resolved to absolute names."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = imports_of(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[:len(package) - node.level + 1])
            names.update([f"{base}.{node.module}"] if node.module else [f"{base}.{alias.name}" for alias in node.names])
    return names


SDK_HOST_SIDE = ("meshext.sdk.cli", "meshext.sdk.builder")
# What each part of the tree may import from meshext: the rules the rooms' opening
# docstrings state (README "Layout"); the first prefix that matches a module decides.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("meshext.control", ("meshext",)),
    ("meshext.extensions.telemetry.filter", ("meshext.sdk", "meshext.extensions.telemetry.filter")),
    ("meshext.extensions.ratelimit.filter", ("meshext.sdk", "meshext.extensions.ratelimit.filter")),
    ("meshext.extensions.threescale.filter", ("meshext.sdk", "meshext.extensions.threescale.filter")),
    # Host sides; telemetry's stats configuration also names the rate limit filter's metric labels.
    ("meshext.extensions", ("meshext.extensions", "meshext.sdk", "meshext.errors", "meshext.paths",
                            "meshext.registry", "meshext.envoy")),
    ("meshext.registry", ("meshext.registry", "meshext.errors", "meshext.paths", "meshext.phases",
                          "meshext.sdk.builder.metadata")),
    ("meshext.runtime.cli", ("meshext.runtime", "meshext.errors", "meshext.paths", "meshext.compiled_modules",
                             "meshext.function_profile", "meshext.sdk.abi", "meshext.sdk.builder")),
    ("meshext.runtime", ("meshext.runtime", "meshext.errors", "meshext.paths", "meshext.compiled_modules",
                         "meshext.function_profile", "meshext.sdk.abi")),
    *((host_side, ("meshext.sdk", "meshext.errors", "meshext.paths", "meshext.phases", "meshext.function_profile"))
      for host_side in SDK_HOST_SIDE),
    ("meshext.sdk", ("meshext.sdk",)),
    ("meshext.testing", ("meshext.runtime", "meshext.sdk.abi", "meshext.errors")),
    ("meshext", tuple(f"meshext.{name}" for name in CORE)),
)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def layering_offences(paths: list[Path]) -> list[str]:
    """``module imports name`` for each meshext import RULES does not allow (the bare ``meshext`` is always allowed)."""
    offences = []
    for path in paths:
        module = module_name(path)
        allowed = next(allowed for prefix, allowed in RULES if within(module, (prefix,)))
        offences += [f"{module} imports {name}" for name in sorted(resolved_imports_of(path))
                     if within(name, ("meshext",)) and name != "meshext" and not within(name, allowed)]
    return offences


def test_every_room_imports_only_what_its_rules_allow() -> None:
    paths = modules_in(PACKAGE)
    rooms_seen = {module_name(path).split(".")[1] for path in paths if module_name(path).count(".")}
    assert {*ROOMS, "extensions"} <= rooms_seen  # the walk went through the links
    assert len([path for path in paths if module_name(path).startswith("meshext.extensions.")]) > 10
    assert layering_offences(paths) == []


def test_the_layering_check_sees_forbidden_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "meshext"
    (fake / "extensions" / "ratelimit").mkdir(parents=True)
    (fake / "sdk").mkdir()
    (fake / "extensions" / "ratelimit" / "probe.py").write_text(
        "def f():\n    from meshext.control.server import serve\n    from ...control import mesh\n")
    (fake / "sdk" / "probe.py").write_text("from ..runtime import _host\nimport meshext.paths\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert layering_offences(modules_in(fake)) == [
        "meshext.extensions.ratelimit.probe imports meshext.control",
        "meshext.extensions.ratelimit.probe imports meshext.control.server",
        "meshext.sdk.probe imports meshext.paths",
        "meshext.sdk.probe imports meshext.runtime",
    ]


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


def test_no_two_public_classes_share_a_name_across_packages() -> None:
    # Filter projects (``*/filter/``) are left out: their modules are top-level
    # modules of their own Wasm VM (``filter:Root`` is the entry convention), not
    # meshext packages; private modules and names are left out as well.
    where: dict[str, set[str]] = {}
    for path in modules_in(PACKAGE):
        module = module_name(path)
        if "filter" in module.split(".") or any(part.startswith("_") for part in module.split(".")):
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where.setdefault(node.name, set()).add(module)
    assert {name: sorted(modules) for name, modules in where.items() if len(modules) > 1} == {}
