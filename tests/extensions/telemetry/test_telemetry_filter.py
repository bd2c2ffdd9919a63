"""The telemetry filter in the test host: every label input gives its own series.

Stream.on_log looks a request's metric children up by the raw values its
labels are made of (peer, cluster, principals, protocol, code, gRPC status,
flags, authority); a value missing from that key would count one
combination's requests in another's series.  Each case here changes one
input of a repeated request and checks the series it lands in.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshext.control.mesh import Service, ServicePort
from meshext.control.telemetry import node_metadata, services_metadata
from meshext.errors import MeshextError
from meshext.extensions.telemetry.filter.istio_metrics import (
    HTTP_LABELS,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    REQUESTS_TOTAL,
)
from meshext.extensions.telemetry.filter.struct_codec import encode_struct
from meshext.sdk.metrics import encoded_name
from meshext.testing import Host

BACKEND = Service(name="backend", selector={"app": "backend"}, ports=[ServicePort(port=8080)])
INBOUND, OUTBOUND = 1, 2  # xds.listener_direction


def _node(workload: str, app: str) -> bytes:
    node = base_pb2.Node(id=f"{workload}.default")
    node.metadata.update(node_metadata(workload, "default", {"app": app, "version": "v1"}))
    return node.SerializeToString()


def _cluster_metadata() -> bytes:
    metadata = base_pb2.Metadata()
    for name, fields in services_metadata([BACKEND])["filter_metadata"].items():
        struct = struct_pb2.Struct()
        struct.update(fields)
        metadata.filter_metadata[name].CopyFrom(struct)
    return metadata.SerializeToString()


def _peer_header(workload: str) -> str:
    return base64.b64encode(encode_struct(node_metadata(workload, "default", {"app": workload, "version": "v1"}))
                            ).decode()


def _attributes(**changes: Any) -> dict[str, Any]:
    """An inbound request's attributes (backend-v1's sidecar, mutual TLS from frontend-v1), with ``changes``."""
    attributes: dict[str, Any] = {
        "xds.listener_direction": INBOUND, "xds.cluster_name": "inbound|8080||",
        "connection.uri_san_peer_certificate": "spiffe://cluster.local/ns/default/sa/frontend",
        "connection.uri_san_local_certificate": "spiffe://cluster.local/ns/default/sa/backend",
        "response.code": 200, "response.flags": 0, "request.duration": 3_000_000,
        "request.total_size": 100, "response.total_size": 200,
    }
    attributes.update(changes)
    return attributes


def _requests(host: Host) -> dict[tuple[str, ...], int]:
    """istio_requests_total by its label values, decoded from the encoded metric names."""
    counts = {}
    for name, value in host.metric_values().items():
        if name.endswith(";.;" + REQUESTS_TOTAL):
            values = dict(part.split("=.=", 1) for part in name.split(";.;")[:-1])
            counts[tuple(values[label] for label in HTTP_LABELS)] = value
    return counts


def test_each_label_input_has_its_own_series(telemetry_module: tuple[Path, str]) -> None:
    host = Host()
    plugin = host.load(str(telemetry_module[0]), config='{"peers": {}}',
                       properties={"xds.node": _node("backend-v1", "backend"), "xds.node.id": "backend-v1.default"})
    frontend = [(PEER_METADATA_HEADER, _peer_header("frontend-v1"))]
    cases: list[tuple[list[tuple[str, str]], dict[str, Any]]] = [
        (frontend, _attributes()),
        (frontend, _attributes(**{"response.code": 503})),
        (frontend, _attributes(**{"response.flags": 1 << 1})),  # UH
        (frontend, _attributes(**{"connection.uri_san_peer_certificate": None})),
        ([(PEER_METADATA_HEADER, _peer_header("admin-v1"))], _attributes()),
        ([], _attributes()),  # no metadata exchange: an unknown source
        (frontend, _attributes(**{"xds.listener_direction": OUTBOUND, "xds.cluster_name": "outbound|8080||backend",
                                  "xds.cluster_metadata": _cluster_metadata()})),
    ]
    for headers, attributes in cases:
        for _ in range(2):  # a repeated combination is counted in its own series again
            plugin.exchange(headers=headers, properties={k: v for k, v in attributes.items() if v is not None})
    counts = _requests(host)
    assert sorted(counts.values()) == [2] * len(cases), counts

    def labels(**values: str) -> tuple[str, ...]:
        return next(key for key in counts if all(key[HTTP_LABELS.index(n)] == v for n, v in values.items()))

    assert labels(response_code="503")[HTTP_LABELS.index("response_flags")] == "-"
    assert labels(response_flags="UH")[HTTP_LABELS.index("response_code")] == "200"
    plain = labels(source_principal="unknown", source_workload="frontend-v1")
    assert plain[HTTP_LABELS.index("connection_security_policy")] == "none"
    assert labels(source_workload="admin-v1")[HTTP_LABELS.index("reporter")] == "destination"
    assert labels(source_workload="unknown")[HTTP_LABELS.index("source_canonical_revision")] == "latest"
    outbound = labels(reporter="source")
    assert outbound[HTTP_LABELS.index("destination_service")] == BACKEND.host
    # The duration histogram records in milliseconds, in the same combination's series.
    duration = encoded_name("istio_request_duration_milliseconds", HTTP_LABELS, labels(response_code="503"))
    assert host.histogram(duration) == [3, 3]


def test_each_connection_keeps_its_own_peer(telemetry_module: tuple[Path, str]) -> None:
    """What a downstream connection's requests share (listener direction, peer and local principals) is read
    once per ``connection.id``: interleaved requests of connections with different peers, one of them plain
    text and one outbound, each count in their own peer's series."""
    host = Host()
    plugin = host.load(str(telemetry_module[0]), config='{"peers": {}}',
                       properties={"xds.node": _node("backend-v1", "backend"), "xds.node.id": "backend-v1.default"})
    admin_san = "spiffe://cluster.local/ns/default/sa/admin"
    connections: dict[int, tuple[str, dict[str, Any]]] = {
        7: ("frontend-v1", _attributes()),
        8: ("admin-v1", _attributes(**{"connection.uri_san_peer_certificate": admin_san})),
        9: ("client-v1", _attributes(**{"connection.uri_san_peer_certificate": None,
                                        "connection.uri_san_local_certificate": None})),
        10: ("frontend-v1", _attributes(**{"xds.listener_direction": OUTBOUND,
                                           "xds.cluster_name": "outbound|8080||backend",
                                           "xds.cluster_metadata": _cluster_metadata()})),
    }
    for _ in range(3):
        for connection, (workload, attributes) in connections.items():
            plugin.exchange(headers=[(PEER_METADATA_HEADER, _peer_header(workload)),
                                     (PEER_METADATA_ID_HEADER, f"{workload}.default")],
                            properties={"connection.id": connection,
                                        **{k: v for k, v in attributes.items() if v is not None}})

    def label(key: tuple[str, ...], name: str) -> str:
        return key[HTTP_LABELS.index(name)]

    series = {(label(key, "reporter"), label(key, "source_workload"), label(key, "source_principal"),
               label(key, "connection_security_policy")): count for key, count in _requests(host).items()}
    assert series == {
        ("destination", "frontend-v1", "spiffe://cluster.local/ns/default/sa/frontend", "mutual_tls"): 3,
        ("destination", "admin-v1", admin_san, "mutual_tls"): 3,
        ("destination", "client-v1", "unknown", "none"): 3,
        ("source", "backend-v1", "unknown", "unknown"): 3,
    }



def test_the_listener_direction_in_the_configuration_decides_the_reporter(telemetry_module: tuple[Path, str]) -> None:
    """The control plane names each HTTP listener's direction in its plugin configuration
    (control/telemetry.py ``for_direction``), and the filter takes it from there, not from the listener's
    ``xds.listener_direction`` (made to say the opposite here): an outbound plugin reports as the source, an
    inbound one as the destination."""
    host = Host()
    node = {"xds.node": _node("frontend-v1", "frontend"), "xds.node.id": "frontend-v1.default"}
    outbound = host.load(str(telemetry_module[0]), config='{"peers": {}, "listener_direction": "outbound"}',
                         properties=node)
    outbound.exchange(properties=_attributes(**{"xds.cluster_name": "outbound|8080||backend",
                                                "xds.cluster_metadata": _cluster_metadata()}))
    inbound = host.load(str(telemetry_module[0]), config='{"peers": {}, "listener_direction": "inbound"}',
                        properties=node)
    inbound.exchange(headers=[(PEER_METADATA_HEADER, _peer_header("admin-v1"))],
                     properties=_attributes(**{"xds.listener_direction": OUTBOUND, "connection.id": 3}))
    reporters = {(key[HTTP_LABELS.index("reporter")], key[HTTP_LABELS.index("source_workload")],
                  key[HTTP_LABELS.index("destination_service")]) for key in _requests(host)}
    assert reporters == {("source", "frontend-v1", BACKEND.host), ("destination", "admin-v1", "frontend")}


def test_an_unknown_listener_direction_is_refused_naming_the_field(telemetry_module: tuple[Path, str]) -> None:
    host = Host()
    with pytest.raises(MeshextError, match="refused its plugin configuration"):
        host.load(str(telemetry_module[0]), config='{"listener_direction": "sideways"}',
                  properties={"xds.node": _node("backend-v1", "backend")})
    log = "\n".join(host.log_lines())
    assert ("plugin configuration refused: config.listener_direction: listener_direction is 'sideways'; "
            'fix: set it to "inbound" or "outbound", or leave it out') in log
