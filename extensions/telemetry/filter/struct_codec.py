"""google.protobuf.Struct (and envoy Metadata / Node) in protobuf wire format, without protobuf.

Peer metadata travels as a serialised Struct; Envoy hands cluster, endpoint and
node metadata over as serialised messages.  Encoding is deterministic (map
keys sorted, as protobuf's deterministic serialisation does), so equal
metadata gives equal bytes.  Numbers are doubles, as in JSON.

This is the one module to switch when ``meshext.sdk.protowire`` lands: only
the varint/length primitives below would change.
"""

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_DOUBLE = struct.Struct("<d")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fields(data: bytes) -> "Iterator[tuple[int, int, Any]]":
    """(field number, wire type, value) for each field: value is int (varint, fixed) or bytes (length-delimited)."""
    position, end = 0, len(data)
    while position < end:
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, position = _read_varint(data, position)
        elif wire_type == 2:
            length, position = _read_varint(data, position)
            value = data[position:position + length]
            if len(value) != length:
                raise ValueError("truncated field")
            position += length
        elif wire_type == 1:
            value = data[position:position + 8]
            position += 8
        elif wire_type == 5:
            value = data[position:position + 4]
            position += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_value(value: "Any") -> bytes:
    """A google.protobuf.Value holding ``value`` (None, bool, int/float, str, dict, list/tuple)."""
    if value is None:
        return _varint(1 << 3) + b"\x00"
    if value is True or value is False:
        return _varint(4 << 3) + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return _varint(2 << 3 | 1) + _DOUBLE.pack(float(value))
    if isinstance(value, str):
        return _field(3, value.encode())
    if isinstance(value, dict):
        return _field(5, encode_struct(value))
    if isinstance(value, (list, tuple)):
        return _field(6, b"".join(_field(1, encode_value(item)) for item in value))
    raise TypeError(f"cannot put {type(value).__name__} into a protobuf Struct")


def encode_struct(fields: dict[str, "Any"]) -> bytes:
    """A google.protobuf.Struct with ``fields`` (str keys), keys sorted."""
    return b"".join(_field(1, _field(1, key.encode()) + _field(2, encode_value(fields[key])))
                    for key in sorted(fields))


def decode_value(data: bytes) -> "Any":
    """The Python value of a serialised google.protobuf.Value."""
    result = None
    for number, _, value in _fields(data):
        if number == 1:
            result = None
        elif number == 2:
            result = _DOUBLE.unpack(value)[0]
        elif number == 3:
            result = bytes(value).decode("utf-8", "replace")
        elif number == 4:
            result = bool(value)
        elif number == 5:
            result = decode_struct(value)
        elif number == 6:
            result = [decode_value(item) for n, _, item in _fields(value) if n == 1]
    return result


def _map_entries(data: bytes, map_field: int) -> "Iterator[tuple[str, bytes]]":
    """(key, value bytes) of a map<string, message> field of a serialised message."""
    for number, wire_type, entry in _fields(data):
        if number != map_field or wire_type != 2:
            continue
        key, value = "", b""
        for entry_number, _, part in _fields(entry):
            if entry_number == 1:
                key = bytes(part).decode("utf-8", "replace")
            elif entry_number == 2:
                value = part
        yield key, value


def decode_struct(data: bytes) -> dict[str, "Any"]:
    """The dict of a serialised google.protobuf.Struct."""
    return {key: decode_value(value) for key, value in _map_entries(data, 1)}


def decode_metadata(data: bytes) -> dict[str, "Any"]:
    """``filter_metadata`` of a serialised envoy.config.core.v3.Metadata: {filter name: dict}."""
    return {key: decode_struct(value) for key, value in _map_entries(data, 1)}


def decode_node_metadata(data: bytes) -> dict[str, "Any"]:
    """``metadata`` (field 3, a Struct) of a serialised envoy.config.core.v3.Node."""
    for number, wire_type, value in _fields(data):
        if number == 3 and wire_type == 2:
            return decode_struct(value)
    return {}
