"""Immutable, versioned xDS snapshots (one per proxy), as go-control-plane models them.

A snapshot holds every resource one proxy should have, grouped by type URL.
Versions are content hashes rather than counters: a restarted control plane
that computes the same configuration announces the same versions, so
reconnecting proxies that already hold it are not sent anything new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

# Envoy asks for types in this order on ADS; snapshots list them the same way.
TYPE_URLS = (CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION_CONFIG)
# Types that Envoy requests as a wildcard (all resources) in state-of-the-world.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})


@dataclass(frozen=True)
class Resource:
    """One named resource, packed once, with the hash of its content as version."""

    name: str
    packed: any_pb2.Any
    version: str

    @classmethod
    def of(cls, name: str, message: Message) -> Resource:
        """``message`` packed as resource ``name``, versioned by the hash of its deterministic encoding."""
        packed = any_pb2.Any()
        packed.Pack(message)
        digest = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]
        return cls(name=name, packed=packed, version=digest)


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy should run.  Never mutated once published."""

    resources: Mapping[str, Mapping[str, Resource]]
    type_versions: Mapping[str, str] = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        type_versions = {}
        for type_url in TYPE_URLS:
            named = self.resources.get(type_url, {})
            joined = ",".join(f"{name}={named[name].version}" for name in sorted(named))
            type_versions[type_url] = hashlib.sha256(joined.encode()).hexdigest()[:12]
        object.__setattr__(self, "type_versions", MappingProxyType(type_versions))
        overall = hashlib.sha256("".join(type_versions.values()).encode()).hexdigest()[:12]
        object.__setattr__(self, "version", overall)

    @classmethod
    def build(cls, resources: Mapping[str, list[tuple[str, Message]]]) -> Snapshot:
        """Pack ``{type_url: [(name, message), ...]}`` into a snapshot."""
        packed = {
            type_url: MappingProxyType({name: Resource.of(name, message) for name, message in items})
            for type_url, items in resources.items()
        }
        return cls(resources=MappingProxyType(packed))

    @classmethod
    def of_resources(cls, resources: Mapping[str, list[Resource]]) -> Snapshot:
        """A snapshot of already packed resources (shared between snapshots)."""
        return cls(resources=MappingProxyType({
            type_url: MappingProxyType({resource.name: resource for resource in items})
            for type_url, items in resources.items()
        }))

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of ``type_url`` by name (empty if none)."""
        return self.resources.get(type_url, MappingProxyType({}))
