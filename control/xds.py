"""Aggregated Discovery Service (ADS) over gRPC: state-of-the-world and delta.

One bidirectional stream per Envoy carries every resource type.  The rules
followed here are Envoy's xDS protocol ("xDS REST and gRPC protocol" in the
Envoy docs):

* a request whose ``response_nonce`` is not the last nonce sent for its type
  is stale and ignored;
* a request answering the last nonce is an ACK, or a NACK when it carries
  ``error_detail``; both are recorded in the cache per proxy and type;
* after a NACK nothing is resent until the snapshot changes: Envoy keeps
  serving the last configuration it accepted, and re-pushing the same refused
  configuration would only loop.

Streams opening and replies are also reported to :class:`XdsCallbacks`
(go-control-plane's server ``Callbacks``), given when the server is built.

The stream handlers run on one asyncio loop (``grpc.aio``), so thousands of
idle streams cost no threads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from meshext.control.cache import SnapshotCache, TypeStatus
from meshext.control.snapshot import TYPE_URLS, WILDCARD_TYPES, Resource, Snapshot

log = logging.getLogger(__name__)
_nonces = itertools.count(1)


def _node_metadata(node: Any) -> dict[str, Any]:
    return json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}


@dataclass
class _SotwType:
    names: set[str] = field(default_factory=set)
    nonce: str = ""
    sent_version: str = ""
    sent_names: frozenset[str] | None = None
    sent_resources: dict[str, str] | None = None  # name -> version in our last response
    client_version: str = ""
    waiting: bool = False  # the client has answered our last response
    refused: bool = False  # ... and that answer was a NACK


@dataclass
class _DeltaType:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    nonce: str = ""
    pending: bool = False  # a response is not answered yet
    refused: bool = False  # the last answer was a NACK
    recorded_version: str = ""  # the type version the cache last heard of from this stream


# (claimed node id, the stream's context) -> why the stream may not have that node's configuration, or None.
NodeAuthorizer = Callable[[str, grpc.aio.ServicerContext], "str | None"]


class XdsCallbacks(Protocol):
    """What the ADS server tells whoever publishes the snapshots.

    Both are called on the xDS loop: hand the work over and return at once."""

    def on_proxy_connected(self, node_id: str) -> None:
        """A stream of ``node_id`` opened (it may be waiting for its first snapshot)."""

    def on_proxy_reply(self, node_id: str, type_url: str, status: TypeStatus, nacked_names: tuple[str, ...]) -> None:
        """``node_id`` ACKed (``status.error_detail`` empty) or NACKed what it was sent of ``type_url``;
        ``nacked_names``: the resources that changed in a refused push."""


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The ADS servicer: both variants over one :class:`SnapshotCache`."""

    def __init__(self, cache: SnapshotCache, callbacks: XdsCallbacks | None = None,
                 authorize: NodeAuthorizer | None = None) -> None:
        self.cache = cache
        self.callbacks = callbacks
        self.authorize = authorize

    def _record_reply(self, node_id: str, type_url: str, error_detail: str | None) -> None:
        reply = self.cache.record_reply(node_id, type_url, error_detail)
        if self.callbacks is not None:
            self.callbacks.on_proxy_reply(node_id, type_url, reply.status, reply.nacked_names)

    async def _serve(
        self,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        on_request: Callable[[str, Any], None],
        respond: Callable[[str, str, Snapshot], Any | None],
    ) -> AsyncIterator[Any]:
        """The loop both variants share: read requests in a task, answer on wake-ups.

        A wake-up comes from a request (ACK, NACK, new subscription) or from the
        cache (a new snapshot for this node)."""
        wake = asyncio.Event()
        closed = asyncio.Event()
        node: dict[str, str] = {}

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if not node:
                        if not request.node.id:
                            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request must carry node.id")
                        refusal = self.authorize(request.node.id, context) if self.authorize else None
                        if refusal is not None:
                            log.warning("ADS stream refused: %s", refusal)
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                        node["id"] = request.node.id
                        self.cache.connect(request.node.id, _node_metadata(request.node), wake)
                        if self.callbacks is not None:
                            self.callbacks.on_proxy_connected(request.node.id)
                    on_request(node["id"], request)
                    wake.set()
            finally:
                closed.set()
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if closed.is_set():
                    break
                snapshot = self.cache.snapshot(node["id"]) if node else None
                if snapshot is None:
                    continue
                for type_url in TYPE_URLS:
                    response = respond(node["id"], type_url, snapshot)
                    if response is not None:
                        yield response
        finally:
            reader.cancel()
            if node:
                self.cache.disconnect(node["id"], wake)

    # -- state of the world --------------------------------------------------
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """State-of-the-world ADS: every response holds all resources of its type the proxy asked for."""
        types: dict[str, _SotwType] = {}

        def respond(node_id: str, type_url: str, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse | None:
            state = types.get(type_url)
            if state is None or not state.waiting:
                return None
            return self._sotw_response(node_id, type_url, state, snapshot)

        def on_request(node_id: str, request: discovery_pb2.DiscoveryRequest) -> None:
            self._on_sotw_request(node_id, types, request)

        async for response in self._serve(request_iterator, context, on_request, respond):
            yield response

    def _on_sotw_request(self, node_id: str, types: dict[str, _SotwType],
                         request: discovery_pb2.DiscoveryRequest) -> None:
        state = types.setdefault(request.type_url, _SotwType())
        if request.response_nonce and request.response_nonce != state.nonce:
            return  # stale: answers a response that a newer one superseded
        if request.response_nonce:
            detail = request.error_detail.message if request.HasField("error_detail") else None
            state.refused = bool(detail)
            self._record_reply(node_id, request.type_url, detail)
        else:
            state.client_version = request.version_info
        state.names = set(request.resource_names)
        state.waiting = True

    def _sotw_response(
        self, node_id: str, type_url: str, state: _SotwType, snapshot: Snapshot
    ) -> discovery_pb2.DiscoveryResponse | None:
        """Called only while the client has answered our last response (state.waiting)."""
        version = snapshot.type_versions[type_url]
        names = frozenset(state.names)
        selected = _select(snapshot, type_url, names)
        resource_versions = _versions(selected)
        reconnected_in_sync = state.sent_names is None and state.client_version == version
        nothing_asked = type_url not in WILDCARD_TYPES and not names
        unchanged_for_client = state.sent_names == names and state.sent_resources == resource_versions
        if reconnected_in_sync or nothing_asked or unchanged_for_client:
            # Nothing this proxy asked for differs from what it holds: no response
            # (Envoy expects none), but the proxy is in sync with this version.
            if nothing_asked:
                state.refused = False  # holding nothing, it refuses nothing
            if not state.refused and (state.sent_version != version or state.sent_names != names):
                state.sent_version, state.sent_names, state.sent_resources = version, names, resource_versions
                self.cache.record_sent(node_id, type_url, version, resource_versions)
                self._record_reply(node_id, type_url, None)
            return None
        state.nonce = str(next(_nonces))
        state.sent_version, state.sent_names, state.sent_resources = version, names, resource_versions
        state.waiting = False
        self.cache.record_sent(node_id, type_url, version, resource_versions)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[resource.packed for resource in selected.values()],
        )

    # -- delta (incremental) -------------------------------------------------
    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        """Incremental ADS: responses carry only what changed and what was removed."""
        types: dict[str, _DeltaType] = {}

        def respond(node_id: str, type_url: str, snapshot: Snapshot) -> discovery_pb2.DeltaDiscoveryResponse | None:
            state = types.get(type_url)
            return None if state is None else self._delta_response(node_id, type_url, state, snapshot)

        def on_request(node_id: str, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
            self._on_delta_request(node_id, types, request)

        async for response in self._serve(request_iterator, context, on_request, respond):
            yield response

    def _on_delta_request(
        self, node_id: str, types: dict[str, _DeltaType], request: discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        first = request.type_url not in types
        state = types.setdefault(request.type_url, _DeltaType())
        if first:
            # An empty first subscription is the legacy wildcard (LDS/CDS).
            state.wildcard = not request.resource_names_subscribe and request.type_url in WILDCARD_TYPES
            state.known.update(request.initial_resource_versions)
        subscribe = set(request.resource_names_subscribe)
        if "*" in subscribe:
            state.wildcard = True
            subscribe.discard("*")
        if "*" in request.resource_names_unsubscribe:
            state.wildcard = False
        state.names |= subscribe
        for name in request.resource_names_unsubscribe:
            state.names.discard(name)
            state.known.pop(name, None)
        if not first:
            # A name subscribed again must be sent even if the client held it before.
            for name in subscribe:
                state.known.pop(name, None)
        if request.response_nonce and request.response_nonce == state.nonce:
            state.pending = False
            detail = request.error_detail.message if request.HasField("error_detail") else None
            state.refused = bool(detail)
            self._record_reply(node_id, request.type_url, detail)

    def _delta_response(
        self, node_id: str, type_url: str, state: _DeltaType, snapshot: Snapshot
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        available = snapshot.of_type(type_url)
        wanted = {
            name: resource for name, resource in available.items() if state.wildcard or name in state.names
        }
        changed = [resource for name, resource in wanted.items() if state.known.get(name) != resource.version]
        removed = [name for name in state.known if name not in wanted]
        version = snapshot.type_versions[type_url]
        if not changed and not removed:
            if not state.pending and not state.refused and state.recorded_version != version:
                # Nothing it subscribes to changed (or, reconnecting, it announced in
                # initial_resource_versions exactly what we hold): in sync without a push.
                self.cache.record_sent(node_id, type_url, version, dict(state.known))
                self._record_reply(node_id, type_url, None)
                state.recorded_version = version
            return None
        for resource in changed:
            state.known[resource.name] = resource.version
        for name in removed:
            del state.known[name]
        state.nonce = str(next(_nonces))
        state.pending, state.recorded_version = True, version
        self.cache.record_sent(node_id, type_url, version, dict(state.known))
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[
                discovery_pb2.Resource(name=resource.name, version=resource.version, resource=resource.packed)
                for resource in changed
            ],
            removed_resources=removed,
        )


def _select(snapshot: Snapshot, type_url: str, names: frozenset[str]) -> dict[str, Resource]:
    available = snapshot.of_type(type_url)
    if type_url in WILDCARD_TYPES and not names:
        return dict(available)
    return {name: available[name] for name in sorted(names) if name in available}


def _versions(resources: dict[str, Resource]) -> dict[str, str]:
    return {name: resource.version for name, resource in resources.items()}


async def start_xds_server(
    cache: SnapshotCache,
    address: str = "127.0.0.1:0",
    *,
    callbacks: XdsCallbacks | None = None,
    credentials: grpc.ServerCredentials | None = None,
    authorize: NodeAuthorizer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start the ADS server on the running loop; returns the server and its port.

    ``callbacks`` hear of every stream opened and every reply.  With
    ``credentials`` (mutual TLS) the port is secure and ``authorize`` is asked,
    on each stream's first request, whether the client may have the node id
    it claims."""
    server = grpc.aio.server(
        options=[
            # Modules never travel over xDS (see modules.py), but a large mesh's
            # listeners can exceed gRPC's 4 MB default.
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_concurrent_streams", 100000),
            # Sidecars send HTTP/2 keepalive pings every 5 s (proxy.py); gRPC's default
            # policy answers that with GOAWAY "too_many_pings", dropping every ADS stream.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 4000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscoveryService(cache, callbacks, authorize), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    await server.start()
    return server, port
