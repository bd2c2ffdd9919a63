"""Header maps: request/response headers and trailers, and the (read-only) maps of callout answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshext.runtime._abi import deserialize_pairs, serialize_pairs
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import EnvoyHeaderMap, MemoryFault
from meshext.sdk.abi import MapType, Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_get_header_map_size", "ii", "i")
def get_header_map_size(vm: Vm, map_type: int, return_size: int) -> int:
    if map_type not in MapType._value2member_map_:
        return Status.BAD_ARGUMENT
    headers = vm.header_map(map_type)
    size = len(serialize_pairs(headers.pairs)) if headers else 0
    return guarded(lambda: vm.memory.write_u32(return_size, size))


@hostcall("proxy_get_header_map_pairs", "iii", "i")
def get_header_map_pairs(vm: Vm, map_type: int, return_data: int, return_size: int) -> int:
    if map_type not in MapType._value2member_map_:
        return Status.BAD_ARGUMENT
    headers = vm.header_map(map_type)
    data = serialize_pairs(headers.pairs) if headers else b""
    return guarded(lambda: vm.memory.copy_out(data, return_data, return_size))


@hostcall("proxy_get_header_map_value", "iiiii", "i")
def get_header_map_value(vm: Vm, map_type: int, key_ptr: int, key_size: int, return_data: int,
                         return_size: int) -> int:
    if map_type not in MapType._value2member_map_:
        return Status.BAD_ARGUMENT
    try:
        key = vm.memory.read_text(key_ptr, key_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    headers = vm.header_map(map_type)
    value = headers.get(key) if headers is not None else None
    if value is None:
        return Status.NOT_FOUND
    return guarded(lambda: vm.memory.copy_out(value.encode("utf-8", "surrogateescape"), return_data, return_size))


def _edit_map(vm: Vm, map_type: int, edit: Callable[[EnvoyHeaderMap], None]) -> int:
    if map_type not in MapType._value2member_map_:
        return Status.BAD_ARGUMENT
    headers = vm.writable_header_map(map_type)
    if headers is None:
        return Status.BAD_ARGUMENT
    try:
        edit(headers)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK


@hostcall("proxy_set_header_map_pairs", "iii", "i")
def set_header_map_pairs(vm: Vm, map_type: int, data_ptr: int, data_size: int) -> int:
    return _edit_map(vm, map_type, lambda headers: headers.set_all(
        deserialize_pairs(vm.memory.read(data_ptr, data_size))))


@hostcall("proxy_add_header_map_value", "iiiii", "i")
def add_header_map_value(vm: Vm, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                         value_size: int) -> int:
    return _edit_map(vm, map_type, lambda headers: headers.add(
        vm.memory.read_text(key_ptr, key_size), vm.memory.read_text(value_ptr, value_size)))


@hostcall("proxy_replace_header_map_value", "iiiii", "i")
def replace_header_map_value(vm: Vm, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                             value_size: int) -> int:
    return _edit_map(vm, map_type, lambda headers: headers.replace(
        vm.memory.read_text(key_ptr, key_size), vm.memory.read_text(value_ptr, value_size)))


@hostcall("proxy_remove_header_map_value", "iii", "i")
def remove_header_map_value(vm: Vm, map_type: int, key_ptr: int, key_size: int) -> int:
    return _edit_map(vm, map_type, lambda headers: headers.remove(vm.memory.read_text(key_ptr, key_size)))
