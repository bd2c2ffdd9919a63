"""Istio's standard metrics from real sidecars placed by the control plane.

Four services on loopback, each behind its sidecar: ``backend`` (HTTP, answers
503 on /fail), ``grpcsvc`` (gRPC over HTTP/2, NOT_FOUND for "missing"), ``db``
(plain TCP, a line echo, reached through frontend's ``tcpOutbound`` listener)
and ``frontend`` (the client: the test sends its requests through frontend's
outbound listeners).  A client without a sidecar calls backend's inbound
listener directly.  Every sidecar's /stats/prometheus is parsed with
prometheus-client's parser and compared, counts and full label sets, on both
reporters.

The mesh runs twice: with the control plane serving TLS (sidecars hold SPIFFE
certificates and talk mutual TLS: principals are real, the server side reports
``mutual_tls``; Debian's Prometheus scrapes every sidecar and must return the
same numbers), and without certificates (principals ``unknown``, ``none``).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from control_harness import PrometheusServer, free_port, start_control_plane, start_tcp_app, wait_until
from prometheus_client.parser import text_string_to_metric_families

from meshext.control.mesh import Mesh, load_mesh
from meshext.control.pki import PKIDirectory
from meshext.control.proxy import Sidecar, sidecar_for
from meshext.control.telemetry import TCP_REPORTING_MS
from meshext.extensions.telemetry.filter.istio_metrics import HTTP_LABELS, PEER_LABELS, TCP_LABELS

pytestmark = pytest.mark.timeout(480)
# V8 compiles the telemetry module (CPython inside) before a sidecar is ready: slow on a busy machine.
SIDECAR_START_SECONDS = 120


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
    def workload(app: str, **extra: Any) -> dict[str, Any]:
        return {"name": f"{app}-v1", "namespace": "default", "labels": {"app": app, "version": "v1"},
                "app": {"port": free_port()}, "inbound": {"port": free_port()}, "outbound": {"port": free_port()},
                "admin": {"port": free_port()}, **extra}

    return {
        "services": [
            {"name": "frontend", "selector": {"app": "frontend"}, "ports": [{"port": 8080}]},
            {"name": "backend", "selector": {"app": "backend"}, "ports": [{"port": 8080}]},
            {"name": "grpcsvc", "selector": {"app": "grpcsvc"}, "ports": [{"port": 9090, "protocol": "HTTP2"}]},
            {"name": "db", "selector": {"app": "db"}, "ports": [{"port": 5432, "protocol": "TCP"}]},
        ],
        "workloads": [workload("frontend", tcpOutbound=[{"service": "db", "port": 5432,
                                                          "listen": {"port": free_port()}}]),
                      workload("backend"), workload("grpcsvc"), workload("db")],
    }


class TelemetryMesh:
    def __init__(self, root: Path, module: tuple[Path, str], *, mtls: bool) -> None:
        self.mtls = mtls
        self.mesh_file = root / "mesh.yaml"
        self.mesh_file.write_text(yaml.safe_dump(_mesh_document()))
        self.mesh: Mesh = load_mesh(self.mesh_file)
        self.workloads = {w.name.removesuffix("-v1"): w for w in self.mesh.workloads}
        pki = PKIDirectory(root / "pki")
        if mtls:
            pki.ensure(workloads=[(w.name, w.namespace) for w in self.mesh.workloads])
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
        self.tcp_app = start_tcp_app("db-v1", self.workloads["db"].app.port)
        self.running = start_control_plane(self.mesh, root / "cache", telemetry_module=module,
                                           tls=pki.control_plane().load() if mtls else None)
        server = self.running.server
        self.sidecars: dict[str, Sidecar] = {
            name: sidecar_for(w, server.xds_address, server.http_address,
                              tls=pki.workload(w.name, w.namespace).load() if mtls else None,
                              ).start(SIDECAR_START_SECONDS)
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
        for app in [*self.http_apps, self.tcp_app]:
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

    def tcp_connection(self) -> socket.socket:
        """A connection to db through frontend's tcpOutbound listener."""
        listen = self.workloads["frontend"].tcpOutbound[0].listen
        return socket.create_connection((listen.address, listen.port), timeout=10)

    def metrics(self, name: str) -> dict[str, dict]:
        """family name -> the family, from ``name``'s sidecar (counters named without ``_total``)."""
        text = self.sidecars[name].envoy.admin_get("/stats/prometheus")
        return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.fixture(scope="module", params=["mutual_tls", "plain_text"])
def telemetry_mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   telemetry_module: tuple[Path, str]) -> Iterator[TelemetryMesh]:
    running = TelemetryMesh(tmp_path_factory.mktemp("telemetry-mesh"), telemetry_module,
                            mtls=request.param == "mutual_tls")
    yield running
    running.close()


def _principal(mtls: bool, app: str) -> str:
    return f"spiffe://cluster.local/ns/default/workload/{app}-v1" if mtls else "unknown"


def _identity(side: str, app: str, mtls: bool = False) -> dict[str, str]:
    return {f"{side}_workload": f"{app}-v1", f"{side}_canonical_service": app, f"{side}_canonical_revision": "v1",
            f"{side}_workload_namespace": "default", f"{side}_principal": _principal(mtls, app), f"{side}_app": app,
            f"{side}_version": "v1", f"{side}_cluster": "Kubernetes"}


UNKNOWN_SOURCE = {"source_workload": "unknown", "source_canonical_service": "unknown",
                  "source_canonical_revision": "latest", "source_workload_namespace": "unknown",
                  "source_principal": "unknown", "source_app": "unknown", "source_version": "unknown",
                  "source_cluster": "unknown"}


def _security(reporter: str, source: dict[str, str]) -> str:
    """Istio's rule: the server side says whether both ends had a certificate, the client side never knows."""
    if reporter == "source":
        return "unknown"
    return "mutual_tls" if source["source_principal"] != "unknown" else "none"


def _labels(reporter: str, source: dict[str, str], destination: str, *, code: str, protocol: str = "http",
            grpc_status: str = "", flags: str = "-", mtls: bool = False) -> dict[str, str]:
    labels = {"reporter": reporter, **source, **_identity("destination", destination, mtls),
              "destination_service": f"{destination}.default.svc.cluster.local",
              "destination_service_name": destination, "destination_service_namespace": "default",
              "request_protocol": protocol, "response_code": code, "grpc_response_status": grpc_status,
              "response_flags": flags, "connection_security_policy": _security(reporter, source)}
    if reporter == "destination" and source["source_principal"] == "unknown":
        labels["destination_principal"] = "unknown"  # plain text: no certificate on either end
    assert sorted(labels) == sorted(HTTP_LABELS)
    return {name: labels[name] for name in HTTP_LABELS}


def _counts(family: Any, suffix: str = "") -> dict[tuple, float]:
    """label tuple (HTTP_LABELS order) -> value of the samples named family.name + suffix."""
    return {tuple(s.labels.get(n) for n in HTTP_LABELS): s.value for s in family.samples
            if s.name == family.name + suffix}


def _key(labels: dict[str, str]) -> tuple:
    return tuple(labels.get(name) for name in HTTP_LABELS)


def test_both_reporters_count_every_request_with_istios_labels(telemetry_mesh: TelemetryMesh) -> None:
    mesh, mtls = telemetry_mesh, telemetry_mesh.mtls
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

    frontend = _identity("source", "frontend", mesh.mtls)
    expected_source = {
        _key(_labels("source", frontend, "backend", mtls=mtls, code="200")): 3,
        _key(_labels("source", frontend, "backend", mtls=mtls, code="503")): 2,
        _key(_labels("source", frontend, "grpcsvc", mtls=mtls, code="200", protocol="grpc",
                     grpc_status="0")): 2,
        _key(_labels("source", frontend, "grpcsvc", mtls=mtls, code="200", protocol="grpc",
                     grpc_status="5")): 1,
        # No upstream connection, so no certificate of either end: both principals unknown.
        _key({"reporter": "source", **frontend, "source_principal": "unknown",
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
        _key(_labels("destination", frontend, "backend", mtls=mtls, code="200")): 3,
        _key(_labels("destination", frontend, "backend", mtls=mtls, code="503")): 2,
    }
    wait_until(lambda: requests("backend") == expected_backend, 10, "backend's istio_requests_total")
    expected_grpc = {
        _key(_labels("destination", frontend, "grpcsvc", mtls=mtls, code="200", protocol="grpc",
                     grpc_status="0")): 2,
        _key(_labels("destination", frontend, "grpcsvc", mtls=mtls, code="200", protocol="grpc",
                     grpc_status="5")): 1,
    }
    wait_until(lambda: requests("grpcsvc") == expected_grpc, 10, "grpcsvc's istio_requests_total")

    # The histograms count the same requests, in Envoy's default buckets (merged at each stats flush, 5 s).
    ok = _key(_labels("destination", frontend, "backend", mtls=mtls, code="200"))
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
        peer = {n: v for n, v in _labels(reporter, frontend, "grpcsvc", mtls=mtls, code="200").items()
                if n in PEER_LABELS}
        for family, count in (("istio_request_messages", 3), ("istio_response_messages", 2)):
            samples = [(s.labels, s.value) for s in families[family].samples if s.name == family + "_total"]
            assert samples == [(peer, count)], (family, samples)  # the parser names the family without _total


def test_a_client_without_a_sidecar_is_an_unknown_source(telemetry_mesh: TelemetryMesh) -> None:
    mesh, mtls = telemetry_mesh, telemetry_mesh.mtls
    status, _, headers = mesh.http("backend", "/ok", via=None)
    assert status == 200
    # A client that sent no peer metadata gets none: the server side answers only a peer.
    assert not any(name.lower().startswith("x-envoy-peer-metadata") for name, _ in headers)
    labels = _labels("destination", UNKNOWN_SOURCE, "backend", mtls=mtls, code="200")

    def count() -> float | None:
        return _counts(mesh.metrics("backend")["istio_requests"], "_total").get(_key(labels))

    assert wait_until(count, 10, "the unknown-source series") == 1


TCP_METRICS = ("istio_tcp_connections_opened", "istio_tcp_connections_closed", "istio_tcp_sent_bytes",
               "istio_tcp_received_bytes")


def _tcp_labels(reporter: str, mtls: bool) -> tuple:
    """The TCP label set of frontend -> db: with certificates both ends are named by them; in plain text
    the server knows no source and the client knows db only from the endpoint metadata (no app/version)."""
    labels = {"reporter": reporter, **_identity("source", "frontend", mtls), **_identity("destination", "db", mtls),
              "destination_service": "db.default.svc.cluster.local", "destination_service_name": "db",
              "destination_service_namespace": "default", "request_protocol": "tcp", "response_flags": "-",
              "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls" if mtls else "none"}
    if not mtls and reporter == "destination":
        labels.update(UNKNOWN_SOURCE)
    if not mtls and reporter == "source":
        labels.update(destination_app="unknown", destination_version="unknown")
    assert sorted(labels) == sorted(TCP_LABELS)
    return tuple(labels[name] for name in TCP_LABELS)


def _tcp_totals(mesh: TelemetryMesh, sidecar: str) -> dict[str, dict[tuple, float]]:
    families = mesh.metrics(sidecar)
    return {metric: {tuple(s.labels.get(n) for n in TCP_LABELS): s.value for s in families[metric].samples
                     if s.name == metric + "_total"} if metric in families else {} for metric in TCP_METRICS}


def _echo(connection: socket.socket, line: bytes) -> bytes:
    connection.sendall(line)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = connection.recv(4096)
        assert chunk, "db closed the connection"
        answer += chunk
    return answer


def test_tcp_connections_and_bytes_on_both_reporters(telemetry_mesh: TelemetryMesh) -> None:
    mesh = telemetry_mesh
    reporters = {"frontend": "source", "db": "destination"}
    long_lived = mesh.tcp_connection()
    assert _echo(long_lived, b"hello\n") == b"db-v1:hello\n"  # 6 bytes up, 12 down

    def totals(opened: int, closed: int, sent: int, received: int) -> dict[str, dict[str, dict[tuple, float]]]:
        return {sidecar: {metric: {_tcp_labels(reporter, mesh.mtls): value} if value else {}
                          for metric, value in zip(TCP_METRICS, (opened, closed, sent, received), strict=True)}
                for sidecar, reporter in reporters.items()}

    def observed() -> dict[str, dict[str, dict[tuple, float]]]:
        return {sidecar: _tcp_totals(mesh, sidecar) for sidecar in reporters}

    # Still open: the bytes arrive with the next periodic report, not only at close.
    started = time.monotonic()
    wait_until(lambda: observed() == totals(1, 0, 12, 6), TCP_REPORTING_MS / 1000 + 5,
               "the open connection's periodic report")
    assert time.monotonic() - started < TCP_REPORTING_MS / 1000 + 5
    assert _echo(long_lived, b"more\n") == b"db-v1:more\n"  # 5 up, 11 down, reported at close
    long_lived.close()
    with mesh.tcp_connection() as short:
        assert _echo(short, b"x\n") == b"db-v1:x\n"  # 2 up, 8 down
    expected = totals(2, 2, 12 + 11 + 8, 6 + 5 + 2)
    wait_until(lambda: observed() == expected, 10, "both connections closed and counted")
    assert observed() == expected


def _series_key(labels: dict[str, str]) -> frozenset:
    """A series' identity as Prometheus stores it: a label with an empty value is no label."""
    return frozenset((name, value) for name, value in labels.items() if value)


def _series(samples: list[tuple[dict[str, str], float]]) -> dict[frozenset, float]:
    return {_series_key(labels): value for labels, value in samples}


def test_prometheus_returns_the_sidecars_numbers(telemetry_mesh: TelemetryMesh, tmp_path: Path) -> None:
    """Debian's Prometheus scraping every sidecar with `meshext control prometheus-config`'s
    configuration: every Istio series, with all its labels, has the value the sidecars show."""
    mesh = telemetry_mesh
    config = tmp_path / "prometheus.yml"
    written = subprocess.run([sys.executable, "-m", "meshext", "control", "prometheus-config", "--mesh",
                              str(mesh.mesh_file), "--scrape-interval", "1s", "-o", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    # Traffic of its own, so the comparison never rests on another test having run.
    assert mesh.http("backend", "/fail")[0] == 503
    with mesh.tcp_connection() as connection:
        assert _echo(connection, b"ping\n") == b"db-v1:ping\n"
    metrics = ("istio_requests_total", "istio_request_duration_milliseconds_count",
               *(f"{metric}_total" for metric in TCP_METRICS))

    def from_sidecars() -> dict[str, dict[frozenset, float]]:
        samples: dict[str, list[tuple[dict[str, str], float]]] = {metric: [] for metric in metrics}
        for sidecar in mesh.sidecars:
            for family in mesh.metrics(sidecar).values():
                for sample in family.samples:
                    if sample.name in samples:
                        samples[sample.name].append((dict(sample.labels), sample.value))
        return {metric: _series(found) for metric, found in samples.items()}

    with PrometheusServer(config, tmp_path) as prometheus:
        def from_prometheus() -> dict[str, dict[frozenset, float]]:
            answers = {}
            for metric in metrics:
                result = prometheus.api("query", query=metric)["result"]
                # The target's own labels (job, instance, namespace, workload) name the sidecar.
                answers[metric] = _series([({k: v for k, v in r["metric"].items()
                                             if k not in ("__name__", "job", "instance", "namespace", "workload")},
                                            float(r["value"][1])) for r in result])
            return answers

        expected = wait_until(lambda: (own := from_sidecars()) == from_prometheus() and own, 30,
                              "Prometheus to hold the sidecars' numbers")
    requests = expected["istio_requests_total"]
    failed = _labels("destination", _identity("source", "frontend", mesh.mtls), "backend", mtls=mesh.mtls,
                     code="503")
    assert requests[_series_key(failed)] >= 1
    assert expected["istio_tcp_connections_closed_total"][_series_key(
        dict(zip(TCP_LABELS, _tcp_labels("destination", mesh.mtls), strict=True)))] >= 1
