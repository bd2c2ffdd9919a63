"""The test host room keeps its rules: what it imports, what its public names are.

- runtime/ imports only meshext.errors, meshext.paths, meshext.compiled_modules,
  meshext.function_profile and meshext.sdk.abi from the rest of meshext (cli.py also meshext.sdk.builder, for `meshext
  test`), and never meshext.control;
- every name meshext.testing exports from the test host has a docstring;
- no class of the test host has the name of a public class of the SDK (the
  author API keeps its names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import meshext.runtime
import meshext.sdk
import meshext.testing

RUNTIME = Path(meshext.runtime.__file__).resolve().parent
SDK = Path(meshext.sdk.__file__).resolve().parent
ALLOWED = ("meshext.runtime", "meshext.errors", "meshext.paths", "meshext.compiled_modules", "meshext.function_profile",
           "meshext.sdk.abi")
ONLY_IN_CLI = ("meshext.sdk.builder",)


def meshext_imports(path: Path) -> set[str]:
    """The meshext modules a file imports (also inside functions and TYPE_CHECKING blocks)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return {name for name in imported if name == "meshext" or name.startswith("meshext.")}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_runtime_imports_only_what_its_room_may_use() -> None:
    problems = []
    for path in sorted(RUNTIME.rglob("*.py")):
        allowed = ALLOWED + ONLY_IN_CLI if path.name == "cli.py" and path.parent == RUNTIME else ALLOWED
        problems += [f"{path.relative_to(RUNTIME)} imports {name}"
                     for name in sorted(meshext_imports(path)) if not within(name, allowed)]
    assert not problems


def test_the_layering_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from meshext.control.server import serve\n    import meshext.sdk.builder\n")
    assert {name for name in meshext_imports(probe) if not within(name, ALLOWED)} == {
        "meshext.control.server", "meshext.sdk.builder"}


def documented(name: str) -> bool:
    """A docstring of its own (a dataclass without one gets its signature as ``__doc__``)."""
    doc = (getattr(meshext.testing, name).__doc__ or "").strip()
    return bool(doc) and not doc.startswith(f"{name}(")


def test_every_test_host_name_in_meshext_testing_is_documented() -> None:
    own = [name for name in meshext.testing.__all__
           if getattr(meshext.testing, name).__module__.startswith("meshext.runtime")]
    assert own and [name for name in own if not documented(name)] == []


def classes(root: Path) -> dict[str, list[str]]:
    """Public class names defined under ``root``, with the files defining them."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found.setdefault(node.name, []).append(str(path.relative_to(root.parent)))
    return found


def test_no_test_host_class_takes_an_sdk_class_name() -> None:
    runtime, sdk = classes(RUNTIME), classes(SDK)
    assert {name: runtime[name] + sdk[name] for name in runtime.keys() & sdk.keys()} == {}
