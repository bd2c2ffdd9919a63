"""Callouts to real upstreams on loopback, sent the way Envoy's async clients send them."""

from __future__ import annotations

import http.client

from meshext.runtime._records import EnvoyHeaderMap, GrpcCallout, GrpcReply, HttpCallout, HttpResponse


def real_http_call(address: tuple[str, int], call: HttpCallout) -> HttpResponse | None:
    """Send the callout to ``address`` over HTTP/1.1; None when the upstream cannot be reached (a failed call)."""
    headers = EnvoyHeaderMap(call.headers)
    connection = http.client.HTTPConnection(address[0], address[1], timeout=(call.timeout_ms or 30000) / 1000)
    try:
        connection.putrequest(headers.get(":method") or "GET", headers.get(":path") or "/",
                              skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", headers.get(":authority") or "")
        for key, value in call.headers:
            if not key.startswith(":"):
                connection.putheader(key, value)
        # What Envoy's async client adds on the way out.
        connection.putheader("x-envoy-internal", "true")
        if call.timeout_ms:
            connection.putheader("x-envoy-expected-rq-timeout-ms", str(call.timeout_ms))
        if call.body:
            connection.putheader("content-length", str(len(call.body)))
        connection.endheaders(call.body or None)
        reply = connection.getresponse()
        body = reply.read()
        return HttpResponse(reply.status, [(k.lower(), v) for k, v in reply.getheaders()], body)
    except OSError:
        return None
    finally:
        connection.close()


def real_grpc_call(address: tuple[str, int], call: GrpcCallout) -> GrpcReply:
    """Make the unary gRPC call at ``address`` (raw bytes in and out); errors come back as their status."""
    import grpc

    with grpc.insecure_channel(f"{address[0]}:{address[1]}") as channel:
        method = channel.unary_unary(f"/{call.service}/{call.method}", request_serializer=None,
                                     response_deserializer=None)
        try:
            answer, state = method.with_call(call.messages[0] if call.messages else b"",
                                             timeout=(call.timeout_ms or 30000) / 1000,
                                             metadata=[(k, v) for k, v in call.initial_metadata])
            return GrpcReply(0, [answer], list(state.initial_metadata() or []),
                                list(state.trailing_metadata() or []))
        except grpc.RpcError as error:
            return GrpcReply(error.code().value[0], [], [], list(error.trailing_metadata() or []),
                                error.details() or "")


def grpc_cluster_name(raw: str) -> str:
    """Envoy accepts a cluster name or a serialised GrpcService proto; take the cluster name."""
    if raw and raw[0] == "\n":  # field 1 (envoy_grpc), length-delimited
        data = raw.encode("latin-1", "replace")
        inner_length = data[1]
        inner = data[2 : 2 + inner_length]
        if inner and inner[0] == 0x0A:
            return inner[2 : 2 + inner[1]].decode()
    return raw
