"""HTTP streams and TCP connections, driven step by step by the test.

Each ``send_*`` call runs the ``proxy_on_*`` callbacks in Envoy's order and
applies Envoy's filter-chain rules (pausing, buffering while paused, local
replies, end of stream as log -> done -> delete).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshext.errors import MeshextError
from meshext.runtime import _abi as abi
from meshext.runtime._abi import Action, BufferType, MapType, Pairs, StreamType
from meshext.runtime._contexts import Context
from meshext.runtime._properties import CONNECTION_DEFAULTS, request_attributes
from meshext.runtime._records import HeaderMap, LocalResponse, as_pairs

if TYPE_CHECKING:
    from meshext.runtime._vm import PluginVM


class Direction:
    """One direction of an HTTP stream: what arrived, what the filter let through."""

    def __init__(self) -> None:
        self.headers: HeaderMap | None = None
        self.trailers: HeaderMap | None = None
        self.buffer = bytearray()
        self.end_stream = False
        self.headers_paused = False
        self.body_paused = False
        self.trailers_paused = False
        self.forwarded_headers: Pairs | None = None
        self.forwarded_body = bytearray()
        self.forwarded_trailers: Pairs | None = None
        self.complete = False
        # Envoy forgets a header map once its callback answered CONTINUE (it stays readable
        # while paused, and again in proxy_on_log).
        self.headers_visible = False
        self.trailers_visible = False
        self.actions: list[tuple[str, Action]] = []

    @property
    def paused(self) -> bool:
        return self.headers_paused or self.body_paused or self.trailers_paused

    def header(self, name: str) -> str | None:
        return HeaderMap(self.forwarded_headers or []).get(name)


class HttpStream(Context):
    """One HTTP request/response through the filter, driven step by step by the test.

    ``request`` / ``response`` record what the filter let through
    (``forwarded_headers``, ``forwarded_body``, ``forwarded_trailers``,
    ``complete``) and whether it is paused; ``local_response`` holds a reply
    the filter generated.  The stream ends itself (log, done, delete) once
    the response is complete, like Envoy's.  ``send_*`` return the filter's
    answer, or None when Envoy would not call the filter (data held while
    the headers are paused, or the stream already answered or ended).
    """

    def __init__(self, vm: PluginVM, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id, vm.root)
        self.properties = properties
        self.filter_state: dict[str, Any] = {}
        self.request = Direction()
        self.response = Direction()
        self.local_response: LocalResponse | None = None
        self._local_reply_pending = False
        self._in_log = False
        self.reset = False
        self.ended = False

    @property
    def request_headers(self) -> HeaderMap | None:
        """The request headers as the filter left them (what the upstream gets once forwarded)."""
        return self.request.headers

    @property
    def response_headers(self) -> HeaderMap | None:
        return self.response.headers

    # what the module sees

    def header_map(self, map_type: int) -> HeaderMap | None:
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_REQUEST_TRAILERS):
            direction = self.request
        elif map_type in (MapType.HTTP_RESPONSE_HEADERS, MapType.HTTP_RESPONSE_TRAILERS):
            direction = self.response
        else:
            return None
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_RESPONSE_HEADERS):
            return direction.headers if (direction.headers_visible or self._in_log) else None
        return direction.trailers if (direction.trailers_visible or self._in_log) else None

    def buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.HTTP_REQUEST_BODY and self.request.headers is not None:
            return self.request.buffer
        if buffer_type == BufferType.HTTP_RESPONSE_BODY and self.response.headers is not None:
            return self.response.buffer
        return None

    def property(self, path: tuple[str, ...]) -> Any:
        if not path:
            return None
        connection = CONNECTION_DEFAULTS.get(".".join(path))
        if connection is not None:
            return connection
        if path[0] == "request" and len(path) >= 2:
            if path[1] == "protocol":
                return "HTTP/1.1"
            request_headers = self.header_map(MapType.HTTP_REQUEST_HEADERS)
            if path[1] == "headers" and len(path) == 3:
                return request_headers.get(path[2]) if request_headers else None
            getter = request_attributes(request_headers).get(path[1])
            return getter() if getter else None
        if path[0] == "response" and len(path) >= 2:
            headers = self.response.headers
            if path[1] == "code":
                status = headers.get(":status") if headers else None
                return int(status) if status else None
            headers = self.header_map(MapType.HTTP_RESPONSE_HEADERS)
            if path[1] == "headers":
                if len(path) == 3:
                    return headers.get(path[2]) if headers else None
                return headers.as_dict() if headers else None
            if path[1] == "code_details" and self.local_response is not None:
                return self.local_response.details
        return None

    # the test drives these

    def send_request_headers(self, headers: Pairs | Mapping[str, str], end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._headers(self.request, "proxy_on_request_headers", headers, end_stream)

    def send_request_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._body(self.request, "proxy_on_request_body", chunk, end_stream)

    def send_request_trailers(self, trailers: Pairs | Mapping[str, str]) -> Action | None:
        with self.vm.host.step():
            return self._trailers(self.request, "proxy_on_request_trailers", trailers)

    def send_response_headers(self, headers: Pairs | Mapping[str, str], end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._headers(self.response, "proxy_on_response_headers", headers, end_stream)

    def send_response_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._body(self.response, "proxy_on_response_body", chunk, end_stream)

    def send_response_trailers(self, trailers: Pairs | Mapping[str, str]) -> Action | None:
        with self.vm.host.step():
            return self._trailers(self.response, "proxy_on_response_trailers", trailers)

    def end(self) -> None:
        """Finish the stream now (downstream reset or test done): log, done, delete."""
        with self.vm.host.step():
            self._finish()

    # the machinery

    def _stopped(self, direction: Direction) -> bool:
        return self.ended or (direction is self.request and (self.local_response is not None or self._local_reply_pending))

    def _run(self, direction: Direction, callback: str, *args: int) -> Action:
        raw = self.vm._callback(callback, self, self.id, *args)
        action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        direction.actions.append((callback, action))
        return action

    def _headers(self, direction: Direction, callback: str, headers: Pairs | Mapping[str, str],
                 end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        direction.headers = HeaderMap(as_pairs(headers))
        direction.headers_visible = True
        direction.end_stream = end_stream
        direction.headers_paused = True  # until the callback's answer says otherwise
        return self._call_now(direction, callback, len(direction.headers), int(end_stream))

    def _call_now(self, direction: Direction, callback: str, *args: int) -> Action:
        """Call a stream callback; apply its action before deferred actions (continue) run."""
        host = self.vm.host
        dispatching, host._dispatching = host._dispatching, True  # hold deferred actions
        try:
            action = self._run(direction, callback, *args)
            if callback.endswith("_headers"):
                direction.headers_paused = action == Action.PAUSE
                direction.headers_visible = direction.headers_paused
                if not direction.headers_paused and not self._stopped(direction) and not self._local_reply_pending:
                    self._forward_headers(direction)
            elif callback.endswith("_body"):
                direction.body_paused = action == Action.PAUSE
                if not direction.body_paused and not self._local_reply_pending:
                    self._forward_body(direction)
            else:
                direction.trailers_paused = action == Action.PAUSE
                direction.trailers_visible = direction.trailers_paused
                if not direction.trailers_paused and not self._local_reply_pending:
                    direction.body_paused = False  # continuing at trailers releases a held body too
                    self._forward_body(direction)
                    self._forward_trailers(direction)
        finally:
            host._dispatching = dispatching
        if host.auto_dispatch:
            host.dispatch()
        return action

    def _body(self, direction: Direction, callback: str, chunk: bytes, end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        if direction.headers is None:
            raise MeshextError("body sent before headers", where="test", fix="send headers first")
        direction.buffer.extend(chunk)
        direction.end_stream = end_stream
        if direction.headers_paused:
            return None  # Envoy holds body data while headers are stopped (StopAllIteration)
        return self._call_now(direction, callback, len(direction.buffer), int(end_stream))

    def _trailers(self, direction: Direction, callback: str, trailers: Pairs | Mapping[str, str]) -> Action | None:
        if self._stopped(direction):
            return None
        direction.trailers = HeaderMap(as_pairs(trailers))
        direction.trailers_visible = True
        direction.end_stream = True
        if direction.headers_paused:
            return None
        return self._call_now(direction, callback, len(direction.trailers))

    def _forward_headers(self, direction: Direction) -> None:
        direction.forwarded_headers = list(direction.headers.pairs) if direction.headers else []
        if direction.end_stream and not direction.buffer and direction.trailers is None:
            self._direction_complete(direction)

    def _forward_body(self, direction: Direction) -> None:
        direction.forwarded_body.extend(direction.buffer)
        direction.buffer.clear()
        if direction.end_stream and direction.trailers is None:
            self._direction_complete(direction)

    def _forward_trailers(self, direction: Direction) -> None:
        direction.forwarded_trailers = list(direction.trailers.pairs) if direction.trailers else []
        self._direction_complete(direction)

    def _direction_complete(self, direction: Direction) -> None:
        direction.complete = True
        if direction is self.response:
            self._finish()

    def _continue(self, stream_type: StreamType) -> None:
        direction = self.request if stream_type == StreamType.HTTP_REQUEST else self.response
        if self.ended or (direction is self.request and self.local_response is not None):
            return
        prefix = "proxy_on_request_" if direction is self.request else "proxy_on_response_"
        if direction.headers_paused:
            direction.headers_paused = False
            self._forward_headers(direction)
            # Data that arrived while stopped goes to this filter first (Envoy's CanStartFromCurrent).
            if direction.buffer:
                self._call_now(direction, prefix + "body", len(direction.buffer),
                               int(direction.end_stream and direction.trailers is None))
            if direction.trailers is not None and not direction.paused and not direction.complete:
                self._call_now(direction, prefix + "trailers", len(direction.trailers))
        elif direction.body_paused or direction.trailers_paused:
            # Trailers (if any) were already given to the filter when they arrived.
            direction.body_paused = direction.trailers_paused = False
            self._forward_body(direction)
            if direction.trailers is not None:
                self._forward_trailers(direction)

    def _close(self, stream_type: StreamType) -> None:
        self.reset = True
        self._finish()

    def _send_local_reply(self, reply: LocalResponse) -> None:
        self._local_reply_pending = False
        if self.ended or self.response.forwarded_headers is not None:
            return  # Envoy: too late once response headers went downstream
        self.local_response = reply
        headers = [(":status", str(reply.status))] + list(reply.headers)
        if reply.body:
            headers += [("content-length", str(len(reply.body))), ("content-type", "text/plain")]
        if self.response.headers is not None:
            # Sent while the upstream's response was in the filter: Envoy answers directly,
            # without running the reply through this filter again.
            self.response = Direction()
            self.response.headers = HeaderMap(headers)
            self.response.forwarded_headers = list(self.response.headers.pairs)
            self.response.forwarded_body.extend(reply.body)
            self._direction_complete(self.response)
            return
        # From the request path: Envoy runs the reply through the encoder filters (this one too).
        self.response = Direction()
        self._headers(self.response, "proxy_on_response_headers", headers, end_stream=not reply.body)
        if reply.body and not self.ended:
            self._body(self.response, "proxy_on_response_body", reply.body, end_stream=True)

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        vm = self.vm
        self._in_log = True  # Envoy hands the final header maps to the access-log phase
        try:
            vm._callback("proxy_on_log", self, self.id)
        finally:
            self._in_log = False
        if vm._callback("proxy_on_done", self, self.id) in (None, 1):
            vm._delete(self)
        else:
            vm._pending_done.add(self.id)


class TcpStream(Context):
    """One TCP connection through a network filter, driven by the test.

    ``send_downstream_data`` / ``send_upstream_data`` deliver bytes (``to_upstream``
    / ``to_downstream`` collect what the filter let through); ``close()`` ends the
    connection the way Envoy reports a normal end (checked against Envoy: the
    upstream closes, peer UNKNOWN, then Envoy closes the client side, peer LOCAL;
    then done, log, delete).  ``upstream_closed`` / ``downstream_closed`` give
    other orders.
    """

    def __init__(self, vm: PluginVM, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id, vm.root)
        self.properties = properties
        self.filter_state: dict[str, Any] = {}
        self.downstream = bytearray()
        self.upstream = bytearray()
        self.to_upstream = bytearray()
        self.to_downstream = bytearray()
        self.downstream_paused = False
        self.upstream_paused = False
        self.downstream_open = True
        self.upstream_open = True
        self.ended = False
        self.new_connection_action = Action.CONTINUE  # what proxy_on_new_connection answered

    def property(self, path: tuple[str, ...]) -> Any:
        return CONNECTION_DEFAULTS.get(".".join(path))

    def buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.DOWNSTREAM_DATA:
            return self.downstream
        if buffer_type == BufferType.UPSTREAM_DATA:
            return self.upstream
        return None

    def send_downstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        with self.vm.host.step():
            return self._data(self.downstream, self.to_upstream, "proxy_on_downstream_data", data, end_stream)

    def send_upstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        with self.vm.host.step():
            return self._data(self.upstream, self.to_downstream, "proxy_on_upstream_data", data, end_stream)

    def _data(self, pending: bytearray, forwarded: bytearray, callback: str, data: bytes, end_stream: bool) -> Action:
        pending.extend(data)
        raw = self.vm._callback(callback, self, self.id, len(pending), int(end_stream))
        action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        paused = action == Action.PAUSE
        if pending is self.downstream:
            self.downstream_paused = paused
        else:
            self.upstream_paused = paused
        if not paused:
            forwarded.extend(pending)
            pending.clear()
        return action

    def _continue(self, stream_type: StreamType) -> None:
        if stream_type == StreamType.DOWNSTREAM and self.downstream_paused:
            self.downstream_paused = False
            self.to_upstream.extend(self.downstream)
            self.downstream.clear()
        elif stream_type == StreamType.UPSTREAM and self.upstream_paused:
            self.upstream_paused = False
            self.to_downstream.extend(self.upstream)
            self.upstream.clear()

    def _close(self, stream_type: StreamType) -> None:
        self.close()

    def upstream_closed(self, peer: abi.PeerType = abi.PeerType.UNKNOWN) -> None:
        if self.upstream_open:
            self.upstream_open = False
            self.vm._callback("proxy_on_upstream_connection_close", self, self.id, int(peer))
            self._end_if_closed()

    def downstream_closed(self, peer: abi.PeerType = abi.PeerType.REMOTE) -> None:
        if self.downstream_open:
            self.downstream_open = False
            self.vm._callback("proxy_on_downstream_connection_close", self, self.id, int(peer))
            self._end_if_closed()

    def close(self) -> None:
        with self.vm.host.step():
            self.upstream_closed(abi.PeerType.UNKNOWN)
            self.downstream_closed(abi.PeerType.LOCAL)

    def _end_if_closed(self) -> None:
        """Both sides closed: done, log, delete (Envoy's TCP order, unlike HTTP's log first)."""
        if self.ended or self.upstream_open or self.downstream_open:
            return
        self.ended = True
        vm = self.vm
        done = vm._callback("proxy_on_done", self, self.id)
        vm._callback("proxy_on_log", self, self.id)
        if done in (None, 1):
            vm._delete(self)
        else:
            vm._pending_done.add(self.id)
