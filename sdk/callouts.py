"""HTTP and gRPC calls from a filter to Envoy clusters.

A call returns at once with a token; Envoy later answers through the shim,
and ``meshext.sdk._dispatch`` hands the answer to the callback of the
context that made the call, with that context made effective again (so
``self.request.resume()`` or header changes apply to the right stream).
"""

from __future__ import annotations

from meshext.sdk.errors import CalloutError, HostError
from meshext.sdk.host import host
from meshext.sdk.messages import header_pairs

# Plain classes, not dataclasses, and typing only for checkers: importing
# dataclasses and typing would add megabytes to every VM of every filter.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from meshext.sdk.messages import Headers


class HttpCallResponse:
    """The answer to :meth:`HttpContext.http_call` (also for failed calls).

    ``token`` is the call's token, ``headers`` and ``trailers`` lists of
    ``(name, value)`` pairs (``:status`` included), ``body`` the bytes.
    """

    __slots__ = ("token", "headers", "body", "trailers")

    def __init__(self, token: int, headers: list[tuple[str, str]], body: bytes,
                 trailers: list[tuple[str, str]]) -> None:
        self.token = token
        self.headers = headers
        self.body = body
        self.trailers = trailers

    @property
    def failed(self) -> bool:
        """True when the upstream reset the call after it began answering.

        Envoy answers timeouts (504) and refused connections (503) itself, so
        those arrive as responses with that status."""
        return not self.headers

    @property
    def status(self) -> int | None:
        """The HTTP status, or None when the call failed."""
        value = self.header(":status")
        return int(value) if value and value.isdigit() else None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None when absent."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class GrpcResponse:
    """The answer to a unary gRPC call (:meth:`HttpContext.grpc_call`).

    ``status_code`` is the gRPC status (0 is OK), ``message`` the serialized
    reply (b"" on errors), ``status_message`` the error text, ``token`` the
    call's token.
    """

    __slots__ = ("token", "status_code", "message", "status_message")

    def __init__(self, token: int, status_code: int, message: bytes = b"", status_message: str = "") -> None:
        self.token = token
        self.status_code = status_code
        self.message = message
        self.status_message = status_message

    @property
    def ok(self) -> bool:
        """True when the call succeeded (``status_code`` 0)."""
        return self.status_code == 0


class GrpcStreamHandler:
    """The events of a streaming gRPC call (:meth:`HttpContext.grpc_stream`).

    Override what you need; each method runs with the calling context
    effective.  An exception in one is handled by the fail policy like one
    in a callback.
    """

    def on_initial_metadata(self, metadata: list[tuple[str, str]]) -> None:
        """The server's initial metadata, as ``(name, value)`` pairs."""

    def on_message(self, message: bytes) -> None:
        """One serialized message from the server."""

    def on_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        """The server's trailing metadata, as ``(name, value)`` pairs."""

    def on_close(self, status_code: int, status_message: str) -> None:
        """The stream ended with gRPC status ``status_code`` (0 is OK) and ``status_message``."""


class GrpcStream:
    """An open streaming gRPC call; ``token`` identifies it."""

    def __init__(self, token: int) -> None:
        self.token = token

    def send(self, message: bytes, end_stream: bool = False) -> None:
        """Send one serialized message; ``end_stream`` half-closes after it.

        Raises :class:`~meshext.sdk.HostError` when the stream is gone.
        """
        host.grpc_send(self.token, message, end_stream)

    def close(self) -> None:
        """Half-close: no more messages from us; the server may still answer."""
        host.grpc_close(self.token)

    def cancel(self) -> None:
        """Abandon the call; the handler hears nothing more."""
        host.grpc_cancel(self.token)


class Pending:
    """A call waiting for Envoy's answer: a callback (unary) or a handler (stream)."""

    __slots__ = ("context", "callback", "handler")

    def __init__(self, context: Any, callback: Callable[[Any], Any] | None = None,
                 handler: GrpcStreamHandler | None = None) -> None:
        self.context = context
        self.callback = callback
        self.handler = handler


pending: dict[int, Pending] = {}


def _refused(what: str, cluster: str, error: HostError) -> CalloutError:
    return CalloutError(
        f"{what} to cluster {cluster!r} was refused ({error.message})",
        fix="the cluster must exist in Envoy's configuration, and HTTP calls need :method, :path and :authority "
        "headers",
    )


def http_call(context: Any, cluster: str, headers: Headers, body: bytes | str, trailers: Headers, timeout_ms: int,
              callback: Callable[[HttpCallResponse], Any]) -> int:
    """Start an HTTP call for ``context`` (see :meth:`HttpContext.http_call`)."""
    try:
        token = host.http_call(cluster, header_pairs(headers), body, header_pairs(trailers), timeout_ms)
    except HostError as error:
        raise _refused("http_call", cluster, error) from None
    pending[token] = Pending(context, callback=callback)
    return token


def grpc_upstream(cluster: str, authority: str | None) -> str | bytes:
    """What ``proxy_grpc_call`` takes as upstream: the cluster name, or with an
    ``authority`` a serialized ``envoy.config.core.v3.GrpcService`` naming both
    (Envoy accepts either; by default it sends the cluster name as
    ``:authority``, which a mesh cluster's ``outbound|port||host`` is not a
    valid one of)."""
    if authority is None:
        return cluster
    from meshext.sdk import protowire

    # GrpcService.envoy_grpc (1) = EnvoyGrpc{cluster_name (1), authority (2)}
    return protowire.encode_bytes(1, protowire.encode_bytes(1, cluster) + protowire.encode_bytes(2, authority))


def grpc_call(context: Any, cluster: str, service: str, method: str, message: bytes, metadata: Headers,
              timeout_ms: int, callback: Callable[[GrpcResponse], Any], authority: str | None = None) -> int:
    """Start a unary gRPC call for ``context`` (see :meth:`HttpContext.grpc_call`)."""
    try:
        token = host.grpc_call(grpc_upstream(cluster, authority), service, method, header_pairs(metadata), message,
                               timeout_ms)
    except HostError as error:
        raise _refused("grpc_call", cluster, error) from None
    pending[token] = Pending(context, callback=callback)
    return token


def grpc_stream(context: Any, cluster: str, service: str, method: str, metadata: Headers,
                handler: GrpcStreamHandler, authority: str | None = None) -> GrpcStream:
    """Open a streaming gRPC call for ``context`` (see :meth:`HttpContext.grpc_stream`)."""
    try:
        token = host.grpc_stream(grpc_upstream(cluster, authority), service, method, header_pairs(metadata))
    except HostError as error:
        raise _refused("grpc_stream", cluster, error) from None
    pending[token] = Pending(context, handler=handler)
    return GrpcStream(token)
