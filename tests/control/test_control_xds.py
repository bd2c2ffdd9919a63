"""The ADS server's protocol rules, driven by a raw gRPC client (what Envoy does, step by step)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshext.control.server import ControlPlane
from meshext.control.snapshot import CLUSTER, ENDPOINT, Snapshot
from meshext.control.state import ControlPlaneState

NODE = "probe.default"


def _clusters(*names: str) -> Snapshot:
    return Snapshot.build({CLUSTER: [(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.STATIC))
                                     for n in names]})


class Stream:
    """One ADS stream: put requests, take responses (with a timeout)."""

    def __init__(self, channel: grpc.Channel, delta: bool) -> None:
        self.requests: queue.Queue = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.responses = method(self._requests())
        self.received: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator:
        while (request := self.requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self.responses:
                self.received.put(response)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def send(self, request) -> None:
        self.requests.put(request)

    def next(self, timeout: float = 5.0):
        return self.received.get(timeout=timeout)

    def nothing(self, wait: float = 0.5) -> bool:
        try:
            self.received.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.requests.put(None)
        self.responses.cancel()


@pytest.fixture
def plane():
    state = ControlPlaneState()
    control_plane = ControlPlane(state).start()  # no operator: the tests publish snapshots themselves
    channel = grpc.insecure_channel(f"127.0.0.1:{control_plane.xds_port}")
    yield control_plane, channel
    channel.close()
    control_plane.stop()
    state.close()


def _node() -> base_pb2.Node:
    return base_pb2.Node(id=NODE)


def test_sotw_ack_nack_and_no_resend_after_nack(plane):
    control_plane, channel = plane
    cache = control_plane.state.cache
    cache.set_snapshot(NODE, _clusters("a"))
    stream = Stream(channel, delta=False)
    stream.send(discovery_pb2.DiscoveryRequest(node=_node(), type_url=CLUSTER))
    first = stream.next()
    assert [r.type_url for r in first.resources] == [CLUSTER] and first.version_info
    stream.send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=first.version_info,
                                               response_nonce=first.nonce))
    assert cache.wait_converged([NODE], 5)

    cache.set_snapshot(NODE, _clusters("a", "b"))
    second = stream.next()
    assert len(second.resources) == 2
    # A NACK: Envoy keeps version 1 and says why.
    stream.send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=first.version_info,
                                               response_nonce=second.nonce,
                                               error_detail={"code": 3, "message": "cluster b: bad"}))
    assert stream.nothing(), "a NACKed version must not be pushed again"
    status = cache.proxies()[NODE].types[CLUSTER]
    assert (status.acked_version, status.nacked_version, status.error_detail) == \
        (first.version_info, second.version_info, "cluster b: bad")
    assert not cache.converged(NODE)

    # A stale ACK (old nonce) changes nothing.
    stream.send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=second.version_info,
                                               response_nonce=first.nonce))
    assert stream.nothing(0.3)
    assert cache.proxies()[NODE].types[CLUSTER].acked_version == first.version_info

    cache.set_snapshot(NODE, _clusters("a", "c"))
    third = stream.next()
    assert sorted(_names(third.resources)) == ["a", "c"]
    stream.close()


def _names(resources) -> list[str]:
    names = []
    for packed in resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        names.append(cluster.name)
    return names


def test_delta_sends_changes_and_removals_only(plane):
    control_plane, channel = plane
    cache = control_plane.state.cache
    cache.set_snapshot(NODE, _clusters("a", "b"))
    stream = Stream(channel, delta=True)
    stream.send(discovery_pb2.DeltaDiscoveryRequest(node=_node(), type_url=CLUSTER))
    first = stream.next()
    assert sorted(r.name for r in first.resources) == ["a", "b"] and not first.removed_resources
    stream.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))
    assert cache.wait_converged([NODE], 5)

    cache.set_snapshot(NODE, _clusters("a", "c"))
    second = stream.next()
    assert [r.name for r in second.resources] == ["c"]
    assert list(second.removed_resources) == ["b"]
    stream.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=second.nonce))
    assert cache.wait_converged([NODE], 5)
    versions = {r.name: r.version for r in [*first.resources, *second.resources] if r.name != "b"}
    stream.close()

    # Reconnecting with what it holds: nothing to send, and it counts as in sync.
    again = Stream(channel, delta=True)
    again.send(discovery_pb2.DeltaDiscoveryRequest(node=_node(), type_url=CLUSTER,
                                                   initial_resource_versions=versions))
    assert again.nothing()
    assert cache.wait_converged([NODE], 5)
    again.close()


def test_first_request_without_node_id_is_refused(plane):
    _, channel = plane
    stream = Stream(channel, delta=False)
    stream.send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    assert stream.ended.wait(5)
    assert stream.error is not None and stream.error.code() == grpc.StatusCode.INVALID_ARGUMENT


def _endpoints(*names: str, changed: str = "") -> Snapshot:
    """ClusterLoadAssignments; the one named ``changed`` gets an endpoint (new content)."""
    return Snapshot.build({ENDPOINT: [
        (n, endpoint_pb2.ClusterLoadAssignment(cluster_name=n, endpoints=[{}] if n == changed else []))
        for n in names]})


def test_sotw_change_outside_the_subscription_sends_nothing_but_counts_as_in_sync(plane):
    control_plane, channel = plane
    cache = control_plane.state.cache
    cache.set_snapshot(NODE, _endpoints("a"))
    stream = Stream(channel, delta=False)
    stream.send(discovery_pb2.DiscoveryRequest(node=_node(), type_url=ENDPOINT, resource_names=["a"]))
    first = stream.next()
    stream.send(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"],
                                               version_info=first.version_info, response_nonce=first.nonce))
    assert cache.wait_converged([NODE], 5)

    cache.set_snapshot(NODE, _endpoints("a", "b"))  # nobody asked for b
    assert stream.nothing()
    assert cache.wait_converged([NODE], 5)

    cache.set_snapshot(NODE, _endpoints("a", "b", changed="a"))
    second = stream.next()
    stream.send(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"],
                                               version_info=first.version_info, response_nonce=second.nonce,
                                               error_detail={"code": 3, "message": "endpoint a: bad"}))
    assert stream.nothing(0.3)
    # Only an unrelated resource changes: the refused one is neither resent nor counted as accepted.
    cache.set_snapshot(NODE, _endpoints("a", "b", "z", changed="a"))
    assert stream.nothing()
    assert not cache.converged(NODE)
    stream.close()
