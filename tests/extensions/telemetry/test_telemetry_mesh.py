"""Istio's standard metrics from real sidecars placed by the control plane.

Three services on loopback, each behind its sidecar: ``backend`` (HTTP, answers
503 on /fail), ``grpcsvc`` (gRPC over HTTP/2, NOT_FOUND for "missing") and
``frontend`` (the client: the test sends its requests through frontend's
outbound listener).  A client without a sidecar calls backend's inbound
listener directly.  Every sidecar's /stats/prometheus is parsed with
prometheus-client's parser and compared, counts and full label sets, on both
reporters.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from control_harness import free_port, start_control_plane, wait_until
from prometheus_client.parser import text_string_to_metric_families

from meshext.control.mesh import Mesh
from meshext.control.proxy import Sidecar, sidecar_for
from meshext.extensions.telemetry.filter.istio_metrics import HTTP_LABELS, PEER_LABELS

pytestmark = pytest.mark.timeout(240)


class _App(BaseHTTPRequestHandler):
    """Echoes the request headers it received; /fail answers 503."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(503 if self.path == "/fail" else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _echo_grpc(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b"echo:" + request


def _mesh_document() -> dict[str, Any]:
    def workload(app: str) -> dict[str, Any]:
        return {"name": f"{app}-v1", "namespace": "default", "labels": {"app": app, "version": "v1"},
                "app": {"port": free_port()}, "inbound": {"port": free_port()}, "outbound": {"port": free_port()}}

    return {
        "services": [
            {"name": "frontend", "selector": {"app": "frontend"}, "ports": [{"port": 8080}]},
            {"name": "backend", "selector": {"app": "backend"}, "ports": [{"port": 8080}]},
            {"name": "grpcsvc", "selector": {"app": "grpcsvc"}, "ports": [{"port": 9090, "protocol": "HTTP2"}]},
        ],
        "workloads": [workload("frontend"), workload("backend"), workload("grpcsvc")],
    }


class TelemetryMesh:
    def __init__(self, root: Path, module: tuple[Path, str]) -> None:
        self.mesh = Mesh.model_validate(_mesh_document())
        self.workloads = {w.name.removesuffix("-v1"): w for w in self.mesh.workloads}
        self.http_apps = []
        for name in ("frontend", "backend"):
            server = ThreadingHTTPServer(("127.0.0.1", self.workloads[name].app.port), _App)
            server.daemon_threads = True
            futures.ThreadPoolExecutor(1).submit(server.serve_forever)
            self.http_apps.append(server)
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(4))
        self.grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(_echo_grpc)})])
        self.grpc_server.add_insecure_port(f"127.0.0.1:{self.workloads['grpcsvc'].app.port}")
        self.grpc_server.start()
        self.running = start_control_plane(self.mesh, root / "cache", telemetry_module=module)
        server = self.running.server
        self.sidecars: dict[str, Sidecar] = {
            name: sidecar_for(w, server.xds_address, server.http_address).start()
            for name, w in self.workloads.items()}
        nodes = [w.node_id for w in self.mesh.workloads]
        assert self.running.state.cache.wait_converged(nodes, 60)
        # Converged includes the telemetry filter once each syncer holds the module.
        wait_until(lambda: all("meshext.telemetry" in s.envoy.admin_get("/config_dump?resource=ecds_filters")
                               for s in self.sidecars.values()), 60, "the telemetry filter in every sidecar")

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.cleanup()
        self.running.stop()
        self.grpc_server.stop(0)
        for app in self.http_apps:
            app.shutdown()
            app.server_close()

    def http(self, service: str, path: str, via: str | None = "frontend") -> tuple[int, dict[str, Any], list]:
        """GET through ``via``'s outbound listener (None: straight to backend's inbound, no sidecar)."""
        address = self.workloads[via].outbound if via else self.workloads["backend"].inbound
        connection = http.client.HTTPConnection(address.address, address.port, timeout=10)
        try:
            connection.request("GET", path, headers={"Host": service})
            response = connection.getresponse()
            raw = response.read()
            body = json.loads(raw) if raw.startswith(b"{") else {}
            return response.status, body, response.getheaders()
        finally:
            connection.close()

    def grpc_call(self, payload: bytes) -> grpc.StatusCode:
        outbound = self.workloads["frontend"].outbound
        with grpc.insecure_channel(f"{outbound.address}:{outbound.port}",
                                   options=[("grpc.default_authority", "grpcsvc:9090")]) as channel:
            say = channel.unary_unary("/test.Echo/Say")
            try:
                say(payload, timeout=10)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    def metrics(self, name: str) -> dict[str, dict]:
        """family name -> the family, from ``name``'s sidecar (counters named without ``_total``)."""
        text = self.sidecars[name].envoy.admin_get("/stats/prometheus")
        return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def telemetry_mesh(tmp_path_factory: pytest.TempPathFactory,
                   telemetry_module: tuple[Path, str]) -> Iterator[TelemetryMesh]:
    running = TelemetryMesh(tmp_path_factory.mktemp("telemetry-mesh"), telemetry_module)
    yield running
    running.close()


def _identity(side: str, app: str) -> dict[str, str]:
    return {f"{side}_workload": f"{app}-v1", f"{side}_canonical_service": app, f"{side}_canonical_revision": "v1",
            f"{side}_workload_namespace": "default", f"{side}_principal": "unknown", f"{side}_app": app,
            f"{side}_version": "v1", f"{side}_cluster": "Kubernetes"}


UNKNOWN_SOURCE = {"source_workload": "unknown", "source_canonical_service": "unknown",
                  "source_canonical_revision": "latest", "source_workload_namespace": "unknown",
                  "source_principal": "unknown", "source_app": "unknown", "source_version": "unknown",
                  "source_cluster": "unknown"}


def _labels(reporter: str, source: dict[str, str], destination: str, *, code: str, protocol: str = "http",
            grpc_status: str = "", flags: str = "-") -> dict[str, str]:
    labels = {"reporter": reporter, **source, **_identity("destination", destination),
              "destination_service": f"{destination}.default.svc.cluster.local",
              "destination_service_name": destination, "destination_service_namespace": "default",
              "request_protocol": protocol, "response_code": code, "grpc_response_status": grpc_status,
              "response_flags": flags,
              "connection_security_policy": "none" if reporter == "destination" else "unknown"}
    assert sorted(labels) == sorted(HTTP_LABELS)
    return {name: labels[name] for name in HTTP_LABELS}


def _counts(family: Any, suffix: str = "") -> dict[tuple, float]:
    """label tuple (HTTP_LABELS order) -> value of the samples named family.name + suffix."""
    return {tuple(s.labels.get(n) for n in HTTP_LABELS): s.value for s in family.samples
            if s.name == family.name + suffix}


def _key(labels: dict[str, str]) -> tuple:
    return tuple(labels.get(name) for name in HTTP_LABELS)


def test_both_reporters_count_every_request_with_istios_labels(telemetry_mesh: TelemetryMesh) -> None:
    mesh = telemetry_mesh
    for _ in range(3):
        status, body, headers = mesh.http("backend", "/ok")
        assert status == 200
        # The exchange headers never reach the app, and never come back to the client app.
        assert not any(name.startswith("x-envoy-peer-metadata") for name in body["headers"])
        assert not any(name.lower().startswith("x-envoy-peer-metadata") for name, _ in headers)
    for _ in range(2):
        assert mesh.http("backend", "/fail")[0] == 503
    assert [mesh.grpc_call(b"hello"), mesh.grpc_call(b"again"), mesh.grpc_call(b"missing")] == [
        grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND]
    assert mesh.http("nosuch", "/")[0] == 404  # no route: reported by the client side only

    frontend = _identity("source", "frontend")
    expected_source = {
        _key(_labels("source", frontend, "backend", code="200")): 3,
        _key(_labels("source", frontend, "backend", code="503")): 2,
        _key(_labels("source", frontend, "grpcsvc", code="200", protocol="grpc", grpc_status="0")): 2,
        _key(_labels("source", frontend, "grpcsvc", code="200", protocol="grpc", grpc_status="5")): 1,
        _key({"reporter": "source", **frontend,
              **{name: "unknown" for name in PEER_LABELS if name.startswith("destination_")},
              "destination_canonical_revision": "latest", "destination_service": "nosuch",
              "destination_service_name": "nosuch", "request_protocol": "http", "response_code": "404",
              "grpc_response_status": "", "response_flags": "NR", "connection_security_policy": "unknown"}): 1,
    }

    def requests(name: str) -> dict[tuple, float]:
        return _counts(mesh.metrics(name)["istio_requests"], "_total")

    wait_until(lambda: requests("frontend") == expected_source, 10, "frontend's istio_requests_total")
    assert requests("frontend") == expected_source
    expected_backend = {
        _key(_labels("destination", frontend, "backend", code="200")): 3,
        _key(_labels("destination", frontend, "backend", code="503")): 2,
    }
    wait_until(lambda: requests("backend") == expected_backend, 10, "backend's istio_requests_total")
    expected_grpc = {
        _key(_labels("destination", frontend, "grpcsvc", code="200", protocol="grpc", grpc_status="0")): 2,
        _key(_labels("destination", frontend, "grpcsvc", code="200", protocol="grpc", grpc_status="5")): 1,
    }
    wait_until(lambda: requests("grpcsvc") == expected_grpc, 10, "grpcsvc's istio_requests_total")

    # The histograms count the same requests, in Envoy's default buckets (merged at each stats flush, 5 s).
    ok = _key(_labels("destination", frontend, "backend", code="200"))
    wait_until(lambda: _counts(mesh.metrics("backend")["istio_response_bytes"], "_count").get(ok) == 3, 15,
               "the histograms' next flush")
    backend = mesh.metrics("backend")
    for family in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        assert _counts(backend[family], "_count")[ok] == 3, family
        buckets = sorted(float(s.labels["le"]) for s in backend[family].samples if s.name.endswith("_bucket")
                         and _key(s.labels) == ok)
        assert buckets[:3] == [0.5, 1.0, 5.0] and buckets[-1] == float("inf")
    assert _counts(backend["istio_response_bytes"], "_sum")[ok] > 3 * 100  # headers and the JSON body

    # gRPC message counters: the peer labels only; three requests, two answers (NOT_FOUND has none).
    for reporter, name in (("source", "frontend"), ("destination", "grpcsvc")):
        families = mesh.metrics(name)
        peer = {n: v for n, v in _labels(reporter, frontend, "grpcsvc", code="200").items() if n in PEER_LABELS}
        for family, count in (("istio_request_messages", 3), ("istio_response_messages", 2)):
            samples = [(s.labels, s.value) for s in families[family].samples if s.name == family + "_total"]
            assert samples == [(peer, count)], (family, samples)  # the parser names the family without _total


def test_a_client_without_a_sidecar_is_an_unknown_source(telemetry_mesh: TelemetryMesh) -> None:
    mesh = telemetry_mesh
    assert mesh.http("backend", "/ok", via=None)[0] == 200
    labels = _labels("destination", UNKNOWN_SOURCE, "backend", code="200")

    def count() -> float | None:
        return _counts(mesh.metrics("backend")["istio_requests"], "_total").get(_key(labels))

    assert wait_until(count, 10, "the unknown-source series") == 1
