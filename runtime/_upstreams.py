"""Upstreams of callouts: what Envoy's router answers when an upstream gives no answer, and real upstreams.

When a callout's upstream cannot answer, Envoy's async client runs its
router, which answers the call itself (``RouterReply``): an HTTP callout gets
that reply as a normal response, a unary gRPC call a close with status 14
(UNAVAILABLE) whose message carries the reply's text and Envoy's response
code details in braces.  Checked against Envoy 1.40 by the conformance suite
(``tests/runtime/test_runtime_conformance.py``).

``real_http_call`` and ``real_grpc_call`` send callouts to real upstreams on
loopback the way Envoy's async clients send them.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

from meshext.runtime._records import EnvoyHeaderMap, GrpcCallout, GrpcReply, HttpCallout, HttpResponse

GRPC_UNAVAILABLE = 14
# Envoy's response code details of an answer that came from the upstream itself; Envoy's gRPC
# client appends the details to a failed call's message ("{via_upstream}").
VIA_UPSTREAM = "via_upstream"


@dataclass(frozen=True)
class RouterReply:
    """An answer Envoy's router gives a callout itself, because the upstream gave none."""

    http_status: int
    text: str
    details: str  # Envoy's response code details

    def http_response(self) -> HttpResponse:
        """What an HTTP callout receives: the status, content-length and content-type, the text as body."""
        body = self.text.encode()
        return HttpResponse(self.http_status, [("content-length", str(len(body))), ("content-type", "text/plain")],
                            body)

    @property
    def grpc_message(self) -> str:
        """A unary gRPC call's status message (the call closes with UNAVAILABLE)."""
        return grpc_status_message(self.text, self.details)


# The call's timeout passed (HTTP: 504).
UPSTREAM_TIMEOUT = RouterReply(504, "upstream request timeout", "response_timeout")
# Nothing listens at the upstream's address (HTTP: 503).
CONNECT_FAILURE = RouterReply(
    503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
    "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}")
# The cluster has no healthy endpoint: Envoy answers while the call starts, so proxy_http_call and
# proxy_grpc_call return INTERNAL_FAILURE; only a gRPC call then also gets this close.
NO_HEALTHY_UPSTREAM = RouterReply(503, "no healthy upstream", "no_healthy_upstream")


def grpc_status_message(message: str, details: str = VIA_UPSTREAM) -> str:
    """A failed gRPC call's status message as Envoy's gRPC client gives it: ``message{details}``.

    Without a message it is the details alone.
    """
    return f"{message}{{{details}}}" if message else details


def real_http_call(address: tuple[str, int], call: HttpCallout) -> HttpResponse | RouterReply | None:
    """Send the callout to ``address`` over HTTP/1.1.

    Returns the upstream's answer, the router's reply when the connection is
    refused or the call's timeout passes, or None when the upstream broke off
    its answer (Envoy: a reset, the callback gets no headers).
    """
    headers = EnvoyHeaderMap(call.headers)
    connection = http.client.HTTPConnection(address[0], address[1], timeout=(call.timeout_ms or 30000) / 1000)
    try:
        connection.putrequest(headers.get(":method") or "GET", headers.get(":path") or "/",
                              skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", headers.get(":authority") or "")
        for key, value in call.headers:
            if not key.startswith(":"):
                connection.putheader(key, value)
        connection.endheaders(call.body or None)
        reply = connection.getresponse()
        body = reply.read()
        return HttpResponse(reply.status, [(k.lower(), v) for k, v in reply.getheaders()], body)
    except ConnectionRefusedError:
        return CONNECT_FAILURE
    except TimeoutError:
        return UPSTREAM_TIMEOUT if call.timeout_ms else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def real_grpc_call(address: tuple[str, int], call: GrpcCallout) -> GrpcReply | RouterReply:
    """Make the unary gRPC call at ``address`` (raw bytes in and out).

    Returns the server's answer (a failure as its status), or the router's
    reply when the connection is refused or the call's timeout passes.
    """
    import grpc

    timeout_s = (call.timeout_ms or 30000) / 1000
    try:
        socket.create_connection(address, timeout=timeout_s).close()
    except ConnectionRefusedError:
        return CONNECT_FAILURE
    with grpc.insecure_channel(f"{address[0]}:{address[1]}",
                               options=[("grpc.default_authority", call.authority)]) as channel:
        method = channel.unary_unary(f"/{call.service}/{call.method}", request_serializer=None,
                                     response_deserializer=None)
        try:
            answer, state = method.with_call(call.messages[0] if call.messages else b"", timeout=timeout_s,
                                             metadata=[(k, v) for k, v in call.initial_metadata])
            return GrpcReply(0, [answer], list(state.initial_metadata() or []),
                             list(state.trailing_metadata() or []))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and call.timeout_ms:
                return UPSTREAM_TIMEOUT  # Envoy's own timer ends the call
            return GrpcReply(error.code().value[0], [], [], list(error.trailing_metadata() or []),
                             error.details() or "")


def grpc_target(upstream: bytes) -> tuple[str, str]:
    """(cluster, :authority) of a ``proxy_grpc_call`` upstream.

    Envoy accepts a cluster name or a serialized ``GrpcService`` proto
    naming ``envoy_grpc.cluster_name`` (and perhaps an ``authority``); it
    sends the cluster name as ``:authority`` unless one is given.
    """
    from envoy.config.core.v3 import grpc_service_pb2
    from google.protobuf.message import DecodeError

    name = upstream.decode("utf-8", "replace")
    service = grpc_service_pb2.GrpcService()
    try:
        service.ParseFromString(upstream)
    except DecodeError:
        return name, name
    cluster = service.envoy_grpc.cluster_name
    if not cluster:
        return name, name
    return cluster, service.envoy_grpc.authority or cluster
