"""What the two HTTP demo apps share: a threading JSON server and a JSON GET through the sidecar."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (status, JSON body) for a request path; None: 404.
Route = Callable[[str, dict[str, str]], "tuple[int, Any] | None"]
# Headers a mesh app passes on from the request it serves to the calls it makes, so one
# user request can be followed through the services (Istio's Bookinfo forwards these).
PROPAGATED_HEADERS = ("x-request-id", "traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")


def serve_json(host: str, port: int, route: Route) -> None:
    """Answer GET requests with ``route``'s JSON, forever."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                answer = route(self.path, {name.lower(): value for name, value in self.headers.items()})
            except (OSError, http.client.HTTPException, ValueError) as error:
                answer = (502, {"error": f"upstream call failed: {error}"})
            status, body = answer if answer is not None else (404, {"error": f"no such path {self.path}"})
            data = (json.dumps(body, indent=2) + "\n").encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's naming)
            pass  # the sidecars log requests; the app's log stays for errors

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def get_json(upstream: tuple[str, int], service: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """GET ``path`` of ``service`` through the sidecar at ``upstream``: (status, parsed JSON body)."""
    forwarded = {name: value for name, value in headers.items() if name in PROPAGATED_HEADERS}
    connection = http.client.HTTPConnection(*upstream, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": service, **forwarded})
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"error": raw.decode(errors="replace").strip()}
    finally:
        connection.close()
