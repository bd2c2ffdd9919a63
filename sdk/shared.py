"""State shared by every VM of a plugin (all Envoy worker threads).

``SharedData`` is a key-value store with compare-and-swap; ``SharedQueue``
passes messages between VMs, waking the consumer's ``on_queue_ready``.
"""

from __future__ import annotations

from meshext.sdk.abi import Status
from meshext.sdk.host import host


class CasMismatch(Exception):
    """Another VM changed the key since it was read; read again and retry."""


class SharedData:
    """The host's shared key-value store (keys are strings, values bytes)."""

    @staticmethod
    def get(key: str) -> tuple[bytes, int] | None:
        """(value, cas) or None when the key is absent."""
        return host.get_shared_data(key)

    @staticmethod
    def set(key: str, value: bytes | str, cas: int = 0) -> None:
        """Store ``value``; with a ``cas`` from :meth:`get`, only if unchanged since (else CasMismatch)."""
        if host.set_shared_data(key, value, cas) == Status.CAS_MISMATCH:
            raise CasMismatch(key)

    @staticmethod
    def add(key: str, delta: int = 1, *, attempts: int = 64) -> int:
        """Atomically add to an integer counter stored as decimal text; returns the new value."""
        for _ in range(attempts):
            current = host.get_shared_data(key)
            value, cas = (int(current[0] or b"0"), current[1]) if current else (0, 0)
            if host.set_shared_data(key, str(value + delta), cas) != Status.CAS_MISMATCH:
                return value + delta
        raise CasMismatch(key)


class SharedQueue:
    """A named queue; the VM that registers it gets ``on_queue_ready`` calls."""

    def __init__(self, queue_id: int) -> None:
        self.queue_id = queue_id

    @classmethod
    def register(cls, name: str) -> SharedQueue:
        """Create (or take over) the queue ``name`` in this VM."""
        return cls(host.register_shared_queue(name))

    @classmethod
    def resolve(cls, name: str, vm_id: str = "") -> SharedQueue | None:
        """Find a queue registered by a VM (``vm_id`` as in Envoy's vm_config), or None."""
        queue_id = host.resolve_shared_queue(vm_id, name)
        return None if queue_id is None else cls(queue_id)

    def enqueue(self, message: bytes | str) -> None:
        host.enqueue_shared_queue(self.queue_id, message)

    def dequeue(self) -> bytes | None:
        """The oldest message, or None when the queue is empty."""
        return host.dequeue_shared_queue(self.queue_id)
