"""Shared data (with CAS) and shared queues: what VMs of one ``vm_id`` share through the host."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_get_shared_data", "iiiii", "i")
def get_shared_data(vm: Vm, key_ptr: int, key_size: int, return_data: int, return_size: int,
                    return_cas: int) -> int:
    try:
        key = vm.memory.read_text(key_ptr, key_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    entry = vm.host.shared_data.get((vm.vm_id, key))
    if entry is None:
        return Status.NOT_FOUND
    value, cas = entry

    def write() -> None:
        vm.memory.copy_out(value, return_data, return_size)
        vm.memory.write_u32(return_cas, cas)

    return guarded(write)


@hostcall("proxy_set_shared_data", "iiiii", "i")
def set_shared_data(vm: Vm, key_ptr: int, key_size: int, value_ptr: int, value_size: int, cas: int) -> int:
    try:
        key = vm.memory.read_text(key_ptr, key_size)
        value = vm.memory.read(value_ptr, value_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    stored = vm.host.set_shared_data(vm.vm_id, key, value, cas & MASK32)
    return Status.OK if stored else Status.CAS_MISMATCH


@hostcall("proxy_register_shared_queue", "iii", "i")
def register_shared_queue(vm: Vm, name_ptr: int, name_size: int, return_token: int) -> int:
    try:
        name = vm.memory.read_text(name_ptr, name_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    token = vm.host.register_queue(vm.vm_id, name, vm)
    return guarded(lambda: vm.memory.write_u32(return_token, token))


@hostcall("proxy_resolve_shared_queue", "iiiii", "i")
def resolve_shared_queue(vm: Vm, vm_id_ptr: int, vm_id_size: int, name_ptr: int, name_size: int,
                         return_token: int) -> int:
    try:
        vm_id = vm.memory.read_text(vm_id_ptr, vm_id_size)
        name = vm.memory.read_text(name_ptr, name_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    token = vm.host.resolve_queue(vm_id, name)
    if token is None:
        return Status.NOT_FOUND
    return guarded(lambda: vm.memory.write_u32(return_token, token))


@hostcall("proxy_enqueue_shared_queue", "iii", "i")
def enqueue_shared_queue(vm: Vm, token: int, data_ptr: int, data_size: int) -> int:
    queue = vm.host.queues.get(token & MASK32)
    if queue is None:
        return Status.NOT_FOUND
    try:
        queue.items.append(vm.memory.read(data_ptr, data_size))
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    owner = queue.owner
    vm.host.post(lambda: owner.callback("proxy_on_queue_ready", owner.root, owner.root.id, queue.token))
    return Status.OK


@hostcall("proxy_dequeue_shared_queue", "iii", "i")
def dequeue_shared_queue(vm: Vm, token: int, return_data: int, return_size: int) -> int:
    queue = vm.host.queues.get(token & MASK32)
    if queue is None:
        return Status.NOT_FOUND
    if not queue.items:
        return Status.EMPTY
    item = queue.items.popleft()
    return guarded(lambda: vm.memory.copy_out(item, return_data, return_size))
