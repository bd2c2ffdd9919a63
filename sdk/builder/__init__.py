"""`meshext build`: from a filter project to a pre-initialised Proxy-Wasm module.

Stages, one module each:

- ``project``    reads and validates ``meshext.toml`` (several projects of
                 one publisher make one module, one root per project);
- ``dependencies`` finds the installed pure-Python distributions that
                 ``[filter] dependencies`` declares;
- ``analysis``   checks the filter's Python before anything is compiled
                 (syntax, entry point, callback signatures, imports the
                 module can satisfy) and finds the stdlib it needs;
- ``toolchain``  provides CPython for wasm32-wasi and the zig C compiler;
- ``shim``       compiles and caches the C shim linked with libpython;
- ``bytecode``   compiles the ``.pyc`` files in the module's own CPython
                 (``vm_compiler`` runs there);
- ``fsimage``    packs the filter, its dependencies, the SDK and the needed
                 stdlib into the module's read-only in-memory file system;
- ``preinit``    runs the interpreter start and the filter import in
                 wasmtime and snapshots the result into the module;
- ``prune``      removes the code the filter cannot reach
                 (``meshext.wasm_binary`` reads and rewrites the sections,
                 ``meshext.wasm_code`` decodes the code);
- ``optimize``   with ``--optimize``, runs Binaryen's wasm-opt over the code;
- ``profile``    with ``--cold-code``, records what the project's tests and
                 a standard workload run (``meshext.function_profile``);
- ``coldcode``   with ``--cold-code``, carries the rest as data for the
                 interpreter inside the module (``sdk/shim/interp.c``);
- ``metadata``   records meshext.toml's name, version, description, phase
                 and priority in the module (read by `meshext push`);
- ``pipeline``   puts the stages together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshext.sdk.builder.pipeline import BuildResult, build_filter, build_filters

__all__ = ["BuildResult", "build_filter", "build_filters"]

MESHEXT_BUILD_FILES = ("__init__.py", "wasm_binary.py", "wasm_code.py", "function_profile.py")
"""The files of the ``meshext`` package outside the SDK that decide what a build writes: part of every
key that says whether a module must be built again (``pipeline.input_key``, meshext.extensions.bundle)."""


def __getattr__(name: str) -> object:
    # The pipeline loads on first use: the test host reads modules with
    # wasm_binary and should not import every build stage for that.
    if name in __all__:
        from meshext.sdk.builder import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
