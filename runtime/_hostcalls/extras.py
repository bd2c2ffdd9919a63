"""The rest of what Envoy links in ``env``: foreign functions, and two helpers Emscripten-built modules import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._hostcalls.registry import hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_call_foreign_function", "iiiiii", "i")
def call_foreign_function(vm: Vm, name_ptr: int, name_size: int, args_ptr: int, args_size: int,
                          return_results: int, return_size: int) -> int:
    """A function the test registered in ``host.foreign_functions`` (bytes in, bytes out)."""
    try:
        name = vm.memory.read(name_ptr, name_size).decode()
        arguments = vm.memory.read(args_ptr, args_size)
        function = vm.host.foreign_functions.get(name)
        if function is None:
            return Status.NOT_FOUND
        vm.memory.copy_out(function(arguments), return_results, return_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK


@hostcall("pthread_equal", "ii", "i")
def pthread_equal(vm: Vm, left: int, right: int) -> int:
    return int(left == right)


@hostcall("emscripten_notify_memory_growth", "i", "")
def emscripten_notify_memory_growth(vm: Vm, memory_index: int) -> None:
    return None
