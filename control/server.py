"""The control-plane process: ADS gRPC server + a small HTTP server.

The HTTP server (loopback only) has two jobs:

* module delivery to the sidecars' module syncers (see modules.py):
  ``GET /modules/sha256/<hex>`` serves verified module bytes, and
  ``GET /modules/wanted?node=ID&dir=DIR&present=SHA,...&version=N`` reports
  what a syncer holds and long-polls for what its proxy needs;
* ``GET /status`` returns extensions and proxies as JSON, for `meshext status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from meshext.control.cache import SnapshotCache
from meshext.control.modules import ModuleDemand, ModuleStore
from meshext.control.xds import start_xds_server

log = logging.getLogger(__name__)
_MODULE_PATH = re.compile(r"^/modules/sha256/([0-9a-f]{64})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _HTTPServer(ThreadingHTTPServer):
    # Every sidecar's module syncer holds one long poll open: a deep accept
    # backlog keeps a restart's reconnect burst from waiting on SYN retries.
    request_queue_size = 1024
    daemon_threads = True


class ControlPlane:
    """Runs the xDS server on its own asyncio loop thread and the HTTP server."""

    def __init__(self, *, xds_address: tuple[str, int] = ("127.0.0.1", 0),
                 http_address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.cache = SnapshotCache()
        self.modules = ModuleStore()
        self.demand = ModuleDemand()
        self.status_provider: Callable[[], dict[str, Any]] = lambda: {}
        self._xds_bind = xds_address
        self._http_bind = http_address
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="xds-loop", daemon=True)
        self._grpc_server: Any = None
        self._http_server: ThreadingHTTPServer | None = None
        self.xds_port = 0
        self.http_port = 0

    @property
    def xds_address(self) -> tuple[str, int]:
        return (self._xds_bind[0], self.xds_port)

    @property
    def http_address(self) -> tuple[str, int]:
        return (self._http_bind[0], self.http_port)

    def start(self) -> ControlPlane:
        self._loop_thread.start()
        host, port = self._xds_bind
        self._grpc_server, self.xds_port = asyncio.run_coroutine_threadsafe(
            start_xds_server(self.cache, f"{host}:{port}"), self._loop).result(timeout=30)
        self._http_server = _HTTPServer(self._http_bind, self._handler_class())
        self.http_port = self._http_server.server_address[1]
        threading.Thread(target=self._http_server.serve_forever, name="control-http", daemon=True).start()
        log.info("xDS on %s:%d, HTTP on %s:%d", host, self.xds_port, self._http_bind[0], self.http_port)
        return self

    def stop(self) -> None:
        if self._http_server:
            self._http_server.shutdown()
            self._http_server.server_close()
        if self._grpc_server is not None:
            asyncio.run_coroutine_threadsafe(self._grpc_server.stop(grace=None), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        self.modules.close()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        control_plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                match = _MODULE_PATH.match(self.path)
                if match:
                    data = control_plane.modules.read(match.group(1))
                    if data is None:
                        self._reply(404, b"unknown module\n", "text/plain")
                    else:
                        self._reply(200, data, "application/wasm")
                elif self.path.startswith("/modules/wanted?"):
                    self._wanted()
                elif self.path == "/status":
                    body = json.dumps(control_plane.status_provider(), indent=2, sort_keys=True).encode()
                    self._reply(200, body, "application/json")
                elif self.path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _wanted(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                node_id = query.get("node", [""])[0]
                if not node_id:
                    self._reply(400, b"node= is required\n", "text/plain")
                    return
                present = {sha for sha in query.get("present", [""])[0].split(",") if _SHA256.match(sha)}
                module_dir = query.get("dir", [""])[0]
                if not module_dir.startswith("/") or ".." in module_dir.split("/"):
                    self._reply(400, b"dir= must be an absolute path\n", "text/plain")
                    return
                control_plane.demand.report(node_id, module_dir, present)
                known = int(query.get("version", ["0"])[0] or 0)
                wait = min(float(query.get("wait", ["20"])[0]), 60.0)
                version, wanted = control_plane.demand.wait_wanted(node_id, known, wait)
                body = json.dumps({"version": version, "modules": sorted(wanted)}).encode()
                self._reply(200, body, "application/json")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        return Handler
