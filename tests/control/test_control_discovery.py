"""The mesh discovered from Kubernetes (Services, EndpointSlices, Pods), served
to real Envoy sidecars.

The API server is the protocol-faithful fake (kube_fake.py); pods "run" on
loopback: each has podIP 127.0.0.1, a real app (control_harness.start_app) and
a real Envoy sidecar, told apart by the sidecar port annotations.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from control_harness import Load, call, free_port, sme, start_app, start_control_plane, wait_until

from meshext.control.discovery import (
    APP_PORT_ANNOTATION,
    INBOUND_PORT_ANNOTATION,
    INJECT_ANNOTATION,
    OUTBOUND_PORT_ANNOTATION,
    SERVICE_NAME_LABEL,
    KubernetesMeshDiscovery,
)
from meshext.control.mesh import Mesh
from meshext.control.proxy import Sidecar
from meshext.control.sources import KubernetesSource

NAMESPACE = "default"


def service_object(name: str, *, port: Any = 8080, selector: dict | None = None, **port_fields: Any) -> dict:
    return {"metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": selector or {"app": name},
                     "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP", **port_fields}]}}


def slice_object(service: str, endpoints: dict[str, bool], *, port: int = 8080) -> dict:
    """One EndpointSlice of ``service``: pod name -> ready."""
    return {"metadata": {"name": f"{service}-slice", "namespace": NAMESPACE,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod}}
                          for pod, ready in endpoints.items()]}


def pod_object(name: str, labels: dict[str, str], *, app_port: int | None, inbound: int, outbound: int,
               ip: str | None = "127.0.0.1") -> dict:
    annotations = {INJECT_ANNOTATION: "true", INBOUND_PORT_ANNOTATION: str(inbound),
                   OUTBOUND_PORT_ANNOTATION: str(outbound)}
    if app_port is not None:
        annotations[APP_PORT_ANNOTATION] = str(app_port)
    status = {"phase": "Running", "podIP": ip} if ip else {"phase": "Pending"}
    return {"metadata": {"name": name, "namespace": NAMESPACE, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}, "status": status}


class DiscoveredMesh:
    """Fake API server, control plane (operator + CRD source + mesh discovery), pods with real sidecars."""

    def __init__(self, root) -> None:
        from kube_fake import FakeKubernetes
        from kubernetes import client

        self.fake = FakeKubernetes()
        api = client.ApiClient(client.Configuration(host=self.fake.url))
        self.running = start_control_plane(Mesh(), root / "cache",
                                           source=KubernetesSource(api_client=api, timeout_seconds=5))
        self.control_plane, self.operator = self.running.server, self.running.operator
        self.discovery = KubernetesMeshDiscovery(self.operator, api_client=api, timeout_seconds=5).start()
        self.apps: dict[str, Any] = {}
        self.sidecars: dict[str, Sidecar] = {}

    def add_pod(self, name: str, labels: dict[str, str]) -> None:
        """A running pod: app, sidecar, and the Pod object the kubelet would report."""
        app_port = free_port()
        self.apps[name] = start_app(name, app_port)
        self.fake.apply("pods", pod_object(name, labels, app_port=app_port, inbound=free_port(),
                                           outbound=free_port()))
        self.sidecars[name] = Sidecar(name, NAMESPACE, self.control_plane.xds_address,
                                      self.control_plane.http_address, labels=labels).start()

    def remove_pod(self, name: str) -> None:
        self.fake.delete("pods", NAMESPACE, name)
        self.sidecars.pop(name).cleanup()
        app = self.apps.pop(name)
        app.shutdown()
        app.server_close()

    def settle(self, predicate=lambda mesh: True, what: str = "the discovered mesh") -> Mesh:
        """Wait until discovery published a mesh satisfying ``predicate`` and every sidecar runs it."""
        mesh = wait_until(lambda: self.discovery.mesh if self.discovery.mesh and predicate(self.discovery.mesh)
                          else None, what=what)
        assert self.operator.wait_idle(30)
        nodes = [f"{name}.{NAMESPACE}" for name in self.sidecars]
        assert self.running.state.cache.wait_converged(nodes, 30), self.operator.status_report()["proxies"]
        return mesh

    def answers(self, source: str, service: str, count: int = 20) -> Counter:
        """Which apps answer ``count`` requests from ``source`` to ``service`` (all must succeed)."""
        seen: Counter = Counter()
        for _ in range(count):
            response = call(self.discovery.mesh, source, service)
            assert response.status == 200, response.body
            seen[response.body["app"]] += 1
        return seen

    def clusters(self, pod: str) -> dict[str, list[str]]:
        """Outbound cluster -> endpoint addresses, as the pod's Envoy holds them."""
        held = json.loads(self.sidecars[pod].envoy.admin_get("/clusters?format=json"))
        return {cluster["name"]: ["{address}:{port_value}".format(**host["address"]["socket_address"])
                                  for host in cluster.get("host_statuses", [])]
                for cluster in held["cluster_statuses"] if cluster["name"].startswith("outbound|")}

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.cleanup()
        self.discovery.stop()
        self.running.stop()
        for app in self.apps.values():
            app.shutdown()
            app.server_close()
        self.fake.close()


@pytest.fixture(scope="module")
def discovered(tmp_path_factory) -> Iterator[DiscoveredMesh]:
    running = DiscoveredMesh(tmp_path_factory.mktemp("discovered"))
    for name in ("frontend", "backend"):
        running.fake.apply("services", service_object(name))
        running.add_pod(f"{name}-0", {"app": name})
        running.fake.apply("endpointslices", slice_object(name, {f"{name}-0": True}))
    running.settle(lambda mesh: len(mesh.workloads) == 2 and all(s.endpoints for s in mesh.services))
    yield running
    running.close()


def inbound_of(mesh: Mesh, pod: str) -> str:
    workload = mesh.workload(pod, NAMESPACE)
    return f"{workload.inbound.address}:{workload.inbound.port}"


@pytest.mark.envoy
def test_traffic_flows_between_discovered_services(discovered):
    assert discovered.answers("frontend-0", "backend", 3) == {"backend-0": 3}
    assert discovered.answers("backend-0", "frontend.default", 3) == {"frontend-0": 3}
    report = discovered.operator.status_report()["mesh"]
    assert report["workloads"] == ["backend-0.default", "frontend-0.default"]
    assert report["services"] == ["default/backend", "default/frontend"] and report["problems"] == []


@pytest.mark.envoy
@pytest.mark.slow
def test_scaling_follows_ready_endpoints_only(discovered):
    # Requests keep flowing while the backend scales up and down: none may fail.
    with Load(lambda: call(discovered.discovery.mesh, "frontend-0", "backend"), count=3000, seconds=60) as load:
        _scale_backend(discovered)
    assert load.sent > 50 and load.failures == [], load.failures[:5]


def _scale_backend(discovered: DiscoveredMesh) -> None:
    fake = discovered.fake
    discovered.add_pod("backend-1", {"app": "backend"})
    discovered.add_pod("backend-2", {"app": "backend"})
    # backend-2 matches the selector but is not ready: it must get no traffic.
    fake.apply("endpointslices", slice_object("backend", {"backend-0": True, "backend-1": True, "backend-2": False}))
    mesh = discovered.settle(lambda m: m.services[0].endpoints == ["backend-0", "backend-1"], "backend-1 ready")
    cluster = "outbound|8080||backend.default.svc.cluster.local"
    assert sorted(discovered.clusters("frontend-0")[cluster]) == sorted(
        inbound_of(mesh, pod) for pod in ("backend-0", "backend-1"))
    seen = discovered.answers("frontend-0", "backend", 30)
    assert set(seen) == {"backend-0", "backend-1"}, seen

    fake.apply("endpointslices", slice_object("backend", {"backend-0": True, "backend-1": False, "backend-2": True}))
    discovered.settle(lambda m: m.services[0].endpoints == ["backend-0", "backend-2"], "backend-2 ready")
    seen = discovered.answers("frontend-0", "backend", 30)
    assert set(seen) == {"backend-0", "backend-2"}, seen

    fake.apply("endpointslices", slice_object("backend", {"backend-0": True}))
    discovered.remove_pod("backend-1")
    discovered.remove_pod("backend-2")
    discovered.settle(lambda m: len(m.workloads) == 2, "scaled back down")
    assert discovered.answers("frontend-0", "backend", 5) == {"backend-0": 5}


@pytest.mark.envoy
def test_a_removed_service_loses_its_cluster(discovered):
    fake = discovered.fake
    fake.apply("services", service_object("extra", selector={"app": "backend"}, appProtocol="http"))
    fake.apply("endpointslices", slice_object("extra", {"backend-0": True}))
    cluster = "outbound|8080||extra.default.svc.cluster.local"
    discovered.settle(lambda m: any(s.name == "extra" and s.endpoints for s in m.services), "service extra")
    assert cluster in discovered.clusters("frontend-0")
    assert discovered.answers("frontend-0", "extra", 2) == {"backend-0": 2}

    fake.delete("services", NAMESPACE, "extra")
    fake.delete("endpointslices", NAMESPACE, "extra-slice")
    discovered.settle(lambda m: all(s.name != "extra" for s in m.services), "service extra removed")
    assert cluster not in discovered.clusters("frontend-0")
    assert call(discovered.discovery.mesh, "frontend-0", "extra").status == 404  # no route any more
    assert discovered.answers("frontend-0", "backend", 2) == {"backend-0": 2}


@pytest.mark.envoy
@pytest.mark.slow
def test_an_extension_selects_a_newly_created_pod(discovered, modules):
    fake = discovered.fake
    path, _ = modules["chain"]
    resource = sme("canary-tag", f"file://{path}", config={"tag": "canary"}, phase="PostAuthN",
                   labels={"track": "canary"})
    fake.apply("servicemeshextensions", resource)

    def status() -> dict:
        obj = fake.get("servicemeshextensions", NAMESPACE, "canary-tag") or {}
        return obj.get("status") or {}

    wait_until(lambda: status().get("conditions", [{}])[0].get("reason") == "NoMatchingWorkloads",
               what="no workload selected yet")
    discovered.add_pod("backend-canary", {"app": "backend", "track": "canary"})
    fake.apply("endpointslices", slice_object("backend", {"backend-0": True, "backend-canary": True}))
    discovered.settle(lambda m: "backend-canary" in m.services[0].endpoints, "the canary pod")
    wait_until(lambda: status().get("workloads") == ["backend-canary.default"], what="the extension on the canary")
    chains: dict[str, set[str]] = {}
    for _ in range(30):
        response = call(discovered.discovery.mesh, "frontend-0", "backend")
        assert response.status == 200
        chains.setdefault(response.body["app"], set()).add(tuple(response.chain()))
    assert chains == {"backend-0": {()}, "backend-canary": {('{"tag":"canary"}',)}}, chains

    fake.apply("endpointslices", slice_object("backend", {"backend-0": True}))
    discovered.remove_pod("backend-canary")
    discovered.settle(lambda m: len(m.workloads) == 2, "the canary pod removed")
    wait_until(lambda: status()["conditions"][0]["reason"] == "NoMatchingWorkloads", what="the canary gone")
    assert status()["workloads"] == []
    assert discovered.running.state.cache.snapshot("backend-canary.default") is None  # forgotten
    wait_until(lambda: "backend-canary.default" not in discovered.operator.status_report()["proxies"],
               what="the stopped sidecar forgotten")
    fake.delete("servicemeshextensions", NAMESPACE, "canary-tag")


@pytest.mark.envoy
def test_bad_objects_are_reported_and_the_last_good_mesh_serves(discovered):
    fake = discovered.fake
    good = discovered.discovery.mesh

    def problems() -> list[str]:
        return discovered.operator.status_report()["mesh"]["problems"]

    fake.apply("services", service_object("backend", port=70000))
    fake.apply("pods", pod_object("starting", {"app": "backend"}, app_port=free_port(), inbound=free_port(),
                                  outbound=free_port(), ip=None))
    found = wait_until(lambda: len(problems()) == 2 and problems(), what="both objects reported")
    assert any("Service default/backend: spec.ports[0].port: 70000 is not a port number" in p for p in found), found
    assert any("Pod default/starting: status.podIP" in p for p in found), found
    assert discovered.discovery.mesh.services == good.services  # the last good backend service is kept
    assert discovered.answers("frontend-0", "backend", 3) == {"backend-0": 3}

    # A pod on an address another pod uses: the mesh as a whole is invalid; the last good one keeps serving.
    taken = good.workload("backend-0", NAMESPACE).inbound.port
    fake.apply("pods", pod_object("clash", {"app": "other"}, app_port=free_port(), inbound=taken,
                                  outbound=free_port()))
    found = wait_until(lambda: [p for p in problems() if "both use" in p], what="clash reported")
    assert f"default/clash inbound and default/backend-0 inbound both use 127.0.0.1:{taken}" in found[0], found
    assert "previous one keeps serving" in found[0], found
    assert "clash.default" not in discovered.operator.status_report()["mesh"]["workloads"]
    assert discovered.answers("frontend-0", "backend", 3) == {"backend-0": 3}

    fake.delete("pods", NAMESPACE, "clash")
    fake.delete("pods", NAMESPACE, "starting")
    fake.apply("services", service_object("backend"))
    wait_until(lambda: problems() == [], what="problems cleared once the objects are fixed")
    assert discovered.answers("frontend-0", "backend", 3) == {"backend-0": 3}


def test_serve_kubernetes_discovers_the_mesh_by_default(tmp_path):
    """`meshext control serve --kubernetes` (no --mesh) against the fake API server, seen through `meshext status`."""
    import os
    import subprocess
    import sys

    import yaml
    from kube_fake import FakeKubernetes

    fake = FakeKubernetes()
    fake.apply("services", service_object("backend"))
    fake.apply("pods", pod_object("backend-0", {"app": "backend"}, app_port=free_port(), inbound=free_port(),
                                  outbound=free_port()))
    fake.apply("endpointslices", slice_object("backend", {"backend-0": True}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    http = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}  # only the child talks to the fake
    env.pop("KUBERNETES_SERVICE_HOST", None)
    server = subprocess.Popen([sys.executable, "-m", "meshext", "control", "serve", "--kubernetes",
                               "--xds-address", f"127.0.0.1:{free_port()}", "--http-address", http,
                               "--cache-dir", str(tmp_path / "cache")], env=env, stderr=subprocess.PIPE, text=True)

    def status(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "meshext", "status", "--control-http", http, *options],
                              capture_output=True, text=True, timeout=30)

    def mesh() -> dict:
        result = status("--json")
        return json.loads(result.stdout)["mesh"] if result.returncode == 0 else {}

    try:
        found = wait_until(lambda: mesh().get("workloads") and mesh(), timeout=30, what="the discovered mesh")
        assert found == {"services": ["default/backend"], "workloads": ["backend-0.default"], "problems": []}
        fake.apply("services", service_object("backend", port=0))
        wait_until(lambda: mesh().get("problems"), what="the bad service reported")
        table = status()
        assert table.returncode == 0
        assert ("mesh: Service default/backend: spec.ports[0].port: 0 is not a port number "
                "(fix: use a number from 1 to 65535)") in table.stdout
        assert mesh()["services"] == ["default/backend"]  # its last good version stays
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
        fake.close()
    assert "mesh discovered from Kubernetes" in stderr


def _workload(name: str, ip: str, inbound: int, *, app: int = 8080, outbound: int = 15001) -> dict:
    return {"name": name, "app": {"address": ip, "port": app}, "inbound": {"address": ip, "port": inbound},
            "outbound": {"address": "127.0.0.1", "port": outbound}}


def test_address_clashes_are_judged_per_network_namespace():
    from pydantic import ValidationError

    # Two pods (own IPs, own loopback): the same ports everywhere are fine.
    Mesh(workloads=[_workload("a", "10.0.0.1", 15006), _workload("b", "10.0.0.2", 15006)])
    # The same pod IP and port twice is not; nor two loopback listeners of one host on one port.
    with pytest.raises(ValidationError, match="default/b inbound and default/a inbound both use 10.0.0.1:15006"):
        Mesh(workloads=[_workload("a", "10.0.0.1", 15006), _workload("b", "10.0.0.1", 15006, app=8081,
                                                                         outbound=15002)])
    with pytest.raises(ValidationError, match="default/b outbound and default/a outbound both use 127.0.0.1:15001"):
        Mesh(workloads=[_workload("a", "127.0.0.1", 15006, app=1), _workload("b", "127.0.0.1", 15007, app=2)])
    # A wildcard listener takes the port on every address of its network namespace.
    wildcard = _workload("b", "10.0.0.1", 15007, app=8081, outbound=15002)
    wildcard["outbound"]["address"] = "0.0.0.0"
    wildcard["outbound"]["port"] = 15006
    with pytest.raises(ValidationError, match=r"default/b outbound and default/a inbound both use port 15006 \("):
        Mesh(workloads=[_workload("a", "10.0.0.1", 15006), wildcard])


def test_discovery_maps_objects_onto_the_mesh(tmp_path):
    """Protocols from appProtocol / port names, app ports from EndpointSlices, and a relist after 410 Gone."""
    from kube_fake import FakeKubernetes
    from kubernetes import client

    fake = FakeKubernetes()
    ports = [{"name": "grpc-api", "port": 9000}, {"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"},
             {"name": "http-metrics", "port": 9090}, {"name": "tcp-db", "port": 5432},
             {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "https", "port": 443}]
    fake.apply("services", {"metadata": {"name": "api", "namespace": NAMESPACE},
                            "spec": {"selector": {"app": "api"}, "ports": ports}})
    fake.apply("services", {"metadata": {"name": "db", "namespace": NAMESPACE},
                            "spec": {"ports": [{"name": "tcp", "port": 5432}]}})  # nothing HTTP: not in the mesh
    api_pod = pod_object("api-0", {"app": "api"}, app_port=None, inbound=15006, outbound=15001)
    api_pod["status"]["podIP"] = "10.1.0.5"
    fake.apply("pods", api_pod)
    unmeshed = pod_object("plain-0", {"app": "api"}, app_port=8080, inbound=15006, outbound=15001)
    unmeshed["metadata"]["annotations"] = {}  # no sidecar: never a workload, never an endpoint
    unmeshed["status"]["podIP"] = "10.1.0.6"
    fake.apply("pods", unmeshed)
    fake.apply("endpointslices", slice_object("api", {"api-0": True, "plain-0": True}, port=9443))
    running = start_control_plane(Mesh(), tmp_path)
    api = client.ApiClient(client.Configuration(host=fake.url))
    discovery = KubernetesMeshDiscovery(running.operator, api_client=api, timeout_seconds=1,
                                        control_plane_namespace="mesh-admin").start()
    try:
        mesh = wait_until(lambda: discovery.mesh, what="the first mesh")
        assert mesh.controlPlaneNamespace == "mesh-admin"
        [service] = mesh.services
        assert [(p.port, p.protocol) for p in service.ports] == [(9000, "HTTP2"), (80, "HTTP2"), (9090, "HTTP")]
        assert service.endpoints == ["api-0"]
        [workload] = mesh.workloads
        assert (workload.node_id, workload.labels) == ("api-0.default", {"app": "api"})
        assert (workload.app.address, workload.app.port) == ("10.1.0.5", 9443)  # the slice's port
        assert (workload.inbound.address, workload.inbound.port) == ("10.1.0.5", 15006)
        assert (workload.outbound.address, workload.outbound.port) == ("127.0.0.1", 15001)

        # A deletion the watch never sees (history compacted): the relist after 410 Gone finds it.
        fake.delete("pods", NAMESPACE, "api-0", record=False)
        fake.compact()
        wait_until(lambda: discovery.mesh.workloads == [] and discovery.mesh.services[0].endpoints == [],
                   what="the pod gone after a relist")
        assert running.operator.wait_idle(10)
        assert running.operator.status_report()["mesh"]["workloads"] == []
    finally:
        discovery.stop()
        running.stop()
        fake.close()
