"""``PluginVM``: the test's handle on one loaded plugin (what ``Host.load`` returns)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshext.runtime._records import GrpcCallout, Headers, HttpCallout, LogRecord, as_pairs
from meshext.runtime._streams import HttpStream, TcpStream
from meshext.sdk.abi import LogLevel

if TYPE_CHECKING:
    from meshext.runtime._host import Host
    from meshext.runtime._vm import Vm


class PluginVM:
    """One plugin in its own Wasm VM, started like Envoy starts it (Envoy runs one per worker).

    Drive traffic with ``exchange()`` (a whole round trip) or
    ``http_stream()`` / ``tcp_stream()`` (step by step); read what the
    module logged with ``logs`` / ``log_messages()`` and the callouts it
    made with ``http_calls`` / ``grpc_calls``.  As a context manager it
    drains the plugin on exit (``shutdown()``), unless the module crashed.
    """

    def __init__(self, host: Host, vm: Vm) -> None:
        self.host = host
        self._vm = vm

    @property
    def name(self) -> str:
        """The plugin's name (Envoy's ``config.name``)."""
        return self._vm.name

    @property
    def root_id(self) -> str:
        """The root id the plugin runs as (Envoy's ``config.root_id``)."""
        return self._vm.root_id

    @property
    def vm_id(self) -> str:
        """The VM id: VMs with the same id share data and queues."""
        return self._vm.vm_id

    @property
    def failed(self) -> bool:
        """The module trapped: Envoy would stop using this VM, and so does the host."""
        return self._vm.failed

    @property
    def http_calls(self) -> list[HttpCallout]:
        """Every ``proxy_http_call`` the module made, oldest first."""
        return self._vm.callouts.http_calls

    @property
    def grpc_calls(self) -> list[GrpcCallout]:
        """Every gRPC call and stream the module opened, oldest first."""
        return self._vm.callouts.grpc_calls

    @property
    def logs(self) -> list[LogRecord]:
        """What this plugin logged (proxy_log, stdout, stderr), oldest first."""
        return self._vm.logs

    def log_messages(self, min_level: LogLevel = LogLevel.TRACE) -> list[str]:
        """The messages of ``logs`` at ``min_level`` or above."""
        return [record.message for record in self._vm.logs if record.level >= min_level]

    def http_stream(self, properties: Mapping[str, Any] | None = None) -> HttpStream:
        """A new HTTP stream to drive step by step; ``properties`` set Envoy attributes (``source.address``)."""
        return self._vm.http_stream(properties)

    def tcp_stream(self, properties: Mapping[str, Any] | None = None) -> TcpStream:
        """A new TCP connection to drive step by step (proxy_on_new_connection has run);
        ``properties`` set Envoy attributes (``source.address``)."""
        return self._vm.tcp_stream(properties)

    def exchange(self, method: str = "GET", path: str = "/", *, authority: str = "example.com",
                 headers: Headers = (), body: bytes = b"", response_status: int = 200,
                 response_headers: Headers = (), response_body: bytes = b"",
                 properties: Mapping[str, Any] | None = None) -> HttpStream:
        """One complete request/response round trip through the filter.

        The request is ``method`` ``path`` to ``authority`` with ``headers``
        (a dict or pairs) and ``body`` (none: the headers end it); the
        upstream answers ``response_status`` with ``response_headers`` and
        ``response_body``; ``properties`` set Envoy attributes
        (``source.address``).  The response is sent only if the request
        reached the upstream (not answered locally, not left paused); the
        stream then ends (log, done, delete) like Envoy ends it.  Returns the
        stream, to read what went through (``stream.request``,
        ``stream.response``, ``stream.local_response``).
        """
        stream = self.http_stream(properties)
        request_headers = [(":authority", authority), (":path", path), (":method", method), (":scheme", "http")]
        stream.send_request_headers(request_headers + as_pairs(headers), end_stream=not body)
        if body:
            stream.send_request_body(body, end_stream=True)
        if stream.request.complete and stream.local_response is None:
            all_response_headers = [(":status", str(response_status)), *as_pairs(response_headers)]
            stream.send_response_headers(all_response_headers, end_stream=not response_body)
            if response_body:
                stream.send_response_body(response_body, end_stream=True)
        return stream

    def shutdown(self) -> None:
        """Envoy's drain: proxy_on_done (then proxy_on_delete) on the root context."""
        self._vm.shutdown()

    def __enter__(self) -> PluginVM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.failed:
            self.shutdown()
