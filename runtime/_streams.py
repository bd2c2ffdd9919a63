"""HTTP streams and TCP connections, driven step by step by the test.

Each ``send_*`` call runs the ``proxy_on_*`` callbacks in Envoy's order and
applies Envoy's filter-chain rules (pausing, buffering while paused, local
replies, end of stream as log -> done -> delete).  The streams call into the
module through the VM's API (``Vm.callback``, ``Vm.end_context``) and group
their work with the host's ``step()`` and ``hold_dispatch()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshext.errors import MeshextError
from meshext.runtime._abi import Pairs
from meshext.runtime._contexts import HostContext
from meshext.runtime._properties import CONNECTION_DEFAULTS, request_attributes
from meshext.runtime._records import EnvoyHeaderMap, Headers, LocalResponse, as_pairs
from meshext.sdk.abi import Action, BufferType, MapType, PeerType, StreamType

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


class Direction:
    """One direction of an HTTP stream (``stream.request``, ``stream.response``): what the filter let through.

    ``header(name)`` reads a header as it went on (the first value of a
    repeated one); ``forwarded_headers`` is the exact list, in order, with
    repeats (None until the filter let the headers through);
    ``forwarded_body`` and ``forwarded_trailers`` likewise.  ``complete``
    says the whole direction went through, ``paused`` that the filter holds
    it, ``actions`` lists each callback with the action it returned.
    """

    def __init__(self) -> None:
        self.forwarded_headers: Pairs | None = None
        self.forwarded_body = bytearray()
        self.forwarded_trailers: Pairs | None = None
        self.complete = False
        self.actions: list[tuple[str, Action]] = []
        # What arrived and what the filter has made of it so far (the module's view).
        self._headers: EnvoyHeaderMap | None = None
        self._trailers: EnvoyHeaderMap | None = None
        self._buffer = bytearray()
        self._end_stream = False
        self._headers_paused = False
        self._body_paused = False
        self._trailers_paused = False
        # Envoy forgets a header map once its callback answered CONTINUE (it stays readable
        # while paused, and again in proxy_on_log).
        self._headers_visible = False
        self._trailers_visible = False

    @property
    def paused(self) -> bool:
        """The filter holds this direction (headers, body or trailers) until it continues."""
        return self._headers_paused or self._body_paused or self._trailers_paused

    def header(self, name: str) -> str | None:
        """The header ``name`` (any case) as the filter let it through, or None."""
        return EnvoyHeaderMap(self.forwarded_headers or []).get(name)


class HttpStream(HostContext):
    """One HTTP request/response through the filter, driven step by step by the test.

    ``send_request_headers/body/trailers`` and ``send_response_*`` deliver
    one part each and return the filter's answer, or None when Envoy would
    not call the filter (data held while the headers are paused, or the
    stream already answered or ended).  ``request`` / ``response`` are the
    two ``Direction``s (what the filter let through); ``local_response``
    holds a reply the filter generated.  The stream ends itself (log, done,
    delete) once the response is complete, like Envoy's; ``end()`` ends it
    earlier.  ``id`` is the context id the module sees.
    """

    def __init__(self, vm: Vm, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id)
        self.properties = properties
        self.filter_state = {}
        self.request = Direction()
        self.response = Direction()
        self.local_response: LocalResponse | None = None
        self.reset = False
        self.ended = False
        self._local_reply_pending = False
        self._in_log = False

    # what the module sees

    def _module_header_map(self, map_type: int) -> EnvoyHeaderMap | None:
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_REQUEST_TRAILERS):
            direction = self.request
        elif map_type in (MapType.HTTP_RESPONSE_HEADERS, MapType.HTTP_RESPONSE_TRAILERS):
            direction = self.response
        else:
            return None
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_RESPONSE_HEADERS):
            return direction._headers if (direction._headers_visible or self._in_log) else None
        return direction._trailers if (direction._trailers_visible or self._in_log) else None

    def _module_buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.HTTP_REQUEST_BODY and self.request._headers is not None:
            return self.request._buffer
        if buffer_type == BufferType.HTTP_RESPONSE_BODY and self.response._headers is not None:
            return self.response._buffer
        return None

    def _module_property(self, path: tuple[str, ...]) -> Any:
        if not path:
            return None
        connection = CONNECTION_DEFAULTS.get(".".join(path))
        if connection is not None:
            return connection
        if path[0] == "request" and len(path) >= 2:
            if path[1] == "protocol":
                return "HTTP/1.1"
            request_headers = self._module_header_map(MapType.HTTP_REQUEST_HEADERS)
            if path[1] == "headers" and len(path) == 3:
                return request_headers.get(path[2]) if request_headers else None
            getter = request_attributes(request_headers).get(path[1])
            return getter() if getter else None
        if path[0] == "response" and len(path) >= 2:
            headers = self.response._headers
            if path[1] == "code":
                status = headers.get(":status") if headers else None
                return int(status) if status else None
            headers = self._module_header_map(MapType.HTTP_RESPONSE_HEADERS)
            if path[1] == "headers":
                if len(path) == 3:
                    return headers.get(path[2]) if headers else None
                return headers.as_dict() if headers else None
            if path[1] == "code_details" and self.local_response is not None:
                return self.local_response.details
        return None

    # what the module does to the stream (proxy_continue_stream, proxy_close_stream,
    # proxy_send_local_response)

    def _continue_stream(self, stream_type: StreamType) -> None:
        direction = self.request if stream_type == StreamType.HTTP_REQUEST else self.response
        if self.ended or (direction is self.request and self.local_response is not None):
            return
        prefix = "proxy_on_request_" if direction is self.request else "proxy_on_response_"
        if direction._headers_paused:
            direction._headers_paused = False
            self._forward_headers(direction)
            # Data that arrived while stopped goes to this filter first (Envoy's CanStartFromCurrent).
            if direction._buffer:
                self._call_now(direction, prefix + "body", len(direction._buffer),
                               int(direction._end_stream and direction._trailers is None))
            if direction._trailers is not None and not direction.paused and not direction.complete:
                self._call_now(direction, prefix + "trailers", len(direction._trailers))
        elif direction._body_paused or direction._trailers_paused:
            # Trailers (if any) were already given to the filter when they arrived.
            direction._body_paused = direction._trailers_paused = False
            self._forward_body(direction)
            if direction._trailers is not None:
                self._forward_trailers(direction)

    def _close_stream(self, stream_type: StreamType) -> None:
        self.reset = True
        self._finish()

    def _local_response_requested(self, reply: LocalResponse) -> None:
        """Envoy sends the reply once the running callback has returned; until then the request stops."""
        self._local_reply_pending = True
        self._vm.host.defer(lambda: self._send_local_reply(reply))

    # the test drives these

    def send_request_headers(self, headers: Headers, end_stream: bool = False) -> Action | None:
        """Deliver the request headers (proxy_on_request_headers).

        ``end_stream`` says nothing follows in this direction.
        Returns the action the filter's callback answered, or None when the
        callback was not called: the stream has ended (e.g. a fail-closed
        500), or the filter answered the request locally.
        """
        with self._vm.host.step():
            return self._deliver_headers(self.request, "proxy_on_request_headers", headers, end_stream)

    def send_request_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        """Deliver a chunk of the request body (proxy_on_request_body, with the buffered size).

        ``end_stream`` says nothing follows in this direction.
        Returns the action the filter's callback answered, or None when the
        callback was not called: the stream has ended (e.g. a fail-closed
        500), or the filter answered the request locally.
        """
        with self._vm.host.step():
            return self._deliver_body(self.request, "proxy_on_request_body", chunk, end_stream)

    def send_request_trailers(self, trailers: Headers) -> Action | None:
        """Deliver the request trailers (proxy_on_request_trailers); they end the request."""
        with self._vm.host.step():
            return self._deliver_trailers(self.request, "proxy_on_request_trailers", trailers)

    def send_response_headers(self, headers: Headers, end_stream: bool = False) -> Action | None:
        """Deliver the upstream's response headers (proxy_on_response_headers).

        ``end_stream`` says nothing follows in this direction.
        Returns the action the filter's callback answered, or None when the
        callback was not called: the stream has ended (e.g. a fail-closed
        500), or the filter answered the request locally.
        """
        with self._vm.host.step():
            return self._deliver_headers(self.response, "proxy_on_response_headers", headers, end_stream)

    def send_response_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        """Deliver a chunk of the response body (proxy_on_response_body).

        ``end_stream`` says nothing follows in this direction.
        Returns the action the filter's callback answered, or None when the
        callback was not called: the stream has ended (e.g. a fail-closed
        500), or the filter answered the request locally.
        """
        with self._vm.host.step():
            return self._deliver_body(self.response, "proxy_on_response_body", chunk, end_stream)

    def send_response_trailers(self, trailers: Headers) -> Action | None:
        """Deliver the response trailers (proxy_on_response_trailers); they end the response."""
        with self._vm.host.step():
            return self._deliver_trailers(self.response, "proxy_on_response_trailers", trailers)

    def end(self) -> None:
        """Finish the stream now (downstream reset or test done): log, done, delete."""
        with self._vm.host.step():
            self._finish()

    # the machinery

    def _stopped(self, direction: Direction) -> bool:
        answered = self.local_response is not None or self._local_reply_pending
        return self.ended or (direction is self.request and answered)

    def _run(self, direction: Direction, callback: str, *args: int) -> Action:
        raw = self._vm.callback(callback, self, self.id, *args)
        action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        direction.actions.append((callback, action))
        return action

    def _deliver_headers(self, direction: Direction, callback: str, headers: Headers,
                         end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        direction._headers = EnvoyHeaderMap(as_pairs(headers))
        direction._headers_visible = True
        direction._end_stream = end_stream
        direction._headers_paused = True  # until the callback's answer says otherwise
        return self._call_now(direction, callback, len(direction._headers), int(end_stream))

    def _call_now(self, direction: Direction, callback: str, *args: int) -> Action:
        """Call a stream callback; apply its action before deferred actions (continue) run."""
        with self._vm.host.hold_dispatch():
            action = self._run(direction, callback, *args)
            if callback.endswith("_headers"):
                direction._headers_paused = action == Action.PAUSE
                direction._headers_visible = direction._headers_paused
                if not direction._headers_paused and not self._stopped(direction) \
                        and not self._local_reply_pending:
                    self._forward_headers(direction)
            elif callback.endswith("_body"):
                direction._body_paused = action == Action.PAUSE
                if not direction._body_paused and not self._local_reply_pending:
                    self._forward_body(direction)
            else:
                direction._trailers_paused = action == Action.PAUSE
                direction._trailers_visible = direction._trailers_paused
                if not direction._trailers_paused and not self._local_reply_pending:
                    direction._body_paused = False  # continuing at trailers releases a held body too
                    self._forward_body(direction)
                    self._forward_trailers(direction)
        return action

    def _deliver_body(self, direction: Direction, callback: str, chunk: bytes, end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        if direction._headers is None:
            raise MeshextError("body sent before headers", where="test", fix="send headers first")
        direction._buffer.extend(chunk)
        direction._end_stream = end_stream
        if direction._headers_paused:
            return None  # Envoy holds body data while headers are stopped (StopAllIteration)
        return self._call_now(direction, callback, len(direction._buffer), int(end_stream))

    def _deliver_trailers(self, direction: Direction, callback: str, trailers: Headers) -> Action | None:
        if self._stopped(direction):
            return None
        direction._trailers = EnvoyHeaderMap(as_pairs(trailers))
        direction._trailers_visible = True
        direction._end_stream = True
        if direction._headers_paused:
            return None
        return self._call_now(direction, callback, len(direction._trailers))

    def _forward_headers(self, direction: Direction) -> None:
        direction.forwarded_headers = list(direction._headers.pairs) if direction._headers else []
        if direction._end_stream and not direction._buffer and direction._trailers is None:
            self._direction_complete(direction)

    def _forward_body(self, direction: Direction) -> None:
        direction.forwarded_body.extend(direction._buffer)
        direction._buffer.clear()
        if direction._end_stream and direction._trailers is None:
            self._direction_complete(direction)

    def _forward_trailers(self, direction: Direction) -> None:
        direction.forwarded_trailers = list(direction._trailers.pairs) if direction._trailers else []
        self._direction_complete(direction)

    def _direction_complete(self, direction: Direction) -> None:
        direction.complete = True
        if direction is self.response:
            self._finish()

    def _send_local_reply(self, reply: LocalResponse) -> None:
        self._local_reply_pending = False
        if self.ended or self.response.forwarded_headers is not None:
            return  # Envoy: too late once response headers went downstream
        self.local_response = reply
        headers = local_reply_headers(reply)
        if self.response._headers is not None:
            # Sent while the upstream's response was in the filter: Envoy answers directly,
            # without running the reply through this filter again.
            self.response = Direction()
            self.response._headers = EnvoyHeaderMap(headers)
            self.response.forwarded_headers = list(self.response._headers.pairs)
            self.response.forwarded_body.extend(reply.body)
            self._direction_complete(self.response)
            return
        # From the request path: Envoy runs the reply through the encoder filters (this one too).
        self.response = Direction()
        self._deliver_headers(self.response, "proxy_on_response_headers", headers, end_stream=not reply.body)
        if reply.body and not self.ended:
            self._deliver_body(self.response, "proxy_on_response_body", reply.body, end_stream=True)

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._in_log = True  # Envoy hands the final header maps to the access-log phase
        try:
            self._vm.callback("proxy_on_log", self, self.id)
        finally:
            self._in_log = False
        self._vm.end_context(self, self._vm.callback("proxy_on_done", self, self.id))


def local_reply_headers(reply: LocalResponse) -> Pairs:
    """The headers of a local reply as Envoy 1.40 builds them: ``:status``, the filter's, then the body's.

    With a body Envoy adds ``content-length`` and, unless the filter gave
    one, ``content-type: text/plain``; without a body it drops both (its
    HTTP/1 codec then writes ``content-length: 0``).
    """
    headers = EnvoyHeaderMap([(":status", str(reply.status)), *reply.headers])
    if reply.body:
        headers.replace("content-length", str(len(reply.body)))
        if headers.get("content-type") is None:
            headers.add("content-type", "text/plain")
    else:
        headers.remove("content-length")
        headers.remove("content-type")
    return headers.pairs


class TcpStream(HostContext):
    """One TCP connection through a network filter, driven by the test.

    ``send_downstream_data`` / ``send_upstream_data`` deliver bytes and
    return the filter's answer; ``to_upstream`` / ``to_downstream`` collect
    what the filter let through, ``downstream_paused`` / ``upstream_paused``
    say it holds data.  ``close()`` ends the connection the way Envoy
    reports a normal end (checked against Envoy: the upstream closes, peer
    UNKNOWN, then Envoy closes the client side, peer LOCAL; then done, log,
    delete); ``upstream_closed`` / ``downstream_closed`` give other orders.
    ``new_connection_action`` is what proxy_on_new_connection answered.
    """

    def __init__(self, vm: Vm, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id)
        self.properties = properties
        self.filter_state = {}
        self.to_upstream = bytearray()
        self.to_downstream = bytearray()
        self.downstream_paused = False
        self.upstream_paused = False
        self.ended = False
        self.new_connection_action = Action.CONTINUE
        self._downstream = bytearray()  # data the filter has not let through yet
        self._upstream = bytearray()
        self._downstream_open = True
        self._upstream_open = True

    @property
    def downstream_open(self) -> bool:
        """Whether the client side of the connection is still open (False once either side closed it)."""
        return self._downstream_open

    @property
    def upstream_open(self) -> bool:
        """Whether the upstream side of the connection is still open."""
        return self._upstream_open

    def _module_property(self, path: tuple[str, ...]) -> Any:
        return CONNECTION_DEFAULTS.get(".".join(path))

    def _module_buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.DOWNSTREAM_DATA:
            return self._downstream
        if buffer_type == BufferType.UPSTREAM_DATA:
            return self._upstream
        return None

    # what the module does to the connection (proxy_continue_stream, proxy_close_stream)

    def _continue_stream(self, stream_type: StreamType) -> None:
        if stream_type == StreamType.DOWNSTREAM and self.downstream_paused:
            self.downstream_paused = False
            self.to_upstream.extend(self._downstream)
            self._downstream.clear()
        elif stream_type == StreamType.UPSTREAM and self.upstream_paused:
            self.upstream_paused = False
            self.to_downstream.extend(self._upstream)
            self._upstream.clear()

    def _close_stream(self, stream_type: StreamType) -> None:
        self.close()

    def send_downstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        """Bytes ``data`` from the client (proxy_on_downstream_data, with the buffered size).

        ``end_stream`` says the client sends nothing more; returns the action
        the filter answered.
        """
        with self._vm.host.step():
            return self._data(self._downstream, self.to_upstream, "proxy_on_downstream_data", data, end_stream)

    def send_upstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        """Bytes ``data`` from the upstream (proxy_on_upstream_data).

        ``end_stream`` says the upstream sends nothing more; returns the action
        the filter answered.
        """
        with self._vm.host.step():
            return self._data(self._upstream, self.to_downstream, "proxy_on_upstream_data", data, end_stream)

    def _data(self, pending: bytearray, forwarded: bytearray, callback: str, data: bytes, end_stream: bool) -> Action:
        pending.extend(data)
        raw = self._vm.callback(callback, self, self.id, len(pending), int(end_stream))
        action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        paused = action == Action.PAUSE
        if pending is self._downstream:
            self.downstream_paused = paused
        else:
            self.upstream_paused = paused
        if not paused:
            forwarded.extend(pending)
            pending.clear()
        return action

    def upstream_closed(self, peer: PeerType = PeerType.UNKNOWN) -> None:
        """The upstream side closed (proxy_on_upstream_connection_close); ``peer`` says which end closed it."""
        if self._upstream_open:
            self._upstream_open = False
            self._vm.callback("proxy_on_upstream_connection_close", self, self.id, int(peer))
            self._end_if_closed()

    def downstream_closed(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The client side closed (proxy_on_downstream_connection_close); ``peer`` says which end closed it."""
        if self._downstream_open:
            self._downstream_open = False
            self._vm.callback("proxy_on_downstream_connection_close", self, self.id, int(peer))
            self._end_if_closed()

    def close(self) -> None:
        """End the connection in Envoy's order for a normal end (upstream first, then the client)."""
        with self._vm.host.step():
            self.upstream_closed(PeerType.UNKNOWN)
            self.downstream_closed(PeerType.LOCAL)

    def _end_if_closed(self) -> None:
        """Both sides closed: done, log, delete (Envoy's TCP order, unlike HTTP's log first)."""
        if self.ended or self._upstream_open or self._downstream_open:
            return
        self.ended = True
        done = self._vm.callback("proxy_on_done", self, self.id)
        self._vm.callback("proxy_on_log", self, self.id)
        self._vm.end_context(self, done)
