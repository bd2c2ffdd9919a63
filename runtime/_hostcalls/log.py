"""Logging: proxy_log and proxy_get_log_level (stdout/stderr are in ``wasi``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import LogLevel, Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_log", "iii", "i")
def log(vm: Vm, level: int, pointer: int, size: int) -> int:
    if level not in LogLevel._value2member_map_:
        return Status.BAD_ARGUMENT
    try:
        message = vm.memory.read(pointer, size).decode("utf-8", "replace")
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    if level >= vm.host.log_level:
        vm.log(level, message)
    return Status.OK


@hostcall("proxy_get_log_level", "i", "i", requires_abi="proxy_abi_version_0_2_1")
def get_log_level(vm: Vm, return_level: int) -> int:
    return guarded(lambda: vm.memory.write_u32(return_level, int(vm.host.log_level)))
