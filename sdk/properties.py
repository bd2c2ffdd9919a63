"""Envoy attributes (``request.path``, ``source.address``, ``node.metadata``...).

Paths are dotted strings or tuples of segments (use a tuple when a segment
itself contains a dot, e.g. ``("filter_state", "wasm.my_key")``).  Values
come as bytes; helpers decode the common encodings: text, and 8-byte
little-endian integers.
"""

from __future__ import annotations

from meshext.sdk.errors import OutsideVmError
from meshext.sdk.host import host

Path = str | tuple[str, ...]


def _serialize(path: Path) -> bytes:
    segments = path.split(".") if isinstance(path, str) else path
    return "\0".join(segments).encode()


def encoded(path: Path) -> bytes:
    """``path`` in the form the ABI takes, for :func:`read`: build it once, at import, for a hot path."""
    return _serialize(path)


def read(encoded_path: bytes) -> bytes | None:
    """The raw value of an attribute whose path :func:`encoded` made, or None.

    The fastest read: :func:`get` and the others split and encode their
    path on every call, which shows in a filter that reads ten attributes
    per request.  In a VM this name is the host function itself.
    """
    return host.get_property(encoded_path)


# In a VM: no Python frame between the filter and the host.  Outside one (an IDE,
# the docs) the function above stays, and explains itself when called.
try:  # noqa: SIM105 - contextlib.suppress would put contextlib in every VM's memory
    read = host.get_property  # noqa: F811
except OutsideVmError:
    pass


def get(path: Path) -> bytes | None:
    """The raw value of attribute ``path``, or None when Envoy has no such attribute (here and now)."""
    return host.get_property(_serialize(path))


def get_str(path: Path, default: str | None = None) -> str | None:
    """Attribute ``path`` decoded as UTF-8 text (``request.path``), or ``default`` when absent."""
    value = host.get_property(_serialize(path))
    return default if value is None else value.decode("utf-8", "surrogateescape")


def get_int(path: Path, default: int | None = None) -> int | None:
    """Attribute ``path`` as an integer (``response.code``), or ``default`` when absent or not 8 bytes."""
    value = host.get_property(_serialize(path))
    return default if value is None or len(value) != 8 else int.from_bytes(value, "little", signed=True)


def set(path: Path, value: bytes | str) -> None:  # noqa: A001 - mirrors the ABI's verb
    """Set attribute ``path`` (e.g. ``("filter_state", "wasm.my_key")``) to ``value`` (str as UTF-8).

    Raises :class:`~meshext.sdk.HostError` when Envoy refuses (read-only attribute).
    """
    host.set_property(_serialize(path), value)
