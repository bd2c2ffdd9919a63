"""Istio's standard metrics from a sidecar, and the peer metadata exchange that names both ends.

One module serves both listeners of a sidecar, one plugin each; the
plugin configuration's ``listener_direction`` (else ``xds.listener_direction``,
read once per connection) says which one a stream is on: inbound streams
report as ``reporter="destination"``, outbound ones as ``reporter="source"``.

Peer metadata (HTTP): the client side sends its node metadata as
``x-envoy-peer-metadata`` (base64 of a serialised google.protobuf.Struct:
NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, LABELS, ...) and
``x-envoy-peer-metadata-id``; the server side reads them and answers with its
own only when the request carried them; the client reads and removes those
from the response.  Without them the client falls back to the endpoint's
``istio.workload`` metadata, and the server reports ``unknown`` for the source.
The parts whose values are this sidecar's constants are Envoy route
configuration the control plane writes (control/telemetry.py
``with_inbound_exchange``, ``with_outbound_exchange``), not host calls of
every request: the outbound route adds the request headers, the inbound
route removes them before the app (the router runs after this filter has
read them) and adds the answer.

Value rules are Istio's (``shared/research/telemetry.md`` §1): local labels as
the node metadata has them, empty peer labels ``unknown`` (canonical revision
``latest``), ``destination_service*`` from the cluster's ``istio.services``
metadata, ``response_flags`` in Envoy's short codes (``-`` for none).

TCP connections (the same module as a network filter, ahead of tcp_proxy)
count connections opened and closed and bytes each way; open connections
report their byte deltas every ``tcp_reporting_ms`` and at close, so long
connections show up in rates.  TCP has no metadata exchange here: peers are
named by their certificate (the ``peers`` table the control plane
configures), the client side falling back to the endpoint's ``istio.workload``.
"""

import binascii

from istio_metrics import (
    CANONICAL_NAME_LABEL,
    CANONICAL_REVISION_LABEL,
    HTTP_LABELS,
    PEER_LABELS,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUEST_MESSAGES,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    RESPONSE_FLAGS,
    RESPONSE_MESSAGES,
    TCP_CLOSED,
    TCP_LABELS,
    TCP_OPENED,
    TCP_RECEIVED,
    TCP_SENT,
)
from struct_codec import decode_metadata, decode_node_metadata, decode_struct

from meshext.sdk import Action, ConfigError, Counter, Histogram, HttpContext, RootContext, StreamContext, properties

TYPE_CHECKING = False  # typing is not imported inside the VM
if TYPE_CHECKING:
    from typing import Any

REQUESTS = Counter(REQUESTS_TOTAL, "Requests, at stream end", labelnames=HTTP_LABELS)
DURATION = Histogram(REQUEST_DURATION, "Request duration (ms)", labelnames=HTTP_LABELS)
REQUEST_SIZE = Histogram(REQUEST_BYTES, "Request size (headers and body, bytes)", labelnames=HTTP_LABELS)
RESPONSE_SIZE = Histogram(RESPONSE_BYTES, "Response size (headers and body, bytes)", labelnames=HTTP_LABELS)
REQUEST_MESSAGE_COUNT = Counter(REQUEST_MESSAGES, "gRPC request messages", labelnames=PEER_LABELS)
RESPONSE_MESSAGE_COUNT = Counter(RESPONSE_MESSAGES, "gRPC response messages", labelnames=PEER_LABELS)
TCP_OPENED_COUNT = Counter(TCP_OPENED, "TCP connections opened", labelnames=TCP_LABELS)
TCP_CLOSED_COUNT = Counter(TCP_CLOSED, "TCP connections closed", labelnames=TCP_LABELS)
TCP_SENT_BYTES = Counter(TCP_SENT, "Bytes sent to the downstream", labelnames=TCP_LABELS)
TCP_RECEIVED_BYTES = Counter(TCP_RECEIVED, "Bytes received from the downstream", labelnames=TCP_LABELS)

INBOUND = 1  # xds.listener_direction (envoy.config.core.v3.TrafficDirection)
UNKNOWN = "unknown"
GRPC_STATS_STATE = ("filter_state", "envoy.filters.http.grpc_stats")

# Peer identity: (workload, namespace, canonical service, canonical revision, app, version, cluster).
UNKNOWN_PEER: tuple[str, ...] = (UNKNOWN, UNKNOWN, UNKNOWN, "latest", UNKNOWN, UNKNOWN, UNKNOWN)
DEFAULT_TCP_REPORTING_MS = 5000
_CACHE_LIMIT = 1000  # distinct peer headers / clusters / flag sets / label keys kept decoded per VM

# The per-request attributes, their paths encoded once (properties.encoded): the get_* helpers would
# split, join and encode the path on every call, and a request reads ten.
# Values stay raw bytes until a label combination is first seen (Stream.on_log).
get_property = properties.read
_CONNECTION_ID = properties.encoded("connection.id")
_LISTENER_DIRECTION = properties.encoded("xds.listener_direction")
_INBOUND_DIRECTION = INBOUND.to_bytes(8, "little")
_CLUSTER_NAME = properties.encoded("xds.cluster_name")
_PEER_SAN = properties.encoded("connection.uri_san_peer_certificate")
_LOCAL_SAN = properties.encoded("connection.uri_san_local_certificate")
_UPSTREAM_LOCAL_SAN = properties.encoded("upstream.uri_san_local_certificate")
_UPSTREAM_PEER_SAN = properties.encoded("upstream.uri_san_peer_certificate")
_UPSTREAM_WORKLOAD = properties.encoded("xds.upstream_host_metadata.filter_metadata.istio.workload")
_RESPONSE_CODE = properties.encoded("response.code")
_GRPC_STATUS = properties.encoded("response.grpc_status")
_RESPONSE_FLAGS = properties.encoded("response.flags")
_REQUEST_DURATION = properties.encoded("request.duration")
_REQUEST_SIZE = properties.encoded("request.total_size")
_RESPONSE_SIZE = properties.encoded("response.total_size")


def _text(value: "Any") -> str:
    return value if isinstance(value, str) else ""


def _decoded(raw: bytes | None) -> str:
    """A string attribute's raw value as text ("" when absent)."""
    return raw.decode("utf-8", "surrogateescape") if raw else ""


def _integer(raw: bytes | None) -> int:
    """An integer attribute's raw value (8 bytes, little-endian), 0 when absent."""
    return int.from_bytes(raw, "little", signed=True) if raw is not None and len(raw) == 8 else 0


_from_bytes = int.from_bytes  # Stream.on_log decodes its three observations inline: no frame per value


def identity(metadata: dict[str, "Any"]) -> tuple[str, ...]:
    """The identity tuple of node metadata (as-is: empty stays empty)."""
    labels = metadata.get("LABELS")
    labels = labels if isinstance(labels, dict) else {}
    return (_text(metadata.get("WORKLOAD_NAME")), _text(metadata.get("NAMESPACE")),
            _text(labels.get(CANONICAL_NAME_LABEL)), _text(labels.get(CANONICAL_REVISION_LABEL)),
            _text(labels.get("app")), _text(labels.get("version")), _text(metadata.get("CLUSTER_ID")))


def peer_identity(fields: "tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """A peer's identity with Istio's rule for missing values: ``unknown``, the revision ``latest``."""
    return tuple(value or UNKNOWN_PEER[index] for index, value in enumerate(fields))


def _bounded_put(cache: dict["Any", "Any"], key: "Any", value: "Any") -> "Any":
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()  # attacker-chosen headers must not grow the VM without bound
    cache[key] = value
    return value


_peer_headers: dict[str, tuple[str, ...]] = {}


def peer_from_header(value: str) -> tuple[str, ...]:
    """The peer identity in an ``x-envoy-peer-metadata`` value (UNKNOWN_PEER if it cannot be read)."""
    peer = _peer_headers.get(value)
    if peer is None:
        try:
            peer = peer_identity(identity(decode_struct(binascii.a2b_base64(value))))
        except (ValueError, binascii.Error):
            peer = UNKNOWN_PEER
        _bounded_put(_peer_headers, value, peer)
    return peer


def peer_from_workload_metadata(value: str) -> tuple[str, ...]:
    """The peer identity in an endpoint's ``istio.workload`` (``wl;ns;canon-name;canon-rev;cluster``)."""
    parts = (value.split(";") + ["", "", "", "", ""])[:5]
    workload, namespace, canonical, revision, cluster = parts
    return peer_identity((workload, namespace, canonical, revision, "", "", cluster))


_flag_strings: dict[int, str] = {}


def response_flags(bits: int) -> str:
    """Envoy's short codes for the ``response.flags`` bit set, ``-`` for none."""
    text = _flag_strings.get(bits)
    if text is None:
        text = ",".join(code for index, code in enumerate(RESPONSE_FLAGS) if bits >> index & 1) or "-"
        _bounded_put(_flag_strings, bits, text)
    return text


_services: dict[str, tuple[str, str, str]] = {}


def cluster_service(cluster_name: str) -> tuple[str, str, str]:
    """(host, name, namespace) of the current cluster's ``istio.services[0]``, ``("", "", "")`` if none."""
    service = _services.get(cluster_name)
    if service is None:
        service = ("", "", "")
        raw = properties.get("xds.cluster_metadata")
        if raw:
            try:
                services = decode_metadata(raw).get("istio", {}).get("services")
            except ValueError:
                services = None
            if isinstance(services, list) and services and isinstance(services[0], dict):
                first = services[0]
                service = (_text(first.get("host")), _text(first.get("name")), _text(first.get("namespace")))
        _bounded_put(_services, cluster_name, service)
    return service


# connection.id -> what every request of that downstream connection shares (connection_facts).
_connections: dict[bytes | None, tuple[bool, bytes | None, bytes | None]] = {}
_OUTBOUND_FACTS: tuple[bool, bytes | None, bytes | None] = (False, None, None)


def connection_facts(connection: bytes | None, inbound: bool) -> tuple[bool, bytes | None, bytes | None]:
    """(inbound, peer principal, local principal) of the downstream connection ``connection`` (its raw
    ``connection.id``), the principals raw and only for inbound (outbound ones are the upstream's, per request);
    ``inbound``: the plugin's configuration says so, else the listener's direction is read.

    Read once per connection (Stream.on_request_headers looks in ``_connections`` first): a listener's
    direction and the connection's certificates do not change while it is open, and a connection id names
    one connection for the life of the Envoy process (a process-wide counter,
    ConnectionImpl::next_global_id_), so an entry never answers for another connection.  Without an id
    they are read for this request only."""
    if inbound or get_property(_LISTENER_DIRECTION) == _INBOUND_DIRECTION:
        facts = (True, get_property(_PEER_SAN), get_property(_LOCAL_SAN))
    else:
        facts = _OUTBOUND_FACTS
    if connection is not None:
        _bounded_put(_connections, connection, facts)
    return facts


class Stream(HttpContext):
    """One HTTP stream: read the peer's metadata, report at the end.  An inbound plugin's streams are
    this class: the answer to the peer is its route's, so Envoy's response callback finds no Python to run
    (OutboundStream has one)."""

    root: "Root"

    def on_request_headers(self, end_of_stream):
        root = self.root
        if root.outbound:  # nothing of an outbound connection is read per connection
            self.connection = facts = _OUTBOUND_FACTS
        else:
            connection = get_property(_CONNECTION_ID)
            # None (no connection id) is never a key; facts are non-empty tuples.
            self.connection = facts = _connections.get(connection) or connection_facts(connection, root.inbound)
        self.inbound = inbound = facts[0]
        headers = self.request.headers
        # Single gets, not one get_header_map_pairs for all: in Envoy the pairs (every header, each
        # a Python str) cost more than the call they save.
        content_type = headers.get("content-type") or ""
        self.protocol = "grpc" if content_type.startswith("application/grpc") else "http"
        self.peer = None
        if inbound:  # the outbound side's headers are its route's (the module docstring)
            exchanged = headers.get(PEER_METADATA_HEADER)
            if exchanged is not None:
                self.peer = peer_from_header(exchanged)
        return Action.CONTINUE

    def on_log(self):
        try:
            inbound = self.inbound
        except AttributeError:  # the stream ended before its request headers
            return
        protocol = self.protocol
        grpc = protocol == "grpc"
        # What the labels are made of, raw as Envoy hands it: a combination seen before (almost every
        # request) finds its metric children in one lookup, nothing decoded, no label tuple built.
        if inbound:
            _, peer_san, local_san = self.connection
            key: tuple = (True, self.peer, get_property(_CLUSTER_NAME), peer_san, local_san, protocol,
                          get_property(_RESPONSE_CODE), get_property(_GRPC_STATUS) if grpc else None,
                          get_property(_RESPONSE_FLAGS))
        else:
            peer = self.peer
            cluster = get_property(_CLUSTER_NAME)
            # The destination service is the cluster's when it names one; only otherwise the authority's.
            authority = None if _service_hosts.get(cluster) else self.request.headers.get(":authority") or ""
            key = (False, peer, cluster, get_property(_UPSTREAM_LOCAL_SAN),
                   get_property(_UPSTREAM_PEER_SAN), protocol, get_property(_RESPONSE_CODE),
                   get_property(_GRPC_STATUS) if grpc else None, get_property(_RESPONSE_FLAGS),
                   authority, get_property(_UPSTREAM_WORKLOAD) if peer is None else None)
        children = _request_children.get(key)
        if children is None:
            children = _bounded_put(_request_children, key, request_children(self.root.local, key))
        requests, duration, request_size, response_size, peer_labels = children
        requests.inc()
        # Inline, not _integer (a frame each): Envoy sends these non-negative int64s as 8 bytes, or nothing (0).
        duration.observe(_from_bytes(get_property(_REQUEST_DURATION) or b"", "little") // 1_000_000)
        request_size.observe(_from_bytes(get_property(_REQUEST_SIZE) or b"", "little"))
        response_size.observe(_from_bytes(get_property(_RESPONSE_SIZE) or b"", "little"))
        if grpc:
            counts = grpc_message_counts(properties.get(GRPC_STATS_STATE))
            if counts[0]:
                REQUEST_MESSAGE_COUNT.labels(*peer_labels).inc(counts[0])
            if counts[1]:
                RESPONSE_MESSAGE_COUNT.labels(*peer_labels).inc(counts[1])


class OutboundStream(Stream):
    """A stream of an outbound plugin, or of one whose configuration names no direction: it also reads the
    server's answer, and removes it before the client app sees it."""

    def on_response_headers(self, end_of_stream):
        if not self.inbound:  # the inbound side's answer is its route's
            headers = self.response.headers
            exchanged = headers.get(PEER_METADATA_HEADER)
            if exchanged is not None:
                self.peer = peer_from_header(exchanged)
                headers.remove(PEER_METADATA_HEADER)
                headers.remove(PEER_METADATA_ID_HEADER)
        return Action.CONTINUE


# Stream.on_log's label keys -> (requests, duration, request size, response size children, peer labels).
_request_children: dict[tuple, tuple] = {}
# Raw outbound xds.cluster_name -> whether its istio.services names a host (then :authority is not read).
_service_hosts: dict[bytes | None, bool] = {}


def request_children(local: tuple[str, ...], key: tuple) -> tuple:
    """The HTTP metric children and the peer labels for one label key of ``Stream.on_log``, by Istio's rules
    (``local``: this sidecar's identity)."""
    if key[0]:
        _, peer, cluster, peer_san, local_san, protocol, code, grpc_status, flags = key
        host_name, service_name, _ = cluster_service(_decoded(cluster)) if cluster else ("", "", "")
        source = peer or UNKNOWN_PEER
        destination = local
        source_principal = _decoded(peer_san) or UNKNOWN
        destination_principal = _decoded(local_san) or UNKNOWN
        security = "mutual_tls" if source_principal != UNKNOWN and destination_principal != UNKNOWN else "none"
        service = host_name or local[2]
        service_name = service_name or local[2]
        service_namespace = local[1]
        reporter = "destination"
    else:
        _, peer, cluster, local_san, peer_san, protocol, code, grpc_status, flags, authority, workload = key
        host_name, service_name, service_namespace = (cluster_service(_decoded(cluster)) if cluster
                                                      else ("", "", ""))
        _bounded_put(_service_hosts, cluster, bool(host_name))
        source = local
        if peer is not None:
            destination = peer
        else:
            destination = peer_from_workload_metadata(_decoded(workload)) if workload else UNKNOWN_PEER
        source_principal = _decoded(local_san) or UNKNOWN
        destination_principal = _decoded(peer_san) or UNKNOWN
        security = UNKNOWN
        service = host_name or (authority or "").split(":", 1)[0] or UNKNOWN
        service_name = service_name or (service.split(".", 1)[0] if service != UNKNOWN else UNKNOWN)
        service_namespace = service_namespace or destination[1]
        reporter = "source"
    peer_labels = (
        reporter, source[0], source[2], source[3], source[1], source_principal, source[4], source[5], source[6],
        destination[0], destination[1], destination_principal, destination[4], destination[5], service,
        destination[2], destination[3], service_name, service_namespace, destination[6],
    )
    grpc_text = str(_integer(grpc_status)) if grpc_status is not None and len(grpc_status) == 8 else ""
    labels = (*peer_labels, protocol, str(_integer(code)), grpc_text, response_flags(_integer(flags)), security)
    return (REQUESTS.labels(*labels), DURATION.labels(*labels), REQUEST_SIZE.labels(*labels),
            RESPONSE_SIZE.labels(*labels), peer_labels)


def grpc_message_counts(state: bytes | None) -> tuple[int, int]:
    """(request, response) message counts from the grpc_stats filter's state (``b"<req>,<resp>"``), (0, 0) if none."""
    request, _, response = (state or b"").partition(b",")
    return (int(request) if request.isdigit() else 0, int(response) if response.isdigit() else 0)


class Connection(StreamContext):
    """One TCP connection: opened when its first bytes flow, byte deltas on the root's timer and at close."""

    root: "Root"

    def on_new_connection(self):
        self.received = self.sent = 0  # not yet reported
        self.labels = None
        return Action.CONTINUE

    def on_downstream_data(self, data_size, end_of_stream):
        self.received += data_size
        if self.labels is None:
            self._open()
        return Action.CONTINUE

    def on_upstream_data(self, data_size, end_of_stream):
        self.sent += data_size
        if self.labels is None:
            self._open()
        return Action.CONTINUE

    def _open(self):
        # Labels are known once the upstream host is chosen: tcp_proxy has connected before
        # the first byte flows (it reads the downstream only then), TLS handshakes included.
        root = self.root
        local = root.local
        if properties.get_int("xds.listener_direction") == INBOUND:
            reporter = "destination"
            source_principal = properties.get_str("connection.uri_san_peer_certificate") or UNKNOWN
            destination_principal = properties.get_str("connection.uri_san_local_certificate") or UNKNOWN
            # TCP carries no metadata exchange: the peer is who its certificate names.
            source, destination = root.peers.get(source_principal, UNKNOWN_PEER), local
            security = "mutual_tls" if source_principal != UNKNOWN and destination_principal != UNKNOWN else "none"
        else:
            reporter = "source"
            source_principal = properties.get_str("upstream.uri_san_local_certificate") or UNKNOWN
            destination_principal = properties.get_str("upstream.uri_san_peer_certificate") or UNKNOWN
            source, known = local, root.peers.get(destination_principal)
            if known is not None:
                destination = known
            else:
                workload = properties.get_str(("xds", "upstream_host_metadata", "filter_metadata", "istio",
                                               "workload"))
                destination = peer_from_workload_metadata(workload) if workload else UNKNOWN_PEER
            security = UNKNOWN
        cluster = properties.get_str("xds.cluster_name") or ""
        host, service_name, service_namespace = cluster_service(cluster) if cluster else ("", "", "")
        inbound = reporter == "destination"
        service = host or (local[2] if inbound else UNKNOWN)
        service_name = service_name or (local[2] if inbound else UNKNOWN)
        service_namespace = local[1] if inbound else (service_namespace or destination[1])
        labels = (
            reporter, source[0], source[2], source[3], source[1], source_principal, source[4], source[5], source[6],
            destination[0], destination[1], destination_principal, destination[4], destination[5], service,
            destination[2], destination[3], service_name, service_namespace, destination[6],
            "tcp", response_flags(properties.get_int("response.flags") or 0), security,
        )
        # Children resolved once per connection: the timer and the close only add.
        self.labels = labels
        self.opened = TCP_OPENED_COUNT.labels(*labels)
        self.sent_total = TCP_SENT_BYTES.labels(*labels)
        self.received_total = TCP_RECEIVED_BYTES.labels(*labels)
        self.opened.inc()
        root.open_connections[self.context_id] = self
        root.start_reporting()

    def report(self):
        """Add the bytes that flowed since the last report."""
        if self.sent:
            self.sent_total.inc(self.sent)
            self.sent = 0
        if self.received:
            self.received_total.inc(self.received)
            self.received = 0

    def on_log(self):
        if self.labels is None:
            return  # no byte ever flowed: nothing identifies the peer
        self.root.open_connections.pop(self.context_id, None)
        self.report()
        TCP_CLOSED_COUNT.labels(*self.labels).inc()


class Root(RootContext):
    """Reads the local node's identity once.

    Configuration (JSON, from the control plane; every key optional):
    ``tcp_reporting_ms``, how often open TCP connections report their byte
    counts (default 5000, Istio's native proxy's 5 s; its Wasm plugin used
    15 s), ``peers``, SPIFFE id -> ``[workload, namespace, canonical
    service, canonical revision, app, version, cluster]``: who a TCP peer
    is, read from its certificate, and ``listener_direction``, ``inbound`` or
    ``outbound``: the HTTP listener this plugin runs on (without it, read
    from ``xds.listener_direction`` once per downstream connection)."""

    http_context: "type[Stream]" = OutboundStream  # every callback a stream may need; an inbound plugin chooses Stream
    stream_context = Connection

    def on_configure(self, config):
        if super().on_configure(config) is False:
            return False
        settings = self.config if isinstance(self.config, dict) else {}
        self.tcp_reporting_ms = int(settings.get("tcp_reporting_ms") or DEFAULT_TCP_REPORTING_MS)
        # Inbound still reads per connection: the peer's and the local principal (connection_facts).
        self.inbound = settings.get("listener_direction") == "inbound"
        self.outbound = settings.get("listener_direction") == "outbound"
        self.http_context = Stream if self.inbound else OutboundStream
        peers = settings.get("peers")
        self.peers = {principal: peer_identity([_text(value) for value in fields])
                      for principal, fields in (peers.items() if isinstance(peers, dict) else ())
                      if isinstance(fields, list) and len(fields) == len(UNKNOWN_PEER)}
        self.open_connections: dict[int, Connection] = {}
        self.reporting = False
        node = properties.get("xds.node") or b""
        metadata = decode_node_metadata(node)
        self.local = identity(metadata)
        return True

    def check_config(self, config):
        direction = config.get("listener_direction") if isinstance(config, dict) else None
        if direction not in (None, "inbound", "outbound"):
            raise ConfigError(f"listener_direction is {direction!r}", where="config.listener_direction",
                              fix='set it to "inbound" or "outbound", or leave it out')

    def start_reporting(self):
        """Start the byte-count timer with the first TCP connection (HTTP-only plugins never tick)."""
        if not self.reporting:
            self.reporting = True
            self.set_tick_period(self.tcp_reporting_ms)

    def on_tick(self):
        for connection in self.open_connections.values():
            connection.report()
