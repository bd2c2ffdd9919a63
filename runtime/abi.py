"""Proxy-Wasm ABI 0.2.1 numbers and the map serialisation format.

The values come from the ABI specification (Types and Serialization
sections).  No maintained Python library publishes them, so they are written
out here once and used by the host, the harness and the tests.
"""

from __future__ import annotations

import enum
import struct


class Status(enum.IntEnum):
    """proxy_status_t: what every proxy_* host function returns."""

    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    INTERNAL_FAILURE = 10
    UNIMPLEMENTED = 12


class Action(enum.IntEnum):
    """proxy_action_t: what a stream callback returns."""

    CONTINUE = 0
    PAUSE = 1


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class BufferType(enum.IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_CALL_MESSAGE = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    FOREIGN_FUNCTION_ARGUMENTS = 8


class MapType(enum.IntEnum):
    HTTP_REQUEST_HEADERS = 0
    HTTP_REQUEST_TRAILERS = 1
    HTTP_RESPONSE_HEADERS = 2
    HTTP_RESPONSE_TRAILERS = 3
    GRPC_CALL_INITIAL_METADATA = 4
    GRPC_CALL_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class StreamType(enum.IntEnum):
    HTTP_REQUEST = 0
    HTTP_RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class PeerType(enum.IntEnum):
    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class MetricType(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


# wasi_errno_t values the host returns (WASI preview1 numbering).
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
