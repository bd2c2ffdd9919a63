"""Per-proxy snapshots and what each proxy did with them (ACK / NACK).

The cache is the meeting point of two worlds: the operator (plain threads)
publishes snapshots, and the ADS streams (one asyncio loop) read them and
record ACKs and NACKs.  It is passive state, as go-control-plane's snapshot
cache is: the xDS server tells the operator about replies through its
callbacks (xds.py), never the cache.  Everything shared is guarded by one
lock; streams are woken with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from meshext.control.snapshot import EXTENSION_CONFIG, Snapshot


@dataclass
class TypeStatus:
    """One proxy's view of one resource type."""

    sent_version: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    error_detail: str = ""
    # name -> resource version, as last sent and as last accepted.
    sent_resources: dict[str, str] = field(default_factory=dict)
    acked_resources: dict[str, str] = field(default_factory=dict)


@dataclass
class ProxyStatus:
    """One proxy as the control plane knows it: its node metadata, open streams and per-type status."""

    node_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    streams: int = 0
    last_change: float = 0.0
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def type(self, type_url: str) -> TypeStatus:
        """The status of ``type_url`` (created empty on first use)."""
        return self.types.setdefault(type_url, TypeStatus())


@dataclass(frozen=True)
class Reply:
    """What one ACK or NACK changed: the type's status after it, and for a NACK
    the resources that changed in the refused push (the suspects)."""

    status: TypeStatus
    nacked_names: tuple[str, ...] = ()


class SnapshotCache:
    """The snapshot each proxy should have, and what each proxy did with what it was sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._snapshots: dict[str, Snapshot] = {}
        self._proxies: dict[str, ProxyStatus] = {}
        self._wakers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    # -- publishing (operator side) -----------------------------------------
    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``node_id`` and wake its streams (a snapshot of the same version is a no-op)."""
        with self._lock:
            if (current := self._snapshots.get(node_id)) is not None and current.version == snapshot.version:
                return
            self._snapshots[node_id] = snapshot
            wakers = list(self._wakers.get(node_id, ()))
        for loop, event in wakers:
            loop.call_soon_threadsafe(event.set)

    def forget(self, node_id: str) -> None:
        """Drop a node that left the mesh: its snapshot, and its record once no stream is open
        (a still connected proxy keeps what it has; nothing more is sent to it)."""
        with self._lock:
            self._snapshots.pop(node_id, None)
            proxy = self._proxies.get(node_id)
            if proxy is not None and proxy.streams <= 0:
                del self._proxies[node_id]

    def snapshot(self, node_id: str) -> Snapshot | None:
        """The snapshot published for ``node_id``, if any."""
        with self._lock:
            return self._snapshots.get(node_id)

    # -- streams (xDS side) --------------------------------------------------
    def connect(self, node_id: str, metadata: dict[str, Any], event: asyncio.Event) -> None:
        """A stream of ``node_id`` opened; ``event`` is set whenever its snapshot changes."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._wakers.setdefault(node_id, set()).add((loop, event))
            proxy = self._proxies.setdefault(node_id, ProxyStatus(node_id))
            proxy.metadata = metadata
            proxy.streams += 1
            proxy.last_change = time.time()

    def disconnect(self, node_id: str, event: asyncio.Event) -> None:
        """The stream that :meth:`connect` registered ``event`` for closed."""
        with self._changed:
            self._wakers.get(node_id, set()).discard((asyncio.get_running_loop(), event))
            proxy = self._proxies[node_id]
            proxy.streams -= 1
            proxy.last_change = time.time()
            if proxy.streams <= 0 and node_id not in self._snapshots:
                del self._proxies[node_id]  # never configured, or forgotten: nothing to remember
            self._changed.notify_all()

    def record_sent(self, node_id: str, type_url: str, version: str, resources: dict[str, str]) -> None:
        """``version`` of ``type_url`` (resource name -> version) went to ``node_id``."""
        with self._lock:
            status = self._proxies[node_id].type(type_url)
            status.sent_version = version
            status.sent_resources = dict(resources)

    def record_reply(self, node_id: str, type_url: str, error_detail: str | None) -> Reply:
        """An ACK (no error) or NACK (Envoy's error text) of the last response sent."""
        with self._changed:
            proxy = self._proxies[node_id]
            status = proxy.type(type_url)
            nacked_names: tuple[str, ...] = ()
            if error_detail:
                status.nacked_version = status.sent_version
                status.error_detail = error_detail
                # Resources that changed in the refused push are the suspects.
                nacked_names = tuple(
                    name for name, version in status.sent_resources.items()
                    if status.acked_resources.get(name) != version
                )
            else:
                status.acked_version = status.sent_version
                status.acked_resources = dict(status.sent_resources)
                status.nacked_version = status.error_detail = ""
            proxy.last_change = time.time()
            self._changed.notify_all()
            return Reply(_copy_type_status(status), nacked_names)

    # -- observation (status, tests, benchmarks) -----------------------------
    def proxies(self) -> dict[str, ProxyStatus]:
        """A copy of every known proxy's record, by node id."""
        with self._lock:
            return {node: _copy_proxy(proxy) for node, proxy in self._proxies.items()}

    def _converged_locked(self, node_id: str) -> bool:
        snapshot = self._snapshots.get(node_id)
        proxy = self._proxies.get(node_id)
        if snapshot is None or proxy is None or proxy.streams <= 0:
            return False
        for type_url, version in snapshot.type_versions.items():
            status = proxy.types.get(type_url)
            if not snapshot.of_type(type_url):
                # Nothing of this type to hold: fine unless it still holds an old set.
                if status is None or not status.acked_resources or status.acked_version == version:
                    continue
                if type_url == EXTENSION_CONFIG:
                    # Envoy drops ECDS subscriptions with the listener that used them.
                    continue
                return False
            if status is None or status.acked_version != version:
                return False
        return True

    def converged(self, node_id: str) -> bool:
        """Whether ``node_id`` is connected and has ACKed every type of its current snapshot."""
        with self._lock:
            return self._converged_locked(node_id)

    def wait_converged(self, node_ids: list[str], timeout: float) -> bool:
        """Block until every listed proxy has ACKed its current snapshot."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(self._converged_locked(node) for node in node_ids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


def _copy_type_status(status: TypeStatus) -> TypeStatus:
    return replace(status, sent_resources=dict(status.sent_resources), acked_resources=dict(status.acked_resources))


def _copy_proxy(proxy: ProxyStatus) -> ProxyStatus:
    return ProxyStatus(
        node_id=proxy.node_id,
        metadata=dict(proxy.metadata),
        streams=proxy.streams,
        last_change=proxy.last_change,
        types={url: _copy_type_status(status) for url, status in proxy.types.items()},
    )
