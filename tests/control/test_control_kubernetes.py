"""The Kubernetes adapter against a real API server (needs KUBECONFIG).

No API server can run on the build machine, so without KUBECONFIG this test
is skipped, and says so; the operator logic itself is covered through the
directory source, which feeds the same Operator.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import yaml
from control_harness import wait_until

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="KUBECONFIG is not set: no Kubernetes API server to test the adapter against",
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_kubernetes_source_reconciles_and_writes_status(tmp_path, modules):
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from meshext.control.images import RegistrySettings
    from meshext.control.mesh import load_mesh
    from meshext.control.operator import Operator
    from meshext.control.server import ControlPlane
    from meshext.control.sources import KubernetesSource
    from meshext.registry import ModuleCache

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
    control_plane = ControlPlane().start()
    operator = Operator(load_mesh(), control_plane,
                        registry=RegistrySettings(cache=ModuleCache(tmp_path / "cache"))).start()
    source = KubernetesSource(operator, api_client=api, timeout_seconds=5).start()
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
        source.stop()
        operator.stop()
        control_plane.stop()
        core.delete_namespace(namespace)
