"""Check a filter's Python before building, and find the stdlib it needs.

Errors name the file and line: a syntax error, an entry point that is not
there, or an import the module cannot satisfy (a module that is neither in
the project, the SDK, the in-module stdlib, nor a C module linked into the
shim).  The stdlib closure comes from the standard library's own
``modulefinder``, run over CPython's wasm32-wasi stdlib.
"""

from __future__ import annotations

import ast
import modulefinder
import sys
from dataclasses import dataclass
from pathlib import Path

from meshext.errors import MeshextError
from meshext.sdk.builder.shim import ALWAYS_BUILTIN, BUILTIN_MODULES

# Loaded by the interpreter itself or by `codecs.lookup` without an import statement.
STARTUP_MODULES = (
    "encodings", "encodings.aliases", "encodings.utf_8", "encodings.utf_8_sig", "encodings.latin_1",
    "encodings.ascii", "encodings.raw_unicode_escape", "encodings.unicode_escape", "encodings.utf_16",
    "encodings.utf_32", "encodings.cp1252", "encodings.base64_codec", "encodings.hex_codec",
)
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
    "platform", "plistlib", "pprint", "_pydecimal", "decimal", "quopri", "shutil", "sysconfig", "tarfile",
    "tempfile", "uu", "xml", "zipfile", "_compression", "statistics", "fractions", "numbers", "shlex",
)
# C modules of CPython that meshext does not link (for a precise message).
UNLINKED_C_MODULES = {
    "_socket", "select", "_ssl", "_sqlite3", "_ctypes", "unicodedata", "_decimal", "pyexpat", "_elementtree",
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


@dataclass(frozen=True)
class SourceFile:
    path: Path          # on disk
    module: str         # dotted module name inside the project


def project_sources(root: Path) -> list[SourceFile]:
    """The filter's Python files (tests and hidden folders are not shipped)."""
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.parts
        if any(part.startswith(".") or part in NOT_SHIPPED_FOLDERS for part in parts[:-1]):
            continue
        if parts[-1].startswith("test_") or parts[-1] == "conftest.py":
            continue
        module_parts = list(parts[:-1]) + ([] if parts[-1] == "__init__.py" else [path.stem])
        sources.append(SourceFile(path, ".".join(module_parts)))
    return sources


def check_syntax(sources: list[SourceFile]) -> dict[SourceFile, ast.Module]:
    trees = {}
    for source in sources:
        text = source.path.read_text()
        try:
            trees[source] = ast.parse(text, filename=str(source.path))
        except SyntaxError as error:
            raise MeshextError(
                f"syntax error: {error.msg}", where=f"{source.path}:{error.lineno}", fix="correct the Python syntax"
            ) from None
    return trees


def check_entry(root: Path, module: str, class_name: str, trees: dict[SourceFile, ast.Module]) -> None:
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


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a `try` that handles ImportError (an optional import)."""
    current = node
    while current in parents:
        parent = parents[current]
        if isinstance(parent, ast.Try) and current in parent.body:
            for handler in parent.handlers:
                names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
                if handler.type is None or any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
                    for n in names
                ):
                    return True
        current = parent
    return False


def direct_imports(trees: dict[SourceFile, ast.Module]) -> list[tuple[SourceFile, int, str, bool]]:
    """(file, line, absolute module name, optional) for each import in the project."""
    found = []
    for source, tree in trees.items():
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        package = source.module if source.path.name == "__init__.py" else source.module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    names = [".".join([*base, node.module] if node.module else base)]
                else:
                    names = [node.module or ""]
            else:
                continue
            for name in names:
                if name:
                    found.append((source, node.lineno, name, _guarded(node, parents)))
    return found


class _Finder(modulefinder.ModuleFinder):
    """modulefinder that knows the module's built-ins, not this interpreter's."""

    def find_module(self, name, path, parent=None):  # type: ignore[no-untyped-def]
        fullname = f"{parent.__name__}.{name}" if parent else name
        if fullname in AVAILABLE_C_MODULES:
            return (None, None, ("", "", modulefinder._C_BUILTIN))  # type: ignore[attr-defined]
        if path is None and name in sys.builtin_module_names:
            raise ImportError(name)
        return super().find_module(name, path, parent)


def stdlib_closure(
    app_dir: Path, stdlib_dir: Path, seeds: list[str], keep: set[str]
) -> tuple[dict[str, Path], set[str]]:
    """Module name -> stdlib source file, for every stdlib module ``seeds`` can
    reach (frozen ones need no file); and the names of the linked C modules
    anything there imports."""
    excludes = [
        name for name in NOT_FOR_PROXIES + LEFT_OUT_UNLESS_IMPORTED if name.split(".")[0] not in keep and name not in keep
    ]
    finder = _Finder(path=[str(app_dir), str(stdlib_dir)], excludes=excludes)
    for seed in seeds:
        try:
            finder.import_hook(seed)
        except ImportError:
            continue  # reported by check_imports with file and line
    closure = {}
    for name, module in finder.modules.items():
        file = getattr(module, "__file__", None)
        if file and Path(file).is_relative_to(stdlib_dir) and name not in FROZEN_MODULES | FROZEN_ALIASES:
            closure[name] = Path(file)
    # C modules are not files modulefinder finds here: they are where it looked.
    referenced = set(finder.modules) | set(finder.badmodules)
    return closure, {name for name in BUILTIN_MODULES if name in referenced}


def check_imports(
    imports: list[tuple[SourceFile, int, str, bool]], app_dir: Path, stdlib_dir: Path
) -> None:
    for source, line, name, optional in imports:
        if optional:
            continue
        top = name.split(".")[0]
        if any(name == blocked or name.startswith(blocked + ".") for blocked in NOT_FOR_PROXIES):
            message = f"import of {name!r}: not available inside a proxy (no sockets, processes or threads)"
            fix = "use the SDK's http_call/grpc_call for I/O, or guard the import with try/except ImportError"
        elif name in UNLINKED_C_MODULES or top in UNLINKED_C_MODULES:
            message = f"import of {name!r}: a CPython C module that meshext does not link into Proxy-Wasm modules"
            fix = "use a pure-Python alternative, or guard the import with try/except ImportError"
        elif not _resolvable(name, app_dir, stdlib_dir):
            message = f"import of {name!r}: no such module in the project, the SDK or the in-module stdlib"
            fix = "add the module to the filter project folder (third-party packages must be vendored as source)"
        else:
            continue
        raise MeshextError(message, where=f"{source.path}:{line}", fix=fix)


def _resolvable(name: str, app_dir: Path, stdlib_dir: Path) -> bool:
    if name in AVAILABLE_C_MODULES:
        return True
    relative = Path(*name.split("."))
    for base in (app_dir, stdlib_dir):
        if (base / relative).with_suffix(".py").is_file() or (base / relative / "__init__.py").is_file():
            return True
        # `from package import name` may name an attribute, not a module.
        parent = relative.parent
        if parent != Path(".") and ((base / parent / "__init__.py").is_file() or (base / parent).with_suffix(".py").is_file()):
            return True
    return False
