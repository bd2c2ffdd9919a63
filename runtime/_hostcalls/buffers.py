"""Buffers: bodies, TCP data, configurations and callout answers, as Envoy lets the module read and edit them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import BufferType, Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm

# Envoy lets the module change these; the others (configurations, callout answers) are read-only.
WRITABLE = (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY,
            BufferType.DOWNSTREAM_DATA, BufferType.UPSTREAM_DATA)


def _available_buffer(vm: Vm, buffer_type: int) -> bytearray | int:
    """The buffer, or the status Envoy answers (unknown type, or not available here)."""
    if buffer_type not in BufferType._value2member_map_:
        return Status.BAD_ARGUMENT
    buffer = vm.buffer(buffer_type)
    return Status.NOT_FOUND if buffer is None else buffer


@hostcall("proxy_get_buffer_status", "iii", "i")
def get_buffer_status(vm: Vm, buffer_type: int, return_size: int, return_flags: int) -> int:
    buffer = _available_buffer(vm, buffer_type)
    if not isinstance(buffer, bytearray):
        return buffer

    def write() -> None:
        vm.memory.write_u32(return_size, len(buffer))
        vm.memory.write_u32(return_flags, 0)

    return guarded(write)


@hostcall("proxy_get_buffer_bytes", "iiiii", "i")
def get_buffer_bytes(vm: Vm, buffer_type: int, start: int, length: int, return_data: int, return_size: int) -> int:
    buffer = _available_buffer(vm, buffer_type)
    if not isinstance(buffer, bytearray):
        return buffer
    start &= MASK32
    length &= MASK32
    if start > len(buffer):
        length = 0
    length = min(length, len(buffer) - start)
    return guarded(lambda: vm.memory.copy_out(bytes(buffer[start : start + length]), return_data, return_size))


@hostcall("proxy_set_buffer_bytes", "iiiii", "i")
def set_buffer_bytes(vm: Vm, buffer_type: int, start: int, length: int, data_ptr: int, data_size: int) -> int:
    buffer = _available_buffer(vm, buffer_type)
    if not isinstance(buffer, bytearray):
        return buffer
    if buffer_type not in WRITABLE:
        return Status.BAD_ARGUMENT
    try:
        data = vm.memory.read(data_ptr, data_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    start &= MASK32
    length &= MASK32
    # Envoy supports exactly: prepend (0, 0), replace all (0, >= size), append (start >= size).
    if start == 0 and length == 0:
        buffer[0:0] = data
    elif start == 0 and length >= len(buffer):
        buffer[:] = data
    elif start >= len(buffer):
        buffer.extend(data)
    else:
        return Status.BAD_ARGUMENT
    return Status.OK
