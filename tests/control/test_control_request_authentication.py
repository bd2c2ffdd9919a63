"""Istio's RequestAuthentication -> Envoy's jwt_authn on the selected sidecars, without running Envoy.

(In Envoy, with the 3scale filter reading the verified payload: tests/extensions/threescale/test_threescale_mesh.py.)
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from meshext.control.envoy_config import SnapshotBuilder
from meshext.control.mesh import load_mesh
from meshext.control.placement import PlacedExtension
from meshext.control.resources import parse_policy
from meshext.control.snapshot import CLUSTER, LISTENER
from meshext.control.sources import DirectorySource, KubernetesSource
from meshext.errors import MeshextError

JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]})


def request_authentication(name: str = "jwt", *, version: str = "v1", namespace: str = "default",
                           **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"security.istio.io/{version}", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _placed(name: str, phase: str) -> PlacedExtension:
    return PlacedExtension(key=f"WasmPlugin/default/{name}", filter_name=f"meshext.{name}", phase=phase, priority=0,
                           module_sha256="ab" * 32, root_id="", configuration="{}", fail_open=False)


def _manager(snapshot: Any, listener_name: str) -> hcm_pb2.HttpConnectionManager:
    listener = listener_pb2.Listener()
    snapshot.of_type(LISTENER)[listener_name].packed.Unpack(listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[-1].filters[0].typed_config.Unpack(manager)
    return manager


def _jwt_authn(manager: hcm_pb2.HttpConnectionManager) -> dict[str, Any]:
    (found,) = [f for f in manager.http_filters if f.name == "envoy.filters.http.jwt_authn"]
    config = jwt_authn_pb2.JwtAuthentication()
    found.typed_config.Unpack(config)
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_inline_jwks_becomes_jwt_authn_between_authn_and_later_phases():
    mesh = load_mesh()
    workload = mesh.workloads[0]
    policy = parse_policy(request_authentication(jwtRules=[{
        "issuer": "https://issuer.example", "jwks": JWKS, "audiences": ["shop"], "forwardOriginalToken": True,
        "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}], "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}]))
    extensions = [_placed("threescale", "PreAuthZ"), _placed("early", "PreAuthN"), _placed("late", "PostAuthN")]
    snapshot = SnapshotBuilder(mesh).snapshot(workload, extensions, "/modules", policies=[policy])
    inbound = _manager(snapshot, "inbound")
    # Istio's WasmPlugin AUTHN phase is "before the authentication filter": PreAuthN runs first
    assert [f.name for f in inbound.http_filters] == [
        "meshext.early", "envoy.filters.http.jwt_authn", "meshext.late", "meshext.threescale",
        "envoy.filters.http.router"]
    assert _jwt_authn(inbound) == {
        "providers": {"origins-0": {
            "issuer": "https://issuer.example", "audiences": ["shop"], "forward": True,
            "local_jwks": {"inline_string": JWKS}, "payload_in_metadata": "https://issuer.example",
            "from_headers": [{"name": "x-jwt", "value_prefix": "Token "}], "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}},
        # a token must verify; a request without one passes (RequestAuthentication alone requires none)
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}],
        "bypass_cors_preflight": True,
    }
    # outbound traffic is the client's: not checked
    assert "envoy.filters.http.jwt_authn" not in [f.name for f in _manager(snapshot, "outbound").http_filters]
    without = SnapshotBuilder(mesh).snapshot(workload, extensions, "/modules")
    assert "envoy.filters.http.jwt_authn" not in [f.name for f in _manager(without, "inbound").http_filters]


def test_jwks_uri_gets_a_cluster_and_several_policies_merge_one_rule_per_issuer():
    mesh = load_mesh()
    workload = mesh.workloads[0]
    remote = parse_policy(request_authentication("a", version="v1beta1", jwtRules=[
        {"issuer": "https://keycloak.example/realms/3scale", "timeout": "2s",
         "jwksUri": "https://keycloak.example/realms/3scale/protocol/openid-connect/certs"}]))
    local = parse_policy(request_authentication("b", jwtRules=[
        {"issuer": "https://keycloak.example/realms/3scale", "jwks": JWKS},   # same issuer: "a"'s rule wins
        {"issuer": "http://127.0.0.1:8081", "jwksUri": "http://127.0.0.1:8081/jwks"}]))
    snapshot = SnapshotBuilder(mesh).snapshot(workload, [], policies=[local, remote])
    config = _jwt_authn(_manager(snapshot, "inbound"))
    assert config["providers"]["origins-0"]["remote_jwks"] == {
        "http_uri": {"uri": "https://keycloak.example/realms/3scale/protocol/openid-connect/certs",
                     "cluster": "jwks|keycloak.example|443", "timeout": "2s"},
        "cache_duration": "300s", "async_fetch": {}}
    assert config["providers"]["origins-1"]["issuer"] == "http://127.0.0.1:8081"
    assert len(config["providers"]) == 2
    clusters = {}
    for name, resource in snapshot.of_type(CLUSTER).items():
        cluster = cluster_pb2.Cluster()
        resource.packed.Unpack(cluster)
        clusters[name] = cluster
    tls = clusters["jwks|keycloak.example|443"]
    assert tls.type == cluster_pb2.Cluster.STRICT_DNS and tls.transport_socket.name == "envoy.transport_sockets.tls"
    plain = clusters["jwks|127.0.0.1|8081"]
    address = plain.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value, plain.HasField("transport_socket")) == ("127.0.0.1", 8081, False)


@pytest.mark.parametrize(("spec", "message", "fix"), [
    ({"jwtRules": [{"jwksUri": "https://i.example/certs"}]},
     "spec.jwtRules[0].issuer: Field required", "set spec.jwtRules[0].issuer"),
    ({"jwtRules": [{"issuer": "i"}]}, "spec.jwtRules[0]: no key set: neither jwks nor jwksUri is set",
     "set spec.jwtRules[0].jwksUri to the issuer's JWKS URL or spec.jwtRules[0].jwks to the key set"),
    ({"jwtRules": [{"issuer": "i", "jwks": JWKS, "jwksUri": "https://i.example/certs"}]},
     "spec.jwtRules[0]: both jwks and jwksUri are set", "keep one of spec.jwtRules[0].jwks and "
                                                         "spec.jwtRules[0].jwksUri"),
    ({"jwtRules": [{"issuer": "i", "jwks": "{not json"}]}, "spec.jwtRules[0].jwks: not a JSON Web Key Set",
     "set spec.jwtRules[0].jwks to the issuer's key set as JSON"),
    ({"jwtRules": [{"issuer": "i", "jwksUri": "keycloak/certs"}]},
     "spec.jwtRules[0].jwksUri: 'keycloak/certs' is not an http(s) URL with a host",
     "set spec.jwtRules[0].jwksUri to the issuer's JWKS URL"),
    ({"jwtRules": [{"issuer": "i", "jwks": JWKS, "forwardOrignalToken": True}]},
     "spec.jwtRules[0].forwardOrignalToken: unknown field", "remove spec.jwtRules[0].forwardOrignalToken"),
    ({"selector": {"labels": {"app": "x"}}}, "spec.selector.labels: unknown field", "remove spec.selector.labels"),
    ({"jwtRules": [{"issuer": "i", "jwks": JWKS}, {"issuer": "i", "jwks": JWKS}]},
     "spec.jwtRules[1].issuer: 'i' is also jwtRules[0]'s", "give each issuer one rule"),
])
def test_bad_request_authentications_are_refused_naming_the_field_and_the_fix(spec, message, fix):
    with pytest.raises(MeshextError) as refused:
        parse_policy(request_authentication(**spec))
    assert refused.value.message == message
    assert refused.value.where == "RequestAuthentication/default/jwt"
    assert refused.value.fix.startswith(fix)


def test_an_unserved_api_version_is_refused():
    with pytest.raises(MeshextError) as refused:
        parse_policy(request_authentication(version="v1alpha1", jwtRules=[]))
    assert refused.value.fix == "use apiVersion security.istio.io/v1"


class _Recorder:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.seen = threading.Event()

    def apply(self, obj: dict[str, Any]) -> None:
        self.applied.append(obj)
        self.seen.set()

    def delete(self, key: str) -> None:
        pass


def test_the_directory_source_hands_request_authentications_over(tmp_path):
    (tmp_path / "jwt.yaml").write_text(json.dumps(request_authentication(jwtRules=[])))
    recorder = _Recorder()
    source = DirectorySource(tmp_path)
    source.start(recorder)
    source.stop()
    assert [obj["kind"] for obj in recorder.applied] == ["RequestAuthentication"]


def test_the_kubernetes_source_watches_request_authentications_and_writes_their_status():
    from kube_fake import FakeKubernetes
    from kubernetes import client

    fake = FakeKubernetes()
    configuration = client.Configuration()
    configuration.host = fake.url
    source = KubernetesSource(api_client=client.ApiClient(configuration), timeout_seconds=2)
    recorder = _Recorder()
    try:
        obj = request_authentication(jwtRules=[])
        fake.apply("requestauthentications", obj)
        source.start(recorder)
        assert recorder.seen.wait(10)
        (seen,) = [o for o in recorder.applied if o["kind"] == "RequestAuthentication"]
        source.write_status(seen, {"phase": "Ready"})
        assert fake.get("requestauthentications", "default", "jwt")["status"] == {"phase": "Ready"}
    finally:
        source.stop()
        fake.close()
