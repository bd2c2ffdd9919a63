"""The callouts of one VM: HTTP calls, gRPC calls and streams, from the module's call to its answer.

Envoy's rules, kept here: callouts belong to the root context; tokens
number HTTP calls 4, 8, 12, ... and keep gRPC calls (1 mod 4) and streams
(2 mod 4) apart; an HTTP call goes out with the headers Envoy's async
client adds; answers arrive on a later event-loop turn (``Host.post``); an
upstream's HTTP answer carries the router's ``x-envoy-upstream-service-time``;
a successful unary gRPC call gets ``proxy_on_grpc_receive`` only, a failed
one ``proxy_on_grpc_close`` only, its message followed by Envoy's response
code details (``{via_upstream}``).  When the upstream gives no answer,
Envoy's router gives its own (``_upstreams.RouterReply``): after the
call's timeout, when the connection is refused, and - as the call starts -
when the cluster has no healthy endpoint.  Answers come from the cluster's
handler, a real upstream (``_upstreams``), the test
(``HttpCallout.respond`` / ``fail``, ``GrpcCallout.reply`` / ``close``) or
the clock (timeouts of HTTP calls and unary gRPC calls).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshext.errors import MeshextError
from meshext.runtime._abi import Pairs
from meshext.runtime._records import (
    Cluster,
    EnvoyHeaderMap,
    GrpcCallout,
    GrpcHandler,
    GrpcReply,
    HttpCallout,
    HttpResponse,
    as_pairs,
)
from meshext.runtime._upstreams import (
    GRPC_UNAVAILABLE,
    NO_HEALTHY_UPSTREAM,
    UPSTREAM_TIMEOUT,
    RouterReply,
    grpc_status_message,
    grpc_target,
    real_grpc_call,
    real_http_call,
)
from meshext.sdk.abi import BufferType, MapType, Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm

GRPC_UNKNOWN = 2  # the status of a failed call whose answer gave none


class Callouts:
    """Every callout one VM made (``http_calls``, ``grpc_calls``) and the state of the pending ones."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self.http_calls: list[HttpCallout] = []
        self.grpc_calls: list[GrpcCallout] = []
        # What proxy_get_status answers: the status of the last gRPC call that closed.
        self.status: tuple[int, bytes] = (0, b"")
        self._pending_http: dict[int, HttpCallout] = {}
        self._open_grpc: dict[int, GrpcCallout] = {}
        self._http_token, self._grpc_call_token, self._grpc_stream_token = 0, 1, 2

    # -- HTTP ------------------------------------------------------------------

    def open_http(self, cluster_name: str, headers: Pairs, body: bytes, trailers: Pairs,
                  timeout_ms: int) -> HttpCallout | Status:
        """A new call with its token, or the status of Envoy's refusal.

        BAD_ARGUMENT: unknown cluster, or no :method/:path/:authority;
        INTERNAL_FAILURE: the cluster has no healthy endpoint (the token is
        used up all the same).
        """
        host = self._vm.host
        names = {key.lower() for key, _ in headers}
        cluster = host.clusters.get(cluster_name)
        if cluster is None or not {":method", ":path", ":authority"} <= names:
            return Status.BAD_ARGUMENT
        self._http_token += 4
        if not cluster.healthy:
            return Status.INTERNAL_FAILURE
        return HttpCallout(self._http_token, cluster_name, envoy_request_headers(headers, body, timeout_ms), body,
                           trailers, timeout_ms, self, started_ns=host.monotonic_ns,
                           deadline_ns=host.monotonic_ns + timeout_ms * 1_000_000)

    def start_http(self, call: HttpCallout) -> None:
        """Send the call (the module has its token): the answer comes on a later turn."""
        self.http_calls.append(call)
        self._pending_http[call.token] = call
        cluster = self._vm.host.clusters[call.cluster]
        self._vm.host.post(lambda: self._answer_http(cluster, call))

    def _answer_http(self, cluster: Cluster, call: HttpCallout) -> None:
        if call.token not in self._pending_http:
            return
        if cluster.address is not None:
            answer = real_http_call(cluster.address, call)
            if isinstance(answer, RouterReply):
                self.deliver_router_reply(call, answer)
            else:
                self.deliver_http_response(call, answer)
        elif cluster.http_handler is not None:
            response = cluster.http_handler(call)
            if response is not None:
                self.deliver_http_response(call, response)

    def answer_http(self, call: HttpCallout, response: HttpResponse | None) -> None:
        """The test answers a pending call (None: the upstream resets it), then what the answer set off runs."""
        self.deliver_http_response(call, response)
        self._vm.host.dispatch()

    def deliver_http_response(self, call: HttpCallout, response: HttpResponse | None) -> None:
        """proxy_on_http_call_response with the upstream's headers, body and trailers (None: a reset)."""
        if response is None:
            self._deliver_http(call, None, EnvoyHeaderMap(), b"", EnvoyHeaderMap())
            return
        # Envoy's async client runs a router, which adds its timing header to an upstream's answer.
        elapsed_ms = max(0, (self._vm.host.monotonic_ns - call.started_ns) // 1_000_000)
        headers = EnvoyHeaderMap([(":status", str(response.status)), *as_pairs(response.headers),
                                  ("x-envoy-upstream-service-time", str(elapsed_ms))])
        self._deliver_http(call, response, headers, bytes(response.body), EnvoyHeaderMap(as_pairs(response.trailers)))

    def deliver_router_reply(self, call: HttpCallout, reply: RouterReply) -> None:
        """proxy_on_http_call_response with the answer Envoy's router made itself (no timing header)."""
        response = reply.http_response()
        headers = EnvoyHeaderMap([(":status", str(response.status)), *as_pairs(response.headers)])
        self._deliver_http(call, response, headers, response.body, EnvoyHeaderMap())

    def _deliver_http(self, call: HttpCallout, response: HttpResponse | None, headers: EnvoyHeaderMap, body: bytes,
                      trailers: EnvoyHeaderMap) -> None:
        if self._pending_http.pop(call.token, None) is None:
            raise MeshextError(f"HTTP callout {call.token} was already answered", where="test",
                               fix="answer each callout once")
        call.response = response
        call.failed = response is None
        vm = self._vm
        with vm.handing(maps={MapType.HTTP_CALL_RESPONSE_HEADERS: headers,
                              MapType.HTTP_CALL_RESPONSE_TRAILERS: trailers},
                        buffers={BufferType.HTTP_CALL_RESPONSE_BODY: bytearray(body)}):
            vm.callback("proxy_on_http_call_response", vm.root, vm.root.id, call.token, len(headers), len(body),
                        len(trailers))

    # -- gRPC ------------------------------------------------------------------

    def open_grpc(self, is_stream: bool, upstream: bytes, service: str, method: str, metadata: Pairs,
                  message: bytes | None, timeout_ms: int) -> GrpcCallout | Status:
        """A new call or stream with its token, or the status of Envoy's refusal.

        PARSE_FAILURE: unknown cluster; INTERNAL_FAILURE: the cluster has no
        healthy endpoint, and once the running callback has returned the
        module gets ``proxy_on_grpc_close`` (UNAVAILABLE) for the token it
        never saw.
        """
        host = self._vm.host
        cluster_name, authority = grpc_target(upstream)
        cluster = host.clusters.get(cluster_name)
        if cluster is None:
            return Status.PARSE_FAILURE
        # Envoy keeps gRPC calls and streams apart from HTTP callouts by token residue mod 4.
        if is_stream:
            self._grpc_stream_token += 4
            token = self._grpc_stream_token
        else:
            self._grpc_call_token += 4
            token = self._grpc_call_token
        call = GrpcCallout(token, cluster_name, service, method, metadata, [] if message is None else [message],
                           timeout_ms, is_stream, self, authority=authority,
                           deadline_ns=host.monotonic_ns + timeout_ms * 1_000_000 if timeout_ms else 0)
        if not cluster.healthy:
            host.defer(lambda: self._finish_grpc(call, GRPC_UNAVAILABLE, NO_HEALTHY_UPSTREAM.grpc_message, []))
            return Status.INTERNAL_FAILURE
        return call

    def start_grpc(self, call: GrpcCallout) -> None:
        """Open the call (the module has its token); a unary call's answer comes on a later turn."""
        self.grpc_calls.append(call)
        self._open_grpc[call.token] = call
        if not call.is_stream:
            cluster = self._vm.host.clusters[call.cluster]
            self._vm.host.post(lambda: self._answer_grpc(cluster, call))

    def grpc_call(self, token: int) -> GrpcCallout | None:
        """The open call or stream with this token."""
        return self._open_grpc.get(token)

    def send_grpc_message(self, call: GrpcCallout, message: bytes, end_stream: bool) -> None:
        """The module sent a message on a stream: the handler sees the stream as it was then."""
        call.messages.append(message)
        if end_stream:
            call.closed_by_module = True
        handler = self._vm.host.clusters[call.cluster].grpc_handler
        if handler is not None:
            as_sent = dataclasses.replace(call, messages=list(call.messages))
            self._vm.host.post(lambda: self._stream_handler(handler, call, as_sent))

    def cancel_grpc(self, token: int) -> bool:
        """proxy_grpc_cancel: no answer will reach the module; False if no such call is open."""
        call = self._open_grpc.pop(token, None)
        if call is None:
            return False
        call.cancelled = True
        return True

    def close_grpc(self, token: int) -> bool:
        """proxy_grpc_close: the module is done sending (a unary call is dropped); False if no such call."""
        call = self._open_grpc.get(token)
        if call is None:
            return False
        call.closed_by_module = True
        if not call.is_stream:
            self._open_grpc.pop(call.token, None)
            call.cancelled = True
        return True

    def answer_grpc(self, call: GrpcCallout, message: bytes) -> None:
        """The test answers with a message (a unary call then succeeds), then what it set off runs."""
        if call.finished:
            raise MeshextError(f"gRPC call {call.token} has already ended", where="test",
                               fix="answer a call before it ends (a unary call ends at its timeout)")
        if call.is_stream:
            self._grpc_message(call, message)
        else:
            self._grpc_unary_success(call, message)
        self._vm.host.dispatch()

    def end_grpc(self, call: GrpcCallout, status: int, status_message: str, trailing: Pairs) -> None:
        """The test ends a stream or fails a call with a status, then what it set off runs."""
        if not call.is_stream:
            status_message = grpc_status_message(status_message)
        self._finish_grpc(call, status, status_message, trailing)
        self._vm.host.dispatch()

    def _answer_grpc(self, cluster: Cluster, call: GrpcCallout) -> None:
        if call.finished or call.cancelled:
            return
        response: GrpcReply | RouterReply | None = None
        if cluster.address is not None:
            response = real_grpc_call(cluster.address, call)
        elif cluster.grpc_handler is not None:
            response = cluster.grpc_handler(call)
        if response is None:
            return
        if isinstance(response, RouterReply):
            self._finish_grpc(call, GRPC_UNAVAILABLE, response.grpc_message, [])
        elif response.status == 0 and response.messages:
            self._grpc_unary_success(call, response.messages[0])
        else:
            self._finish_grpc(call, response.status or GRPC_UNKNOWN, grpc_status_message(response.status_message),
                              [])

    def _stream_handler(self, handler: GrpcHandler, call: GrpcCallout, as_sent: GrpcCallout) -> None:
        if call.finished or call.cancelled:
            return
        response = handler(as_sent)
        if response is None:
            return
        if response.initial_metadata:
            self._grpc_metadata(call, MapType.GRPC_CALL_INITIAL_METADATA, as_pairs(response.initial_metadata))
        for message in response.messages:
            self._grpc_message(call, message)
        if as_sent.closed_by_module or response.status != 0:
            self._finish_grpc(call, response.status, response.status_message,
                              as_pairs(response.trailing_metadata))

    def _grpc_unary_success(self, call: GrpcCallout, message: bytes) -> None:
        """Envoy answers a successful unary call with proxy_on_grpc_receive only: no metadata, no close."""
        call.finished = True
        self._open_grpc.pop(call.token, None)
        self._grpc_message(call, message)

    def _grpc_metadata(self, call: GrpcCallout, map_type: MapType, pairs: Pairs) -> None:
        callback = ("proxy_on_grpc_receive_initial_metadata" if map_type == MapType.GRPC_CALL_INITIAL_METADATA
                    else "proxy_on_grpc_receive_trailing_metadata")
        vm = self._vm
        with vm.handing(maps={map_type: EnvoyHeaderMap(pairs)}):
            vm.callback(callback, vm.root, vm.root.id, call.token, len(pairs))

    def _grpc_message(self, call: GrpcCallout, message: bytes) -> None:
        vm = self._vm
        with vm.handing(buffers={BufferType.GRPC_CALL_MESSAGE: bytearray(message)}):
            vm.callback("proxy_on_grpc_receive", vm.root, vm.root.id, call.token, len(message))

    def _finish_grpc(self, call: GrpcCallout, status: int, status_message: str, trailing: Pairs) -> None:
        if call.finished:
            return
        call.finished = True
        self._open_grpc.pop(call.token, None)
        if trailing:
            self._grpc_metadata(call, MapType.GRPC_CALL_TRAILING_METADATA, trailing)
        self.status = (status, status_message.encode())
        vm = self._vm
        vm.callback("proxy_on_grpc_close", vm.root, vm.root.id, call.token, status)

    # -- the clock ---------------------------------------------------------------

    def timers(self) -> list[tuple[int, Callable[[], None]]]:
        """(deadline, what fires then) for each pending call with a timeout: Envoy's router answers it."""
        timers: list[tuple[int, Callable[[], None]]] = [
            (call.deadline_ns, functools.partial(self.deliver_router_reply, call, UPSTREAM_TIMEOUT))
            for call in self._pending_http.values() if call.timeout_ms]
        timers += [(call.deadline_ns, functools.partial(self._finish_grpc, call, GRPC_UNAVAILABLE,
                                                        UPSTREAM_TIMEOUT.grpc_message, []))
                   for call in self._open_grpc.values() if call.deadline_ns and not call.is_stream]
        return timers


def envoy_request_headers(headers: Pairs, body: bytes, timeout_ms: int) -> Pairs:
    """A callout's headers as its cluster receives them: the module's, then what Envoy's async client adds."""
    sent = list(headers)
    if body and not any(key.lower() == "content-length" for key, _ in headers):
        sent.append(("content-length", str(len(body))))
    sent.append(("x-envoy-internal", "true"))
    if timeout_ms:
        sent.append(("x-envoy-expected-rq-timeout-ms", str(timeout_ms)))
    return sent
