"""The Kubernetes adapter against a real API server (needs KUBECONFIG).

No API server can run on the build machine, so without KUBECONFIG the
real-cluster test is skipped, and says so; the adapter's watch, reconnect,
relist and status logic also runs against a protocol-faithful fake
(kube_fake.py).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import yaml
from control_harness import start_control_plane, wait_until

needs_cluster = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="KUBECONFIG is not set: no Kubernetes API server to test the adapter against",
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@needs_cluster
def test_kubernetes_source_reconciles_and_writes_status(tmp_path, modules):
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from meshext.control.mesh import load_mesh
    from meshext.control.sources import KubernetesSource

    config.load_kube_config()
    api = client.ApiClient()
    extensions = client.ApiextensionsV1Api(api)
    for crd in yaml.safe_load_all((DEPLOY / "crds.yaml").read_text()):
        try:
            extensions.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise
    time.sleep(2)  # CRDs become servable asynchronously
    namespace = f"meshext-test-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    custom = client.CustomObjectsApi(api)
    path, sha = modules["chain"]
    running = start_control_plane(load_mesh(), tmp_path / "cache",
                                  source=KubernetesSource(api_client=api, timeout_seconds=5))
    body = {"apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension",
            "metadata": {"name": "tagger", "namespace": namespace},
            "spec": {"image": f"file://{path}", "config": {"tag": "k8s"}, "phase": "PostAuthN"}}
    try:
        custom.create_namespaced_custom_object("maistra.io", "v1", namespace, "servicemeshextensions", body)

        def status(generation):
            found = custom.get_namespaced_custom_object("maistra.io", "v1", namespace, "servicemeshextensions",
                                                        "tagger").get("status") or {}
            return found if found.get("observedGeneration") == generation else None

        first = wait_until(lambda: status(1), timeout=30, what="status written back")
        assert first["moduleSha256"] == sha
        # No workload of the embedded mesh lives in the test namespace.
        ready = next(c for c in first["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NoMatchingWorkloads")

        # The watch delivers the change: a new generation is observed.
        custom.patch_namespaced_custom_object("maistra.io", "v1", namespace, "servicemeshextensions", "tagger",
                                              {"spec": {"config": {"tag": "k8s-2"}}})
        wait_until(lambda: status(2), timeout=30, what="generation 2 observed")
    finally:
        running.stop()
        core.delete_namespace(namespace)


def test_kubernetes_source_against_a_fake_api_server(tmp_path, modules):
    """Runs everywhere: watch from a resourceVersion, reconnect, relist after 410 Gone, status patches."""
    from kube_fake import FakeKubernetes
    from kubernetes import client

    from meshext.control.mesh import load_mesh
    from meshext.control.sources import KubernetesSource

    fake = FakeKubernetes()
    path, sha = modules["chain"]
    plural = "servicemeshextensions"

    def extension(name: str, tag: str) -> dict:
        return {"apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"image": f"file://{path}", "config": {"tag": tag}}}

    def observed(name: str) -> int | None:
        obj = fake.get(plural, "default", name)
        return ((obj or {}).get("status") or {}).get("observedGeneration")

    fake.apply(plural, extension("first", "a"))
    api = client.ApiClient(client.Configuration(host=fake.url))
    running = start_control_plane(load_mesh(), tmp_path / "cache",
                                  source=KubernetesSource(api_client=api, timeout_seconds=1))
    operator = running.operator
    try:
        wait_until(lambda: observed("first") == 1, what="status of the listed resource")
        status = fake.get(plural, "default", "first")["status"]
        assert status["moduleSha256"] == sha
        assert status["conditions"][0]["reason"] == "Pending"  # default mesh, no sidecar connected

        fake.apply(plural, extension("first", "b"))  # a watch event
        wait_until(lambda: observed("first") == 2, what="generation 2 through the watch")
        time.sleep(1.5)  # the watch times out (timeoutSeconds=1) and reconnects from its resourceVersion
        fake.apply(plural, extension("second", "c"))
        wait_until(lambda: observed("second") == 1, what="a resource created after a reconnect")

        # History compacted and a deletion missed: only a relist can notice it.
        fake.delete(plural, "default", "first", record=False)
        fake.compact()
        wait_until(lambda: "ServiceMeshExtension/default/first" not in operator.status_report()["extensions"],
                   what="relist after 410 Gone drops the deleted resource")
        assert "ServiceMeshExtension/default/second" in operator.status_report()["extensions"]
        # Writing status must not feed back into new generations.
        assert observed("second") == 1 and fake.get(plural, "default", "second")["metadata"]["generation"] == 1
        patches = len(fake.status_patches)
        time.sleep(1)
        assert len(fake.status_patches) == patches, "status writes keep triggering status writes"
    finally:
        running.stop()
        fake.close()


@needs_cluster
def test_mesh_discovery_against_a_real_cluster(tmp_path):
    """A Service and an annotated Pod become a service with a ready endpoint and a workload; deleting the pod
    removes both (the EndpointSlice controller, not a selector, says who is ready)."""
    from kubernetes import client, config

    from meshext.control.discovery import INJECT_ANNOTATION, KubernetesMeshDiscovery
    from meshext.control.mesh import Mesh

    config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    namespace = f"meshext-test-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    running = start_control_plane(Mesh(), tmp_path / "cache")
    discovery = KubernetesMeshDiscovery(running.operator, api_client=api, timeout_seconds=5).start()

    def discovered() -> tuple[list[str], list[str]]:
        mesh = discovery.mesh
        if mesh is None:
            return [], []
        service = next((s for s in mesh.services if (s.namespace, s.name) == (namespace, "web")), None)
        return ([w.name for w in mesh.workloads if w.namespace == namespace],
                (service.endpoints or []) if service else [])

    try:
        core.create_namespaced_service(namespace, {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": {INJECT_ANNOTATION: "true"}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                                     "ports": [{"containerPort": 8080}]}]}})
        wait_until(lambda: discovered() == (["web-0"], ["web-0"]), timeout=180, what="pod ready and discovered")
        pod_ip = core.read_namespaced_pod("web-0", namespace).status.pod_ip
        workload = discovery.mesh.workload("web-0", namespace)
        assert (workload.inbound.address, workload.inbound.port) == (pod_ip, 15006)
        assert (workload.app.address, workload.app.port) == (pod_ip, 8080)

        core.delete_namespaced_pod("web-0", namespace, grace_period_seconds=0)
        wait_until(lambda: discovered() == ([], []), timeout=120, what="pod removed from the mesh")
    finally:
        discovery.stop()
        running.stop()
        core.delete_namespace(namespace)
