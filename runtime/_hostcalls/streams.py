"""Stream control: continue, close, and local replies; Envoy applies each once the running callback returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32, deserialize_pairs
from meshext.runtime._hostcalls.registry import hostcall
from meshext.runtime._records import LocalResponse, MemoryFault
from meshext.runtime._streams import HttpStream, TcpStream
from meshext.sdk.abi import Status, StreamType

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


def _control(vm: Vm, stream_type: int, apply: Callable[[HttpStream | TcpStream, StreamType], None]) -> int:
    if stream_type not in StreamType._value2member_map_:
        return Status.BAD_ARGUMENT
    context = vm.active
    if not isinstance(context, (HttpStream, TcpStream)):
        return Status.NOT_FOUND
    vm.host.defer(lambda: apply(context, StreamType(stream_type)))
    return Status.OK


@hostcall("proxy_continue_stream", "i", "i")
def continue_stream(vm: Vm, stream_type: int) -> int:
    return _control(vm, stream_type, lambda stream, kind: stream._continue_stream(kind))


@hostcall("proxy_close_stream", "i", "i")
def close_stream(vm: Vm, stream_type: int) -> int:
    return _control(vm, stream_type, lambda stream, kind: stream._close_stream(kind))


@hostcall("proxy_send_local_response", "iiiiiiii", "i")
def send_local_response(vm: Vm, status_code: int, details_ptr: int, details_size: int, body_ptr: int,
                        body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
    context = vm.active
    try:
        details = vm.memory.read_text(details_ptr, details_size, errors="replace")
        body = vm.memory.read(body_ptr, body_size)
        headers = deserialize_pairs(vm.memory.read(headers_ptr, headers_size))
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    if not isinstance(context, HttpStream):
        return Status.BAD_ARGUMENT
    grpc = grpc_status if 0 <= grpc_status <= 16 else None  # SDKs pass -1 for "no gRPC status"
    # Envoy replaces whitespace in the details with underscores.
    reply = LocalResponse(status_code & MASK32, body, headers, "_".join(details.split(" ")), grpc)
    context._local_response_requested(reply)
    return Status.OK
