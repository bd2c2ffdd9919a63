"""Calls between Python and Wasm through wasmtime's "unchecked" C API.

wasmtime-py's ``Func.__call__`` and ``Linker.define_func`` convert every
argument through typed ``Val`` objects (re-reading the function type on every
call), which costs tens of microseconds per crossing; a filter round trip
crosses dozens of times.  The same C library exposes
``wasmtime_func_call_unchecked`` and ``wasmtime_linker_define_func_unchecked``
(raw arrays of i32/i64, types checked once at link time), reachable through
wasmtime-py's own ctypes bindings (``wasmtime._bindings``).  Only the hot path
uses them; everything else stays on the public Python API.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi

_RAW = ffi.wasmtime_val_raw

# Private function objects (dll[name] makes a new one) so the result types can
# be plain integers without touching the ones wasmtime-py itself uses.
_memory_data = ffi.dll["wasmtime_memory_data"]
_memory_data.restype = ctypes.c_void_p
_memory_data.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_memory_t)]
_memory_size = ffi.dll["wasmtime_memory_data_size"]
_memory_size.restype = ctypes.c_size_t
_memory_size.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_memory_t)]
_call_unchecked = ffi.dll["wasmtime_func_call_unchecked"]
_call_unchecked.restype = ctypes.c_void_p
_call_unchecked.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_func_t),
                            ctypes.POINTER(_RAW), ctypes.c_size_t, ctypes.POINTER(ctypes.POINTER(ffi.wasm_trap_t))]


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(_: int) -> None:
    return None


class Crossing:
    """Per-store state: the Python exception raised inside a host function, if any."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None


def define_host_function(linker: wasmtime.Linker, module: str, name: str, params: str, has_result: bool,
                         function: Callable[..., Any], crossing: Crossing, keep_alive: list[Any]) -> None:
    """Link ``module.name`` to a Python function taking ints ("i" = i32, "I" = i64 per ``params``)."""
    count = len(params)
    all_i32 = "I" not in params

    def callback(_env: int, _caller: Any, raw: Any, _size: int) -> int:
        try:
            if all_i32:
                result = function(*[raw[index].i32 for index in range(count)])
            else:
                result = function(*[raw[index].i64 if kind == "I" else raw[index].i32
                                    for index, kind in enumerate(params)])
            if has_result:
                raw[0].i32 = result
            return 0
        except BaseException as error:  # noqa: BLE001 - re-raised by call() after the trap unwinds Wasm
            crossing.exception = error
            return ctypes.cast(wasmtime.Trap("host function raised " + type(error).__name__)._consume(),
                               ctypes.c_void_p).value or 0

    native = ffi.wasmtime_func_unchecked_callback_t(callback)
    keep_alive.append(native)
    functype = wasmtime.FuncType(
        [wasmtime.ValType.i64() if kind == "I" else wasmtime.ValType.i32() for kind in params],
        [wasmtime.ValType.i32()] if has_result else [],
    )
    keep_alive.append(functype)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), ctypes.create_string_buffer(module_bytes), len(module_bytes),
        ctypes.create_string_buffer(name_bytes), len(name_bytes), functype.ptr(), native, None, _no_finalizer)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


class ExportedFunction:
    """A callable for one function the module exports: ints in, one int (or None) out."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, crossing: Crossing) -> None:
        functype = func.type(store)
        self._params = len(functype.params)
        self._has_result = bool(functype.results)
        self._slots = max(self._params, len(functype.results), 1)
        self._context = store._context()
        self._func = ctypes.byref(func._func)
        self._crossing = crossing

    def __call__(self, *args: int) -> int | None:
        raw = (_RAW * self._slots)()
        for index, value in enumerate(args):
            raw[index].i32 = value
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = _call_unchecked(self._context, self._func, raw, self._slots, ctypes.byref(trap))
        crossing = self._crossing
        if crossing.exception is not None:
            exception, crossing.exception = crossing.exception, None
            if trap:
                wasmtime.Trap._from_ptr(trap)  # free it
            raise exception
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
        if trap:
            raise wasmtime.Trap._from_ptr(trap)
        return raw[0].i32 if self._has_result else None


class MemoryView:
    """Fast address/size lookups of an instance's linear memory (it may grow during any call)."""

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._context = store._context()
        self._memory = ctypes.byref(memory._memory)

    def base(self) -> int:
        """The address of the memory's first byte in this process (it moves when the memory grows)."""
        return _memory_data(self._context, self._memory) or 0

    def size(self) -> int:
        """The memory's current size in bytes."""
        return _memory_size(self._context, self._memory)
