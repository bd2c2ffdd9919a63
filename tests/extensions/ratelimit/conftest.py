"""What the ratelimit tests share: the built filter, Envoy configurations around it, Redis, the service.

Everything binds to loopback on ports the OS picks free.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from meshext.extensions.telemetry.stats_config import stats_config
from meshext.sdk.builder import build_filter

REPOSITORY = Path(__file__).resolve().parents[3]
# The control-plane tests' helpers (free ports, apps, resources, a mesh under test) serve these tests too.
sys.path.insert(0, str(REPOSITORY / "tests" / "control"))
from control_harness import MeshUnderTest, free_port, two_service_mesh  # noqa: E402

from meshext.registry import push  # noqa: E402
from meshext.registry.local_registry import LocalRegistry  # noqa: E402

FILTER_PROJECT = REPOSITORY / "extensions" / "ratelimit" / "filter"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


@pytest.fixture(scope="session")
def ratelimit_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filter, built once per test session with `meshext build`."""
    return build_filter(FILTER_PROJECT, tmp_path_factory.mktemp("ratelimit") / "ratelimit.wasm").output


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real OCI registry (Debian's docker-registry) on loopback, plain HTTP, as the control tests use."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def ratelimit_image(registry: LocalRegistry, ratelimit_module: Path) -> str:
    """The filter pushed to the test registry as a Wasm OCI image: its oci:// reference."""
    reference = f"{registry.host}/meshext/ratelimit:0.1.0"
    push(ratelimit_module, reference, plain_http=True)
    return f"oci://{reference}"


@pytest.fixture(scope="module")
def bookinfo_mesh(tmp_path_factory: pytest.TempPathFactory, registry: LocalRegistry) -> Iterator[MeshUnderTest]:
    """frontend and productpage with sidecars and the control plane (the control tests' mesh under test)."""
    running = MeshUnderTest(tmp_path_factory.mktemp("mesh"), {registry.host},
                            two_service_mesh(("frontend", "productpage")))
    yield running
    running.close()


def wasm_filter(module: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Envoy's Wasm HTTP filter running the ratelimit module with ``config``."""
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "ratelimit", "root_id": "", "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(config)},
            "vm_config": {"vm_id": "ratelimit", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(module)}}}}}}


def cluster(name: str, port: int, *, http2: bool = True) -> dict[str, Any]:
    """A cluster to a server on loopback (HTTP/2 for gRPC)."""
    options = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}} if http2 else {}
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **options,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def bootstrap(filters: list[dict[str, Any]], clusters: list[dict[str, Any]] | None = None,
              route_action: dict[str, Any] | None = None) -> dict[str, Any]:
    """One listener "main" with ``filters``, answering 200 itself (or routing with ``route_action``);
    connections spread evenly over the workers.  The stats_config is the one meshext's sidecars have (the
    ratelimit metric's labels among them), so /stats/prometheus shows them as labels."""
    route: dict[str, Any] = {"match": {"prefix": "/"}}
    if route_action is None:
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
    else:
        route["route"] = route_action
    return {"stats_config": stats_config(), "static_resources": {"clusters": clusters or [], "listeners": [{
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "connection_balance_config": {"exact_balance": {}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "main",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
            "http_filters": [*filters, ROUTER]}}]}],
    }]}}


class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence; stop() and start() keep the port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, the counters are gone (no persistence)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server not found: apt-get install redis-server (scripts/install.sh installs it)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
