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

Reading headers: ``stream.request`` and ``stream.response`` are what the
filter let through.  ``.header(name)`` gives one header (its first value if
repeated, None if absent); ``.forwarded_headers`` is the exact list of
pairs, in order and with repeats, for assertions on order or on every value
of a repeated header.  A callout's headers: ``call.header(name)``.

What the names are:

- ``Host``: one Envoy - ``load()`` a module, ``add_cluster(name, handler)``
  to answer callouts (or ``address=`` for a real upstream, ``healthy=False``
  for one with no healthy endpoint), ``advance(ms)`` to move the clock
  (ticks, callout timeouts: Envoy answers those itself), ``metric(name)``
  (counters, gauges), ``histogram(name)`` (the recorded values),
  ``log_lines()``, ``shared_data``;
- ``PluginVM``: a loaded plugin - ``exchange()``, ``http_stream()``,
  ``tcp_stream()``, ``log_messages()``, ``http_calls`` / ``grpc_calls``;
  load a module twice with one ``vm_id`` for two VMs sharing data and
  queues;
- ``HttpStream`` (``request`` and ``response``, each a ``Direction``;
  ``local_response``) and ``TcpStream``: traffic driven step by step;
- ``HttpCallout`` / ``GrpcCallout``: callouts the module made
  (``respond()``, ``reply()``, ``close()`` answer pending ones);
  ``HttpResponse`` / ``GrpcReply``: what a cluster handler answers;
  ``Cluster``: a declared upstream;
- ``LocalResponse``, ``LogRecord``: what the module sent and logged;
- ``WasmTrap``: a crash, with the Wasm backtrace and the module's last error
  logs (an SDK-built filter logs its Python traceback there);
- ``MeshextError``: what ``Host.load`` raises when the module refuses its
  configuration (or cannot be loaded), with ``where`` and ``fix``;
- ``Action`` (what callbacks answer), ``LogLevel`` (log levels, for
  ``log_messages(min_level)``), ``PeerType`` (who closed a TCP side).
"""

from __future__ import annotations

from meshext.errors import MeshextError
from meshext.runtime._host import Host
from meshext.runtime._plugin import PluginVM
from meshext.runtime._records import (
    Cluster,
    GrpcCallout,
    GrpcReply,
    HttpCallout,
    HttpResponse,
    LocalResponse,
    LogRecord,
    WasmTrap,
)
from meshext.runtime._streams import Direction, HttpStream, TcpStream
from meshext.sdk.abi import Action, LogLevel, PeerType

__all__ = [
    "Action", "Cluster", "Direction", "GrpcCallout", "GrpcReply", "Host", "HttpCallout", "HttpResponse",
    "HttpStream", "LocalResponse", "LogLevel", "LogRecord", "MeshextError", "PeerType", "PluginVM", "TcpStream",
    "WasmTrap",
]
