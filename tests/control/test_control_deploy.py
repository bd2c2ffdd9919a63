"""deploy/: manifests valid for Kubernetes, CRD schemas agreeing with the operator's validation."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from meshext.control.resources import parse_policy, parse_resource
from meshext.control.sources import KubernetesSource
from meshext.errors import MeshextError
from meshext.paths import CACHE_ENV

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


@pytest.mark.parametrize("name", ["crds.yaml", "rbac.yaml", "control-plane.yaml", "request-authentication-crd.yaml"])
def test_manifests_validate_with_kubernetes_validate(name):
    documents = _documents(name)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_the_control_plane_writes_only_to_mounted_volumes():
    # A read-only root file system refuses the default cache (~/.cache/meshext): the telemetry
    # module the control plane builds at start and the modules it pulls must land on a volume.
    deployment = next(d for d in _documents("control-plane.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    writable = {mount["mountPath"] for mount in container["volumeMounts"] if not mount.get("readOnly")}
    assert env.get(CACHE_ENV) in writable
    assert "--cache-dir" not in container["args"], "a second cache setting next to MESHEXT_CACHE_DIR"


def test_kubernetes_validate_catches_a_broken_crd():
    broken = copy.deepcopy(_documents("crds.yaml")[0])
    broken["spec"]["versions"][0]["served"] = "yes"  # must be a boolean
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for crd in _documents("crds.yaml"):
        for version in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return schemas


def test_crds_have_printer_columns_for_phase_priority_image_ready():
    for crd in _documents("crds.yaml"):
        for version in crd["spec"]["versions"]:
            names = [column["name"] for column in version["additionalPrinterColumns"]]
            assert names[:4] == ["Phase", "Priority", "Image", "Ready"]
            assert version["subresources"] == {"status": {}}


def test_examples_pass_both_the_crd_schema_and_the_operator():
    schemas = _schemas()
    examples = _documents("examples/extensions.yaml")
    assert {(e["apiVersion"], e["kind"]) for e in examples} == set(schemas)
    for example in examples:
        jsonschema.validate(example, schemas[(example["apiVersion"], example["kind"])])
        request = parse_resource(example)
        assert request.image == (example["spec"].get("image") or example["spec"]["url"])


@pytest.mark.parametrize("field, value", [
    ("priority", "high"),
    ("phase", "Sometime"),
    ("sha256", "abc"),
    ("failStrategy", "MAYBE"),
    ("match", [{"mode": "SIDEWAYS"}]),
])
def test_bad_fields_are_refused_by_the_crd_and_the_operator(field, value):
    example = next(e for e in _documents("examples/extensions.yaml") if e["kind"] == "WasmPlugin")
    example["spec"][field] = value
    schema = _schemas()[(example["apiVersion"], example["kind"])]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)
    with pytest.raises(MeshextError) as error:
        parse_resource(example)
    assert f"spec.{field}" in str(error.value)


def test_the_deployment_discovers_the_mesh_with_the_rights_it_needs():
    from meshext.control.cli import serve_command

    deployment = next(d for d in _documents("control-plane.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    arguments = [a.replace("$(POD_IP)", "10.0.0.7") for a in container["args"]]
    assert arguments[:2] == ["control", "serve"]
    context = serve_command.make_context("serve", arguments[2:])  # the CLI accepts what the pod runs
    assert context.params["kubernetes"] and context.params["mesh_file"] is None  # discovery, no mesh file
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    role = next(d for d in _documents("rbac.yaml") if d["kind"] == "ClusterRole")
    for group, resource in (("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices")):
        verbs = {verb for rule in role["rules"] if group in rule["apiGroups"] and resource in rule["resources"]
                 for verb in rule["verbs"]}
        assert {"list", "watch"} <= verbs, (group, resource, verbs)


def test_the_cluster_role_lets_the_control_plane_watch_every_kind_it_watches():
    role = next(d for d in _documents("rbac.yaml") if d["kind"] == "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    for group, _version, plural in KubernetesSource.RESOURCES:
        assert {(group, plural, "list"), (group, plural, "watch"), (group, f"{plural}/status", "patch")} <= granted


def _request_authentication(**rule) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": "oidc", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "productpage"}},
                     "jwtRules": [{"issuer": "https://keycloak.example/realms/3scale", **rule}]}}


def test_a_request_authentication_passes_both_the_crd_schema_and_the_operator():
    crd = _documents("request-authentication-crd.yaml")[0]
    assert {version["name"] for version in crd["spec"]["versions"]} == {"v1", "v1beta1"}
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    good = _request_authentication(jwksUri="https://keycloak.example/certs", forwardOriginalToken=True,
                                   fromHeaders=[{"name": "x-jwt", "prefix": "Bearer "}], timeout="2s")
    jsonschema.validate(good, schema)
    assert parse_policy(good).rules[0].issuer == "https://keycloak.example/realms/3scale"
    bad = _request_authentication(jwksUri="https://keycloak.example/certs", timeout="soon")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(MeshextError) as error:
        parse_policy(bad)
    assert "spec.jwtRules[0].timeout" in str(error.value)
