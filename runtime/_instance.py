"""One Wasm instance: the module's ABI marker, linking against Envoy's host functions, memory, calling exports.

Nothing here knows about contexts or streams: ``WasmInstance`` links each
import to the host function ``_hostcalls`` registered for it (bound to the
``Vm`` the instance runs for), refuses what Envoy would refuse, and turns
traps into ``WasmTrap``.  ``LinearMemory`` is how host functions read and
write the module's memory.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import wasmtime

from meshext.compiled_modules import engine, instantiate
from meshext.errors import MeshextError
from meshext.function_profile import watch as watch_profile
from meshext.runtime._abi import MASK32, MASK64
from meshext.runtime._fastcall import Crossing, ExportedFunction, MemoryView, define_host_function
from meshext.runtime._hostcalls import resolve
from meshext.runtime._records import MemoryFault, ModuleExit, WasmTrap

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm

ABI_VERSIONS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")


class LinearMemory:
    """The module's linear memory as host functions use it: bounds-checked reads and writes.

    Every pointer and size comes from the module; one outside its memory
    raises ``MemoryFault``, which host functions answer with
    INVALID_MEMORY_ACCESS (or WASI's EFAULT).
    """

    def __init__(self, view: MemoryView, allocate: ExportedFunction) -> None:
        self._view = view
        self._allocate = allocate

    def read(self, pointer: int, size: int) -> bytes:
        """``size`` bytes at ``pointer``."""
        pointer &= MASK32
        size &= MASK32
        if pointer + size > self._view.size():
            raise MemoryFault
        return ctypes.string_at(self._view.base() + pointer, size) if size else b""

    def read_text(self, pointer: int, size: int, *, errors: str = "surrogateescape") -> str:
        """The UTF-8 text at ``pointer`` (header names and values keep any byte via surrogateescape)."""
        return self.read(pointer, size).decode("utf-8", errors)

    def write(self, pointer: int, data: bytes) -> None:
        """Store ``data`` at ``pointer``."""
        pointer &= MASK32
        if pointer + len(data) > self._view.size():
            raise MemoryFault
        if data:
            ctypes.memmove(self._view.base() + pointer, data, len(data))

    def write_u32(self, pointer: int, value: int) -> None:
        """Store a little-endian u32 (a size, token or status the module asked for)."""
        self.write(pointer, struct.pack("<I", value & MASK32))

    def write_u64(self, pointer: int, value: int) -> None:
        """Store a little-endian u64 (a time or metric value)."""
        self.write(pointer, struct.pack("<Q", value & MASK64))

    def copy_out(self, data: bytes, pointer_pointer: int, size_pointer: int) -> None:
        """Copy ``data`` into memory the module allocates, then store its address and size."""
        if data:
            address = (self._allocate(len(data)) or 0) & MASK32
            if address == 0:
                raise MemoryFault
            self.write(address, data)
        else:
            address = 0
        self.write_u32(pointer_pointer, address)
        self.write_u32(size_pointer, len(data))


class WasmInstance:
    """The module instantiated against Envoy's host functions, with its memory and exports.

    ``call(name, *args)`` calls an export (None if the module lacks it); a
    trap, ``proc_exit`` or a wasmtime failure marks the instance ``failed``
    (Envoy stops using such a VM) and raises.  ``running`` says a call is
    in progress (host functions run inside it).
    """

    def __init__(self, module: wasmtime.Module, *, where: str, vm: Vm,
                 problem_logs: Callable[[], list[str]]) -> None:
        self.where = where
        self.failed = False
        self._problem_logs = problem_logs
        self._depth = 0
        self.abi = _abi_version(module, where)
        self._store = wasmtime.Store(engine())
        self._crossing = Crossing()
        self._keep_alive: list[Any] = []  # native callbacks must outlive the instance
        linker = wasmtime.Linker(engine())
        self._link(linker, module, vm)
        try:
            instance = instantiate(linker, self._store, module)
        except wasmtime.Trap as trap:
            raise self._trap_error(trap, "instantiation (start function)") from None
        except wasmtime.WasmtimeError as error:
            raise MeshextError(f"Envoy would refuse this module: {error}", where=where) from None
        # $MESHEXT_PROFILE_DIR: what ran when self goes, and in which phase (told before each call from outside)
        self._enter_profiled = watch_profile(self, module, self._store, instance)
        self._exports: dict[str, ExportedFunction] = {}
        memory = None
        for export_name, item in instance.exports(self._store).items():
            if isinstance(item, wasmtime.Func):
                self._exports[export_name] = ExportedFunction(self._store, item, self._crossing)
            elif isinstance(item, wasmtime.Memory) and memory is None:
                memory = item
        if memory is None:
            raise MeshextError("module exports no memory", where=where,
                               fix="Proxy-Wasm modules must export their linear memory as `memory`")
        allocate = self._exports.get("malloc") or self._exports.get("proxy_on_memory_allocate")
        if allocate is None:
            raise MeshextError("module exports neither proxy_on_memory_allocate nor malloc", where=where,
                               fix="export proxy_on_memory_allocate (every Proxy-Wasm SDK does)")
        self.memory = LinearMemory(MemoryView(self._store, memory), allocate)

    def has_export(self, name: str) -> bool:
        """The module exports a function of this name."""
        return name in self._exports

    @property
    def running(self) -> bool:
        """A call into the module is in progress (the caller is a host function, or a nested call)."""
        return self._depth > 0

    def call(self, name: str, *args: int) -> int | None:
        """Call the export ``name``: its i32 result, or None (no result, or no such export)."""
        func = self._exports.get(name)
        if func is None:
            return None
        if self.failed:
            raise MeshextError(f"the VM crashed earlier; {name} not called", where=self.where,
                               fix="see the first WasmTrap; Envoy would also stop using this VM")
        if self._enter_profiled is not None and not self._depth:
            self._enter_profiled(name, args)
        self._depth += 1
        try:
            return func(*args)
        except wasmtime.Trap as trap:
            self.failed = True
            raise self._trap_error(trap, name) from None
        except ModuleExit as exit_request:
            self.failed = True
            raise WasmTrap(f"Wasm module exited with proc_exit({exit_request.code}) in {name}", callback=name,
                           frames=[], module_logs=self._problem_logs()) from None
        except wasmtime.WasmtimeError as error:
            self.failed = True
            raise MeshextError(f"{name} failed: {error}", where=self.where) from None
        finally:
            self._depth -= 1

    def _trap_error(self, trap: wasmtime.Trap, callback: str) -> WasmTrap:
        frames = []
        for frame in trap.frames or []:
            function = frame.func_name or f"func[{frame.func_index}]"
            frames.append(f"{frame.module_name or 'module'}!{function} @ 0x{frame.module_offset:x}")
        module_logs = self._problem_logs()
        # wasmtime puts the cause last ("Caused by: wasm trap: integer divide by zero").
        causes = [line.strip() for line in trap.message.split("Caused by:", 1)[-1].splitlines() if line.strip()]
        message = causes[-1] if causes else trap.message.splitlines()[0]
        return WasmTrap(f"Wasm trap in {callback}: {message}", callback=callback, frames=frames,
                        module_logs=module_logs)

    def _link(self, linker: wasmtime.Linker, module: wasmtime.Module, vm: Vm) -> None:
        """Link every import to Envoy's host function, or refuse the module listing each one Envoy lacks."""
        problems = []
        for item in module.imports:
            name = item.name or ""
            function = resolve(item.module, name, self.abi)
            if isinstance(function, str):
                problems.append(f"{item.module}.{item.name}: {function}")
                continue
            params, results = _types(function.params), _types(function.results)
            wanted = item.type
            if not isinstance(wanted, wasmtime.FuncType):
                problems.append(
                    f"{item.module}.{item.name}: imports a {type(wanted).__name__}, Envoy provides only functions")
                continue
            if [str(t) for t in wanted.params] != [str(t) for t in params] or \
                    [str(t) for t in wanted.results] != [str(t) for t in results]:
                problems.append(
                    f"{item.module}.{item.name}: import type mismatch (module wants "
                    f"{_signature(wanted.params, wanted.results)}, Envoy provides {_signature(params, results)})")
                continue
            define_host_function(linker, item.module, name, function.params, bool(function.results),
                                 function.bind(vm), self._crossing, self._keep_alive)
        if problems:
            raise MeshextError(
                "Envoy 1.40 would refuse this module; it imports what Envoy does not provide:\n  "
                + "\n  ".join(problems),
                where=self.where,
                fix="remove these imports (define them inside the module, or keep to the WASI subset Envoy links)",
            )


def _abi_version(module: wasmtime.Module, where: str) -> str:
    """The Proxy-Wasm ABI version marker the module exports (Envoy refuses modules without one)."""
    names = {export.name for export in module.exports}
    for version in ABI_VERSIONS:
        if version in names:
            return version
    if "proxy_abi_version_0_1_0" in names:
        raise MeshextError("module targets Proxy-Wasm ABI 0.1.0, which this host does not run",
                           where=where, fix="rebuild with an SDK targeting ABI 0.2.x")
    raise MeshextError(
        "module does not export a Proxy-Wasm ABI version marker (proxy_abi_version_0_2_1)",
        where=where, fix="build it with a Proxy-Wasm SDK; Envoy refuses modules without the marker",
    )


def _types(spec: str) -> list[wasmtime.ValType]:
    return [wasmtime.ValType.i64() if letter == "I" else wasmtime.ValType.i32() for letter in spec]


def _signature(params: Iterable[Any], results: Iterable[Any]) -> str:
    return f"({', '.join(str(p) for p in params)}) -> ({', '.join(str(r) for r in results)})"
