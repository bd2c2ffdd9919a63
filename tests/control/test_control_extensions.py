"""Extensions on real Envoy sidecars, driven through the watched directory.

frontend-v1's sidecar speaks state-of-the-world ADS, backend-v1's delta ADS,
so every test exercises both protocols.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
from control_harness import (
    PULL_PASSWORD,
    PULL_USER,
    Load,
    call,
    read_status,
    sme,
    wait_until,
    wasmplugin,
    write_resources,
)

from meshext.control.proxy import MEMORY_ALLOCATOR_MANAGER

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

BACKEND = "backend-v1.default"


def _condition(status: dict, kind: str = "Ready") -> dict:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def _status_of(path, key):
    return read_status(path).get(key, {})


def _ready(path, key, generation=1):
    status = _status_of(path, key)
    return status if status.get("observedGeneration") == generation and status.get("phase") == "Ready" else None


def _with_chain(response, expected):
    return response if response.status == 200 and response.chain() == expected else None


def test_extension_runs_only_on_selected_workload(mesh_under_test, clean_config, modules, images):
    _, sha = modules["chain"]
    image, manifest_digest = images["chain"]
    resource = clean_config / "backend-only.yaml"
    write_resources(resource, sme("tag-backend", image, config={"tag": "backend-only"},
                                  phase="PostAuthN", labels={"app": "backend"}))
    status = wait_until(lambda: _ready(resource, "ServiceMeshExtension/default/tag-backend"), what="Ready status")
    assert "observedGeneration" in status and status["observedGeneration"] == 1

    assert status["workloads"] == [BACKEND]
    assert status["moduleSha256"] == sha
    assert status["resolvedDigest"] == manifest_digest
    assert status["resolvedImage"].endswith(f"/chain@{manifest_digest}")  # pinned
    assert _condition(status)["reason"] == "Running"
    assert _condition(status, "Error")["status"] == "False"

    mesh = mesh_under_test.mesh
    # Connections opened before the change finish on the old filter chain (Envoy drains them).
    to_backend = wait_until(lambda: _with_chain(call(mesh, "frontend-v1", "backend"), ['{"tag":"backend-only"}']),
                            what="backend chain")
    assert to_backend.status == 200 and to_backend.body["app"] == "backend-v1"
    # The outbound listener speaks HTTP/2 too (prior knowledge, as gRPC clients do).
    workload = next(w for w in mesh.workloads if w.name == "frontend-v1")
    http2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "Host: backend", "-o", "/dev/null",
                            "-w", "%{http_version} %{http_code}",
                            f"http://{workload.outbound.address}:{workload.outbound.port}/"],
                           capture_output=True, text=True, timeout=10)
    assert http2.stdout == "2 200"
    to_frontend = call(mesh, "backend-v1", "frontend")
    assert to_frontend.status == 200 and to_frontend.body["app"] == "frontend-v1"
    assert to_frontend.chain() == []


def test_phases_and_priorities_run_in_documented_order(mesh_under_test, clean_config, modules, images):
    path, _ = modules["chain"]
    resource = clean_config / "ordered.yaml"
    write_resources(
        resource,
        sme("post-authz-low", f"file://{path}", config={"tag": "PostAuthZ/1"}, phase="PostAuthZ", priority=1),
        sme("pre-stats", f"file://{path}", config={"tag": "PreStats/50"}, phase="PreStats", priority=50),
        sme("post-authz-high", f"file://{path}", config={"tag": "PostAuthZ/9"}, phase="PostAuthZ", priority=9),
        # A Maistra image: phase/priority come from its manifest.yaml when the resource omits them.
        sme("from-manifest", images["maistra"][0], config={"tag": "manifest"}),
        wasmplugin("authn", f"file://{path}", phase="AUTHN", priority=5, pluginConfig={"tag": "AUTHN/5"}),
        wasmplugin("unspecified", f"file://{path}", pluginConfig={"tag": "UNSPECIFIED"}),
    )
    keys = ["ServiceMeshExtension/default/" + n for n in ("post-authz-low", "pre-stats", "post-authz-high",
                                                          "from-manifest")]
    keys += ["WasmPlugin/default/authn", "WasmPlugin/default/unspecified"]
    for key in keys:
        wait_until(lambda key=key: _ready(resource, key), what=f"{key} Ready")
    manifest_status = _status_of(resource, "ServiceMeshExtension/default/from-manifest")
    assert (manifest_status["effectivePhase"], manifest_status["effectivePriority"]) == ("PreAuthN", 100)

    expected = ['{"tag":"manifest"}', '{"tag":"AUTHN/5"}', '{"tag":"PostAuthZ/9"}', '{"tag":"PostAuthZ/1"}',
                '{"tag":"PreStats/50"}', '{"tag":"UNSPECIFIED"}']
    for source, service in (("frontend-v1", "backend"), ("backend-v1", "frontend")):
        response = wait_until(lambda source=source, service=service: _with_chain(
                                  call(mesh_under_test.mesh, source, service), expected),
                              what=f"{source} -> {service} chain")
        assert response.chain() == expected  # decode path: filter order
        assert response.response_chain() == expected[::-1]  # encode path runs the chain backwards


def test_update_config_and_image_under_load_then_delete(mesh_under_test, clean_config, modules, images):
    path, _ = modules["chain"]
    _, sha_v2 = modules["chain-v2"]
    mesh = mesh_under_test.mesh
    key = "ServiceMeshExtension/default/live"
    resource = clean_config / "live.yaml"
    write_resources(resource, sme("live", f"file://{path}", config={"tag": "v1"}, phase="PreAuthZ"))
    wait_until(lambda: _ready(resource, key), what="first version Ready")

    def listener_changes() -> dict[str, int]:
        return {name: sum(value for stat, value in sidecar.envoy.stats("listener_manager.").items()
                          if stat.endswith(("listener_modified", "listener_in_place_updated")))
                for name, sidecar in mesh_under_test.sidecars.items()}

    listeners_before = listener_changes()
    with Load(lambda: call(mesh, "frontend-v1", "backend"), count=3000, seconds=60) as load:
        wait_until(lambda: load.sent > 20, what="load started")
        write_resources(resource, sme("live", f"file://{path}", config={"tag": "v2"}, phase="PreAuthZ"))
        wait_until(lambda: _ready(resource, key, generation=2), what="config update Ready")
        # A config change is an ECDS update only: the listener (and its connections) stay.
        assert call(mesh, "frontend-v1", "backend").chain() == ['{"tag":"v2"}']

        write_resources(resource, sme("live", images["chain-v2"][0], config={"tag": "v3"}, phase="PreAuthZ"))
        status = wait_until(lambda: _ready(resource, key, generation=3), what="image update Ready")
        assert status["moduleSha256"] == sha_v2
        after_image = call(mesh, "frontend-v1", "backend")
        assert after_image.chain() == [] and after_image.header_values("x-meshext-chan2") == ['{"tag":"v3"}']
        # Config and image changes were ECDS updates only: no listener was touched.
        assert listener_changes() == listeners_before

        resource.unlink()
        wait_until(lambda: call(mesh, "frontend-v1", "backend").header_values("x-meshext-chan2") == [],
                   what="filter removed")
        # ...while removing the filter does change the listeners (so the counter above can move).
        assert all(listener_changes()[name] > listeners_before[name] for name in listeners_before)
        sent_before = load.sent
        wait_until(lambda: load.sent > sent_before + 100, what="more load after delete")
    assert load.failures == [], f"{len(load.failures)} of {load.sent} requests failed: {load.failures[:5]}"


def test_bad_resources_are_reported_and_traffic_is_unaffected(mesh_under_test, clean_config, modules, images,
                                                              registry):
    path, sha = modules["chain"]
    mesh = mesh_under_test.mesh
    good = clean_config / "good.yaml"
    write_resources(good, sme("good", f"file://{path}", config={"tag": "good"}, phase="PostStats"))
    wait_until(lambda: _ready(good, "ServiceMeshExtension/default/good"), what="good extension Ready")

    bad = clean_config / "bad.yaml"
    with Load(lambda: call(mesh, "frontend-v1", "backend"), count=3000, seconds=60) as load:
        write_resources(
            bad,
            sme("missing-image", f"{registry.host}/no-such-filter:1", config={"tag": "x"}),
            wasmplugin("wrong-digest", images["chain"][0], sha256="0" * 64, pluginConfig={"tag": "x"}),
            sme("bad-priority", f"file://{path}", priority="high"),
            sme("typo", f"file://{path}", config={"tag": "x"}, phase="PreAuthN") | {"spec": {
                "image": f"file://{path}", "priorty": 3}},
            # The test module refuses an empty plugin configuration: Envoy NACKs the ECDS update.
            wasmplugin("refused-by-envoy", f"file://{path}", phase="AUTHN"),
        )

        def errors():
            statuses = read_status(bad)
            found = {key.split("/")[-1]: _condition(s)["reason"] for key, s in statuses.items()
                     if s.get("phase") == "Error"}
            return found if len(found) == 5 else None

        reasons = wait_until(errors, timeout=30, what="five error statuses")
        assert reasons == {"missing-image": "ImagePullFailed", "wrong-digest": "DigestMismatch",
                           "bad-priority": "InvalidSpec", "typo": "InvalidSpec",
                           "refused-by-envoy": "RejectedByProxy"}
        statuses = read_status(bad)
        message = {key.split("/")[-1]: _condition(s)["message"] for key, s in statuses.items()}
        assert "no-such-filter" in message["missing-image"] and "spec.image" in message["missing-image"]
        assert sha in message["wrong-digest"] and "spec.sha256" in message["wrong-digest"]
        assert "spec.priority" in message["bad-priority"]
        assert "spec.priorty" in message["typo"] and "unknown field" in message["typo"]
        assert "Unable to create Wasm plugin WasmPlugin/default/refused-by-envoy" in message["refused-by-envoy"]
        assert all(s["workloads"] == [] for s in statuses.values())

        # The refused extension is withdrawn: every proxy is back in sync on good config.
        nodes = [w.node_id for w in mesh.workloads]
        assert mesh_under_test.running.state.cache.wait_converged(nodes, 20)
        for source, service in (("frontend-v1", "backend"), ("backend-v1", "frontend")):
            wait_until(lambda source=source, service=service: _with_chain(call(mesh, source, service),
                                                                          ['{"tag":"good"}']),
                       what="good chain only")
        assert _ready(good, "ServiceMeshExtension/default/good")

        # An update that Envoy refuses: the previous generation keeps running, and the status says both.
        write_resources(good, sme("good", f"file://{path}", config="", phase="PostStats",
                                  api_version="maistra.io/v1alpha1"))

        def refused():
            status = _status_of(good, "ServiceMeshExtension/default/good")
            return status if status.get("observedGeneration") == 2 and status.get("phase") == "Error" else None

        status = wait_until(refused, what="refused update reported")
        assert _condition(status)["reason"] == "RejectedByProxy"
        assert "the last accepted configuration keeps running" in _condition(status)["message"]
        assert status["workloads"] == ["backend-v1.default", "frontend-v1.default"]
        assert mesh_under_test.running.state.cache.wait_converged(nodes, 20)
        assert call(mesh, "frontend-v1", "backend").chain() == ['{"tag":"good"}']

        # An invalid update: reported, and again the last accepted configuration keeps running.
        write_resources(good, sme("good", f"file://{path}", config={"tag": "better"}, priority="high"))

        def invalid():
            status = _status_of(good, "ServiceMeshExtension/default/good")
            return status if status.get("observedGeneration") == 3 and status.get("phase") == "Error" else None

        status = wait_until(invalid, what="invalid update reported")
        assert _condition(status)["reason"] == "InvalidSpec" and "spec.priority" in _condition(status)["message"]
        assert status["workloads"] == ["backend-v1.default", "frontend-v1.default"]
        assert call(mesh, "frontend-v1", "backend").chain() == ['{"tag":"good"}']
    assert load.failures == [], f"{len(load.failures)} of {load.sent} requests failed: {load.failures[:5]}"


def test_a_recreated_extension_keeps_its_last_good_configuration_when_an_update_is_refused(
        mesh_under_test, clean_config, modules):
    path, _ = modules["chain"]
    mesh = mesh_under_test.mesh
    nodes = [w.node_id for w in mesh.workloads]
    key = "ServiceMeshExtension/default/again"
    resource = clean_config / "again.yaml"
    good = sme("again", f"file://{path}", config={"tag": "again"}, phase="PostStats")
    write_resources(resource, good)
    wait_until(lambda: _ready(resource, key), what="first creation Ready")
    wait_until(lambda: _with_chain(call(mesh, "frontend-v1", "backend"), ['{"tag":"again"}']),
               what="first creation serving")

    resource.unlink()
    wait_until(lambda: _with_chain(call(mesh, "frontend-v1", "backend"), []), what="deleted extension gone")
    assert mesh_under_test.running.state.cache.wait_converged(nodes, 20)

    # Created again under the same name, with the same (good) spec: Envoy is sent nothing new for it.
    write_resources(resource, good)
    wait_until(lambda: _ready(resource, key), what="re-created extension Ready")
    for source, service in (("frontend-v1", "backend"), ("backend-v1", "frontend")):
        wait_until(lambda source=source, service=service: _with_chain(call(mesh, source, service),
                                                                      ['{"tag":"again"}']),
                   what="re-created extension serving")

    # The test module refuses an empty plugin configuration: Envoy NACKs the update.
    write_resources(resource, sme("again", f"file://{path}", config="", phase="PostStats",
                                  api_version="maistra.io/v1alpha1"))

    def refused():
        status = _status_of(resource, key)
        return status if status.get("observedGeneration") == 2 and status.get("phase") == "Error" else None

    status = wait_until(refused, what="refused update reported")
    assert _condition(status)["reason"] == "RejectedByProxy"
    assert "Unable to create Wasm plugin ServiceMeshExtension/default/again" in _condition(status)["message"]
    assert "the last accepted configuration keeps running" in _condition(status)["message"]
    assert status["workloads"] == ["backend-v1.default", "frontend-v1.default"]
    assert mesh_under_test.running.state.cache.wait_converged(nodes, 20)
    for source, service in (("frontend-v1", "backend"), ("backend-v1", "frontend")):
        assert call(mesh, source, service).chain() == ['{"tag":"again"}']


def test_status_endpoint_lists_extensions_and_proxies(mesh_under_test, clean_config, modules):
    import urllib.request

    from meshext.control.proxy import client_ssl_context

    path, _ = modules["chain"]
    resource = clean_config / "listed.yaml"
    write_resources(resource, sme("listed", f"file://{path}", config={"tag": "l"},
                                  namespace="meshext-system", labels={"version": "v1"}))
    wait_until(lambda: _ready(resource, "ServiceMeshExtension/meshext-system/listed"), what="Ready")
    host, port = mesh_under_test.control_plane.http_address
    admin = client_ssl_context(mesh_under_test.pki.admin().load())
    with urllib.request.urlopen(f"https://{host}:{port}/status", timeout=5, context=admin) as response:
        report = json.load(response)
    listed = report["extensions"]["ServiceMeshExtension/meshext-system/listed"]
    # In the control-plane namespace the resource applies mesh-wide.
    assert listed["status"]["workloads"] == ["backend-v1.default", "frontend-v1.default"]
    assert set(report["proxies"]) == {"backend-v1.default", "frontend-v1.default"}
    assert all(p["connected"] and p["inSync"] for p in report["proxies"].values())


def _pull_secret(name: str, host: str, username: str, password: str) -> dict:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    payload = json.dumps({"auths": {host: {"auth": auth}}})
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": "default"},
            "data": {".dockerconfigjson": base64.b64encode(payload.encode()).decode()}}


def test_image_pull_secret_is_honoured(mesh_under_test, clean_config, auth_registry):
    server, image = auth_registry
    resource = clean_config / "private.yaml"
    write_resources(
        resource,
        _pull_secret("pull-creds", server.host, PULL_USER, PULL_PASSWORD),
        _pull_secret("wrong-creds", server.host, PULL_USER, "not-the-password"),
        wasmplugin("with-secret", image, imagePullSecret="pull-creds", pluginConfig={"tag": "private"}),
        # Always: ask the registry (IfNotPresent reuses a cached image, as kubelet does).
        wasmplugin("without-secret", image, imagePullPolicy="Always", pluginConfig={"tag": "x"}),
        wasmplugin("wrong-secret", image, imagePullSecret="wrong-creds", imagePullPolicy="Always",
                   pluginConfig={"tag": "x"}),
        wasmplugin("missing-secret", image, imagePullSecret="nowhere", pluginConfig={"tag": "x"}),
    )
    wait_until(lambda: _ready(resource, "WasmPlugin/default/with-secret"), what="private image Ready")

    def reasons():
        found = {key.split("/")[-1]: _condition(s)["reason"] for key, s in read_status(resource).items()
                 if s.get("phase") == "Error"}
        return found if len(found) == 3 else None

    assert wait_until(reasons, what="three errors") == {
        "without-secret": "ImagePullFailed", "wrong-secret": "ImagePullFailed",
        "missing-secret": "ImagePullSecretInvalid"}
    message = _condition(_status_of(resource, "WasmPlugin/default/missing-secret"))["message"]
    assert "spec.imagePullSecret" in message and "nowhere" in message
    wait_until(lambda: _with_chain(call(mesh_under_test.mesh, "frontend-v1", "backend"), ['{"tag":"private"}']),
               what="private extension running")


def test_python_filter_built_with_the_sdk(mesh_under_test, clean_config, modules, registry, tmp_path):
    """`meshext build` -> registry -> WasmPlugin: a CPython filter next to a WAT one, in phase order."""
    from meshext.registry import push
    from meshext.sdk.builder import build_filter

    built = build_filter(Path(__file__).parent / "filters" / "tagger", tmp_path / "tagger.wasm")
    reference = f"{registry.host}/python-tagger:1"
    digest = push(built.output, reference, plain_http=True)
    path, _ = modules["chain"]
    resource = clean_config / "python.yaml"
    write_resources(
        resource,
        wasmplugin("python-tagger", f"oci://{reference}", phase="AUTHN", pluginConfig={"tag": "from-python"}),
        sme("wat-tagger", f"file://{path}", config={"tag": "wat"}, phase="PostAuthZ"),
    )
    status = wait_until(lambda: _ready(resource, "WasmPlugin/default/python-tagger"), timeout=60,
                        what="Python filter Ready")
    assert status["resolvedDigest"] == digest
    wait_until(lambda: _with_chain(call(mesh_under_test.mesh, "frontend-v1", "backend"),
                                   ["from-python", '{"tag":"wat"}']), what="Python then WAT filter")


def test_sidecars_run_tcmalloc_with_the_soft_limit_and_per_cpu_caches(mesh_under_test):
    """What an operator reads on a sidecar's admin page (/memory/tcmalloc): tcmalloc's soft limit,
    above which free pages go back to the OS at once, and per-CPU caches in use (glibc's rseq
    left to tcmalloc), not one cache per Envoy thread."""
    limit = int(MEMORY_ALLOCATOR_MANAGER["soft_memory_limit_bytes"])
    for sidecar in mesh_under_test.sidecars.values():
        page = sidecar.envoy.admin_get("/memory/tcmalloc")
        assert f"PARAMETER desired_usage_limit_bytes {limit}" in page
        per_cpu_slabs = re.search(r"MALLOC:\s+(\d+) \(.*\) per-CPU slab bytes used", page)
        assert per_cpu_slabs and int(per_cpu_slabs.group(1)) > 0, page[:1500]


def test_extensions_of_one_publisher_share_a_vm_and_others_do_not(mesh_under_test, clean_config, registry,
                                                                   tmp_path):
    """One module pushed to two repositories: the two extensions from team-a's repository run in one VM
    (each with its own configuration, both counted by the module's global state), the one from team-b's
    repository runs in its own VM and sees only itself."""
    from meshext.registry import push
    from meshext.sdk.builder import build_filter

    built = build_filter(Path(__file__).parent / "filters" / "vmshare", tmp_path / "vmshare.wasm")
    team_a, team_b = f"{registry.host}/team-a/vmshare:1", f"{registry.host}/team-b/vmshare:1"
    for reference in (team_a, team_b):
        push(built.output, reference, plain_http=True)
    resource = clean_config / "vmshare.yaml"
    backend = {"app": "backend"}
    write_resources(
        resource,
        sme("a-first", f"oci://{team_a}", config={"tag": "a1"}, phase="PreAuthN", labels=backend),
        sme("a-second", f"oci://{team_a}", config={"tag": "a2"}, phase="PostAuthN", labels=backend),
        sme("b-only", f"oci://{team_b}", config={"tag": "b"}, phase="PreAuthZ", labels=backend),
    )
    for name in ("a-first", "a-second", "b-only"):
        wait_until(lambda name=name: _ready(resource, f"ServiceMeshExtension/default/{name}"), timeout=60,
                   what=f"{name} Ready")
    wait_until(lambda: _with_chain(call(mesh_under_test.mesh, "frontend-v1", "backend"), ["a1/2", "a2/2", "b/1"]),
               what="team-a's two extensions in one VM, team-b's alone")
