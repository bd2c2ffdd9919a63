"""Istio's standard metrics: names, label sets in emitted order, and Envoy's response flags.

The one table of these facts: the filter records with it and the host side
(``stats_config``) builds Envoy's ``stats_tags`` from it.  Sources: istio/proxy
``testdata/metric/*.yaml.tmpl`` (label order), Envoy ``stream_info.h``
(response flag bits); see ``shared/research/telemetry.md``.  It imports
nothing, so the host side can import it too.
"""

REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
REQUEST_MESSAGES = "istio_request_messages_total"
RESPONSE_MESSAGES = "istio_response_messages_total"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_CLOSED = "istio_tcp_connections_closed_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"

# The peer labels, reporter first: what gRPC message counters carry.
PEER_LABELS = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
    "source_principal", "source_app", "source_version", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_canonical_service",
    "destination_canonical_revision", "destination_service_name", "destination_service_namespace",
    "destination_cluster",
)
HTTP_LABELS = (*PEER_LABELS, "request_protocol", "response_code", "grpc_response_status", "response_flags",
               "connection_security_policy")
TCP_LABELS = (*PEER_LABELS, "request_protocol", "response_flags", "connection_security_policy")
ALL_LABELS = HTTP_LABELS  # every label name any standard metric uses

# Envoy's response flags: bit i of the ``response.flags`` attribute is RESPONSE_FLAGS[i];
# %RESPONSE_FLAGS% joins the set ones with "," in this order.
RESPONSE_FLAGS = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI",
    "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
)

# Node metadata keys the filter reads and sends to its peers.
PEER_METADATA_HEADER = "x-envoy-peer-metadata"
PEER_METADATA_ID_HEADER = "x-envoy-peer-metadata-id"
# What of the node metadata the exchange sends (Istio's metadata exchange keys; control/telemetry.py).
EXCHANGED_KEYS = ("NAME", "NAMESPACE", "WORKLOAD_NAME", "CLUSTER_ID", "LABELS", "OWNER", "MESH_ID")
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"
DEFAULT_CLUSTER_ID = "Kubernetes"  # Istio's injector default for CLUSTER_ID
