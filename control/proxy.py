"""Sidecar start-up: the Envoy bootstrap for one workload, and `meshext proxy`.

The bootstrap only says who the proxy is (node id and metadata) and where
the control plane is; every listener, route, cluster and filter comes over ADS.
"""

from __future__ import annotations

from typing import Any, Literal

from meshext.control.mesh import Workload
from meshext.errors import MeshextError

XDS_CLUSTER = "meshext-xds"


def parse_address(text: str, *, where: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise MeshextError(f"{text!r} is not HOST:PORT", where=where, fix="e.g. 127.0.0.1:15010")
    return host.strip("[]"), int(port)


def node_id(workload: str, namespace: str) -> str:
    return f"{workload}.{namespace}"


def bootstrap(
    workload: str,
    namespace: str,
    control: tuple[str, int],
    *,
    labels: dict[str, str] | None = None,
    protocol: Literal["sotw", "delta"] = "delta",
) -> dict[str, Any]:
    """Envoy bootstrap whose ADS stream points at the control plane."""
    return {
        "node": {
            "id": node_id(workload, namespace),
            "cluster": f"{workload}.{namespace}",
            "metadata": {"WORKLOAD_NAME": workload, "NAMESPACE": namespace, "LABELS": labels or {}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if protocol == "delta" else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    # Reconnect to a restarted control plane within a second.
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
                }}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        # Keepalive pings notice a dead control plane quickly.
                        "connection_keepalive": {"interval": "5s", "timeout": "5s"}}},
                },
            },
            "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": control[0], "port_value": control[1]}}}}]}]},
        }]},
    }


def bootstrap_for(workload: Workload, control: tuple[str, int], protocol: Literal["sotw", "delta"] = "delta") -> dict[str, Any]:
    return bootstrap(workload.name, workload.namespace, control, labels=dict(workload.labels), protocol=protocol)
