"""Host-side facts of the Proxy-Wasm ABI 0.2.1 that meshext.sdk.abi does not carry.

The ABI's enums (Status, MapType, ...) have one definition, in
meshext.sdk.abi, shared by the filter side and the host side.  Here: the
WASI errno values Envoy answers and the map serialisation, both from the ABI
specification (Types and Serialization sections), which no maintained Python
library publishes.
"""

from __future__ import annotations

import struct

MASK32 = 0xFFFFFFFF  # Wasm passes i32 arguments as Python ints that may be negative
MASK64 = 0xFFFFFFFFFFFFFFFF

WASI_SUCCESS = 0
WASI_BADF = 8
WASI_FAULT = 21
WASI_INVAL = 28
WASI_NOENT = 44
WASI_NOSYS = 52
WASI_NOTSUP = 58

Pairs = list[tuple[str, str]]


def serialize_pairs(pairs: Pairs) -> bytes:
    """Encode header/metadata pairs as the ABI's Serialization section says."""
    encoded = [(key.encode(), value.encode()) for key, value in pairs]
    sizes = b"".join(struct.pack("<II", len(key), len(value)) for key, value in encoded)
    data = b"".join(key + b"\0" + value + b"\0" for key, value in encoded)
    return struct.pack("<I", len(encoded)) + sizes + data


def deserialize_pairs(data: bytes) -> Pairs:
    """Decode a serialised map; both empty encodings (size 0, or one 0 byte) give []."""
    if len(data) < 4:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    sizes = struct.unpack_from(f"<{2 * count}I", data, 4)
    offset = 4 + 8 * count
    pairs: Pairs = []
    for index in range(count):
        key_size, value_size = sizes[2 * index], sizes[2 * index + 1]
        key = data[offset : offset + key_size]
        offset += key_size + 1
        value = data[offset : offset + value_size]
        offset += value_size + 1
        pairs.append((key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
    return pairs
