"""Check a filter's Python before building, and find the stdlib it needs.

Errors name the file and line: a syntax error, an entry point that is not
there, a callback override the SDK cannot call, or an import the module
cannot satisfy (a module that is neither in the project, its declared
dependencies, the SDK, the in-module stdlib, nor a C module linked into the
shim).  The stdlib closure comes from the standard library's own
``modulefinder``, run over CPython's wasm32-wasi stdlib, plus the modules
that stdlib and C modules import by a name computed at run time
(:data:`RUNTIME_IMPORTS`), which no import statement shows.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import modulefinder
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from meshext.errors import MeshextError
from meshext.sdk.builder.dependencies import Dependency
from meshext.sdk.builder.shim import ALWAYS_BUILTIN, BUILTIN_MODULES

# Imported by the interpreter itself at start-up, without an import statement.
STARTUP_MODULES = ("encodings",)
# Modules imported by a name computed at run time, which modulefinder cannot
# follow: importer (stdlib or linked C module) -> what it can import that way.
# `*` patterns cover every stdlib module they match.  Each target ships when
# its importer does, unless it needs a module the module cannot have (then
# importing it fails as it would in a CPython without that module).  The C
# entries come from CPython 3.11's sources (the string literals of the
# linked objects in libpython3.11.a that name stdlib modules).
RUNTIME_IMPORTS: dict[str, tuple[str, ...]] = {
    # codecs.lookup(name), str.encode/bytes.decode(name), and stdlib modules
    # choosing a codec themselves (json.loads picks utf-16/32 from the first
    # bytes): the encodings package imports encodings.<name> on first use.
    "encodings": ("encodings.*",),
    "builtins": ("copyreg",),  # object.__reduce_ex__ (copy, pickle)
    "time": ("_strptime",),  # time.strptime
    "_datetime": ("_strptime",),  # datetime.strptime
    "_json": ("json.decoder",),  # raises json.decoder.JSONDecodeError
    "_pickle": ("copyreg", "_compat_pickle", "functools"),
    "array": ("collections.abc",),  # registers array as a MutableSequence
    "_operator": ("functools",),  # methodcaller.__reduce__
    "xml.dom.domreg": ("xml.dom.minidom",),  # getDOMImplementation()
    "xml.sax": ("xml.sax.expatreader",),  # make_parser(): needs pyexpat, which is not linked
    "sysconfig": ("_sysconfigdata_*",),  # get_config_vars()
}
# Stdlib modules whose run-time imports take the module name from their
# caller or from data (pickles, configuration, entry points): the build
# cannot know those names; the modules they name must be imported by the
# filter (or be the filter's own).
DATA_DRIVEN_IMPORTS: dict[str, str] = {
    "importlib": "import_module(name)",
    "importlib.util": "find_spec(name) / resolve_name",
    "importlib.metadata": "entry points name their modules",
    "importlib.resources._common": "the package passed to files()",
    "pickle": "find_class(): the modules a pickle names",
    "logging.config": "handler and formatter classes named in the configuration",
    "warnings": "warning categories named in -W / PYTHONWARNINGS filters",
    "optparse": "Values.read_module(name)",
    "inspect": "its command line (python -m inspect MODULE)",
}
# Parts of the stdlib that cannot work in a proxy (sockets, processes, threads,
# terminals...).  A filter importing one directly gets a build error.
NOT_FOR_PROXIES = (
    "asyncio", "concurrent", "ctypes", "curses", "dbm", "distutils", "doctest", "ensurepip", "idlelib",
    "lib2to3", "multiprocessing", "pydoc", "pydoc_data", "sqlite3", "ssl", "subprocess", "test", "tkinter",
    "turtle", "unittest", "venv", "xmlrpc", "socket", "selectors", "http.client", "urllib.request",
    "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib", "socketserver", "webbrowser",
    "pdb", "bdb", "cProfile", "profile", "tracemalloc", "zipimport", "getpass",
)
# Heavy modules that other stdlib modules mention only on paths a filter does
# not take (archives, mail, CLI parsing...).  Left out of the module unless the
# filter imports them itself; every byte here is paid by every VM.
LEFT_OUT_UNLESS_IMPORTED = (
    "argparse", "bz2", "csv", "difflib", "email", "getopt", "gettext", "glob", "gzip", "importlib.metadata",
    "importlib.resources", "logging", "lzma", "mailbox", "mimetypes", "optparse", "pathlib", "pickle",
    "platform", "plistlib", "pprint", "_pydecimal", "decimal", "shutil", "sysconfig", "tarfile",
    "tempfile", "uu", "xml", "zipfile", "_compression", "statistics", "fractions", "numbers", "shlex",
)
# C modules of CPython that meshext does not link (for a precise message).
UNLINKED_C_MODULES = {
    "_socket", "select", "_ssl", "_sqlite3", "_ctypes", "_decimal", "pyexpat", "_elementtree",
    "_multibytecodec", "_asyncio", "_lsprof", "_crypt", "audioop", "cmath", "_zoneinfo", "mmap", "fcntl",
    "termios", "resource", "grp", "pwd", "_posixsubprocess", "_multiprocessing", "zlib", "_bz2", "_lzma",
    "readline", "_curses", "_uuid", "_hashlib", "_testcapi",
}
AVAILABLE_C_MODULES = frozenset(BUILTIN_MODULES) | frozenset(ALWAYS_BUILTIN)
# Modules the module's CPython 3.11 serves from its frozen copies (os,
# codecs, io, importlib's bootstrap...; its `_imp._frozen_module_names()`,
# which tests/sdk/test_sdk_loop.py compares with this table): their files are
# never read, so the module does not carry them.  A table, not the host's
# list: meshext may run on another Python than the module's.  `importlib`
# binds the frozen bootstrap under its own two names too.
FROZEN_MODULES = frozenset({
    "__hello__", "__hello_alias__", "__hello_only__", "__phello__", "__phello__.__init__", "__phello__.ham",
    "__phello__.ham.__init__", "__phello__.ham.eggs", "__phello__.spam", "__phello_alias__",
    "__phello_alias__.spam", "_collections_abc", "_frozen_importlib", "_frozen_importlib_external",
    "_sitebuiltins", "abc", "codecs", "genericpath", "importlib.machinery", "importlib.util", "io", "ntpath",
    "os", "os.path", "posixpath", "runpy", "site", "stat", "zipimport",
})
FROZEN_ALIASES = frozenset({"importlib._bootstrap", "importlib._bootstrap_external"})


# Folders of a project that are never part of its module: tests, build output, caches.
NOT_SHIPPED_FOLDERS = ("tests", "test", "build", "__pycache__")
# Tracebacks name a dependency's files under this folder, as CPython's name
# them under site-packages.
DEPENDENCY_FOLDER = "site-packages"


@dataclass(frozen=True)
class SourceFile:
    """A Python file the module ships besides the SDK and the stdlib: the project's or a dependency's."""

    path: Path  # on disk
    module: str  # dotted import name
    relative: str  # where the module imports it from, under its app folder: "filter.py", "humanize/time.py"
    # The file name its tracebacks show: the project folder and the path in
    # it ("my-filter/filter.py"), or site-packages/... for a dependency.
    shown_as: str
    distribution: str | None = None  # the dependency that ships it ("humanize 4.9.0"); None: the project's


def _module_name(relative: Path) -> str:
    parts = list(relative.parts[:-1]) + ([] if relative.name == "__init__.py" else [relative.stem])
    return ".".join(parts)


def project_sources(root: Path, shown_under: str | None = None) -> list[SourceFile]:
    """The filter's Python files (tests and hidden folders are not shipped),
    their tracebacks naming them ``shown_under/...`` (default: the project
    folder's name)."""
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.parts
        if any(part.startswith(".") or part in NOT_SHIPPED_FOLDERS for part in parts[:-1]):
            continue
        if parts[-1].startswith("test_") or parts[-1] == "conftest.py":
            continue
        sources.append(SourceFile(path, _module_name(relative), relative.as_posix(),
                                  f"{shown_under or root.name}/{relative.as_posix()}"))
    return sources


def dependency_sources(dependencies: list[Dependency]) -> dict[str, SourceFile]:
    """Module name -> file, for every Python module the declared dependencies install."""
    sources = {}
    for dependency in dependencies:
        for module, recorded in dependency.modules.items():
            sources[module] = SourceFile(dependency.root / recorded, module, recorded,
                                         f"{DEPENDENCY_FOLDER}/{recorded}", dependency.label)
    return sources


def check_syntax(sources: Iterable[SourceFile]) -> dict[SourceFile, ast.Module]:
    """Parse each file; the first syntax error is a build error naming file and line."""
    trees = {}
    for source in sources:
        text = source.path.read_bytes()
        try:
            trees[source] = ast.parse(text, filename=str(source.path))
        except SyntaxError as error:
            owner = f" (in dependency {source.distribution})" if source.distribution else ""
            raise MeshextError(
                f"syntax error{owner}: {error.msg}", where=f"{source.path}:{error.lineno}",
                fix="correct the Python syntax" if not source.distribution
                else "use a release of the dependency that supports Python 3.11",
            ) from None
    return trees


def check_entry(root: Path, module: str, class_name: str, trees: dict[SourceFile, ast.Module]) -> None:
    """The entry point ``module:class_name`` names a top-level class (or binding) of the project."""
    by_module = {source.module: (source, tree) for source, tree in trees.items()}
    where = str(root / "meshext.toml")
    if module not in by_module:
        raise MeshextError(
            f"entry point module {module!r} not found in the project",
            where=where,
            fix=f"create {module.replace('.', '/')}.py or correct `entry` in [filter]",
        )
    source, tree = by_module[module]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == class_name for t in node.targets):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (alias.asname or alias.name) == class_name for alias in node.names
        ):
            return
    raise MeshextError(
        f"entry point {module}:{class_name}: no class {class_name!r} at the top level of {source.path.name}",
        where=f"{source.path}:1",
        fix="define your RootContext subclass there, or correct `entry` in [filter] of meshext.toml",
    )


def _handles_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
        if handler.type is None or any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception") for n in names
        ):
            return True
    return False


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a `try` that handles ImportError (an optional import)."""
    current = node
    while current in parents:
        parent = parents[current]
        if isinstance(parent, ast.Try) and current in parent.body and _handles_import_error(parent):
            return True
        current = parent
    return False


def _for_type_checkers(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in the body of ``if TYPE_CHECKING:`` (or
    ``typing.TYPE_CHECKING``): it runs for type checkers only, never in the module."""
    current = node
    while current in parents:
        parent = parents[current]
        if isinstance(parent, ast.If) and current in parent.body and (
            isinstance(parent.test, ast.Name) and parent.test.id == "TYPE_CHECKING"
            or isinstance(parent.test, ast.Attribute) and parent.test.attr == "TYPE_CHECKING"
        ):
            return True
        current = parent
    return False


@dataclass(frozen=True)
class SourceImport:
    """One module an import statement of a shipped file names."""

    source: SourceFile
    line: int
    name: str  # absolute dotted name
    optional: bool  # inside a try that handles ImportError
    # Inside `if TYPE_CHECKING:`: never imported in the module, so not at build time either.
    for_type_checkers: bool = False


def _package(source: SourceFile) -> str:
    return source.module if source.path.name == "__init__.py" else source.module.rpartition(".")[0]


def _absolute(source: SourceFile, module: str | None, level: int) -> str:
    if not level:
        return module or ""
    base = _package(source).split(".") if _package(source) else []
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def direct_imports(trees: dict[SourceFile, ast.Module]) -> list[SourceImport]:
    """Each module the files' import statements name.

    ``from package import name`` names ``package`` and ``package.name``: the
    latter may be a submodule (``from http import client``), or an attribute,
    which :func:`check_imports` accepts when ``package`` exists.
    """
    found = []
    for source, tree in trees.items():
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(source, node.module, node.level)
                names = [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*" and module]
            else:
                continue
            optional = _guarded(node, parents)
            for_type_checkers = _for_type_checkers(node, parents)
            found += [SourceImport(source, node.lineno, name, optional, for_type_checkers) for name in names if name]
    return found


def reachable_dependencies(imports: list[SourceImport], available: dict[str, SourceFile]) -> list[SourceFile]:
    """The dependency modules the project's imports reach, and the ones those reach in turn.

    Only these are checked (a dependency's test suite or command line may
    import what a proxy lacks and still never run in one); all of a
    dependency's modules ship, for its own imports by name.
    """
    reached: dict[str, SourceFile] = {}
    # An import for type checkers only never runs in the module: what it
    # reaches is shipped, not checked.
    pending = [item.name for item in imports if not item.for_type_checkers]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            module = ".".join(parts[:depth])
            if module in available and module not in reached:
                reached[module] = available[module]
                pending += [item.name for item in direct_imports(check_syntax([available[module]]))
                            if not item.for_type_checkers]
    return sorted(reached.values(), key=lambda source: source.module)


def check_imports(imports: list[SourceImport], app_dir: Path, stdlib_dir: Path,
                  extensions: dict[str, Dependency] | None = None) -> None:
    """Every unguarded import can be satisfied inside a proxy, else a build error naming the import.

    Imports under ``if TYPE_CHECKING:`` never run in the module and are not
    checked (``packaging`` imports ``typing_extensions`` there).

    ``extensions`` maps the C extension modules of the declared dependencies
    (which are not bundled) to their distribution.
    """
    extensions = extensions or {}
    for item in imports:
        if item.optional or item.for_type_checkers:
            continue
        name, source = item.name, item.source
        top = name.split(".")[0]
        owner = (f"dependency {source.distribution}: module {source.module!r} imports" if source.distribution
                 else "import of")
        drop = f"remove it from [filter] dependencies in meshext.toml: it needs {name!r}"
        extension = next((extensions[part] for part in _prefixes(name) if part in extensions), None)
        if any(name == blocked or name.startswith(blocked + ".") for blocked in NOT_FOR_PROXIES):
            message = f"{owner} {name!r}: not available inside a proxy (no sockets, processes or threads)"
            fix = (f"{drop}; do I/O with the SDK's http_call/grpc_call" if source.distribution else
                   "use the SDK's http_call/grpc_call for I/O, or guard the import with try/except ImportError")
        elif name in UNLINKED_C_MODULES or top in UNLINKED_C_MODULES:
            message = f"{owner} {name!r}: a CPython C module that meshext does not link into Proxy-Wasm modules"
            fix = drop if source.distribution else (
                "use a pure-Python alternative, or guard the import with try/except ImportError")
        elif extension is not None and not _resolvable(name, app_dir, stdlib_dir, attributes=False):
            module = next(part for part in _prefixes(name) if part in extension.extensions)
            message = (f"{owner} {module!r}, a C extension of dependency {extension.label} "
                       f"({extension.extensions[module]}): Proxy-Wasm modules carry pure Python only")
            fix = (f"remove {extension.name!r} from [filter] dependencies, or use a pure-Python distribution "
                   "that does the same")
        elif not _resolvable(name, app_dir, stdlib_dir):
            message = (f"{owner} {name!r}: no such module in the project, its dependencies, the SDK or the "
                       "module's stdlib")
            fix = _missing_module_fix(top)
        elif chain := _chain_to_blocked(name, app_dir, stdlib_dir):
            missing = ("a CPython C module that meshext does not link" if chain[-1].split(".")[0] in UNLINKED_C_MODULES
                       else "not available inside a proxy (no sockets, processes or threads)")
            message = f"{owner} {name!r}, which imports {chain[-1]!r} ({' -> '.join(chain)}): {missing}"
            fix = drop if source.distribution else (
                "avoid the import (it cannot work inside a proxy), or guard it with try/except ImportError")
        else:
            continue
        raise MeshextError(message, where=f"{source.path}:{item.line}", fix=fix)


def _missing_module_fix(top: str) -> str:
    installed = importlib.metadata.packages_distributions().get(top)
    if installed:
        return (f"add {installed[0]!r} to [filter] dependencies in meshext.toml: the build bundles it from this "
                "environment if it is pure Python")
    return (f"install the distribution that provides {top!r} where meshext build runs and add it to [filter] "
            "dependencies in meshext.toml, or add the module to the project folder")


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def _resolvable(name: str, app_dir: Path, stdlib_dir: Path, *, attributes: bool = True) -> bool:
    if name in AVAILABLE_C_MODULES or (attributes and name.rpartition(".")[0] in AVAILABLE_C_MODULES):
        return True
    relative = Path(*name.split("."))
    for base in (app_dir, stdlib_dir):
        if (base / relative).with_suffix(".py").is_file() or (base / relative / "__init__.py").is_file():
            return True
        # `from package import name` may name an attribute, not a module.
        parent = relative.parent
        if attributes and parent != Path(".") and (
            (base / parent / "__init__.py").is_file() or (base / parent).with_suffix(".py").is_file()
        ):
            return True
    return False


# ---- callback signatures ----

# The SDK classes whose methods the SDK calls on a filter's subclasses: their
# on_* callbacks, and these factories.
SDK_CALLBACK_CLASSES = ("HttpContext", "StreamContext", "RootContext", "GrpcStreamHandler")
SDK_FACTORIES = ("new_http_context", "new_stream_context")


@cache
def _sdk_callbacks() -> dict[type, dict[str, inspect.Signature]]:
    import meshext.sdk

    callbacks = {}
    for class_name in SDK_CALLBACK_CLASSES:
        cls = getattr(meshext.sdk, class_name)
        callbacks[cls] = {
            name: inspect.signature(getattr(cls, name)) for name in dir(cls)
            if (name.startswith("on_") or name in SDK_FACTORIES) and inspect.isfunction(getattr(cls, name))
        }
    return callbacks


def _declaration(name: str, signature: inspect.Signature) -> str:
    """``def on_request_headers(self, end_of_stream: bool) -> Action | None`` (string annotations unquoted)."""
    params = [f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
              for p in signature.parameters.values()]
    returns = "" if signature.return_annotation is signature.empty else f" -> {signature.return_annotation}"
    return f"def {name}({', '.join(params)}){returns}"


def _signature(arguments: ast.arguments) -> inspect.Signature:
    """The signature a ``def`` declares (defaults stand in as None: only their presence matters)."""
    parameter = inspect.Parameter
    positional = [*arguments.posonlyargs, *arguments.args]
    first_default = len(positional) - len(arguments.defaults)
    parameters = [parameter(arg.arg, parameter.POSITIONAL_ONLY if index < len(arguments.posonlyargs)
                            else parameter.POSITIONAL_OR_KEYWORD,
                            default=None if index >= first_default else parameter.empty)
                  for index, arg in enumerate(positional)]
    if arguments.vararg:
        parameters.append(parameter(arguments.vararg.arg, parameter.VAR_POSITIONAL))
    parameters += [parameter(arg.arg, parameter.KEYWORD_ONLY, default=parameter.empty if default is None else None)
                   for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)]
    if arguments.kwarg:
        parameters.append(parameter(arguments.kwarg.arg, parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


class _ClassResolver:
    """Which SDK class each class of the project derives from, read from the source (nothing is imported)."""

    def __init__(self, trees: dict[SourceFile, ast.Module]) -> None:
        self.classes: dict[str, tuple[SourceFile, ast.ClassDef]] = {}
        self.bindings: dict[str, dict[str, str]] = {}  # module -> top-level name -> dotted target
        for source, tree in trees.items():
            names = self.bindings.setdefault(source.module, {})
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    names[node.name] = f"{source.module}.{node.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            names[alias.asname] = alias.name
                        else:
                            names[alias.name.split(".")[0]] = alias.name.split(".")[0]
                elif isinstance(node, ast.ImportFrom):
                    module = _absolute(source, node.module, node.level)
                    for alias in node.names:
                        names[alias.asname or alias.name] = f"{module}.{alias.name}"
            for found in ast.walk(tree):
                if isinstance(found, ast.ClassDef):
                    self.classes.setdefault(f"{source.module}.{found.name}", (source, found))

    def _dotted(self, module: str, expression: ast.expr) -> str | None:
        if isinstance(expression, ast.Name):
            return self.bindings.get(module, {}).get(expression.id)
        if isinstance(expression, ast.Attribute):
            head = self._dotted(module, expression.value)
            return f"{head}.{expression.attr}" if head else None
        return None

    def sdk_base(self, dotted: str, depth: int = 0) -> type | None:
        """The SDK callback class the class named ``dotted`` derives from, if any."""
        if depth > 20:  # a cycle of re-exports: not a class the SDK knows
            return None
        if dotted.startswith("meshext.sdk."):
            return self._sdk_class(dotted)
        if dotted in self.classes:
            source, node = self.classes[dotted]
            for base in node.bases:
                target = self._dotted(source.module, base)
                found = self.sdk_base(target, depth + 1) if target else None
                if found is not None:
                    return found
            return None
        module, _, name = dotted.rpartition(".")
        target = self.bindings.get(module, {}).get(name)  # re-exported by a project module
        return self.sdk_base(target, depth + 1) if target and target != dotted else None

    def _sdk_class(self, dotted: str) -> type | None:
        module, _, name = dotted.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None
        return found if found in _sdk_callbacks() else None


def check_callback_signatures(trees: dict[SourceFile, ast.Module]) -> None:
    """Each callback a filter's context class overrides takes the arguments the SDK passes.

    The SDK calls callbacks positionally (``on_request_body(body_size,
    end_of_stream)``); an override that cannot take them would fail on
    every call at run time.  Decorated methods are not checked (the
    decorator decides what they take).
    """
    resolver = _ClassResolver(trees)
    for dotted, (source, node) in resolver.classes.items():
        base = resolver.sdk_base(dotted)
        if base is None:
            continue
        expected = _sdk_callbacks()[base]
        for method in node.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) or method.name not in expected:
                continue
            if method.decorator_list:
                continue
            signature = expected[method.name]
            fix = _declaration(method.name, signature)
            where = f"{source.path}:{method.lineno}"
            if isinstance(method, ast.AsyncFunctionDef):
                raise MeshextError(
                    f"{node.name}.{method.name} is `async def`: the SDK calls callbacks synchronously and would get "
                    "a coroutine, not an answer", where=where, fix=fix)
            try:
                _signature(method.args).bind(*signature.parameters)
            except TypeError:
                arguments = ", ".join(list(signature.parameters)[1:]) or "no arguments"
                raise MeshextError(
                    f"{method.name}({ast.unparse(method.args)}) does not take the SDK's arguments: "
                    f"the SDK calls {node.name}.{method.name} with ({arguments})", where=where, fix=fix) from None


# ---- the stdlib the module carries ----

class _Finder(modulefinder.ModuleFinder):
    """modulefinder that knows the module's built-ins, not this interpreter's."""

    def find_module(self, name, path, parent=None):
        fullname = f"{parent.__name__}.{name}" if parent else name
        if fullname in AVAILABLE_C_MODULES:
            return (None, None, ("", "", modulefinder._C_BUILTIN))  # type: ignore[attr-defined]
        if path is None and name in sys.builtin_module_names:
            raise ImportError(name)
        return super().find_module(name, path, parent)

    def _safe_import_hook(self, name, caller, fromlist, level=-1):
        # modulefinder remembers a failed import by the name as written, so a
        # relative `from ._zoneinfo import` after a failed `from _zoneinfo
        # import` (zoneinfo's fallback to pure Python) would be skipped: make
        # relative names absolute first.
        if level > 0 and caller is not None:
            try:
                package = self.determine_parent(caller, level=level)
            except ImportError:
                package = None
            if package is not None:
                package_name = vars(package)["__name__"]  # typeshed does not declare Module's attributes
                name, level = (f"{package_name}.{name}" if name else package_name), 0
        modulefinder.ModuleFinder._safe_import_hook(  # type: ignore[attr-defined]  # undocumented
            self, name, caller, fromlist, level)


@dataclass
class StdlibClosure:
    """What of the stdlib a module needs."""

    files: dict[str, Path]  # module name -> stdlib source file (frozen modules need none)
    c_modules: set[str]  # the linked C modules anything in it imports
    # Modules imported by a computed name (RUNTIME_IMPORTS) left out because
    # they need one the module cannot have -> that module.
    left_out: dict[str, str] = field(default_factory=dict)


def _expand(pattern: str, stdlib_dir: Path) -> list[str]:
    if "*" not in pattern:
        return [pattern]
    package, _, last = pattern.rpartition(".")
    folder = stdlib_dir.joinpath(*package.split(".")) if package else stdlib_dir
    names = {path.stem for path in folder.glob(f"{last}.py")}
    names |= {path.parent.name for path in folder.glob(f"{last}/__init__.py")}
    return [f"{package}.{name}" if package else name for name in sorted(names - {"__init__"})]


def stdlib_closure(app_dir: Path, stdlib_dir: Path, seeds: list[str], keep: set[str]) -> StdlibClosure:
    """Every stdlib module ``seeds`` can reach, by import statements and by :data:`RUNTIME_IMPORTS`.

    ``keep``: modules the filter imports itself.  The exclusion lists do not
    apply to them, nor to what importing them imports in turn (decimal
    falls back to _pydecimal, fractions imports decimal and numbers).
    """
    imported = {prefix for name in keep for prefix in _prefixes(name)}
    loaded = {prefix for name in _loaded_with(keep, app_dir, stdlib_dir) for prefix in _prefixes(name)}
    excludes = [name for name in NOT_FOR_PROXIES if name not in imported]
    excludes += [name for name in LEFT_OUT_UNLESS_IMPORTED if name not in loaded]
    finder = _Finder(path=[str(app_dir), str(stdlib_dir)], excludes=excludes)
    for seed in [*seeds, *ALWAYS_BUILTIN]:
        try:
            finder.import_hook(seed)
        except ImportError:
            continue  # reported by check_imports with file and line
    # A module imported by name at run time ships unless one of its own
    # imports cannot be satisfied (then it could not be imported anyway).
    left_out: dict[str, str] = {}
    followed: set[str] = set()
    while importers := [name for name in RUNTIME_IMPORTS if name in finder.modules and name not in followed]:
        followed.update(importers)
        for name in (name for importer in importers for pattern in RUNTIME_IMPORTS[importer]
                     for name in _expand(pattern, stdlib_dir)):
            missing = _missing_import(name, app_dir, stdlib_dir, excludes)
            if missing:
                left_out[name] = missing
            else:
                finder.import_hook(name)
    closure = {}
    for name, module in finder.modules.items():
        file = getattr(module, "__file__", None)
        if file and Path(file).is_relative_to(stdlib_dir) and name not in FROZEN_MODULES | FROZEN_ALIASES:
            closure[name] = Path(file)
    # C modules are not files modulefinder finds here: they are where it looked.
    referenced = set(finder.modules) | set(finder.badmodules)
    return StdlibClosure(closure, {name for name in BUILTIN_MODULES if name in referenced}, left_out)


def _excluded_by(name: str, excludes: list[str]) -> str | None:
    return next((entry for entry in excludes if name == entry or name.startswith(entry + ".")), None)


def _loaded_with(names: Iterable[str], app_dir: Path, stdlib_dir: Path) -> set[str]:
    """``names`` and every module that importing them may import (:func:`_imports_on_load`)."""
    loaded: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        for module in _prefixes(name):  # importing a.b runs a first
            if module in loaded:
                continue
            loaded.add(module)
            source = _module_source(module, (app_dir, stdlib_dir))
            if source is not None:
                pending += [item.name for item in _imports_on_load(source, certain=False)]
    return loaded


def _module_source(name: str, folders: Iterable[Path]) -> SourceFile | None:
    """The source of module ``name`` in the first of ``folders`` that has it."""
    relative = Path(*name.split("."))
    for folder in folders:
        for file in ((folder / relative).with_suffix(".py"), folder / relative / "__init__.py"):
            if file.is_file():
                shown = file.relative_to(folder).as_posix()
                return SourceFile(file, name, shown, shown)
    return None


@cache
def _imports_on_load(source: SourceFile, *, certain: bool) -> tuple[SourceImport, ...]:
    """The imports that importing ``source`` runs: at its top level and in class bodies, not in
    functions, not in a ``try`` that handles ImportError, not under ``if __name__ == "__main__"``.

    ``certain``: only those that run whatever the platform (not in an ``if``
    or a loop); else also those that may run.
    """
    found: list[SourceImport] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.extend(SourceImport(source, node.lineno, alias.name, False) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):  # the module, and names that may be its submodules
                module = _absolute(source, node.module, node.level)
                found.extend(SourceImport(source, node.lineno, name, False) for name in
                             [module, *(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")])
            elif isinstance(node, ast.Try):
                if not _handles_import_error(node):
                    visit(node.body)
                for handler in node.handlers:  # a fallback (decimal -> _pydecimal) is what runs here
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.If, ast.For, ast.While)) and not certain:
                if not (isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                visit(node.body)

    visit(check_syntax([source])[source].body)
    return tuple(found)


def _chain_to_blocked(name: str, app_dir: Path, stdlib_dir: Path) -> list[str] | None:
    """``[name, ..., blocked]``: how importing ``name`` loads, for certain, a module no proxy has, if it does.

    Only stdlib modules are followed: the project's and the dependencies'
    own files are checked themselves, with their own lines.
    """
    came_from: dict[str, str | None] = {name: None}
    pending = [name]
    while pending:
        current = pending.pop(0)
        top = current.split(".")[0]
        if _excluded_by(current, list(NOT_FOR_PROXIES)) or current in UNLINKED_C_MODULES or top in UNLINKED_C_MODULES:
            chain: list[str] = []
            step: str | None = current
            while step is not None:
                chain.insert(0, step)
                step = came_from[step]
            return chain
        source = None if _module_source(current, (app_dir,)) else _module_source(current, (stdlib_dir,))
        following = [item.name for item in _imports_on_load(source, certain=True)] if source else []
        for module in following + _prefixes(current)[:-1]:  # importing a.b imports a first
            if module not in came_from:
                came_from[module] = current
                pending.append(module)
    return None


def _missing_import(name: str, app_dir: Path, stdlib_dir: Path, excludes: list[str]) -> str | None:
    """What importing stdlib module ``name`` needs that the module cannot have, if anything
    (``name`` itself if there is no such module)."""
    source = _module_source(name, [stdlib_dir])
    if source is None or _excluded_by(name, excludes):
        return name
    for item in _imports_on_load(source, certain=True):
        top = item.name.split(".")[0]
        if (_excluded_by(item.name, excludes) or item.name in UNLINKED_C_MODULES or top in UNLINKED_C_MODULES
                or not _resolvable(item.name, app_dir, stdlib_dir)):
            return item.name
    return None
