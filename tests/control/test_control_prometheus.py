"""The real Prometheus scraping every sidecar with the configuration `meshext` writes.

Debian's `prometheus` runs on a free loopback port with temporary storage and
a 1 s scrape interval; the tests ask it over its HTTP API.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
import yaml
from control_harness import SIDECAR_MESH_WORKLOADS, PrometheusServer, SidecarMesh, call, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.envoy]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarMesh, PrometheusServer]]:
    root = tmp_path_factory.mktemp("prometheus")
    mesh = SidecarMesh(root)
    config = root / "prometheus.yml"
    written = subprocess.run([sys.executable, "-m", "meshext", "control", "prometheus-config", "--mesh",
                              str(mesh.mesh_file), "--scrape-interval", "1s", "-o", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    assert "left out (no admin address in the mesh file): default/rogue-v1" in written.stderr
    try:
        with PrometheusServer(config, root) as prometheus:
            yield mesh, prometheus
    finally:
        mesh.close()


def test_every_sidecar_is_a_healthy_target_labelled_with_its_workload(observed):
    mesh, prometheus = observed

    def healthy() -> dict[str, str]:
        targets = prometheus.api("targets")["activeTargets"]
        return {t["labels"]["workload"]: t["health"] for t in targets} if all(
            t["health"] == "up" for t in targets) else {}

    targets = wait_until(healthy, 30, "every target scraped")
    assert targets == {name: "up" for name in SIDECAR_MESH_WORKLOADS}
    admin = mesh.workload("backend-v1").admin
    (backend,) = [t for t in prometheus.api("targets")["activeTargets"] if t["labels"]["workload"] == "backend-v1"]
    assert backend["scrapeUrl"] == f"http://{admin.address}:{admin.port}/stats/prometheus"
    assert backend["labels"]["namespace"] == "default"


def _backend_request_series(mesh: SidecarMesh) -> tuple[str, dict[str, str], float]:
    """(name, labels, value) of frontend's count of requests to backend in its own /stats/prometheus.

    Found by what the name and labels say together, so it holds whichever part of the
    cluster name Envoy's tag extraction turned into a label."""
    admin = mesh.workload("frontend-v1").admin
    with urllib.request.urlopen(f"http://{admin.address}:{admin.port}/stats/prometheus", timeout=10) as response:
        text = response.read().decode()
    (series,) = [(sample.name, sample.labels, sample.value)
                 for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name.endswith("_upstream_rq_total") and "ternal_" not in sample.name  # not (ex|in)ternal
                 and "envoy_response_code" not in sample.labels  # the total, not one code's share
                 and "8080" in f"{sample.name}{sample.labels}" and "backend" in f"{sample.name}{sample.labels}"]
    return series


def test_prometheus_returns_the_sidecars_own_counts(observed):
    mesh, prometheus = observed
    for _ in range(7):
        assert call(mesh.mesh, "frontend-v1", "backend").status == 200
    name, labels, own = _backend_request_series(mesh)
    assert own >= 7
    selector = ",".join(f'{key}="{value}"' for key, value in {**labels, "workload": "frontend-v1"}.items())

    def scraped() -> float | None:
        result = prometheus.api("query", query=f"{name}{{{selector}}}")["result"]
        return float(result[0]["value"][1]) if result and float(result[0]["value"][1]) == own else None

    assert wait_until(scraped, 20, f"Prometheus to report {own} requests") == own


def test_the_configuration_names_each_admin_address(tmp_path):
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump({"workloads": [
        {"name": "a", "app": {"port": 1001}, "inbound": {"port": 1002}, "outbound": {"port": 1003},
         "admin": {"address": "::1", "port": 1004}},
        {"name": "b", "namespace": "shop", "app": {"port": 2001}, "inbound": {"port": 2002},
         "outbound": {"port": 2003}}]}))
    printed = subprocess.run([sys.executable, "-m", "meshext", "control", "prometheus-config", "--mesh",
                              str(mesh_file)], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["scrape_configs"] == [{
        "job_name": "meshext-sidecars", "metrics_path": "/stats/prometheus",
        "static_configs": [{"targets": ["[::1]:1004"], "labels": {"namespace": "default", "workload": "a"}}]}]
    assert "shop/b" in printed.stderr
