"""Callouts: proxy_http_call, the gRPC calls and streams, and proxy_get_status.

These decode the module's arguments; the state machines (tokens, answers,
timeouts) are ``meshext.runtime._callouts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32, deserialize_pairs
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_http_call", "iiiiiiiiii", "i")
def http_call(vm: Vm, cluster_ptr: int, cluster_size: int, headers_ptr: int, headers_size: int, body_ptr: int,
              body_size: int, trailers_ptr: int, trailers_size: int, timeout: int, return_token: int) -> int:
    memory = vm.memory
    try:
        cluster_name = memory.read_text(cluster_ptr, cluster_size, errors="replace")
        headers = deserialize_pairs(memory.read(headers_ptr, headers_size))
        body = memory.read(body_ptr, body_size)
        trailers = deserialize_pairs(memory.read(trailers_ptr, trailers_size))
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    call = vm.callouts.open_http(cluster_name, headers, body, trailers, timeout & MASK32)
    if isinstance(call, Status):
        return call
    try:
        memory.write_u32(return_token, call.token)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    vm.callouts.start_http(call)
    return Status.OK


def _open_grpc(vm: Vm, is_stream: bool, cluster_ptr: int, cluster_size: int, service_ptr: int, service_size: int,
               method_ptr: int, method_size: int, metadata_ptr: int, metadata_size: int, message: bytes | None,
               timeout: int, return_token: int) -> int:
    memory = vm.memory
    try:
        upstream = memory.read(cluster_ptr, cluster_size)
        service = memory.read_text(service_ptr, service_size, errors="replace")
        method = memory.read_text(method_ptr, method_size, errors="replace")
        metadata = deserialize_pairs(memory.read(metadata_ptr, metadata_size))
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    call = vm.callouts.open_grpc(is_stream, upstream, service, method, metadata, message, timeout & MASK32)
    if isinstance(call, Status):
        return call
    try:
        memory.write_u32(return_token, call.token)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    vm.callouts.start_grpc(call)
    return Status.OK


@hostcall("proxy_grpc_call", "iiiiiiiiiiii", "i")
def grpc_call(vm: Vm, cluster_ptr: int, cluster_size: int, service_ptr: int, service_size: int, method_ptr: int,
              method_size: int, metadata_ptr: int, metadata_size: int, message_ptr: int, message_size: int,
              timeout: int, return_token: int) -> int:
    try:
        message = vm.memory.read(message_ptr, message_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    return _open_grpc(vm, False, cluster_ptr, cluster_size, service_ptr, service_size, method_ptr, method_size,
                      metadata_ptr, metadata_size, message, timeout, return_token)


@hostcall("proxy_grpc_stream", "iiiiiiiii", "i")
def grpc_stream(vm: Vm, cluster_ptr: int, cluster_size: int, service_ptr: int, service_size: int, method_ptr: int,
                method_size: int, metadata_ptr: int, metadata_size: int, return_token: int) -> int:
    return _open_grpc(vm, True, cluster_ptr, cluster_size, service_ptr, service_size, method_ptr, method_size,
                      metadata_ptr, metadata_size, None, 0, return_token)


@hostcall("proxy_grpc_send", "iiii", "i")
def grpc_send(vm: Vm, token: int, message_ptr: int, message_size: int, end_stream: int) -> int:
    call = vm.callouts.grpc_call(token & MASK32)
    if call is None:
        return Status.NOT_FOUND
    if not call.is_stream:
        return Status.BAD_ARGUMENT
    try:
        message = vm.memory.read(message_ptr, message_size)
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    vm.callouts.send_grpc_message(call, message, bool(end_stream))
    return Status.OK


@hostcall("proxy_grpc_cancel", "i", "i")
def grpc_cancel(vm: Vm, token: int) -> int:
    return Status.OK if vm.callouts.cancel_grpc(token & MASK32) else Status.NOT_FOUND


@hostcall("proxy_grpc_close", "i", "i")
def grpc_close(vm: Vm, token: int) -> int:
    return Status.OK if vm.callouts.close_grpc(token & MASK32) else Status.NOT_FOUND


@hostcall("proxy_get_status", "iii", "i")
def get_status(vm: Vm, return_code: int, return_message: int, return_size: int) -> int:
    """The status of the last gRPC call that closed (read in proxy_on_grpc_close)."""
    code, message = vm.callouts.status

    def write() -> None:
        vm.memory.write_u32(return_code, code)
        vm.memory.copy_out(message, return_message, return_size)

    return guarded(write)
