"""The three kinds of context a filter is made of, and the table of their callbacks.

As in proxy-wasm-rust-sdk: a :class:`RootContext` lives as long as the
plugin configuration (configure, timers, queues, callouts that outlive a
request), and creates one :class:`HttpContext` per HTTP stream or one
:class:`StreamContext` per TCP connection.  Stream callbacks return an
explicit :class:`~meshext.sdk.abi.Action`; returning ``None`` means
``CONTINUE``.  Only the callbacks a class overrides are ever called: the
rest cost nothing.

An exception that escapes a callback is logged with its Python traceback and
handled by the fail policy (:class:`FailPolicy`); after that the SDK calls
none of that stream's code again, since its state is whatever the failing
callback left.

:data:`STREAM_CALLBACKS` is the one definition of the per-stream callbacks:
the C shim's callback constants and exports are generated from it
(sdk/builder/shim.py), and `meshext build` drops the exports of those no
context overrides (sdk/builder/prune.py).
"""

from __future__ import annotations

from enum import StrEnum

from meshext.sdk import callouts
from meshext.sdk.abi import Action, BufferType, StreamType
from meshext.sdk.errors import ConfigError, SdkError
from meshext.sdk.host import host
from meshext.sdk.log import log
from meshext.sdk.messages import REQUEST, RESPONSE, Body, Message, header_pairs

# typing only for checkers: importing it would grow every VM (see callouts.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

    from meshext.sdk.messages import Headers


class FailPolicy(StrEnum):
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
    # fast_child); `__dict__` keeps any other attribute working as usual.
    __slots__ = ("root", "context_id", "__dict__", "__weakref__")
    context_id: int

    def http_call(
        self,
        cluster: str,
        headers: Headers,
        body: bytes | str = b"",
        *,
        callback: Callable[[callouts.HttpCallResponse], Any],
        trailers: Headers = (),
        timeout_ms: int = 5000,
    ) -> int:
        """Send an HTTP request to the Envoy cluster ``cluster``; returns the call's token.

        ``headers`` (a dict or a sequence of ``(name, value)`` pairs) must
        include ``:method``, ``:path`` and ``:authority``.  Later
        ``callback(response)`` runs with this context effective again.  When
        the upstream gives no answer Envoy answers itself: 504 (body
        ``upstream request timeout``) after ``timeout_ms``, 503 when the
        upstream refuses the connection; only a call the upstream resets
        mid-answer reaches it with ``response.failed`` true.  Raises
        :class:`~meshext.sdk.CalloutError` when Envoy refuses to start the
        call (unknown cluster, missing pseudo-headers, or a cluster with no
        healthy endpoint); then no callback runs.
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
        metadata: Headers = (),
        timeout_ms: int = 5000,
        authority: str | None = None,
    ) -> int:
        """Call the unary gRPC method ``service/method`` on ``cluster``; returns the call's token.

        ``message`` is the serialized request, ``metadata`` a dict or a
        sequence of ``(name, value)`` pairs.  ``callback(response)`` gets a
        :class:`~meshext.sdk.GrpcResponse` (the reply, or the error status)
        with this context effective again.  ``authority`` is the call's
        ``:authority`` (default: the cluster name, which a server behind a
        mesh sidecar refuses when it is ``outbound|port||host``: give the
        host then).  Raises :class:`~meshext.sdk.CalloutError` when Envoy
        refuses to start the call.
        """
        return callouts.grpc_call(self, cluster, service, method, message, metadata, timeout_ms, callback,
                                  authority)

    def grpc_stream(
        self, cluster: str, service: str, method: str, handler: callouts.GrpcStreamHandler, *, metadata: Headers = (),
        authority: str | None = None,
    ) -> callouts.GrpcStream:
        """Open a streaming gRPC call to ``service/method`` on ``cluster``.

        Returns the :class:`~meshext.sdk.GrpcStream` to send on; ``handler``
        (a :class:`~meshext.sdk.GrpcStreamHandler`) receives the stream's
        events with this context effective.  ``authority`` as for
        :meth:`grpc_call`.  Raises :class:`~meshext.sdk.CalloutError` when
        Envoy refuses to open it.
        """
        return callouts.grpc_stream(self, cluster, service, method, metadata, handler, authority)


class HttpContext(_CalloutMixin):
    """One HTTP stream (request and response) through the filter.

    ``self.root`` is the :class:`RootContext` that created it and
    ``self.context_id`` Envoy's id for the stream.  Override the callbacks
    the filter needs; each stream callback answers an
    :class:`~meshext.sdk.abi.Action` (``None`` is ``CONTINUE``).
    """

    request: ClassVar[Message] = REQUEST
    """The request's headers, body and trailers (of the stream Envoy is calling now)."""
    response: ClassVar[Message] = RESPONSE
    """The response's headers, body and trailers (of the stream Envoy is calling now)."""
    response_headers_to_add: ClassVar[Headers] = ()
    """Headers every response of the stream gets, local replies included, as ``response.headers.set`` gives
    them, before :meth:`on_response_headers` runs: a dict or ``(name, value)`` pairs of str.  The module's C
    code sets them, so a filter that only adds fixed response headers costs Envoy no call into Python on the
    response (as Envoy's own ``response_headers_to_add``).  Not set once the stream's filter code raised.
    Read from the root's ``http_context`` class (a root overriding ``new_http_context`` names it there)."""

    def __init__(self, root: RootContext, context_id: int) -> None:
        self.root = root
        self.context_id = context_id

    def on_request_headers(self, end_of_stream: bool) -> Action | None:
        """The request headers arrived (``self.request.headers``).

        ``end_of_stream`` is true when the request has no body.  Return
        ``Action.PAUSE`` to hold the request (until ``self.request.resume()``,
        typically from a callout's callback).
        """
        return Action.CONTINUE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action | None:
        """A chunk of the request body arrived: ``body_size`` bytes are in ``self.request.body``.

        Return ``Action.PAUSE`` until ``end_of_stream`` to have Envoy buffer
        the chunks and see the whole body at once.
        """
        return Action.CONTINUE

    def on_request_trailers(self) -> Action | None:
        """The request trailers arrived (``self.request.trailers``)."""
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action | None:
        """The response headers arrived (``self.response.headers``), from the upstream or a local reply.

        ``end_of_stream`` is true when the response has no body.
        """
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action | None:
        """A chunk of the response body arrived: ``body_size`` bytes are in ``self.response.body``.

        As for the request, ``Action.PAUSE`` until ``end_of_stream`` buffers the whole body.
        """
        return Action.CONTINUE

    def on_response_trailers(self) -> Action | None:
        """The response trailers arrived (``self.response.trailers``)."""
        return Action.CONTINUE

    def on_log(self) -> None:
        """The stream is complete (access-log time): headers are still readable."""

    def on_done(self) -> bool | None:
        """The stream is over; the context is deleted when this answers True or None."""
        return True

    def send_local_response(
        self,
        status: int,
        body: bytes | str = b"",
        headers: Headers = (),
        *,
        details: str = "meshext_local_response",
        grpc_status: int = -1,
    ) -> Action:
        """Answer the request from the filter instead of the upstream; returns ``Action.PAUSE``.

        ``status`` is the HTTP status, ``body`` the reply's body (bytes, or a
        str sent as UTF-8), ``headers`` a dict or a sequence of
        ``(name, value)`` pairs.  ``details`` shows in Envoy's access log as
        the response code details (letters, digits and ``_`` only);
        ``grpc_status`` (-1: none) sets ``grpc-status`` for gRPC clients.
        Return the result from the callback (``return
        self.send_local_response(403)``) so that Envoy stops the request.
        Raises :class:`~meshext.sdk.HostError` when Envoy refuses (for
        example once the response has started).
        """
        host.send_local_response(status, details, body, header_pairs(headers), grpc_status)
        return Action.PAUSE


class StreamContext(_CalloutMixin):
    """One TCP connection through a network filter.

    ``self.root`` is the :class:`RootContext` that created it and
    ``self.context_id`` Envoy's id for the connection.  Data callbacks see
    the bytes in :attr:`downstream_data` / :attr:`upstream_data`.
    """

    downstream_data: ClassVar[Body] = Body(BufferType.DOWNSTREAM_DATA)
    """Bytes from the client (in :meth:`on_downstream_data`)."""
    upstream_data: ClassVar[Body] = Body(BufferType.UPSTREAM_DATA)
    """Bytes from the upstream (in :meth:`on_upstream_data`)."""

    def __init__(self, root: RootContext, context_id: int) -> None:
        self.root = root
        self.context_id = context_id

    def on_new_connection(self) -> Action | None:
        """A client connected; ``Action.PAUSE`` holds the connection until :meth:`resume_downstream`."""
        return Action.CONTINUE

    def on_downstream_data(self, data_size: int, end_of_stream: bool) -> Action | None:
        """``data_size`` bytes from the client are in :attr:`downstream_data`; ``end_of_stream``: it half-closed.

        ``Action.PAUSE`` keeps the data buffered instead of sending it upstream.
        """
        return Action.CONTINUE

    def on_upstream_data(self, data_size: int, end_of_stream: bool) -> Action | None:
        """``data_size`` bytes from the upstream are in :attr:`upstream_data`; ``end_of_stream``: it half-closed."""
        return Action.CONTINUE

    def on_downstream_close(self, peer: int) -> None:
        """The client side closed; ``peer``, a :class:`~meshext.sdk.PeerType` value, says which end closed it."""

    def on_upstream_close(self, peer: int) -> None:
        """The upstream side closed; ``peer``, a :class:`~meshext.sdk.PeerType` value, says which end closed it."""

    def on_log(self) -> None:
        """The connection is complete (access-log time)."""

    def on_done(self) -> bool | None:
        """The connection is over; the context is deleted when this answers True or None."""
        return True

    def resume_downstream(self) -> None:
        """Let data through again after a callback answered ``Action.PAUSE``."""
        host.continue_stream(StreamType.DOWNSTREAM)

    def close_downstream(self) -> None:
        """Close the client's side of the connection."""
        host.close_stream(StreamType.DOWNSTREAM)

    def close_upstream(self) -> None:
        """Close the upstream's side of the connection."""
        host.close_stream(StreamType.UPSTREAM)


class RootContext(_CalloutMixin):
    """The plugin: configuration, timers, queues; creates per-stream contexts.

    Set ``http_context`` (or ``stream_context`` for a TCP filter) to the
    class Envoy's streams should get.  ``on_configure`` may set it on the
    instance to a class that overrides fewer callbacks (typically a base of
    the class's): Envoy then calls into Python only for what that
    configuration needs.  The plugin configuration arrives in
    :meth:`on_configure`; by default it is parsed as JSON into
    ``self.config`` and, when ``config_class`` names a dataclass, validated
    and converted into one.  ``fail_policy`` overrides the ``fail_policy``
    of ``meshext.toml`` for this plugin.
    """

    http_context: type[HttpContext] | None = None
    """The class of each HTTP stream's context (None: not an HTTP filter)."""
    stream_context: type[StreamContext] | None = None
    """The class of each TCP connection's context (None: not a network filter)."""
    config_class: ClassVar[type | None] = None
    """A dataclass the JSON plugin configuration is validated against and converted into (None: plain JSON)."""
    fail_policy: ClassVar[FailPolicy | None] = None
    """What an uncaught exception does to a request (None: the ``fail_policy`` of meshext.toml)."""

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.config: Any = None
        """The plugin configuration: parsed JSON, a ``config_class`` instance, or None when empty."""
        self.config_bytes = b""
        """The plugin configuration as Envoy sent it."""
        self.vm_config_bytes = b""
        """The VM configuration as Envoy sent it."""

    def on_vm_start(self, vm_config: bytes) -> bool | None:
        """The VM started, with its VM configuration ``vm_config`` (also kept in ``vm_config_bytes``).

        Answer False to make Envoy refuse the VM; True or None starts it.
        """
        self.vm_config_bytes = vm_config
        return True

    def on_configure(self, config: bytes) -> bool | None:
        """The plugin configuration arrived (``config``, as bytes); answer False to make Envoy refuse it.

        The default parses it as JSON into ``self.config`` (an empty one is
        None, or the ``config_class`` defaults), validated against
        ``config_class`` when set, then checked by :meth:`check_config`.  A
        refused configuration is logged as ``plugin configuration refused:
        ...`` naming the field, and Envoy keeps the previous one.  True or
        None accepts.  An override that calls ``super().on_configure(config)``
        keeps all of this.
        """
        self.config_bytes = config
        try:
            parsed = self._parse(config)
            self.check_config(parsed)
        except ConfigError as error:
            log.error(f"plugin configuration refused: {error}")
            return False
        self.config = parsed
        return True

    def check_config(self, config: Any) -> None:
        """What field types cannot say about a parsed ``config`` (rules that relate fields, names that
        must be unique...): raise :class:`~meshext.sdk.ConfigError` to refuse it, and it is logged as
        any refusal.  Runs before ``self.config`` is set; the default accepts everything."""

    def _parse(self, config: bytes) -> Any:
        if config.strip():
            # Imported on first use, not with the SDK: json and re are memory
            # in every VM, and a filter without a configuration never needs
            # them (neither needs the compiler the module lacks at run time).
            import json

            try:
                data = json.loads(config)
            except ValueError as error:
                raise ConfigError(f"plugin configuration is not JSON ({error})",
                                  fix="give the plugin a JSON object") from None
        elif self.config_class is None:
            return None
        else:
            data = {}
        if self.config_class is None:
            return data
        # Imported on first use (at build time: sdk/_dispatch.py imports it for
        # a root with a config_class): dataclass validation pulls in
        # dataclasses and inspect, which filters without one should not carry.
        from meshext.sdk.config import validate_config

        return validate_config(self.config_class, data)

    def on_tick(self) -> None:
        """The timer set with :meth:`set_tick_period` fired."""

    def on_queue_ready(self, queue_id: int) -> None:
        """The shared queue ``queue_id``, registered by this VM, has messages (:meth:`SharedQueue.dequeue`)."""

    def on_foreign_function(self, function_id: int, arguments: bytes) -> None:
        """Envoy called foreign function ``function_id`` on this plugin with ``arguments``."""

    def on_done(self) -> bool | None:
        """The plugin is being shut down; answer False to finish later with :meth:`done`.

        True or None lets Envoy delete the plugin now.
        """
        return True

    def new_http_context(self, context_id: int) -> HttpContext:
        """The context for HTTP stream ``context_id``: by default ``http_context(self, context_id)``.

        Override to choose the class per stream.  Raises
        :class:`~meshext.sdk.SdkError` when there is no ``http_context``.
        """
        if self.http_context is None:
            raise SdkError(
                "Envoy runs this plugin as an HTTP filter, but the root context has no http_context class",
                where=type(self).__name__,
                fix="set http_context = YourHttpContext on the root context class",
            )
        return self.http_context(self, context_id)

    def new_stream_context(self, context_id: int) -> StreamContext:
        """The context for TCP connection ``context_id``: by default ``stream_context(self, context_id)``.

        Override to choose the class per connection.  Raises
        :class:`~meshext.sdk.SdkError` when there is no ``stream_context``.
        """
        if self.stream_context is None:
            raise SdkError(
                "Envoy runs this plugin as a network filter, but the root context has no stream_context class",
                where=type(self).__name__,
                fix="set stream_context = YourStreamContext on the root context class",
            )
        return self.stream_context(self, context_id)

    def set_tick_period(self, milliseconds: int) -> None:
        """Call :meth:`on_tick` every ``milliseconds`` (0 stops the timer)."""
        host.set_effective_context(self.context_id)
        host.set_tick_period(milliseconds)

    def done(self) -> None:
        """Finish a deferred shutdown (after :meth:`on_done` answered False)."""
        host.set_effective_context(self.context_id)
        host.done()


# ---- the per-stream callbacks: one table for the SDK, the C shim and the build ----

HTTP_STREAM = "http"
TCP_STREAM = "tcp"
ANY_STREAM = "any"  # both kinds: the shim knows which from the context

# How Envoy's arguments after the context id become the method's arguments.
HEADERS_ARGUMENTS = "headers"  # (header count, end_of_stream) -> method(end_of_stream)
SIZE_ARGUMENTS = "size"  # (byte count, end_of_stream) -> method(size, end_of_stream)
TRAILERS_ARGUMENTS = "trailers"  # (trailer count) -> method()
NO_ARGUMENTS = "none"  # () -> method()
PEER_ARGUMENTS = "peer"  # (peer type) -> method(peer)


class StreamCallback:
    """One Proxy-Wasm callback a per-stream context may override.

    ``method`` is the context method, ``export`` the module export Envoy
    calls, ``stream`` the kind of context (``HTTP_STREAM``, ``TCP_STREAM``
    or ``ANY_STREAM``), ``arguments`` how Envoy's arguments map onto the
    method's (``*_ARGUMENTS``), ``holds`` the direction Envoy holds when the
    method answers ``Action.PAUSE`` (None: the answer holds nothing).  Its
    position in :data:`STREAM_CALLBACKS` is its bit in the mask of
    overridden callbacks.
    """

    __slots__ = ("method", "export", "stream", "arguments", "holds")

    def __init__(self, method: str, export: str, stream: str, arguments: str,
                 holds: StreamType | None = None) -> None:
        self.method = method
        self.export = export
        self.stream = stream
        self.arguments = arguments
        self.holds = holds


STREAM_CALLBACKS = (
    StreamCallback("on_request_headers", "proxy_on_request_headers", HTTP_STREAM, HEADERS_ARGUMENTS,
                   StreamType.HTTP_REQUEST),
    StreamCallback("on_request_body", "proxy_on_request_body", HTTP_STREAM, SIZE_ARGUMENTS,
                   StreamType.HTTP_REQUEST),
    StreamCallback("on_request_trailers", "proxy_on_request_trailers", HTTP_STREAM, TRAILERS_ARGUMENTS,
                   StreamType.HTTP_REQUEST),
    StreamCallback("on_response_headers", "proxy_on_response_headers", HTTP_STREAM, HEADERS_ARGUMENTS,
                   StreamType.HTTP_RESPONSE),
    StreamCallback("on_response_body", "proxy_on_response_body", HTTP_STREAM, SIZE_ARGUMENTS,
                   StreamType.HTTP_RESPONSE),
    StreamCallback("on_response_trailers", "proxy_on_response_trailers", HTTP_STREAM, TRAILERS_ARGUMENTS,
                   StreamType.HTTP_RESPONSE),
    StreamCallback("on_log", "proxy_on_log", ANY_STREAM, NO_ARGUMENTS),
    StreamCallback("on_done", "proxy_on_done", ANY_STREAM, NO_ARGUMENTS),
    StreamCallback("on_new_connection", "proxy_on_new_connection", TCP_STREAM, NO_ARGUMENTS,
                   StreamType.DOWNSTREAM),
    StreamCallback("on_downstream_data", "proxy_on_downstream_data", TCP_STREAM, SIZE_ARGUMENTS,
                   StreamType.DOWNSTREAM),
    StreamCallback("on_upstream_data", "proxy_on_upstream_data", TCP_STREAM, SIZE_ARGUMENTS,
                   StreamType.UPSTREAM),
    StreamCallback("on_downstream_close", "proxy_on_downstream_connection_close", TCP_STREAM, PEER_ARGUMENTS),
    StreamCallback("on_upstream_close", "proxy_on_upstream_connection_close", TCP_STREAM, PEER_ARGUMENTS),
)
ALL_CALLBACKS = (1 << len(STREAM_CALLBACKS)) - 1


RESPONSE_HEADERS_BIT = next(bit for bit, callback in enumerate(STREAM_CALLBACKS)
                            if callback.method == "on_response_headers")


def response_headers_to_add(cls: type[HttpContext] | None) -> tuple[tuple[str, str], ...]:
    """``cls.response_headers_to_add`` as pairs of str; raises :class:`SdkError` naming it when it is not."""
    if cls is None:
        return ()
    where = f"{cls.__name__}.response_headers_to_add"
    try:
        pairs = header_pairs(cls.response_headers_to_add)
    except (TypeError, ValueError) as error:
        raise SdkError(f"not a dict or a list of (name, value) pairs ({error})", where=where,
                       fix='write e.g. response_headers_to_add = {"powered-by": "my-filter"}') from None
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(item, str) for item in pair)):
            raise SdkError(f"{pair!r} is not a (name, value) pair of str", where=where,
                           fix='write e.g. response_headers_to_add = {"powered-by": "my-filter"}')
    return tuple(pairs)


def callback_mask(cls: type | None, base: type) -> int:
    """Bits of the callbacks in :data:`STREAM_CALLBACKS` that ``cls`` overrides from ``base`` (0 for None)."""
    if cls is None:
        return 0
    mask = 0
    for bit, callback in enumerate(STREAM_CALLBACKS):
        name = callback.method
        if hasattr(base, name) and getattr(cls, name) is not getattr(base, name):
            mask |= 1 << bit
    return mask
