"""Pre-initialisation: start CPython and import the filter at build time.

The shim is instantiated in wasmtime with the file-system image written into
its memory; ``meshext_preinit`` starts the interpreter and imports the
filter; then memory and globals are written back into the module as its
initial state (the technique of Wizer, done here with wasmtime-py and
:mod:`wasm_binary`), with most of the image's file data moved to a passive
data segment (:func:`fsimage.detach`).  Envoy then starts each VM with the
filter already imported.

Only ``proxy_log`` works at build time (messages are collected for the
build's output); any other host call raises, because there is no proxy yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import wasmtime

from meshext import compiled_modules as modules
from meshext import packed_segment, wasm_binary
from meshext.sdk.builder import fsimage

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")


class PreinitFailed(Exception):
    """Starting the interpreter or importing the filter failed; ``log`` holds what the module logged."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(message for _, message in log))
        self.log = log


@dataclass
class PreinitResult:
    """The snapshotted module, what it logged at build time, and its linear memory size."""

    module: bytes
    log: list[tuple[str, str]] = field(default_factory=list)
    memory_bytes: int = 0


def _read(caller: wasmtime.Caller, pointer: int, size: int) -> bytes:
    memory = caller.get("memory")
    assert isinstance(memory, wasmtime.Memory)
    return bytes(memory.read(caller, pointer, pointer + size))


def preinitialize(shim: bytes, image: bytes, in_memory: set[str]) -> PreinitResult:
    """Run ``meshext_preinit`` over ``image`` and snapshot the result into the
    shim, the data of the image's files moved to passive data segment 0
    except for those at the paths ``in_memory``."""
    store, exports, log, at = _run(shim, image)
    globals_count = len(wasm_binary.defined_global_types(wasm_binary.parse_sections(shim)))
    values = []
    for offset in range(globals_count):
        global_ = exports[f"{wasm_binary.GLOBAL_EXPORT_PREFIX}{offset}"]
        assert isinstance(global_, wasmtime.Global)
        values.append(global_.value(store))
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    snapshot_memory = bytearray(memory.read(store, 0, memory.data_len(store)))
    file_data = fsimage.detach(snapshot_memory, at, len(image), in_memory)
    snapshotted = wasm_binary.snapshot(
        shim, bytes(snapshot_memory), values, drop_exports=("_initialize", "meshext_preinit"),
        passive=[packed_segment.pack(file_data)],
        keep_names=True,
    )
    return PreinitResult(snapshotted, log, len(snapshot_memory))


def run_at_build_time(shim: bytes, image: bytes) -> list[tuple[str, str]]:
    """Run ``meshext_preinit`` over ``image`` for what it logs (no snapshot): the
    build's way of running Python in the module's own CPython."""
    return _run(shim, image)[2]


def compiled_shim(shim: bytes) -> wasmtime.Module:
    """The shim as pre-initialisation runs it (every global exported), compiled.

    The same every build: its native code comes from the compiled-module cache.
    """
    return modules.compile_module(wasm_binary.export_globals(shim), where="the meshext shim")


def _run(shim: bytes, image: bytes) -> tuple[wasmtime.Store, Mapping[str, object], list[tuple[str, str]], int]:
    """(store, exports, log, where the image is in memory) after ``meshext_preinit``."""
    store = wasmtime.Store(modules.engine())
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(modules.engine())
    linker.define_wasi()

    module = compiled_shim(shim)
    log: list[tuple[str, str]] = []

    def proxy_log(caller: wasmtime.Caller, level: int, pointer: int, size: int) -> int:
        name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else str(level)
        log.append((name, _read(caller, pointer, size).decode("utf-8", "replace")))
        return 0

    def unavailable(name: str):  # type: ignore[no-untyped-def]
        def call(*_args: object) -> int:
            raise RuntimeError(
                f"{name} was called while the filter was imported at build time; "
                "host calls work only in callbacks (on_vm_start, on_configure, stream callbacks)"
            )

        return call

    for item in module.imports:
        if item.module != "env" or item.name is None:
            continue
        function_type = item.type
        assert isinstance(function_type, wasmtime.FuncType)
        if item.name == "proxy_log":
            linker.define_func("env", item.name, function_type, proxy_log, access_caller=True)
        else:
            linker.define_func("env", item.name, function_type, unavailable(item.name))

    instance = modules.instantiate(linker, store, module)
    exports = instance.exports(store)
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    exports["_initialize"](store)  # type: ignore[operator]
    pointer = exports["proxy_on_memory_allocate"](store, len(image))  # type: ignore[operator]
    memory.write(store, image, pointer)
    try:
        status = exports["meshext_preinit"](store, pointer, len(image))  # type: ignore[operator]
    except (wasmtime.Trap, wasmtime.ExitTrap, wasmtime.WasmtimeError) as trap:
        # sys.exit() or a host call at import time: keep what was logged, add the trap.
        log.append(("critical", str(trap).split("\n")[0]))
        raise PreinitFailed(log) from None
    if status != 0:
        raise PreinitFailed(log)
    return store, exports, log, pointer
