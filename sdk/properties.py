"""Envoy attributes (``request.path``, ``source.address``, ``node.metadata``...).

Paths are dotted strings or tuples of segments (use a tuple when a segment
itself contains a dot, e.g. ``("filter_state", "wasm.my_key")``).  Values
come as bytes; helpers decode the common encodings: text, and 8-byte
little-endian integers.
"""

from __future__ import annotations

from meshext.sdk.host import host

Path = str | tuple[str, ...]


def _serialize(path: Path) -> bytes:
    segments = path.split(".") if isinstance(path, str) else path
    return "\0".join(segments).encode()


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
