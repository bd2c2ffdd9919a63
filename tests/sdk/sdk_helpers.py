"""Real peers for the SDK's Envoy tests: an HTTP upstream that echoes what it
received, an auth service, a TCP echo server, and Envoy bootstraps that load
modules built by `meshext build`."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meshext import packed_segment, wasm_binary

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if self.path == "/check":  # the auth service
            allowed = self.headers.get("x-user") == "alice"
            self.send_response(200 if allowed else 401)
            if allowed:
                self.send_header("x-auth-user", "alice")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        payload = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body,
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-resp-remove", "present")
        self.send_header("x-resp-replace", "original")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


class EchoServer:
    """HTTP/1.1 on 127.0.0.1: echoes the request as JSON; /check is an auth check."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _TcpEchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class TcpEchoServer:
    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TcpEchoHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_passive_segments(module: bytes, segment_zero: bytes, snapshot: bytes | None = None) -> bytes:
    """``module`` (with no passive segment) with ``segment_zero`` as passive data segment 0 and ``snapshot``,
    if given, as segment 1, each packed as `meshext build` packs them (src/meshext/packed_segment.py)."""
    sections = wasm_binary.parse_sections(module)
    data = wasm_binary.find_section(sections, wasm_binary.DATA)
    assert data is not None
    reader = wasm_binary.Reader(data.payload)
    packed = [packed_segment.pack(segment_zero)]
    if snapshot is not None:
        packed.append(packed_segment.pack(snapshot))
    count = reader.uleb() + len(packed)
    added = b"".join(b"\x01" + wasm_binary.uleb(len(segment)) + segment for segment in packed)  # flags 1: passive
    payload = wasm_binary.uleb(count) + added + data.payload[reader.position:]
    wasm_binary.replace_section(sections, wasm_binary.Section(wasm_binary.DATA, payload))
    wasm_binary.replace_section(sections, wasm_binary.Section(wasm_binary.DATACOUNT, wasm_binary.uleb(count)))
    return wasm_binary.encode_sections(sections)


def code_size(module: Path) -> int:
    """Bytes of the module's code section: what Envoy's V8 compiles."""
    section = wasm_binary.find_section(wasm_binary.parse_sections(module.read_bytes()), wasm_binary.CODE)
    assert section is not None
    return len(section.payload)


def wasm_config(name: str, module: Path, configuration: str, *, fail_open: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "root_id": "",
        "fail_open": fail_open,
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}},
    }


def cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def http_listener(name: str, module: Path, configuration: str) -> dict[str, Any]:
    """A listener whose HTTP filter chain runs the module, then routes to cluster 'upstream'."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }]},
                "http_filters": [
                    {"name": "envoy.filters.http.wasm", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": wasm_config(name, module, configuration)}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }


def tcp_listener(name: str, module: Path, upstream_cluster: str) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": wasm_config(name, module, "{}")}},
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name, "cluster": upstream_cluster}},
        ]}],
    }
