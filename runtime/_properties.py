"""Properties (``proxy_get_property``) modelled on Envoy's attributes.

Envoy answers property paths from its attribute vocabulary
(https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes):
``request.*``, ``response.*``, ``source.*``, ``destination.*``,
``connection.*``, ``upstream.*``, the plugin's own ``plugin_name`` /
``plugin_root_id`` / ``plugin_vm_id``, ``node``, ``cluster_name``,
``route_name`` ... and values set with ``proxy_set_property`` (Envoy keeps
those in filter state; reading the same path gives them back).

Encoding follows Envoy: strings as their bytes, integers as 8-byte
little-endian, booleans as one byte, timestamps as int64 nanoseconds, maps
as serialised pairs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from meshext.runtime._abi import serialize_pairs
from meshext.runtime._records import EnvoyHeaderMap

PropertyValue = str | bytes | int | bool | dict | list | None

# Connection attributes a stream has unless the test sets its own
# (``plugin.http_stream(properties={"source.address": "10.1.2.3:4567"})``).
CONNECTION_DEFAULTS: dict[str, PropertyValue] = {
    "source.address": "127.0.0.1:50000",
    "source.port": 50000,
    "destination.address": "127.0.0.1:10000",
    "destination.port": 10000,
    "connection.mtls": False,
    "connection.requested_server_name": "",
}


def encode_property(value: Any) -> bytes:
    """A property value as Envoy hands it to the module (raises TypeError for what Envoy cannot encode)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return struct.pack("<q", value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return serialize_pairs([(str(k), v if isinstance(v, str) else str(v)) for k, v in value.items()])
    if isinstance(value, list):
        return serialize_pairs([(str(item), "") for item in value])
    raise TypeError(f"cannot encode property value {value!r}")


def split_path(raw: bytes) -> tuple[str, ...]:
    """Envoy paths are segments separated by NUL bytes ("request\\0path")."""
    return tuple(part.decode("utf-8", "surrogateescape") for part in raw.rstrip(b"\0").split(b"\0"))


def _header(headers: EnvoyHeaderMap | None, name: str) -> str | None:
    return headers.get(name) if headers is not None else None


def request_attributes(headers: EnvoyHeaderMap | None) -> dict[str, Callable[[], PropertyValue]]:
    """The request.* attributes derived from the request header map, as Envoy does."""

    def path_without_query() -> str | None:
        path = _header(headers, ":path")
        return path.split("?", 1)[0] if path is not None else None

    def query() -> str | None:
        path = _header(headers, ":path")
        if path is None:
            return None
        return path.split("?", 1)[1] if "?" in path else ""

    return {
        "path": lambda: _header(headers, ":path"),
        "url_path": path_without_query,
        "query": query,
        "host": lambda: _header(headers, ":authority"),
        "scheme": lambda: _header(headers, ":scheme"),
        "method": lambda: _header(headers, ":method"),
        "referer": lambda: _header(headers, "referer"),
        "useragent": lambda: _header(headers, "user-agent"),
        "id": lambda: _header(headers, "x-request-id"),
        "headers": lambda: headers.as_dict() if headers is not None else None,
    }
