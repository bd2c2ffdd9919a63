"""Differential conformance: run one scenario in real Envoy and in this host, compare.

A scenario is a module, its plugin configuration, a list of HTTP/1.1
requests and the answer a local upstream gives.  Both runs produce an
``Observation``: what the upstream received (method, path, headers, body),
what the client received (status, headers, body - local replies included),
the module's log lines and its metrics.  ``compare`` lists every difference;
an empty list means the host behaved like Envoy 1.40 for that scenario.

Envoy adds a few things of its own that no filter sees (``date`` and
``server`` on responses to the client, ``connection``); those are dropped
from the Envoy side before comparing.  On the host side the requests are
given to the filter exactly as Envoy's HTTP/1 codec and connection manager
present them: pseudo-headers from the request line and ``Host``, the client's
headers in order, ``x-forwarded-proto: http`` appended, and a body as one
data chunk followed by an empty end-of-stream chunk.

Callouts can also go to upstreams that give no whole answer
(``FailingUpstreams``: one that never answers, a port nothing listens on, a
cluster without endpoints, one that breaks off its answer), so that what
Envoy answers in their place is compared too.
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshext.envoy import EnvoyProcess
from meshext.testing import Host, LogLevel

Pairs = list[tuple[str, str]]

# Headers Envoy's connection manager adds after the filter chain ran.
ENVOY_ONLY_RESPONSE_HEADERS = {"date", "server", "connection"}


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    headers: Pairs = field(default_factory=list)
    body: bytes = b""
    authority: str = "example.com"
    # With trailers the body goes chunked (one chunk), then the trailers.
    trailers: Pairs = field(default_factory=list)


@dataclass
class UpstreamReply:
    status: int = 200
    headers: Pairs = field(default_factory=lambda: [("content-type", "text/plain")])
    body: bytes = b"hello from upstream"


@dataclass
class Scenario:
    name: str
    module: Path
    config: str
    root_id: str
    requests: list[Request]
    upstream: UpstreamReply = field(default_factory=UpstreamReply)
    metrics: list[str] = field(default_factory=list)
    plugin_name: str = "conformance"
    vm_id: str = "conformance_vm"
    # Environment variables of the VM (Envoy: vm_config.environment_variables.key_values).
    env: dict[str, str] = field(default_factory=dict)
    # Also run a real gRPC server as cluster "grpc_upstream": echo.Echo/Say answers b"echo:" + request,
    # or fails with PERMISSION_DENIED (7) when the request is b"/fail", with UNAVAILABLE (14) and no
    # message when it is b"/fail-quietly".
    grpc_upstream: bool = False
    # Also declare the clusters of FailingUpstreams ("silent", "refused", "no_endpoints", "reset"), whose
    # callouts get no whole answer from an upstream.
    failing_upstreams: bool = False
    # Log lines written from asynchronous host events (queue notifications):
    # Envoy runs them on a later event-loop turn, so where they fall between
    # one stream's callbacks depends on how the client's bytes arrive.  They
    # are compared as their own ordered sequence.
    async_log_prefixes: tuple[str, ...] = ()


@dataclass
class TcpScenario:
    """A network (TCP) filter between a client and an echo upstream (answers b"pong:" + data)."""

    name: str
    module: Path
    config: str
    root_id: str
    messages: list[bytes]
    metrics: list[str] = field(default_factory=list)
    plugin_name: str = "conformance"
    vm_id: str = "conformance_vm"


@dataclass
class Observation:
    startup_logs: set[str]  # distinct lines: Envoy starts the plugin in several VMs
    logs: list[str]  # in order, from the first request on
    upstream_requests: list[dict[str, Any]]  # method, path, headers, body; callouts included
    responses: list[dict[str, Any]]  # status, headers, body the client received
    metrics: dict[str, int | None]


def compare(scenario: Scenario, envoy: Observation, host: Observation) -> list[str]:
    """Human-readable differences, each naming the scenario and what differed."""
    problems: list[str] = []
    prefix = f"scenario {scenario.name!r}"
    if envoy.startup_logs != host.startup_logs:
        problems.append(f"{prefix}: start-up logs differ\n  envoy: {sorted(envoy.startup_logs)}\n"
                        f"  host:  {sorted(host.startup_logs)}")
    asynchronous = getattr(scenario, "async_log_prefixes", ())
    for kind, keep in (("logs during requests", lambda line: not line.startswith(asynchronous)),
                       ("logs of asynchronous events", lambda line: line.startswith(asynchronous))):
        seen_envoy = [line for line in envoy.logs if keep(line)]
        seen_host = [line for line in host.logs if keep(line)]
        if seen_envoy != seen_host:
            problems.append(f"{prefix}: {kind} differ\n  envoy: {seen_envoy}\n  host:  {seen_host}")
    if envoy.upstream_requests != host.upstream_requests:
        problems.append(f"{prefix}: the upstream received different requests\n"
                        f"  envoy: {envoy.upstream_requests}\n  host:  {host.upstream_requests}")
    for index, (envoy_response, host_response) in enumerate(zip(envoy.responses, host.responses, strict=False)):
        if envoy_response != host_response:
            problems.append(f"{prefix}, request {index}: the client received different responses\n"
                            f"  envoy: {envoy_response}\n  host:  {host_response}")
    if envoy.metrics != host.metrics:
        problems.append(f"{prefix}: metrics differ\n  envoy: {envoy.metrics}\n  host:  {host.metrics}")
    return problems


# ---------------------------------------------------------------------------
# In this host


def run_in_host(scenario: Scenario) -> Observation:
    upstream = _Upstream(scenario.upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    grpc_server, grpc_port = _grpc_echo_server() if scenario.grpc_upstream else (None, 0)
    failing = FailingUpstreams() if scenario.failing_upstreams else None
    try:
        return _run_in_host(scenario, upstream, grpc_port, failing)
    finally:
        upstream.shutdown()
        upstream.server_close()
        if grpc_server is not None:
            grpc_server.stop(None)
        if failing is not None:
            failing.close()


def _run_in_host(scenario: Scenario, upstream_server: _Upstream, grpc_port: int,
                 failing: FailingUpstreams | None) -> Observation:
    host = Host(log_level=LogLevel.TRACE)
    # Callouts to "upstream" really go to the loopback server, as Envoy's do.
    host.add_cluster("upstream", address=("127.0.0.1", upstream_server.server_address[1]))
    if grpc_port:
        host.add_cluster("grpc_upstream", address=("127.0.0.1", grpc_port))
    if failing is not None:
        failing.declare(host)
    vm = host.load(scenario.module, config=scenario.config, name=scenario.plugin_name,
                   root_id=scenario.root_id, vm_id=scenario.vm_id, env=scenario.env)
    startup = {_log_line(record.level, record.message) for record in host.logs}
    first_request_log = len(host.logs)
    responses = []
    for request in scenario.requests:
        stream = vm.http_stream()
        headers = [(":authority", request.authority), (":path", request.path), (":method", request.method),
                   (":scheme", "http"), *request.headers]
        # Envoy's HTTP/1 codec keeps content-length but drops transfer-encoding (the router re-adds it).
        if request.body and not request.trailers:
            headers.append(("content-length", str(len(request.body))))
        headers.append(("x-forwarded-proto", "http"))
        with host.step():  # the client's request arrives in one read: one event-loop turn
            stream.send_request_headers(headers, end_stream=not (request.body or request.trailers))
            if request.trailers:
                stream.send_request_body(request.body, end_stream=False)
                stream.send_request_trailers(request.trailers)
            elif request.body:
                stream.send_request_body(request.body, end_stream=False)
                stream.send_request_body(b"", end_stream=True)
        if stream.local_response is None and stream.request.complete:
            # What Envoy's router would send: the filter's headers, :authority as host, the body
            # (chunked when the filter dropped content-length).
            forwarded = stream.request.forwarded_headers or []
            pseudo = dict(pair for pair in forwarded if pair[0].startswith(":"))
            plain = [pair for pair in forwarded if not pair[0].startswith(":")]
            body = bytes(stream.request.forwarded_body)
            if body and not any(key == "content-length" for key, _ in plain):
                plain.append(("transfer-encoding", "chunked"))
            upstream_server.received.append({
                "method": pseudo.get(":method"), "path": pseudo.get(":path"),
                "headers": [("host", pseudo.get(":authority", "")), *plain], "body": body,
                "trailers": list(stream.request.forwarded_trailers or []),
            })
            reply = scenario.upstream
            reply_headers = [(":status", str(reply.status)), *reply.headers,
                             ("content-length", str(len(reply.body)))]
            with host.step():  # likewise the upstream's answer
                stream.send_response_headers(reply_headers, end_stream=not reply.body)
                if reply.body:
                    stream.send_response_body(reply.body, end_stream=False)
                    stream.send_response_body(b"", end_stream=True)
        forwarded_response = stream.response.forwarded_headers or []
        response_headers = [pair for pair in forwarded_response if not pair[0].startswith(":")]
        response_body = bytes(stream.response.forwarded_body)
        if not any(key == "content-length" for key, _ in response_headers):
            # Envoy's HTTP/1 codec: an answer without a body gets content-length 0, others go chunked.
            bodiless = not response_body and not stream.response.forwarded_trailers
            response_headers.append(("content-length", "0") if bodiless else ("transfer-encoding", "chunked"))
        responses.append({"status": int(dict(forwarded_response).get(":status", "0")),
                          "headers": response_headers, "body": response_body})
    logs = [_log_line(record.level, record.message) for record in host.logs[first_request_log:]]
    return Observation(startup, logs, upstream_server.received, responses,
                       {name: host.metric(name) for name in scenario.metrics})


def _log_line(level: int, message: str) -> str:
    return f"{LogLevel(level).name.lower()}: {message}"


# ---------------------------------------------------------------------------
# In Envoy


class _Upstream(http.server.ThreadingHTTPServer):
    """A loopback HTTP/1.1 server that records requests and answers one fixed reply."""

    daemon_threads = True

    def __init__(self, reply: UpstreamReply) -> None:
        self.reply = reply
        self.received: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def _handle(self) -> None:
        trailers = []
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer lines, then an empty line (http.server has no chunked support).
                    while (line := self.rfile.readline().strip()):
                        name, _, value = line.decode().partition(":")
                        trailers.append((name.strip().lower(), value.strip()))
                    break
                body.extend(self.rfile.read(size))
                self.rfile.readline()
        else:
            body = bytearray(self.rfile.read(int(self.headers.get("content-length") or 0)))
        self.server.received.append({"method": self.command, "path": self.path,
                                     "headers": [(k, v) for k, v in self.headers.items()], "body": bytes(body),
                                     "trailers": trailers})
        reply = self.server.reply
        # send_response_only: no Server/Date headers, so the filter sees exactly reply.headers.
        self.send_response_only(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, *args: object) -> None:
        pass


def _grpc_echo_server() -> tuple[Any, int]:
    import grpc

    def say(request: bytes, context: Any) -> bytes:
        if request == b"/fail":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused by the echo server")
        if request == b"/fail-quietly":
            context.abort(grpc.StatusCode.UNAVAILABLE, "")
        return b"echo:" + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class FailingUpstreams:
    """Clusters whose callouts get no whole answer from an upstream.

    ``silent`` accepts the connection and the request but never answers (the
    listening socket is never accepted from: the kernel completes the
    handshake); ``refused`` is a port nothing listens on; ``no_endpoints``
    has no endpoints at all (Envoy: no healthy upstream); ``reset`` answers
    200 with a content-length of 100, sends 7 bytes of body and closes.
    """

    def __init__(self) -> None:
        self.silent = socket.create_server(("127.0.0.1", 0), backlog=16)
        with socket.create_server(("127.0.0.1", 0)) as closed:
            self.refused_port = closed.getsockname()[1]
        self.reset = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve_reset, daemon=True).start()

    def _serve_reset(self) -> None:
        try:
            while True:
                connection, _ = self.reset.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        except OSError:
            return  # closed

    def clusters(self) -> list[dict[str, Any]]:
        return [_static_cluster("silent", self.silent.getsockname()[1]),
                _static_cluster("refused", self.refused_port), _static_cluster("no_endpoints", None),
                _static_cluster("reset", self.reset.getsockname()[1])]

    def declare(self, host: Host) -> None:
        """The same clusters in the test host."""
        host.add_cluster("silent", address=self.silent.getsockname()[:2])
        host.add_cluster("refused", address=("127.0.0.1", self.refused_port))
        host.add_cluster("no_endpoints", healthy=False)
        host.add_cluster("reset", address=self.reset.getsockname()[:2])

    def close(self) -> None:
        self.silent.close()
        self.reset.close()


def _static_cluster(name: str, port: int | None, http2: bool = False) -> dict[str, Any]:
    endpoints = [] if port is None else [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    }
    protocol = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {"enable_trailers": True}}
    cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": protocol}}
    return cluster


def envoy_bootstrap(scenario: Scenario, upstream_port: int, grpc_port: int = 0,
                    failing: FailingUpstreams | None = None) -> dict[str, Any]:
    """A listener with the Wasm filter (V8, module from a local file) routing to the upstream."""
    wasm_filter = {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": scenario.plugin_name,
                "root_id": scenario.root_id,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": scenario.config},
                "vm_config": {"vm_id": scenario.vm_id, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(Path(scenario.module).resolve())}},
                              "environment_variables": {"key_values": scenario.env}},
            },
        },
    }
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "suppress_envoy_headers": True}}
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "conformance",
        "generate_request_id": False,
        "http_protocol_options": {"enable_trailers": True},
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": [wasm_filter, router],
    }
    return {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": connection_manager}]}]}],
        "clusters": [_static_cluster("upstream", upstream_port)]
        + ([_static_cluster("grpc_upstream", grpc_port, http2=True)] if grpc_port else [])
        + (failing.clusters() if failing else []),
    }}


def run_in_envoy(scenario: Scenario) -> Observation:
    upstream = _Upstream(scenario.upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    grpc_server, grpc_port = _grpc_echo_server() if scenario.grpc_upstream else (None, 0)
    failing = FailingUpstreams() if scenario.failing_upstreams else None
    try:
        with EnvoyProcess(envoy_bootstrap(scenario, upstream.server_address[1], grpc_port, failing),
                          component_log_level="wasm:trace") as envoy:
            address = envoy.listener_address("main")
            startup_lines = _wait_for_quiet_log(envoy, scenario)
            startup_count = len(startup_lines)
            responses = [_send(address, request) for request in scenario.requests]
            all_lines = _wait_for_quiet_log(envoy, scenario)
            stats = envoy.stats()
            # Envoy files module-defined metrics under the "wasmcustom." namespace.
            metrics = {name: stats.get("wasmcustom." + name) for name in scenario.metrics}
            return Observation(set(startup_lines), all_lines[startup_count:], upstream.received, responses, metrics)
    finally:
        upstream.shutdown()
        upstream.server_close()
        if grpc_server is not None:
            grpc_server.stop(None)
        if failing is not None:
            failing.close()


def _send(address: tuple[str, int], request: Request) -> dict[str, Any]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", request.authority)
        for key, value in request.headers:
            connection.putheader(key, value)
        if request.trailers:
            # http.client cannot send trailers: write the chunked body by hand, in one write.
            connection.putheader("transfer-encoding", "chunked")
            connection.endheaders()
            trailer_lines = "".join(f"{key}: {value}\r\n" for key, value in request.trailers)
            connection.send(b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(request.body), request.body, trailer_lines.encode()))
        else:
            if request.body:
                connection.putheader("content-length", str(len(request.body)))
            connection.endheaders(request.body or None)
        reply = connection.getresponse()
        body = reply.read()
        headers = [(key.lower(), value) for key, value in reply.getheaders()
                   if key.lower() not in ENVOY_ONLY_RESPONSE_HEADERS]
        return {"status": reply.status, "headers": headers, "body": body}
    finally:
        connection.close()


_ENVOY_LEVELS = {"trace": LogLevel.TRACE, "debug": LogLevel.DEBUG, "info": LogLevel.INFO,
                 "warning": LogLevel.WARN, "error": LogLevel.ERROR, "critical": LogLevel.CRITICAL}


def _module_logs(envoy: EnvoyProcess, scenario: Scenario) -> list[str]:
    """The module's proxy_log lines from Envoy's log ("wasm log <plugin> <root_id> <vm_id>: msg")."""
    pattern = re.compile(
        r"\]\[(\w+)\]\[wasm\] \[[^\]]*\] wasm log (?:" + re.escape(scenario.plugin_name) + " )?"
        + re.escape(scenario.root_id) + " " + re.escape(scenario.vm_id) + ": (.*)$")
    lines = []
    for line in envoy.log_text().splitlines():
        match = pattern.search(line)
        if match:
            lines.append(_log_line(_ENVOY_LEVELS[match.group(1)], match.group(2)))
    return lines


def _wait_for_quiet_log(envoy: EnvoyProcess, scenario: Scenario, settle: float = 0.3,
                        timeout: float = 10.0) -> list[str]:
    """Envoy writes its log asynchronously: wait until it stops growing."""
    deadline = time.monotonic() + timeout
    previous = _module_logs(envoy, scenario)
    while time.monotonic() < deadline:
        time.sleep(settle)
        current = _module_logs(envoy, scenario)
        if current == previous:
            return current
        previous = current
    return previous


# ---------------------------------------------------------------------------
# TCP: network filter + tcp_proxy in Envoy, TcpStream in the host


def _echo(data: bytes) -> bytes:
    return b"pong:" + data


class _EchoUpstream:
    """Loopback TCP server: answers every read with _echo(data), closes when the client does."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.socket = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def _serve(self) -> None:
        try:
            while True:
                connection, _ = self.socket.accept()
                threading.Thread(target=self._handle, args=(connection,), daemon=True).start()
        except OSError:
            return  # closed

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(65536):
                self.received.extend(data)
                connection.sendall(_echo(data))

    def close(self) -> None:
        self.socket.close()


def tcp_bootstrap(scenario: TcpScenario, upstream_port: int) -> dict[str, Any]:
    wasm_filter = {"name": "envoy.filters.network.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
        "config": {
            "name": scenario.plugin_name, "root_id": scenario.root_id,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": scenario.config},
            "vm_config": {"vm_id": scenario.vm_id, "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(Path(scenario.module).resolve())}}},
        }}}
    tcp_proxy = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "conformance_tcp", "cluster": "upstream"}}
    return {"static_resources": {
        "listeners": [{"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                       "filter_chains": [{"filters": [wasm_filter, tcp_proxy]}]}],
        "clusters": [_static_cluster("upstream", upstream_port)],
    }}


def run_tcp_in_envoy(scenario: TcpScenario) -> Observation:
    upstream = _EchoUpstream()
    log_scenario = Scenario(scenario.name, scenario.module, scenario.config, scenario.root_id, [],
                            plugin_name=scenario.plugin_name, vm_id=scenario.vm_id)
    try:
        with EnvoyProcess(tcp_bootstrap(scenario, upstream.port), component_log_level="wasm:trace") as envoy:
            startup_lines = _wait_for_quiet_log(envoy, log_scenario)
            received = bytearray()
            with socket.create_connection(envoy.listener_address("tcp"), timeout=10) as client:
                for message in scenario.messages:
                    client.sendall(message)
                    received.extend(_read_until_quiet(client))
                client.shutdown(socket.SHUT_WR)  # the client is done; the echo server then closes
                while data := client.recv(65536):
                    received.extend(data)
            all_lines = _wait_for_quiet_log(envoy, log_scenario)
            stats = envoy.stats()
            metrics = {name: stats.get("wasmcustom." + name) for name in scenario.metrics}
            return Observation(set(startup_lines), all_lines[len(startup_lines):],
                               [{"bytes": bytes(upstream.received)}], [{"bytes": bytes(received)}], metrics)
    finally:
        upstream.close()


def _read_until_quiet(client: socket.socket) -> bytes:
    """One answer: the first bytes, then whatever follows within 200 ms."""
    data = bytearray(client.recv(65536))
    client.settimeout(0.2)
    try:
        while more := client.recv(65536):
            data.extend(more)
    except TimeoutError:
        pass
    finally:
        client.settimeout(10)
    return bytes(data)


def run_tcp_in_host(scenario: TcpScenario) -> Observation:
    host = Host(log_level=LogLevel.TRACE)
    vm = host.load(scenario.module, config=scenario.config, name=scenario.plugin_name,
                   root_id=scenario.root_id, vm_id=scenario.vm_id)
    startup = {_log_line(record.level, record.message) for record in host.logs}
    first_log = len(host.logs)
    connection = vm.tcp_stream()
    for message in scenario.messages:
        already = len(connection.to_upstream)
        connection.send_downstream_data(message)
        connection.send_upstream_data(_echo(bytes(connection.to_upstream[already:])))
    # The client half-closes, the echo upstream closes: Envoy's order of events.
    connection.send_downstream_data(b"", end_stream=True)
    connection.send_upstream_data(b"", end_stream=True)
    connection.close()
    logs = [_log_line(record.level, record.message) for record in host.logs[first_log:]]
    return Observation(startup, logs, [{"bytes": bytes(connection.to_upstream)}],
                       [{"bytes": bytes(connection.to_downstream)}],
                       {name: host.metric(name) for name in scenario.metrics})
