"""The three kinds of context a filter is made of.

As in proxy-wasm-rust-sdk: a :class:`RootContext` lives as long as the
plugin configuration (configure, timers, queues, callouts that outlive a
request), and creates one :class:`HttpContext` per HTTP stream or one
:class:`StreamContext` per TCP connection.  Callbacks return an explicit
:class:`~meshext.sdk.abi.Action`; returning ``None`` means ``CONTINUE``.
Only the callbacks a class overrides are ever called: the rest cost nothing.
"""

from __future__ import annotations

import json
from enum import Enum

from meshext.sdk import callouts
from meshext.sdk.abi import Action, BufferType, PeerType, StreamType
from meshext.sdk.host import host
from meshext.sdk.log import log
from meshext.sdk.messages import REQUEST, RESPONSE, Body, Message

# typing only for checkers: importing it would grow every VM (see callouts.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

    from meshext.sdk.messages import Pairs


class FailPolicy(str, Enum):
    """What happens to a request when filter code raises.

    ``OPEN``: the traceback is logged and the request continues untouched.
    ``CLOSED``: the traceback is logged and the request gets a 500 reply
    (TCP: the connection is closed).
    """

    OPEN = "open"
    CLOSED = "closed"


class _CalloutMixin:
    """HTTP and gRPC calls whose answers come back to this context."""

    # Slots, so that the shim can fill `root` and `context_id` of a new
    # per-stream context without two setattr calls (sdk/shim/shim.c,
    # new_child); `__dict__` keeps any other attribute working as usual.
    __slots__ = ("root", "context_id", "__dict__", "__weakref__")
    context_id: int

    def http_call(
        self,
        cluster: str,
        headers: Pairs,
        body: bytes | str = b"",
        *,
        callback: Callable[[callouts.HttpCallResponse], Any],
        trailers: Pairs = (),
        timeout_ms: int = 5000,
    ) -> int:
        """Send an HTTP request to an Envoy cluster; ``callback(response)`` gets the answer.

        ``headers`` must include ``:method``, ``:path`` and ``:authority``.
        A failed call (no such cluster, reset, timeout) reaches the callback
        with ``response.failed`` true.  Returns the call's token.
        """
        return callouts.http_call(self, cluster, headers, body, trailers, timeout_ms, callback)

    def grpc_call(
        self,
        cluster: str,
        service: str,
        method: str,
        message: bytes,
        *,
        callback: Callable[[callouts.GrpcResponse], Any],
        metadata: Pairs = (),
        timeout_ms: int = 5000,
    ) -> int:
        """A unary gRPC call; ``callback(response)`` gets the reply message or the error status."""
        return callouts.grpc_call(self, cluster, service, method, message, metadata, timeout_ms, callback)

    def grpc_stream(
        self, cluster: str, service: str, method: str, handler: callouts.GrpcStreamHandler, *, metadata: Pairs = ()
    ) -> callouts.GrpcStream:
        """Open a streaming gRPC call; ``handler`` receives its events."""
        return callouts.grpc_stream(self, cluster, service, method, metadata, handler)


class HttpContext(_CalloutMixin):
    """One HTTP stream (request and response) through the filter."""

    request: ClassVar[Message] = REQUEST
    response: ClassVar[Message] = RESPONSE

    def __init__(self, root: RootContext, context_id: int) -> None:
        self.root = root
        self.context_id = context_id

    def on_request_headers(self, end_of_stream: bool) -> Action | None:
        return Action.CONTINUE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action | None:
        """Return ``Action.PAUSE`` until ``end_of_stream`` to see the whole body at once."""
        return Action.CONTINUE

    def on_request_trailers(self) -> Action | None:
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action | None:
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action | None:
        return Action.CONTINUE

    def on_response_trailers(self) -> Action | None:
        return Action.CONTINUE

    def on_log(self) -> None:
        """Called once the stream is complete (access-log time): headers are still readable."""

    def on_done(self) -> bool:
        return True

    def send_local_response(
        self,
        status: int,
        body: bytes | str = b"",
        headers: Pairs = (),
        *,
        details: str = "meshext_local_response",
        grpc_status: int = -1,
    ) -> Action:
        """Answer the request from the filter; returns ``Action.PAUSE`` to return from the callback.

        ``details`` shows in Envoy's access log as the response code details
        (letters, digits and ``_`` only).
        """
        host.send_local_response(status, details, body, list(headers), grpc_status)
        return Action.PAUSE


class StreamContext(_CalloutMixin):
    """One TCP connection through a network filter."""

    downstream_data: ClassVar[Body] = Body(BufferType.DOWNSTREAM_DATA)
    upstream_data: ClassVar[Body] = Body(BufferType.UPSTREAM_DATA)

    def __init__(self, root: RootContext, context_id: int) -> None:
        self.root = root
        self.context_id = context_id

    def on_new_connection(self) -> Action | None:
        return Action.CONTINUE

    def on_downstream_data(self, data_size: int, end_of_stream: bool) -> Action | None:
        return Action.CONTINUE

    def on_upstream_data(self, data_size: int, end_of_stream: bool) -> Action | None:
        return Action.CONTINUE

    def on_downstream_close(self, peer: PeerType) -> None:
        pass

    def on_upstream_close(self, peer: PeerType) -> None:
        pass

    def on_log(self) -> None:
        pass

    def on_done(self) -> bool:
        return True

    def resume_downstream(self) -> None:
        host.continue_stream(StreamType.DOWNSTREAM)

    def close_downstream(self) -> None:
        host.close_stream(StreamType.DOWNSTREAM)

    def close_upstream(self) -> None:
        host.close_stream(StreamType.UPSTREAM)


class RootContext(_CalloutMixin):
    """The plugin: configuration, timers, queues; creates per-stream contexts.

    Set ``http_context`` (or ``stream_context`` for a TCP filter) to the
    class Envoy's streams should get.  The plugin configuration arrives in
    :meth:`on_configure`; by default it is parsed as JSON into
    ``self.config`` and, when ``config_class`` names a dataclass, validated
    and converted into one.
    """

    http_context: ClassVar[type[HttpContext] | None] = None
    stream_context: ClassVar[type[StreamContext] | None] = None
    config_class: ClassVar[type | None] = None
    fail_policy: ClassVar[FailPolicy | None] = None  # None: the policy in meshext.toml

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.config: Any = None
        self.config_bytes = b""
        self.vm_config_bytes = b""

    def on_vm_start(self, vm_config: bytes) -> bool:
        self.vm_config_bytes = vm_config
        return True

    def on_configure(self, config: bytes) -> bool:
        """Parse the plugin configuration; answer False to make Envoy refuse it."""
        self.config_bytes = config
        if not config.strip():
            self.config = None
            return self._validate({}) if self.config_class else True
        try:
            parsed = json.loads(config)
        except ValueError as error:
            log.error(f"plugin configuration is not JSON: {error}; fix: give the plugin a JSON object")
            return False
        if self.config_class is None:
            self.config = parsed
            return True
        return self._validate(parsed)

    def _validate(self, data: Any) -> bool:
        # Imported on first use: dataclass validation pulls in typing and
        # inspect, which filters without a config_class should not carry.
        from meshext.sdk.config import ConfigError, validate_config

        assert self.config_class is not None
        try:
            self.config = validate_config(self.config_class, data)
        except ConfigError as error:
            log.error(f"plugin configuration refused: {error}")
            return False
        return True

    def on_tick(self) -> None:
        pass

    def on_queue_ready(self, queue_id: int) -> None:
        pass

    def on_foreign_function(self, function_id: int, arguments: bytes) -> None:
        pass

    def on_done(self) -> bool:
        return True

    def new_http_context(self, context_id: int) -> HttpContext:
        if self.http_context is None:
            raise TypeError(f"{type(self).__name__} has no http_context class but Envoy runs it as an HTTP filter")
        return self.http_context(self, context_id)

    def new_stream_context(self, context_id: int) -> StreamContext:
        if self.stream_context is None:
            raise TypeError(f"{type(self).__name__} has no stream_context class but Envoy runs it as a network filter")
        return self.stream_context(self, context_id)

    def set_tick_period(self, milliseconds: int) -> None:
        """Call :meth:`on_tick` every ``milliseconds`` (0 stops the timer)."""
        host.set_effective_context(self.context_id)
        host.set_tick_period(milliseconds)

    def done(self) -> None:
        """Finish a deferred shutdown (after ``on_done`` answered False)."""
        host.set_effective_context(self.context_id)
        host.done()


# Bit numbers shared with sdk/shim/shim.c (enum CB_*).
CALLBACK_BITS = {
    "on_request_headers": 0,
    "on_request_body": 1,
    "on_request_trailers": 2,
    "on_response_headers": 3,
    "on_response_body": 4,
    "on_response_trailers": 5,
    "on_log": 6,
    "on_done": 7,
    "on_new_connection": 8,
    "on_downstream_data": 9,
    "on_upstream_data": 10,
    "on_downstream_close": 11,
    "on_upstream_close": 12,
}
ALL_CALLBACKS = (1 << 13) - 1


def callback_mask(cls: type | None, base: type) -> int:
    """Bits of the callbacks ``cls`` overrides (0 for None)."""
    if cls is None:
        return 0
    mask = 0
    for name, bit in CALLBACK_BITS.items():
        if hasattr(base, name) and getattr(cls, name) is not getattr(base, name):
            mask |= 1 << bit
    return mask
