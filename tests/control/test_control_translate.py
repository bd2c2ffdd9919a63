"""Resources -> placed extensions -> Envoy config, without running Envoy."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2 as plugin_pb2
from google.protobuf import wrappers_pb2

from meshext.control.envoy_config import SnapshotBuilder
from meshext.control.mesh import load_mesh
from meshext.control.placement import PlacedExtension
from meshext.control.resources import parse_resource
from meshext.control.snapshot import EXTENSION_CONFIG, LISTENER, ROUTE
from meshext.control.telemetry import node_metadata, telemetry_extension
from meshext.errors import MeshextError
from meshext.extensions.telemetry.filter.istio_metrics import (
    EXCHANGED_KEYS,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
)
from meshext.extensions.telemetry.filter.struct_codec import encode_struct

SHA = "ab" * 32


def _placed(name: str, phase: str, priority: int, **extra) -> PlacedExtension:
    return PlacedExtension(key=f"ServiceMeshExtension/default/{name}", filter_name=f"meshext.{name}", phase=phase,
                           priority=priority, module_sha256=SHA, root_id="", configuration="{}", fail_open=False,
                           **extra)


def _http_filters(snapshot, listener_name: str) -> list[str]:
    listener = listener_pb2.Listener()
    snapshot.of_type(LISTENER)[listener_name].packed.Unpack(listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def test_filter_chain_follows_phase_then_priority():
    mesh = load_mesh()
    workload = mesh.workloads[0]
    extensions = [
        _placed("stats", "PostStats", 0), _placed("authz-low", "PostAuthZ", 1),
        _placed("unspecified", "Unspecified", 9),
        _placed("authn", "PreAuthN", 0), _placed("authz-high", "PostAuthZ", 7), _placed("client", "PreAuthN", 5,
                                                                                        inbound=False, outbound=True),
    ]
    snapshot = SnapshotBuilder(mesh).snapshot(workload, extensions, "/modules")
    assert _http_filters(snapshot, "inbound") == [
        "meshext.authn", "meshext.authz-high", "meshext.authz-low", "meshext.stats", "meshext.unspecified",
        "envoy.filters.http.router"]
    assert _http_filters(snapshot, "outbound") == ["meshext.client", "envoy.filters.http.router"]
    assert set(snapshot.of_type(EXTENSION_CONFIG)) == {e.filter_name for e in extensions}


def test_wasm_filter_config_from_a_wasmplugin():
    request = parse_resource({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "limits", "namespace": "shop"},
        "spec": {"url": "oci://example.com/limits:1", "failStrategy": "FAIL_OPEN", "pluginName": "root",
                 "pluginConfig": {"b": 1, "a": [1, 2]}, "phase": "AUTHZ", "priority": 3,
                 "vmConfig": {"env": [{"name": "MODE", "value": "strict"}, {"name": "HOSTNAME", "valueFrom": "HOST"}]},
                 "match": [{"mode": "CLIENT", "ports": [{"number": 9080}]}]},
    })
    assert (request.phase, request.priority, request.inbound, request.outbound) == ("PreAuthZ", 3, False, True)
    assert request.ports == frozenset({9080}) and request.configuration == '{"a":[1,2],"b":1}'
    extension = PlacedExtension(
        key=request.key, filter_name=request.filter_name, phase=request.phase, priority=request.priority,
        module_sha256=SHA, root_id=request.root_id, configuration=request.configuration,
        fail_open=request.fail_open, inbound=request.inbound, outbound=request.outbound, ports=request.ports,
        vm_environment=request.vm_environment, vm_host_environment=request.vm_host_environment)
    mesh = load_mesh()
    snapshot = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [extension], "/var/lib/modules")
    # The default mesh's outbound listener is on 15001, not 9080: the port match keeps it off.
    assert "meshext.wasmplugin.shop.limits" not in snapshot.of_type(EXTENSION_CONFIG)

    snapshot = SnapshotBuilder(mesh).snapshot(
        mesh.workloads[0], [PlacedExtension(**{**vars(extension), "ports": frozenset()})], "/var/lib/modules")
    typed = snapshot.of_type(EXTENSION_CONFIG)["meshext.wasmplugin.shop.limits"]
    config = extension_pb2.TypedExtensionConfig()
    typed.packed.Unpack(config)
    wasm = wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    plugin = wasm.config
    assert plugin.failure_policy == plugin_pb2.FAIL_OPEN
    assert plugin.root_id == "root" and plugin.vm_config.runtime == "envoy.wasm.runtime.v8"
    assert plugin.vm_config.code.local.filename == f"/var/lib/modules/{SHA}.wasm"
    assert dict(plugin.vm_config.environment_variables.key_values) == {"MODE": "strict"}
    assert list(plugin.vm_config.environment_variables.host_env_keys) == ["HOSTNAME"]


def test_same_content_same_versions():
    mesh = load_mesh()
    first = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [_placed("a", "PreAuthN", 0)], "/m")
    second = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [_placed("a", "PreAuthN", 0)], "/m")
    reconfigured = replace(_placed("a", "PreAuthN", 0), configuration='{"x":1}')
    changed = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [reconfigured], "/m")
    assert first.type_versions == second.type_versions
    # A config change is an ECDS change only: listeners keep their version.
    assert first.type_versions[EXTENSION_CONFIG] != changed.type_versions[EXTENSION_CONFIG]
    assert first.type_versions[LISTENER] == changed.type_versions[LISTENER]


def test_validation_names_field_and_fix():
    bad = {"apiVersion": "maistra.io/v2", "kind": "ServiceMeshExtension", "metadata": {"name": "x"},
           "spec": {"image": "a/b:1"}}
    try:
        parse_resource(bad)
    except MeshextError as error:
        assert "apiVersion" in error.message and error.fix == "use apiVersion maistra.io/v1"
    else:
        raise AssertionError("maistra.io/v2 must be refused")


def test_mesh_file_errors_name_the_problem(tmp_path):
    import yaml
    from control_harness import two_service_mesh

    from meshext.control.mesh import load_mesh as load

    document = two_service_mesh()
    document["workloads"][1]["inbound"] = document["workloads"][0]["outbound"]
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load(path)
    except MeshextError as error:
        assert "default/backend-v1 inbound and default/frontend-v1 outbound both use" in error.message
        assert error.where == str(path)
    else:
        raise AssertionError("a port used twice must be refused")


def test_vm_ids_are_shared_by_one_publishers_identical_modules_only():
    from meshext.control.envoy_config import vm_id_for
    from meshext.control.images import publisher_of

    assert publisher_of("oci://example.com/team-a/filter:1") == publisher_of("example.com/team-a/filter@sha256:"
                                                                             + "c" * 64) == "example.com/team-a/filter"
    team_a = publisher_of("oci://example.com/team-a/filter:1")
    first = _placed("first", "PreAuthN", 0, publisher=team_a)
    second = replace(_placed("second", "PostAuthN", 0, publisher=team_a), configuration='{"x":1}')
    assert vm_id_for(first) == vm_id_for(second) != first.key
    other_publisher = replace(first, key="ServiceMeshExtension/default/b", publisher="example.com/team-b/filter")
    other_module = replace(first, module_sha256="cd" * 32)
    other_environment = replace(first, vm_environment=(("MODE", "strict"),))
    assert len({vm_id_for(e) for e in (first, other_publisher, other_module, other_environment)}) == 4
    assert vm_id_for(_placed("unpublished", "PreAuthN", 0)) == "ServiceMeshExtension/default/unpublished"


def _routes(snapshot, name: str) -> route_pb2.RouteConfiguration:
    routes = route_pb2.RouteConfiguration()
    snapshot.of_type(ROUTE)[name].packed.Unpack(routes)
    return routes


def test_routes_carry_the_peer_metadata_exchange_while_telemetry_is_placed():
    """The exchange's constant headers are route configuration: outbound requests carry the sidecar's
    metadata as its proxy announced it, inbound ones lose the exchange headers before the app, and only a
    request that carried them is answered with the server's."""
    mesh = load_mesh()
    workload = mesh.workloads[0]
    telemetry = telemetry_extension(SHA, mesh, None)
    announced = {**node_metadata(workload.name, workload.namespace, {"app": "announced"}), "MESHEXT_MODULE_SYNC": True}
    snapshot = SnapshotBuilder(mesh).snapshot(workload, [telemetry], "/m", node_metadata=announced)

    outbound = _routes(snapshot, "outbound")
    sent = {option.header.key: option.header.value for option in outbound.request_headers_to_add}
    assert sent == {PEER_METADATA_HEADER: base64.b64encode(encode_struct(
        {key: announced[key] for key in EXCHANGED_KEYS if key in announced})).decode(),
        PEER_METADATA_ID_HEADER: workload.node_id}
    assert {o.append_action for o in outbound.request_headers_to_add} == {
        base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}  # an app cannot choose what its sidecar says

    inbound = _routes(snapshot, "inbound")
    assert list(inbound.request_headers_to_remove) == [PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER]
    answering, plain = inbound.virtual_hosts[0].routes
    assert [(h.name, h.present_match) for h in answering.match.headers] == [(PEER_METADATA_HEADER, True)]
    assert {o.header.key: o.header.value for o in answering.response_headers_to_add} == sent
    assert not plain.match.headers and not plain.response_headers_to_add
    assert answering.route.cluster == plain.route.cluster

    # Without telemetry: routes untouched.
    bare = SnapshotBuilder(mesh).snapshot(workload, [], "/m", node_metadata=announced)
    assert not _routes(bare, "outbound").request_headers_to_add
    assert len(_routes(bare, "inbound").virtual_hosts[0].routes) == 1
    assert not _routes(bare, "inbound").request_headers_to_remove


def _plugin(snapshot, name: str) -> plugin_pb2.PluginConfig:
    config = extension_pb2.TypedExtensionConfig()
    snapshot.of_type(EXTENSION_CONFIG)[name].packed.Unpack(config)
    wasm = wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    return wasm.config


def test_each_listener_tells_the_telemetry_plugin_its_direction():
    """Inbound and outbound listeners reference their own telemetry config, naming the direction (the filter
    then reads no attribute for it), on one VM: the same vm_id and module."""
    mesh = load_mesh()
    workload = mesh.workloads[0]
    snapshot = SnapshotBuilder(mesh).snapshot(workload, [telemetry_extension(SHA, mesh, None)], "/m")
    assert "meshext.telemetry" in _http_filters(snapshot, "inbound")
    assert "meshext.telemetry.outbound" in _http_filters(snapshot, "outbound")
    inbound, outbound = _plugin(snapshot, "meshext.telemetry"), _plugin(snapshot, "meshext.telemetry.outbound")
    def configuration(plugin: plugin_pb2.PluginConfig) -> dict:
        text = wrappers_pb2.StringValue()
        plugin.configuration.Unpack(text)
        return json.loads(text.value)

    assert configuration(inbound)["listener_direction"] == "inbound"
    assert configuration(outbound)["listener_direction"] == "outbound"
    assert inbound.vm_config.vm_id == outbound.vm_config.vm_id
    assert inbound.vm_config.code.local.filename == outbound.vm_config.code.local.filename
