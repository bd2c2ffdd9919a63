"""HTTP and gRPC calls from a filter to Envoy clusters.

A call returns at once with a token; Envoy later answers through the shim,
and ``meshext.sdk._dispatch`` hands the answer to the callback of the
context that made the call, with that context made effective again (so
``self.request.resume()`` or header changes apply to the right stream).
"""

from __future__ import annotations

from meshext.sdk.host import HostError, describe_host_error, host

# Plain classes, not dataclasses, and typing only for checkers: importing
# dataclasses and typing would add megabytes to every VM of every filter.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    Pairs = Iterable[tuple[str, str]]


class CalloutError(RuntimeError):
    """Envoy refused to start a call (unknown cluster, missing pseudo-headers...)."""


class HttpCallResponse:
    """The answer to :meth:`HttpContext.http_call` (also for failed calls)."""

    __slots__ = ("token", "headers", "body", "trailers")

    def __init__(self, token: int, headers: list[tuple[str, str]], body: bytes, trailers: list[tuple[str, str]]) -> None:
        self.token = token
        self.headers = headers
        self.body = body
        self.trailers = trailers

    @property
    def failed(self) -> bool:
        """True when no response arrived: connection failure, reset or timeout."""
        return not self.headers

    @property
    def status(self) -> int | None:
        value = self.header(":status")
        return int(value) if value and value.isdigit() else None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class GrpcResponse:
    """The answer to a unary gRPC call: ``status_code`` 0 is OK."""

    __slots__ = ("token", "status_code", "message", "status_message")

    def __init__(self, token: int, status_code: int, message: bytes = b"", status_message: str = "") -> None:
        self.token = token
        self.status_code = status_code
        self.message = message
        self.status_message = status_message

    @property
    def ok(self) -> bool:
        return self.status_code == 0


class GrpcStreamHandler:
    """Override what you need; each method runs with the calling context effective."""

    def on_initial_metadata(self, metadata: list[tuple[str, str]]) -> None:
        pass

    def on_message(self, message: bytes) -> None:
        pass

    def on_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        pass

    def on_close(self, status_code: int, status_message: str) -> None:
        pass


class GrpcStream:
    def __init__(self, token: int) -> None:
        self.token = token

    def send(self, message: bytes, end_stream: bool = False) -> None:
        host.grpc_send(self.token, message, end_stream)

    def close(self) -> None:
        """Half-close: no more messages from us; the server may still answer."""
        host.grpc_close(self.token)

    def cancel(self) -> None:
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


def _refused(what: str, cluster: str, error: BaseException) -> CalloutError:
    return CalloutError(
        f"{what} to cluster {cluster!r} was refused ({describe_host_error(error)}); fix: the cluster must exist "
        "in Envoy's configuration, and HTTP calls need :method, :path and :authority headers"
    )


def http_call(context: Any, cluster: str, headers: Pairs, body: bytes | str, trailers: Pairs, timeout_ms: int,
              callback: Callable[[HttpCallResponse], Any]) -> int:
    try:
        token = host.http_call(cluster, list(headers), body, list(trailers), timeout_ms)
    except HostError as error:
        raise _refused("http_call", cluster, error) from None
    pending[token] = Pending(context, callback=callback)
    return token


def grpc_call(context: Any, cluster: str, service: str, method: str, message: bytes, metadata: Pairs,
              timeout_ms: int, callback: Callable[[GrpcResponse], Any]) -> int:
    try:
        token = host.grpc_call(cluster, service, method, list(metadata), message, timeout_ms)
    except HostError as error:
        raise _refused("grpc_call", cluster, error) from None
    pending[token] = Pending(context, callback=callback)
    return token


def grpc_stream(context: Any, cluster: str, service: str, method: str, metadata: Pairs,
                handler: GrpcStreamHandler) -> GrpcStream:
    try:
        token = host.grpc_stream(cluster, service, method, list(metadata))
    except HostError as error:
        raise _refused("grpc_stream", cluster, error) from None
    pending[token] = Pending(context, handler=handler)
    return GrpcStream(token)
