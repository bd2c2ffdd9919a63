"""`meshext graph`: the model from Istio-shaped series, its drawings, and the command end to end.

The model tests feed Istio-shaped series (prometheus_client).  End to end,
the series are the telemetry extension's, from real traffic through real
sidecars (control_harness.SidecarMesh: frontend, backend and db behind
sidecars placed by the control plane, mutual TLS): Debian's Prometheus
scrapes them with the scrape configuration `meshext control
prometheus-config` writes, and `meshext graph --mesh` scrapes them
directly; the HTML is opened in headless Debian `chromium` (DOM asserted,
screenshot kept in test-artifacts/).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from control_harness import PrometheusServer, SidecarMesh, wait_until
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from rich.console import Console

from meshext.control.graph import build_graph, graph_from_scrapes, histogram_quantile, kiali_queries, parse_scrape
from meshext.control.graph_render import table
from meshext.control.prometheus import scrape_config
from meshext.extensions.telemetry.module import telemetry_module

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ENVOY_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                 1800000, 3600000)
LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_canonical_service",
          "source_canonical_revision", "destination_workload", "destination_workload_namespace",
          "destination_service", "destination_service_name", "destination_service_namespace",
          "destination_canonical_service", "destination_canonical_revision", "request_protocol", "response_code",
          "grpc_response_status", "response_flags", "connection_security_policy")
TCP_LABELS = tuple(label for label in LABELS if label not in ("response_code", "grpc_response_status"))


def istio(source: str, destination: str, service: str, *, code: str = "200", protocol: str = "http",
          grpc: str = "", mtls: bool = True, reporter: str = "destination") -> dict[str, str]:
    """Istio's label set for one request (or, without the code labels, one TCP connection)."""
    def side(workload: str) -> tuple[str, str, str]:
        return ("unknown", "unknown", "unknown") if workload == "unknown" else (
            workload, "default", workload.rsplit("-", 1)[0])

    src, dst = side(source), side(destination)
    return {
        "reporter": reporter, "source_workload": src[0], "source_workload_namespace": src[1],
        "source_canonical_service": src[2], "source_canonical_revision": "v1", "destination_workload": dst[0],
        "destination_workload_namespace": dst[1], "destination_service": f"{service}.default.svc.cluster.local",
        "destination_service_name": service, "destination_service_namespace": "default",
        "destination_canonical_service": dst[2], "destination_canonical_revision": "v1",
        "request_protocol": protocol, "response_code": code, "grpc_response_status": grpc, "response_flags": "-",
        "connection_security_policy": "mutual_tls" if mtls else "none",
    }


def _tcp(labels: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in labels.items() if key in TCP_LABELS}


# -- the model ---------------------------------------------------------------------
def test_edges_rates_errors_and_mtls_from_istio_series():
    requests = [
        (istio("frontend-v1", "backend-v1", "backend"), 9.0),
        (istio("frontend-v1", "backend-v1", "backend", code="503"), 1.0),
        (istio("unknown", "backend-v1", "backend", mtls=False), 2.0),
        (istio("frontend-v1", "grpc-v1", "grpc", protocol="grpc", grpc="0"), 3.0),
        (istio("frontend-v1", "grpc-v1", "grpc", protocol="grpc", grpc="14"), 1.0),  # UNAVAILABLE over HTTP 200
    ]
    mtls = [(labels, rate) for labels, rate in requests if labels["connection_security_policy"] == "mutual_tls"]
    p95 = [(istio("frontend-v1", "backend-v1", "backend"), 42.0)]
    tcp = [(_tcp(istio("frontend-v1", "db-v1", "db", protocol="tcp")), 300.0)]
    graph = build_graph(requests, mtls=mtls, p95=p95, tcp=tcp, tcp_mtls=tcp)

    assert set(graph.nodes) == {"default/frontend-v1", "default/backend-v1", "default/grpc-v1", "default/db-v1",
                                "unknown"}
    assert graph.nodes["default/backend-v1"].app == "backend"
    edges = {(e.source, e.destination, e.service): e for e in graph.edges}
    assert set(edges) == {("default/frontend-v1", "default/backend-v1", "backend"),
                          ("unknown", "default/backend-v1", "backend"),
                          ("default/frontend-v1", "default/grpc-v1", "grpc"),
                          ("default/frontend-v1", "default/db-v1", "db")}
    to_backend = edges[("default/frontend-v1", "default/backend-v1", "backend")]
    assert (to_backend.request_rate, to_backend.error_fraction, to_backend.mtls_fraction, to_backend.p95_ms) == (
        10.0, 0.1, 1.0, 42.0)
    plain = edges[("unknown", "default/backend-v1", "backend")]
    assert (plain.request_rate, plain.error_fraction, plain.mtls_fraction) == (2.0, 0.0, 0.0)
    grpc = edges[("default/frontend-v1", "default/grpc-v1", "grpc")]
    assert (grpc.protocol, grpc.error_fraction) == ("grpc", 0.25)
    db = edges[("default/frontend-v1", "default/db-v1", "db")]
    assert (db.protocol, db.tcp_bytes_rate, db.mtls_fraction, db.request_rate) == ("tcp", 300.0, 1.0, 0.0)


def test_histogram_quantile_interpolates_as_prometheus_does():
    # 100 observations: 50 up to 10 ms, 40 in (10, 50], 10 in (50, 100].
    buckets = [(5.0, 0.0), (10.0, 50.0), (50.0, 90.0), (100.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == 10.0
    assert histogram_quantile(0.95, buckets) == pytest.approx(75.0)
    assert histogram_quantile(0.95, [(10.0, 0.0), (float("inf"), 4.0)]) == 10.0  # only +Inf: its lower bound
    assert histogram_quantile(0.95, [(10.0, 0.0), (float("inf"), 0.0)]) is None


def _registry() -> tuple[CollectorRegistry, Counter, Histogram, Counter]:
    registry = CollectorRegistry()
    requests = Counter("istio_requests", "Istio requests", LABELS, registry=registry)
    duration = Histogram("istio_request_duration_milliseconds", "Istio request duration", LABELS,
                         buckets=ENVOY_BUCKETS, registry=registry)
    sent = Counter("istio_tcp_sent_bytes", "Istio TCP bytes sent", TCP_LABELS, registry=registry)
    return registry, requests, duration, sent


def test_rates_come_from_two_scrapes_of_the_sidecars():
    registry, requests, duration, sent = _registry()
    ok, failed = istio("frontend-v1", "backend-v1", "backend"), istio("frontend-v1", "backend-v1", "backend",
                                                                     code="500")
    requests.labels(**ok).inc(100)  # before the first scrape: not in the rate
    first = parse_scrape(generate_latest(registry).decode())
    requests.labels(**ok).inc(30)
    requests.labels(**failed).inc(10)
    requests.labels(**istio("frontend-v1", "backend-v1", "backend", reporter="source")).inc(40)  # other reporter
    for milliseconds in [3.0] * 35 + [70.0] * 5:
        duration.labels(**ok).observe(milliseconds)
    sent.labels(**_tcp(istio("frontend-v1", "db-v1", "db", protocol="tcp"))).inc(2000)
    graph = graph_from_scrapes(first, parse_scrape(generate_latest(registry).decode()), 20.0)

    edges = {(e.source, e.destination): e for e in graph.edges}
    backend = edges[("default/frontend-v1", "default/backend-v1")]
    assert (backend.request_rate, backend.error_fraction, backend.mtls_fraction) == (2.0, 0.25, 1.0)
    assert backend.p95_ms == pytest.approx(50 + 50 * (38 - 35) / 5)  # rank 38 of 40, in the (50, 100] bucket
    assert edges[("default/frontend-v1", "default/db-v1")].tcp_bytes_rate == 100.0


def test_the_terminal_table_fits_80_columns():
    graph = build_graph([(istio("frontend-v1", "backend-v1", "backend"), 9.5),
                         (istio("frontend-v1", "backend-v1", "backend", code="503"), 0.5)],
                        mtls=[(istio("frontend-v1", "backend-v1", "backend"), 9.5)],
                        p95=[(istio("frontend-v1", "backend-v1", "backend"), 12.0)], origin="a test")
    console = Console(width=80, record=True, color_system=None)
    console.print(table(graph))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    row = next(line for line in text.splitlines() if "frontend-v1" in line)
    for cell in ("backend-v1", "backend (http)", "10.00 req/s", "5%", "12ms", "95%"):
        assert cell in row, text


def test_the_queries_are_kialis():
    queries = kiali_queries("10m", "default")
    assert queries["requests"].startswith(
        'sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="default"}[10m])) '
        "by (source_cluster,source_workload_namespace,source_workload,")
    assert queries["requests"].endswith("request_protocol,response_code,grpc_response_status,response_flags) > 0")
    assert 'connection_security_policy="mutual_tls"' in queries["mtls"]
    assert queries["p95"].startswith("histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket")
    assert "by (le," in queries["p95"] and "response_code" not in queries["p95"]


# -- end to end: real sidecars, Prometheus, the command, a browser ------------------------------------------
class Traffic:
    """Real traffic through real sidecars, every 0.1 s until closed (bounded): frontend -> backend 9 GETs
    (200) and 1 POST (501: the echo app serves GET only) over mutual TLS, a client without a sidecar ->
    backend's inbound listener 2 GETs in plain text (PERMISSIVE), frontend -> db one TCP connection
    carrying a line, through frontend's tcpOutbound listener."""

    def __init__(self, root: Path) -> None:
        self.mesh = SidecarMesh(root, telemetry_module=telemetry_module())
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _request(self, address: tuple[str, int], method: str, host: str, expected: int) -> None:
        connection = http.client.HTTPConnection(*address, timeout=10)
        try:
            connection.request(method, "/", headers={"Host": host})
            response = connection.getresponse()
            response.read()  # a response left unread is a downstream disconnect (flag DC) for Envoy
            if response.status != expected:
                self.failures.append(f"{method} {host} via {address}: HTTP {response.status}, expected {expected}")
        finally:
            connection.close()

    def _tcp_line(self) -> None:
        listen = self.mesh.workload("frontend-v1").tcpOutbound[0].listen
        with socket.create_connection((listen.address, listen.port), timeout=10) as connection:
            connection.sendall(b"hello db\n")
            connection.recv(100)

    def _run(self) -> None:
        frontend = self.mesh.workload("frontend-v1").outbound
        backend = self.mesh.workload("backend-v1").inbound
        deadline = time.monotonic() + 240  # bounded, whatever happens to the test
        while not self._stop.wait(0.1) and time.monotonic() < deadline:
            try:
                for _ in range(9):
                    self._request((frontend.address, frontend.port), "GET", "backend", 200)
                self._request((frontend.address, frontend.port), "POST", "backend", 501)
                for _ in range(2):
                    self._request((backend.address, backend.port), "GET", "backend", 200)
                self._tcp_line()
            except OSError as error:
                self.failures.append(repr(error))

    def close(self) -> None:
        """Stop the traffic, then the sidecars, the control plane and the apps."""
        self._stop.set()
        self._thread.join(30)
        self.mesh.close()


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    running = Traffic(tmp_path_factory.mktemp("graph-mesh"))
    yield running
    running.close()
    assert not running.failures, running.failures[:5]


def _graph_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", "graph", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "80"})


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium not found: bash scripts/install.sh --test (Debian's chromium)")
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def _drawn_edges(dom: str) -> dict[tuple[str, str, str], dict[str, str]]:
    edges = {}
    for tag in re.findall(r'<g class="edge"[^>]*>', dom):
        attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))
        edges[(attributes["source"], attributes["destination"], attributes["service"])] = attributes
    return edges


def _assert_traffic_drawn(edges: dict[tuple[str, str, str], dict[str, str]], window_seconds: float) -> None:
    assert set(edges) == {("default/frontend-v1", "default/backend-v1", "backend"),
                          ("unknown", "default/backend-v1", "backend"),
                          ("default/frontend-v1", "default/db-v1", "db")}, edges
    secure = edges[("default/frontend-v1", "default/backend-v1", "backend")]
    # One request in ten fails, in a fixed order: any N consecutive requests hold floor(N/10) or
    # ceil(N/10) failures, so the window's fraction is within 1/N of 0.1 (N from the drawn rate).
    requests = float(secure["request-rate"]) * window_seconds
    assert requests >= 10, secure
    assert float(secure["error-fraction"]) == pytest.approx(0.1, abs=max(0.02, 1 / requests)), secure
    assert float(secure["mtls-fraction"]) == pytest.approx(1.0)
    plain = edges[("unknown", "default/backend-v1", "backend")]
    assert (float(plain["error-fraction"]), float(plain["mtls-fraction"])) == (0.0, 0.0)
    db = edges[("default/frontend-v1", "default/db-v1", "db")]
    assert db["protocol"] == "tcp" and float(db["tcp-bytes-rate"]) > 0


@pytest.mark.envoy
def test_graph_from_prometheus_drawn_in_a_browser(traffic, tmp_path):
    config = tmp_path / "prometheus.yml"
    document, left_out = scrape_config(traffic.mesh.mesh, scrape_interval="1s")
    assert left_out == ["default/rogue-v1"]  # the mesh's workload without a sidecar
    config.write_text(yaml.safe_dump(document))
    html_file, svg_file = tmp_path / "graph.html", tmp_path / "graph.svg"
    with PrometheusServer(config, tmp_path) as prometheus:
        # frontend -> backend 200 and 501, the client without a sidecar -> backend 200
        # Every series the graph draws must have a rate (the targets are scraped independently, so the
        # TCP series can have one before the HTTP ones), and the window must be full of samples: rate()
        # extrapolates a shorter span to the window, so the drawn rate x window would overstate how many
        # requests the error fraction was measured on (the bound below is 1 / that number).
        wait_until(lambda: len(prometheus.api(
                       "query", query='rate(istio_requests_total{reporter="destination"}[10s]) > 0')["result"]) == 3
                   and prometheus.api("query", query='rate(istio_tcp_sent_bytes_total[10s]) > 0')["result"]
                   and prometheus.api("query", query='count_over_time(istio_requests_total{reporter="destination",'
                                                     'response_code="501"}[10s]) >= 10')["result"],
                   60, "a 10 s window full of scrapes with traffic")
        drawn = _graph_command("--prometheus", prometheus.url, "--window", "10s", "--html", str(html_file),
                               "--svg", str(svg_file))
    assert drawn.returncode == 0, drawn.stderr
    assert "frontend-v1" in drawn.stdout and "backend (http)" in drawn.stdout and "db (tcp)" in drawn.stdout
    assert max(len(line) for line in drawn.stdout.splitlines()) <= 80, drawn.stdout
    assert svg_file.read_text().startswith("<svg xmlns=") and "<script" not in html_file.read_text()

    dom = _chromium("--dump-dom", html_file.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr
    nodes = set(re.findall(r'<g class="node" data-node="([^"]+)"', dom.stdout))
    assert nodes == {"default/frontend-v1", "default/backend-v1", "default/db-v1", "unknown"}, dom.stdout
    _assert_traffic_drawn(_drawn_edges(dom.stdout), 10)
    screenshot = tmp_path / "graph.png"
    shot = _chromium(f"--screenshot={screenshot}", "--window-size=1280,800", html_file.as_uri(),
                     profile=tmp_path / "profile")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "meshext-graph.png")


@pytest.mark.envoy
def test_graph_straight_from_the_sidecars(traffic, tmp_path):
    html_file = tmp_path / "graph.html"
    drawn = _graph_command("--mesh", str(traffic.mesh.mesh_file), "--interval", "2", "--html", str(html_file))
    assert drawn.returncode == 0, drawn.stderr
    _assert_traffic_drawn(_drawn_edges(html_file.read_text()), 2)
