"""The test API filter authors use: ``from meshext.testing import Host, Action``.

A test loads a module into a ``Host`` (one simulated Envoy), pushes requests
and responses through it and asserts on what the filter did::

    from meshext.testing import Host, Action

    def test_adds_header():
        host = Host()
        plugin = host.load("filter.wasm", config='{"greeting": "hi"}')
        stream = plugin.exchange("GET", "/hello")
        assert stream.request.header("x-greeting") == "hi"      # what the upstream got
        assert stream.response.header("x-served-by") == "meshext"
        assert plugin.log_messages() == ["saw /hello"]

Step by step, for pauses and bodies::

        stream = plugin.http_stream()
        assert stream.send_request_headers({":path": "/", ":method": "POST"}) == Action.CONTINUE
        assert stream.send_request_body(b"part 1") == Action.PAUSE
        stream.send_request_body(b"part 2", end_stream=True)
        assert stream.request.forwarded_body == b"part 1part 2!"

Other controls: ``host.advance(ms)`` moves the clock and fires ticks;
``host.add_cluster(name, handler)`` answers callouts (or ``address=`` for a
real upstream); ``plugin.http_calls`` / ``plugin.grpc_calls`` list callouts
(``respond()`` answers pending ones); load a module twice with one ``vm_id``
for two VMs sharing data and queues; ``host.metric(name)`` reads metrics.
A crash raises ``WasmTrap`` with the Wasm backtrace and the module's last
error logs (an SDK-built filter logs its Python traceback there).
"""

from __future__ import annotations

from meshext.runtime._abi import Action, BufferType, LogLevel, MapType, MetricType, Status, StreamType
from meshext.runtime._host import Host
from meshext.runtime._records import (
    Cluster,
    GrpcCallout,
    GrpcResponse,
    HeaderMap,
    HttpCallout,
    HttpResponse,
    LocalResponse,
    LogRecord,
    WasmTrap,
)
from meshext.runtime._streams import HttpStream, TcpStream
from meshext.runtime._vm import PluginVM

__all__ = [
    "Action", "BufferType", "Cluster", "GrpcCallout", "GrpcResponse", "HeaderMap", "Host", "HttpCallout",
    "HttpResponse", "HttpStream", "LocalResponse", "LogLevel", "LogRecord", "MapType", "MetricType",
    "PluginVM", "Status", "StreamType", "TcpStream", "WasmTrap",
]
