"""The wasmtime engine and the compiled-module cache (memory and disk)."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version
from pathlib import Path

import wasmtime

from meshext.errors import MeshextError
from meshext.paths import cache_root

_ENGINE: wasmtime.Engine | None = None
_MODULES: dict[str, wasmtime.Module] = {}


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime engine (serialised modules must match its config)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine(wasmtime.Config())
    return _ENGINE


def module_cache_dir() -> Path:
    """Where compiled native code of modules is kept (``wasmtime/`` under the meshext cache)."""
    return cache_root() / "wasmtime"


def compile_module(code: bytes, *, where: str = "module") -> wasmtime.Module:
    """Compile once per process and once per machine: the native code is cached on disk.

    The cache key covers the module bytes and the wasmtime version, so an
    upgrade or an edited module never picks up stale native code.
    """
    digest = hashlib.sha256(code).hexdigest()
    cached = _MODULES.get(digest)
    if cached is not None:
        return cached
    path = module_cache_dir() / f"{digest}-{wasmtime_version()}.cwasm"
    module: wasmtime.Module | None = None
    if path.exists():
        try:
            module = wasmtime.Module.deserialize_file(engine(), str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
    if module is None:
        try:
            module = wasmtime.Module(engine(), code)
        except wasmtime.WasmtimeError as error:
            raise MeshextError(f"not a valid Wasm module: {error}", where=where,
                               fix="give a core Wasm module (.wasm), e.g. from `meshext build`") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(module.serialize())
        partial.replace(path)
    _MODULES[digest] = module
    return module


def forget_compiled_modules() -> None:
    """Drop this process's compiled modules (the disk cache stays): the next load deserialises from disk."""
    _MODULES.clear()


def wasmtime_version() -> str:
    """The installed wasmtime-py version (part of the disk cache key)."""
    return version("wasmtime")
