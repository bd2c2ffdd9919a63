"""State shared by every VM of a plugin (all Envoy worker threads).

``SharedData`` is a key-value store with compare-and-swap; ``SharedQueue``
passes messages between VMs, waking the consumer's ``on_queue_ready``.
"""

from __future__ import annotations

from meshext.sdk.abi import Status
from meshext.sdk.errors import CasMismatch
from meshext.sdk.host import host


class SharedData:
    """The host's shared key-value store (keys are strings, values bytes), one per ``vm_id``."""

    @staticmethod
    def get(key: str) -> tuple[bytes, int] | None:
        """``(value, cas)`` for ``key``, or None when the key is absent.

        ``cas`` is the key's version, to pass to :meth:`set` for a
        compare-and-swap.
        """
        return host.get_shared_data(key)

    @staticmethod
    def set(key: str, value: bytes | str, cas: int = 0) -> None:
        """Store ``value`` (str is stored as UTF-8) under ``key``.

        With ``cas`` 0 the write always happens; with a ``cas`` from
        :meth:`get` only if no VM changed the key since, else it raises
        :class:`~meshext.sdk.CasMismatch`.
        """
        if host.set_shared_data(key, value, cas) == Status.CAS_MISMATCH:
            raise CasMismatch(key)

    @staticmethod
    def add(key: str, delta: int = 1, *, attempts: int = 64) -> int:
        """Atomically add ``delta`` to the integer under ``key``, as decimal text (absent: 0); returns the new value.

        Retries a compare-and-swap up to ``attempts`` times; raises
        :class:`~meshext.sdk.CasMismatch` when other VMs won every time.
        """
        for _ in range(attempts):
            current = host.get_shared_data(key)
            value, cas = (int(current[0] or b"0"), current[1]) if current else (0, 0)
            if host.set_shared_data(key, str(value + delta), cas) != Status.CAS_MISMATCH:
                return value + delta
        raise CasMismatch(key)


class SharedQueue:
    """A named queue; the VM that registers it gets ``on_queue_ready`` calls."""

    def __init__(self, queue_id: int) -> None:
        """The queue with Envoy's id ``queue_id`` (use :meth:`register` or :meth:`resolve` to get one)."""
        self.queue_id = queue_id

    @classmethod
    def register(cls, name: str) -> SharedQueue:
        """Create (or take over) the queue ``name`` in this VM, whose root then hears ``on_queue_ready``."""
        return cls(host.register_shared_queue(name))

    @classmethod
    def resolve(cls, name: str, vm_id: str = "") -> SharedQueue | None:
        """The queue ``name`` registered by a VM with ``vm_id`` (as in Envoy's vm_config), or None if none has."""
        queue_id = host.resolve_shared_queue(vm_id, name)
        return None if queue_id is None else cls(queue_id)

    def enqueue(self, message: bytes | str) -> None:
        """Add ``message`` (str as UTF-8) at the end; raises :class:`~meshext.sdk.HostError` if the queue is gone."""
        host.enqueue_shared_queue(self.queue_id, message)

    def dequeue(self) -> bytes | None:
        """Take the oldest message, or None when the queue is empty."""
        return host.dequeue_shared_queue(self.queue_id)
