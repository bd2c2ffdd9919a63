"""What the stdlib a module ships finds at run time, inside a built module.

Stdlib modules import some modules by a name computed at run time (codecs
through the `encodings` package, `time.strptime` -> `_strptime`, ...), which
no import statement shows.  A module missing one fails in the proxy only,
and often with an exception the filter does not expect: json.loads of a
body starting with a NUL byte raised LookupError (no utf-16-be codec)
instead of a ValueError, so a filter's `except ValueError` was bypassed.

The probe filter (tests/sdk/filters/stdprobe) imports much of the stdlib;
these tests ask it, in meshext's Proxy-Wasm host, what its own module can
import.  A name may fail inside the module only for a reason the module
cannot help: it needs what meshext leaves out on purpose (a C module it
does not link, sockets, a module left out unless the filter imports it),
or CPython itself fails the same way on this machine.
"""

from __future__ import annotations

import ast
import codecs
import encodings
import encodings.aliases
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshext.sdk.builder import BuildResult, analysis, toolchain
from meshext.testing import Host

STDLIB_IN_MODULE = f"/lib/python{toolchain.PYTHON_VERSION}"
MISSING_ON_PURPOSE = (set(analysis.UNLINKED_C_MODULES) | set(analysis.NOT_FOR_PROXIES)
                      | set(analysis.LEFT_OUT_UNLESS_IMPORTED))
# Calls that import a module whose name is a value, not a statement.
DYNAMIC_IMPORT_CALLS = ("__import__", "import_module", "_gcd_import")


@pytest.fixture(scope="module")
def probe(built_filter: Callable[[str], BuildResult]) -> Callable[..., Any]:
    plugin = Host().load(built_filter("stdprobe").output)

    def ask(body: bytes, kind: str = "query") -> Any:
        stream = plugin.exchange("POST", "/", headers={"x-probe": kind}, body=body)
        assert stream.local_response is not None, plugin.log_messages()
        return json.loads(stream.local_response.body)

    return ask


@pytest.fixture(scope="module")
def shipped_stdlib(probe: Callable[..., Any]) -> dict[str, Path]:
    """Module name -> its source in the wasm32-wasi stdlib, for every stdlib file the module holds."""
    stdlib = toolchain.wasi_python().stdlib_dir
    modules = {}
    for file in probe(json.dumps({"walk": STDLIB_IN_MODULE}).encode())["files"]:
        relative = file.removeprefix(STDLIB_IN_MODULE + "/").removesuffix("c")
        modules[relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")] = stdlib / relative
    return modules


def host_imports(names: list[str]) -> dict[str, dict[str, Any]]:
    """How this machine's CPython imports each name: its error, or the modules importing it loaded."""
    script = """if True:
        import importlib, json, sys
        report = {}
        for name in json.loads(sys.stdin.read()):
            before = set(sys.modules)
            try:
                importlib.import_module(name)
                error = None
            except BaseException as caught:
                error = f"{type(caught).__name__}: {caught}"
            loaded = sorted(set(sys.modules) - before)
            for module in loaded:  # the next name loads what it needs itself
                del sys.modules[module]
            report[name] = {"error": error, "loaded": loaded}
        print(json.dumps(report))
    """
    result = subprocess.run([sys.executable, "-I", "-c", script], input=json.dumps(names), capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def unexplained(outcomes: dict[str, str], modules: dict[str, str]) -> dict[str, str]:
    """The failures in ``outcomes`` (name -> "ok" or the module's error) that the module could have avoided.

    ``modules`` maps each name to the module whose import decides it (a codec
    name -> its encodings module).
    """
    failed = {name: error for name, error in outcomes.items() if error != "ok"}
    host = host_imports(sorted({modules[name] for name in failed}))
    gaps = {}
    for name, error in failed.items():
        on_host = host[modules[name]]
        if any(f"'{missing}'" in error for missing in MISSING_ON_PURPOSE):
            continue  # e.g. "No module named 'socket'"
        if on_host["error"] is None and set(on_host["loaded"]) & MISSING_ON_PURPOSE:
            continue  # CPython needs a module meshext leaves out for it (the CJK codecs: _multibytecodec)
        if (on_host["error"] is not None and "No module named" not in on_host["error"]
                and on_host["error"].split(":")[0] == error.split(":")[0]):
            continue  # CPython finds it and fails the same way here (encodings.mbcs: Windows only)
        gaps[name] = f"{error} (CPython here: {on_host['error'] or 'imports it, loading ' + str(on_host['loaded'])})"
    return gaps


TEXT = {"user": "zoë", "roles": ["admin", "ops"], "limit": 10}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-16-le", "utf-32",
                                      "utf-32-be", "utf-32-le"])
def test_json_bodies_in_every_encoding_json_detects_decode(probe: Callable[..., Any], encoding: str) -> None:
    assert probe(json.dumps(TEXT).encode(encoding), "json") == {"value": TEXT}


@pytest.mark.parametrize("body", [b"\0\0", b"\0{\0", b"{\0\0\0\xff\xff\xff\xff", b"\xff\xfe{\0\0\xd8"],
                         ids=["nul-nul", "utf-16-be-truncated", "utf-32-le-invalid", "utf-16-lone-surrogate"])
def test_malformed_bodies_raise_what_cpython_raises(probe: Callable[..., Any], body: bytes) -> None:
    # The filter's `except ValueError` must see them, as in CPython.
    try:
        json.loads(body)
        raised = None
    except ValueError as error:
        raised = type(error).__name__
    assert raised is not None
    assert probe(body, "json") == {"error": raised, "value_error": True}


def test_every_codec_cpython_knows_is_in_the_module(probe: Callable[..., Any]) -> None:
    # Any codec name can reach the encodings package at run time: from the
    # stdlib (json), or from a request (a charset parameter).
    codec_modules = {path.stem for path in Path(encodings.__file__).parent.glob("*.py")} - {"__init__", "aliases"}
    names = {name: f"encodings.{module}" for name, module in encodings.aliases.aliases.items()}
    names |= {module: f"encodings.{module}" for module in codec_modules}
    names = {name: module for name, module in names.items() if cpython_has_codec(name)}
    outcomes = probe(json.dumps({"lookup": sorted(names)}).encode())["lookups"]
    assert len(outcomes) == len(names)
    assert outcomes["utf_16_be"] == outcomes["utf_32_le"] == outcomes["latin_1"] == outcomes["cp037"] == "ok"
    assert outcomes["idna"] == "ok"  # encodings.idna needs stringprep and unicodedata (issue 11's D1)
    assert unexplained(outcomes, names) == {}


def cpython_has_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False  # e.g. mbcs, outside Windows
    return True


def dynamic_import_sites(source: Path) -> list[int]:
    """The lines of ``source`` that import a module by a computed name."""
    lines = []
    for node in ast.walk(ast.parse(source.read_bytes())):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
            if name in DYNAMIC_IMPORT_CALLS:
                lines.append(node.lineno)
    return lines


def test_every_dynamic_import_of_a_shipped_stdlib_module_is_accounted_for(shipped_stdlib: dict[str, Path]) -> None:
    # A module that imports by a computed name must say what it can reach
    # (RUNTIME_IMPORTS: the build ships it) or why nobody can know
    # (DATA_DRIVEN_IMPORTS: the filter must import what it names).
    known = set(analysis.RUNTIME_IMPORTS) | set(analysis.DATA_DRIVEN_IMPORTS)
    unaccounted = [f"{path}:{line}" for module, path in sorted(shipped_stdlib.items()) if module not in known
                   for line in dynamic_import_sites(path)]
    assert unaccounted == []
    # ...and the tables name no stdlib module that has none (C modules have no source here).
    stdlib = toolchain.wasi_python().stdlib_dir
    for module in [*analysis.DATA_DRIVEN_IMPORTS, *analysis.RUNTIME_IMPORTS]:
        relative = Path(*module.split("."))
        source = next((path for path in (stdlib / relative.with_suffix(".py"), stdlib / relative / "__init__.py")
                       if path.is_file()), None)
        assert source is None or dynamic_import_sites(source), f"{module}: no dynamic import (a stale table entry)"


def expand(pattern: str) -> list[str]:
    stdlib = toolchain.wasi_python().stdlib_dir
    if "*" not in pattern:
        return [pattern]
    package, _, glob = pattern.rpartition(".")
    folder = stdlib / package.replace(".", "/")
    return sorted(f"{package}.{path.stem}" if package else path.stem for path in folder.glob(f"{glob}.py")
                  if path.stem != "__init__")


def test_what_shipped_modules_import_by_name_imports_inside_the_module(probe: Callable[..., Any]) -> None:
    present = probe(json.dumps({"import": sorted(analysis.RUNTIME_IMPORTS)}).encode())["imports"]
    assert present["encodings"] == present["time"] == present["_json"] == present["xml.sax"] == "ok"
    targets = sorted({name for importer, patterns in analysis.RUNTIME_IMPORTS.items() if present[importer] == "ok"
                      for pattern in patterns for name in expand(pattern)})
    assert "encodings.utf_16_be" in targets and "_strptime" in targets
    outcomes = probe(json.dumps({"import": targets}).encode())["imports"]
    assert unexplained(outcomes, {name: name for name in targets}) == {}


def test_every_shipped_stdlib_module_imports_inside_the_module(probe: Callable[..., Any],
                                                               shipped_stdlib: dict[str, Path]) -> None:
    # Modules the filter did not import at build time are imported at run
    # time, where helpers they load must be in the module too.
    outcomes = probe(json.dumps({"import": sorted(shipped_stdlib)}).encode())["imports"]
    assert unexplained(outcomes, {name: name for name in outcomes}) == {}
