"""What the mesh's telemetry needs from the control plane: identities as metadata, and its placement.

Istio's stats rules read who a sidecar is from its node metadata
(``NAMESPACE``, ``WORKLOAD_NAME``, ``CLUSTER_ID``, ``LABELS`` with the
canonical service name and revision), which service a cluster is from the
cluster's ``istio.services`` metadata, and who an endpoint is from its
``istio.workload`` metadata (the fallback when the peer sends no metadata
exchange headers).  The functions here compute those once, for the
bootstrap (proxy.py) and the xDS resources (envoy_config.py) alike, write
the constant parts of the peer metadata exchange into a sidecar's routes,
and place the telemetry extension (extensions/telemetry) in every sidecar.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import replace
from typing import Any, Literal

from meshext.control.mesh import Mesh, Service, Workload
from meshext.control.placement import PlacedExtension
from meshext.control.workload_tls import workload_identity
from meshext.errors import InternalError
from meshext.extensions.telemetry.filter.istio_metrics import (
    CANONICAL_NAME_LABEL as CANONICAL_NAME,
)
from meshext.extensions.telemetry.filter.istio_metrics import (
    CANONICAL_REVISION_LABEL as CANONICAL_REVISION,
)
from meshext.extensions.telemetry.filter.istio_metrics import (
    DEFAULT_CLUSTER_ID,
    EXCHANGED_KEYS,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
)
from meshext.extensions.telemetry.filter.struct_codec import encode_struct

TELEMETRY_KEY = "Telemetry/meshext-system/istio-stats"
TELEMETRY_FILTER = "meshext.telemetry"
# The outbound listener's: its configuration names its direction (for_direction), so it is an
# ECDS resource of its own; the same module and vm_id, so the same VM.
TELEMETRY_OUTBOUND_FILTER = "meshext.telemetry.outbound"
# The same module as a network filter on TCP listeners: a second ECDS resource (another type),
# one VM with the HTTP filter (same vm_id).
TELEMETRY_TCP_FILTER = "meshext.telemetry.tcp"
# Its root in a module built from several projects (the extensions bundle): the telemetry
# project's [filter] name; as a network filter TELEMETRY_ROOT_ID/TELEMETRY_TCP_ROOT_ID.
TELEMETRY_ROOT_ID = "telemetry"
# Its root_id: Envoy keys a VM's root contexts by root_id and configuration, and the TCP
# plugin's root (its reporting timer, its open connections) must not be the HTTP one's.
TELEMETRY_TCP_ROOT_ID = "tcp"
# How often open TCP connections report byte deltas: Istio's native proxy's 5 s (its Wasm
# plugin used 15 s); short enough that a dashboard's rate() sees a long connection.
TCP_REPORTING_MS = 5000


def canonical_labels(workload: str, labels: dict[str, str]) -> dict[str, str]:
    """``labels`` plus the canonical name and revision, defaulted as Istio's injector does
    (``app.kubernetes.io/name`` | ``app`` | the workload; ``app.kubernetes.io/version`` | ``version`` | ``latest``)."""
    completed = dict(labels)
    completed.setdefault(CANONICAL_NAME, labels.get("app.kubernetes.io/name") or labels.get("app") or workload)
    completed.setdefault(CANONICAL_REVISION,
                         labels.get("app.kubernetes.io/version") or labels.get("version") or "latest")
    return completed


def node_metadata(workload: str, namespace: str, labels: dict[str, str] | None,
                  cluster_id: str = DEFAULT_CLUSTER_ID) -> dict[str, Any]:
    """The Istio node metadata keys for a sidecar's bootstrap."""
    return {"NAME": workload, "WORKLOAD_NAME": workload, "NAMESPACE": namespace, "CLUSTER_ID": cluster_id,
            "LABELS": canonical_labels(workload, labels or {})}


def services_metadata(services: list[Service]) -> dict[str, Any]:
    """Cluster metadata ``istio.services`` naming the services a cluster leads to."""
    return {"filter_metadata": {"istio": {"services": [
        {"host": service.host, "name": service.name, "namespace": service.namespace} for service in services]}}}


def workload_metadata(workload: Workload, cluster_id: str = DEFAULT_CLUSTER_ID) -> dict[str, Any]:
    """Endpoint metadata ``istio.workload``: ``name;namespace;canonical name;canonical revision;cluster``."""
    labels = canonical_labels(workload.name, workload.labels)
    value = ";".join((workload.name, workload.namespace, labels[CANONICAL_NAME], labels[CANONICAL_REVISION],
                      cluster_id))
    return {"filter_metadata": {"istio": {"workload": value}}}


def peer_identities(mesh: Mesh, trust_domain: str | None) -> dict[str, list[str]]:
    """SPIFFE id -> the identity fields the filter reports for that workload (TCP peers are named by their
    certificate): ``[workload, namespace, canonical service, canonical revision, app, version, cluster]``."""
    if trust_domain is None:
        return {}
    peers = {}
    for workload in mesh.workloads:
        labels = canonical_labels(workload.name, workload.labels)
        peers[workload_identity(trust_domain, workload.name, workload.namespace)] = [
            workload.name, workload.namespace, labels[CANONICAL_NAME], labels[CANONICAL_REVISION],
            labels.get("app", ""), labels.get("version", ""), DEFAULT_CLUSTER_ID]
    return peers


def telemetry_extension(module_sha256: str, mesh: Mesh, trust_domain: str | None, *,
                        module_roots: tuple[str, ...] = ()) -> PlacedExtension:
    """The telemetry filter for every sidecar, inbound and outbound, in the chain's ``[stats]`` slot.

    Its configuration: the TCP reporting period and the mesh's workload identities by SPIFFE id.
    Fail open: metrics must never cost a request.  ``module_roots``: the module's roots when it was
    built from several projects (the extensions bundle), which then runs its TELEMETRY_ROOT_ID.
    Its publisher is the mesh's ``telemetry.publisher``: the same module's other extensions from
    there share its VMs."""
    if module_roots and TELEMETRY_ROOT_ID not in module_roots:
        raise InternalError(f"the telemetry module has no root {TELEMETRY_ROOT_ID!r}, only {module_roots}")
    configuration = json.dumps({"tcp_reporting_ms": TCP_REPORTING_MS, "peers": peer_identities(mesh, trust_domain)},
                               sort_keys=True)
    return PlacedExtension(key=TELEMETRY_KEY, filter_name=TELEMETRY_FILTER, phase="[stats]", priority=0,
                           module_sha256=module_sha256, root_id=TELEMETRY_ROOT_ID if module_roots else "",
                           configuration=configuration, fail_open=True, inbound=True, outbound=True,
                           publisher=mesh.telemetry.publisher, module_roots=module_roots)


# Every snapshot of every sidecar asks for both directions of the one telemetry extension, whose
# configuration holds the mesh's whole peer table: decoded and encoded again, it would cost each push
# time in the mesh's size per sidecar.
@functools.lru_cache(maxsize=4)
def for_direction(extension: PlacedExtension, direction: Literal["inbound", "outbound"]) -> PlacedExtension:
    """The telemetry ``extension`` as the ``direction`` listener runs it: its configuration names the
    direction (``listener_direction``), which the filter would otherwise read per connection, an attribute
    read per request; outbound under TELEMETRY_OUTBOUND_FILTER.  The key, module and so the VM stay one."""
    configuration = json.dumps({**json.loads(extension.configuration), "listener_direction": direction},
                               sort_keys=True)
    return replace(extension, configuration=configuration,
                   filter_name=TELEMETRY_FILTER if direction == "inbound" else TELEMETRY_OUTBOUND_FILTER)


def peer_metadata_headers(node_id: str, metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The peer metadata exchange headers of the sidecar ``node_id`` whose node metadata is ``metadata``, as
    Envoy ``HeaderValueOption``s that overwrite what an app sent: ``x-envoy-peer-metadata`` (base64 of the
    Struct of its EXCHANGED_KEYS) and ``x-envoy-peer-metadata-id``."""
    exchanged = {key: metadata[key] for key in EXCHANGED_KEYS if key in metadata}
    values = ((PEER_METADATA_HEADER, base64.b64encode(encode_struct(exchanged)).decode()),
              (PEER_METADATA_ID_HEADER, node_id))
    return [{"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for name, value in values]


def with_inbound_exchange(route_config: dict[str, Any], exchange: list[dict[str, Any]]) -> dict[str, Any]:
    """The inbound RouteConfiguration ``route_config`` doing the server side of the metadata exchange.

    The telemetry filter only reads the peer's headers (extensions/telemetry/filter/filter.py); the
    constant parts are Envoy's, a host call fewer each per request: the exchange headers are removed
    before the app (the router applies that after the filters, so the filter has read them), and each
    route is preceded by a copy for requests that carried them, answering with ``exchange``
    (:func:`peer_metadata_headers`), as Istio answers only a peer that sent its own."""
    def routes(host: dict[str, Any]) -> list[dict[str, Any]]:
        exchanged = []
        for route in host["routes"]:
            match = {**route["match"], "headers": [*route["match"].get("headers", []),
                                                   {"name": PEER_METADATA_HEADER, "present_match": True}]}
            exchanged += [{**route, "match": match, "response_headers_to_add": exchange}, route]
        return exchanged

    return {**route_config, "request_headers_to_remove": [PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER],
            "virtual_hosts": [{**host, "routes": routes(host)} for host in route_config["virtual_hosts"]]}


def with_outbound_exchange(route_config: dict[str, Any], exchange: list[dict[str, Any]]) -> dict[str, Any]:
    """The outbound RouteConfiguration ``route_config`` sending the client side of the metadata exchange
    (``exchange``, :func:`peer_metadata_headers`) with every request; the telemetry filter reads and
    removes the answer."""
    return {**route_config, "request_headers_to_add": exchange}
