"""A new extension whose first config Envoy refuses does not answer 500 while the operator withdraws it.

Envoy subscribes to an extension's ECDS config only once a listener refers to
it, so a new extension reaches the sidecar's listener before its config does.
When Envoy refuses that first config, the filter has none; here real Envoy
runs the Wasm filter reference exactly as the control plane writes it into
the inbound listener (envoy_config.py), its config read from a file Envoy
refuses (the module does not exist) instead of from ADS, and the request
must still be answered by the route, as it will once the refused extension
is withdrawn.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from meshext.control.envoy_config import ROUTER_TYPE, WASM_FILTER_TYPE, SnapshotBuilder
from meshext.control.mesh import load_mesh
from meshext.control.placement import PlacedExtension
from meshext.control.snapshot import LISTENER
from meshext.envoy import EnvoyProcess

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _inbound_wasm_filter() -> dict:
    """The inbound listener's reference to one Wasm extension, as the control plane sends it."""
    mesh = load_mesh()
    extension = PlacedExtension(key="WasmPlugin/default/refused", filter_name="meshext.refused", phase="PreAuthN",
                                priority=0, module_sha256="ab" * 32, root_id="", configuration="{}",
                                fail_open=False)
    snapshot = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [extension], "/modules")
    listener = listener_pb2.Listener()
    snapshot.of_type(LISTENER)["inbound"].packed.Unpack(listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    [wasm] = [f for f in manager.http_filters if f.name == "meshext.refused"]
    return json_format.MessageToDict(wasm)


@pytest.mark.envoy
def test_a_filter_whose_first_config_envoy_refuses_lets_requests_through(tmp_path: Path) -> None:
    refused = {"version_info": "1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "meshext.refused",
        "typed_config": {"@type": WASM_FILTER_TYPE, "config": {"name": "refused", "vm_config": {
            "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(tmp_path / "missing.wasm")}}}}}}]}
    (tmp_path / "ecds.json").write_text(json.dumps(refused))
    wasm = _inbound_wasm_filter()
    wasm["configDiscovery"]["configSource"] = {"pathConfigSource": {"path": str(tmp_path / "ecds.json")},
                                               "resourceApiVersion": "V3"}
    bootstrap = {"node": {"id": "test", "cluster": "test"}, "static_resources": {"listeners": [{
        "name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM_TYPE, "stat_prefix": "inbound",
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "app"}}}]}]},
            "http_filters": [wasm, {"name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE}}]}}]}]}]}}
    with EnvoyProcess(bootstrap) as envoy:
        host, port = envoy.listener_address("inbound")
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"app")  # not Envoy's 500 of a filter without config
        assert "config update rejected" in envoy.log_text()  # Envoy did refuse the extension's config
