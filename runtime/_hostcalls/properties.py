"""Properties: Envoy's attributes (``_properties``) and what the module sets (filter state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._properties import encode_property, split_path
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_get_property", "iiii", "i")
def get_property(vm: Vm, path_ptr: int, path_size: int, return_data: int, return_size: int) -> int:
    try:
        path = split_path(vm.memory.read(path_ptr, path_size))
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    value = _property(vm, path)
    if value is None:
        return Status.NOT_FOUND
    try:
        data = encode_property(value)
    except TypeError:
        return Status.SERIALIZATION_FAILURE
    return guarded(lambda: vm.memory.copy_out(data, return_data, return_size))


@hostcall("proxy_set_property", "iiii", "i")
def set_property(vm: Vm, path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
    try:
        path = split_path(vm.memory.read(path_ptr, path_size))
        value = vm.memory.read(value_ptr, value_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    state = vm.active.filter_state
    if state is None:
        state = vm.properties
    # Envoy keeps the whole path as one filter-state key; reading resolves only the
    # first segment there, so only one-segment paths read back.
    state["\0".join(path)] = value
    return Status.OK


def _property(vm: Vm, path: tuple[str, ...]) -> Any:
    """Where Envoy looks, in order: filter state, the stream's and the plugin's attributes, the plugin's names."""
    dotted = ".".join(path)
    context = vm.active
    stream_state = context.filter_state or {}
    if len(path) == 1 and path[0] in stream_state:
        return stream_state[path[0]]
    for source in (context.properties, vm.properties):
        if dotted in source:
            return source[dotted]
    plugin = {"plugin_name": vm.name, "plugin_root_id": vm.root_id, "plugin_vm_id": vm.vm_id}
    if dotted in plugin:
        return plugin[dotted]
    return context._module_property(path)
