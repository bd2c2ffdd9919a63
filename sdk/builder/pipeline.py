"""`meshext build`: project folder -> pre-initialised Proxy-Wasm module."""

from __future__ import annotations

import importlib._bootstrap_external as bootstrap_external
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime

import meshext
import meshext.sdk
from meshext.errors import MeshextError
from meshext.sdk._dispatch import BUILD_FACTS_PREFIX
from meshext.sdk.builder import analysis, fsimage, preinit, prune, toolchain
from meshext.sdk.builder.dependencies import resolve as resolve_dependencies
from meshext.sdk.builder.project import PROJECT_FILE, Project, load_project
from meshext.sdk.builder.shim import OPTIONAL_MODULES, build_shim, functions_by_part

SDK_DIR = Path(meshext.sdk.__file__).parent
MESHEXT_DIR = Path(meshext.__file__).parent
# Host-only parts of the SDK package that never go into a module.
SDK_HOST_ONLY = {"cli.py"}

Progress = Callable[[str], None]
CACHE_TAG = f"cpython-{toolchain.PYTHON_VERSION.replace('.', '')}"


@dataclass
class BuildResult:
    output: Path
    size: int
    imports: list[str]
    seconds: float
    shim_cached: bool
    stdlib_modules: int
    initial_memory: int
    build_log: list[tuple[str, str]]


def _sdk_files() -> dict[str, bytes]:
    files = {"app/meshext/__init__.py": (MESHEXT_DIR / "__init__.py").read_bytes()}
    for path in sorted(SDK_DIR.glob("*.py")):
        if path.name not in SDK_HOST_ONLY:
            files[f"app/meshext/sdk/{path.name}"] = path.read_bytes()
    return files


def _stdlib_pyc(source_path: Path, module_path: str) -> bytes:
    # Compiled with docstrings and asserts stripped: less memory per VM.
    code = compile(source_path.read_bytes(), f"/{module_path}", "exec", dont_inherit=True, optimize=2)
    return bytes(bootstrap_external._code_to_timestamp_pyc(code, 0, 0))


def _app_pyc(source: bytes, filename: str) -> bytes:
    # Unchecked hash-based: the importer takes it without comparing it to the
    # source, which the module keeps for tracebacks (next to it, or where
    # ``filename`` points: fsimage.python_module).  Modules carry no compiler
    # at run time (sdk/builder/prune.py), so a module the filter imports lazily
    # must come compiled.
    code = compile(source, filename, "exec", dont_inherit=True)
    return bytes(bootstrap_external._code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))


def _with_bytecode(files: dict[str, bytes]) -> dict[str, bytes]:
    compiled = {}
    for name, source in files.items():
        if name.endswith(".py"):
            folder, _, file = name.rpartition("/")
            compiled[f"{folder}/__pycache__/{file.removesuffix('.py')}.{CACHE_TAG}.pyc"] = _app_pyc(source, f"/{name}")
    return files | compiled


@dataclass
class Contents:
    files: dict[str, bytes]  # the module's file system
    stdlib_modules: int
    c_modules_imported: set[str]  # linked C modules some file imports
    shown_as: dict[str, Path]  # file name in tracebacks -> the file on the build machine


def collect_files(project: Project, stdlib_dir: Path) -> Contents:
    """Everything the module's file system holds, and what it imports."""
    sources = analysis.project_sources(project.root)
    trees = analysis.check_syntax(sources)
    analysis.check_entry(project.root, project.filter.module, project.filter.class_name, trees)
    analysis.check_callback_signatures(trees)
    dependencies = resolve_dependencies(project.filter.dependencies, where=str(project.root / PROJECT_FILE))
    dependency_modules = analysis.dependency_sources(dependencies)
    extensions = {module: dependency for dependency in dependencies for module in dependency.extensions}
    shipped = [*sources, *dependency_modules.values()]

    files = _with_bytecode(_sdk_files())
    with tempfile.TemporaryDirectory() as staging:
        # /app as the module will import from it, for check_imports and modulefinder.
        app_dir = Path(staging)
        staged = {name.removeprefix("app/"): data for name, data in files.items()}
        staged |= {source.relative: source.path.read_bytes() for source in shipped}
        for name, data in staged.items():
            target = app_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        imports = analysis.direct_imports(trees)
        reached = analysis.reachable_dependencies(imports, dependency_modules)
        dependency_imports = analysis.direct_imports(analysis.check_syntax(reached))
        # The dependencies first: a refusal then names the distribution and its module.
        analysis.check_imports(dependency_imports, app_dir, stdlib_dir, extensions)
        analysis.check_imports(imports, app_dir, stdlib_dir, extensions)
        imports += dependency_imports
        keep = {item.name for item in imports}
        seeds = [*(source.module for source in sources), "meshext.sdk", "meshext.sdk._dispatch",
                 *analysis.STARTUP_MODULES]
        closure = analysis.stdlib_closure(app_dir, stdlib_dir, seeds, keep)

    for source in shipped:
        data = source.path.read_bytes()
        module_files = fsimage.python_module(source.relative, source.shown_as, data, _app_pyc(data, source.shown_as),
                                             CACHE_TAG)
        fsimage.add_files(files, module_files, owner=str(source.path))
    for dependency in dependencies:
        for recorded in dependency.data:
            fsimage.add_files(files, {f"{fsimage.APP_DIR}/{recorded}": (dependency.root / recorded).read_bytes()},
                              owner=str(dependency.root / recorded))
    for path in closure.files.values():
        relative = path.relative_to(stdlib_dir).with_suffix(".pyc").as_posix()
        module_path = f"lib/python{toolchain.PYTHON_VERSION}/{relative}"
        files[module_path] = _stdlib_pyc(path, module_path.removesuffix("c"))
    # Stdlib modules the filter imports inside functions are imported at build
    # time too: some define namedtuples at import, which needs the compiler
    # modules do not carry at run time.
    preload = sorted({item.name for item in imports if not item.optional and item.name in closure.files})
    files["app/meshext-build.json"] = json.dumps({
        "name": project.filter.name, "entry": project.filter.entry, "fail_policy": project.filter.fail_policy,
        "preload": preload,
    }).encode()
    return Contents(files, len(closure.files), closure.c_modules, {source.shown_as: source.path for source in shipped})


_TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _explain_preinit_failure(project: Project, shown_as: dict[str, Path], log: list[tuple[str, str]]) -> MeshextError:
    text = "\n".join(message for _, message in log)
    # The innermost frame in the project's (or a dependency's) own files.
    frames = [(shown_as[path.lstrip("/")], int(line)) for path, line in _TRACEBACK_FRAME.findall(text)
              if path.lstrip("/") in shown_as]
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "unknown error")
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else str(project.root)
    fix = "fix the error above; the filter module is imported at build time"
    missing = re.search(r"No module named '([^']+)'", last_line)
    if missing:
        module = missing.group(1)
        top = module.split(".")[0]
        if module in analysis.UNLINKED_C_MODULES or top in analysis.UNLINKED_C_MODULES:
            fix = f"{module!r} is a C module meshext does not link; avoid the import that needs it"
        elif module in analysis.NOT_FOR_PROXIES or top in analysis.NOT_FOR_PROXIES:
            fix = f"{module!r} cannot work inside a proxy (no sockets, processes or threads); avoid the import above"
        elif module in analysis.LEFT_OUT_UNLESS_IMPORTED or top in analysis.LEFT_OUT_UNLESS_IMPORTED:
            fix = f"import {module} in the filter itself, so that the build keeps it in the module"
        else:
            fix = (f"{module!r} is not in the module: if it is a third-party package, add its distribution to "
                   "[filter] dependencies in meshext.toml")
    return MeshextError(f"importing the filter failed at build time:\n{text.rstrip()}", where=where, fix=fix)


# The export Envoy calls for each per-stream callback of sdk/contexts.py.
CALLBACK_EXPORTS = {
    "on_request_headers": "proxy_on_request_headers", "on_request_body": "proxy_on_request_body",
    "on_request_trailers": "proxy_on_request_trailers", "on_response_headers": "proxy_on_response_headers",
    "on_response_body": "proxy_on_response_body", "on_response_trailers": "proxy_on_response_trailers",
    "on_log": "proxy_on_log", "on_done": "proxy_on_done", "on_new_connection": "proxy_on_new_connection",
    "on_downstream_data": "proxy_on_downstream_data", "on_upstream_data": "proxy_on_upstream_data",
    "on_downstream_close": "proxy_on_downstream_connection_close",
    "on_upstream_close": "proxy_on_upstream_connection_close",
}


def unused_callback_exports(overridden: list[str], *, root_on_done: bool) -> set[str]:
    """Exports of callbacks no context of the filter overrides.  Envoy skips a
    callback the module does not export: one call into the VM less per stream
    and event."""
    unused = {export for callback, export in CALLBACK_EXPORTS.items() if callback not in overridden}
    if root_on_done:
        unused.discard("proxy_on_done")
    return unused


def removed_c_modules(imported_by_files: set[str], imported_at_build: list[str]) -> list[str]:
    """Optional C modules that nothing can import at run time any more."""
    return sorted(set(OPTIONAL_MODULES) - imported_by_files - set(imported_at_build))


def _build_facts(log: list[tuple[str, str]]) -> tuple[dict, list[tuple[str, str]]]:
    """The facts _dispatch.preinit reported, and the build log without them."""
    facts = [message for _, message in log if message.startswith(BUILD_FACTS_PREFIX)]
    if len(facts) != 1:
        raise MeshextError("pre-initialisation reported no build facts", where="sdk/_dispatch.py",
                           fix="this is a meshext bug; report it with the filter that triggers it")
    rest = [(level, message) for level, message in log if not message.startswith(BUILD_FACTS_PREFIX)]
    return json.loads(facts[0].removeprefix(BUILD_FACTS_PREFIX)), rest


def module_imports(module: bytes) -> list[str]:
    parsed = wasmtime.Module(wasmtime.Engine(), module)
    return [f"{item.module}.{item.name}" for item in parsed.imports]


def validate(path: Path) -> None:
    result = subprocess.run([toolchain.wasm_tools(), "validate", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise MeshextError(f"the built module does not validate: {result.stderr.strip()}", where=str(path),
                           fix="this is a meshext bug; report it with the filter that triggers it")


def build_filter(project_dir: Path, output: Path | None = None, progress: Progress | None = None) -> BuildResult:
    started = time.monotonic()
    say = progress or (lambda _message: None)
    if sys.version_info[:2] != tuple(map(int, toolchain.PYTHON_VERSION.split("."))):
        raise MeshextError(
            f"meshext build runs on Python {sys.version_info[0]}.{sys.version_info[1]}, but it compiles bytecode "
            f"for the module's CPython {toolchain.PYTHON_VERSION}",
            where=sys.executable,
            fix=f"install meshext into a Python {toolchain.PYTHON_VERSION} environment",
        )
    project = load_project(project_dir)
    output = output or project.root / "build" / f"{project.filter.name}.wasm"

    say("checking the filter")
    python = toolchain.wasi_python()
    contents = collect_files(project, python.stdlib_dir)
    files = contents.files

    say("compiling the shim (once per meshext version)")
    shim_path, shim_cached = build_shim()

    say(f"importing the filter at build time ({len(files)} files in the module's file system)")
    image = fsimage.build_image(files)
    try:
        result = preinit.preinitialize(shim_path.read_bytes(), image)
    except preinit.PreinitFailed as failure:
        raise _explain_preinit_failure(project, contents.shown_as, failure.log) from None

    say("removing code the filter cannot reach")
    facts, build_log = _build_facts(result.log)
    module = prune.prune(
        result.module,
        drop_exports=unused_callback_exports(facts["callbacks"], root_on_done=facts["root_on_done"]),
        removed_modules={
            name: OPTIONAL_MODULES[name]
            for name in removed_c_modules(contents.c_modules_imported, facts["builtin_modules"])
        },
        functions_by_part=functions_by_part(shim_path),
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    temporary.write_bytes(module)
    try:
        validate(temporary)
        temporary.replace(output)
    finally:
        temporary.unlink(missing_ok=True)
    return BuildResult(
        output=output,
        size=len(module),
        imports=module_imports(module),
        seconds=time.monotonic() - started,
        shim_cached=shim_cached,
        stdlib_modules=contents.stdlib_modules,
        initial_memory=result.memory_bytes,
        build_log=build_log,
    )
