"""meshext.sdk: write Envoy filters in Python.

A filter is a :class:`RootContext` subclass whose ``http_context`` (or
``stream_context``) class overrides the callbacks it needs::

    from meshext.sdk import Action, HttpContext, RootContext

    class AddPathLength(HttpContext):
        def on_request_headers(self, end_of_stream):
            path = self.request.headers.get(":path", "")
            self.request.headers.add("x-path-length", str(len(path)))
            return Action.CONTINUE

    class Root(RootContext):
        http_context = AddPathLength

`meshext build` compiles it, with CPython, into a Proxy-Wasm module that
stock Envoy runs.  This package is what runs inside that module; importing
it elsewhere works (for editors and type checkers) but host calls fail.
"""

from meshext.sdk import properties
from meshext.sdk.abi import Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType
from meshext.sdk.callouts import CalloutError, GrpcResponse, GrpcStream, GrpcStreamHandler, HttpCallResponse
from meshext.sdk.contexts import FailPolicy, HttpContext, RootContext, StreamContext
from meshext.sdk.host import HostError
from meshext.sdk.log import log
from meshext.sdk.messages import Body, HeaderMap, Message
from meshext.sdk.metrics import Counter, Gauge, Histogram
from meshext.sdk.shared import CasMismatch, SharedData, SharedQueue

__all__ = [
    "Action", "Body", "BufferType", "CalloutError", "CasMismatch", "Counter", "FailPolicy", "Gauge",
    "GrpcResponse", "GrpcStream", "GrpcStreamHandler", "HeaderMap", "Histogram", "HostError", "HttpCallResponse",
    "HttpContext", "LogLevel", "MapType", "Message", "MetricType", "PeerType", "RootContext", "SharedData",
    "SharedQueue", "Status", "StreamContext", "StreamType", "log", "properties",
]
