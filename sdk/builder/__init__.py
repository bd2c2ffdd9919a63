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
                 (``meshext.wasm_binary`` reads and rewrites the sections);
- ``metadata``   records meshext.toml's name, version, description, phase
                 and priority in the module (read by `meshext push`);
- ``pipeline``   puts the stages together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshext.sdk.builder.pipeline import BuildResult, build_filter, build_filters

__all__ = ["BuildResult", "build_filter", "build_filters"]


def __getattr__(name: str) -> object:
    # The pipeline loads on first use: the test host reads modules with
    # wasm_binary and should not import every build stage for that.
    if name in __all__:
        from meshext.sdk.builder import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
