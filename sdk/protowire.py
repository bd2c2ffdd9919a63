"""The protobuf wire format, written and read by hand, for filters that talk gRPC.

A meshext module carries no ``protobuf`` package (its fast version is native
code that does not exist for wasm32-wasi, its pure-Python one is megabytes),
so a filter encodes and decodes its messages from their ``.proto``
definitions with these functions (https://protobuf.dev/programming-guides/encoding/).

Writing: one call per field, concatenated in field-number order
(``encode_*`` functions return bytes).  A repeated field is one call per
element; a nested message is :func:`encode_bytes` of its encoded bytes; a
packed repeated scalar is :func:`encode_packed`.  proto3 does not send
fields that hold their default (0, empty, false): leave them out.

Reading: :func:`decode_fields` yields ``(field number, wire type, value)`` in
wire order; varints and fixed-width fields come as ``int``, length-delimited
ones as ``bytes`` (parse a nested message with another :func:`decode_fields`).
:func:`decode_message` groups them by field number.  As proto3 requires,
readers skip numbers they do not know, take the last value of a singular
field and all values of a repeated one, and treat absent fields as the
default.  Malformed input raises :class:`WireError` (a ``ValueError``).

``google.protobuf.Struct`` / ``Value`` / ``ListValue`` (JSON-like values, as
in Envoy's dynamic metadata) convert from and to Python values with
:func:`encode_struct` and :func:`decode_struct`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

# typing only for checkers: importing it would grow every VM (see callouts.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_UINT64 = (1 << 64) - 1
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


# -- writing -------------------------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """``value`` as a base-128 varint; negative numbers as 64-bit two's complement (int32/int64)."""
    if value < 0:
        value &= _UINT64  # what protobuf does for negative int32/int64: always 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire_type: int) -> bytes:
    """The key that starts every field."""
    if number < 1:
        raise WireError(f"field number {number}: protobuf field numbers start at 1")
    return encode_varint(number << 3 | wire_type)


def encode_uint(number: int, value: int) -> bytes:
    """An int32/int64/uint32/uint64, bool or enum field."""
    return encode_tag(number, VARINT) + encode_varint(int(value))


def encode_sint(number: int, value: int) -> bytes:
    """A sint32/sint64 field (ZigZag encoding)."""
    return encode_tag(number, VARINT) + encode_varint(value << 1 if value >= 0 else (-value << 1) - 1)


def encode_bytes(number: int, value: bytes | str) -> bytes:
    """A string, bytes or nested-message field (``value`` is the encoded message)."""
    payload = value.encode() if isinstance(value, str) else value
    return encode_tag(number, LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def encode_double(number: int, value: float) -> bytes:
    """A double field."""
    return encode_tag(number, FIXED64) + struct.pack("<d", value)


def encode_float(number: int, value: float) -> bytes:
    """A float field."""
    return encode_tag(number, FIXED32) + struct.pack("<f", value)


def encode_fixed64(number: int, value: int) -> bytes:
    """A fixed64/sfixed64 field."""
    return encode_tag(number, FIXED64) + struct.pack("<Q", value & _UINT64)


def encode_fixed32(number: int, value: int) -> bytes:
    """A fixed32/sfixed32 field."""
    return encode_tag(number, FIXED32) + struct.pack("<I", value & 0xFFFFFFFF)


def encode_packed(number: int, values: list[int]) -> bytes:
    """A packed repeated varint field (proto3's default encoding for repeated scalars)."""
    return encode_bytes(number, b"".join(encode_varint(value) for value in values))


# -- reading -------------------------------------------------------------------------------------

def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(_MAX_VARINT_BYTES):
        if position >= len(data):
            raise WireError(f"varint cut off by the end of the message at byte {position}")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _UINT64, position
        shift += 7
    raise WireError(f"varint longer than {_MAX_VARINT_BYTES} bytes before byte {position}")


def decode_fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of ``message``, in wire order."""
    position = 0
    size = len(message)
    while position < size:
        key, position = _read_varint(message, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 before byte {position}: not a protobuf message")
        if wire_type == VARINT:
            value, position = _read_varint(message, position)
            yield number, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            length, position = _read_varint(message, position)
            if position + length > size:
                raise WireError(f"field {number} is {length} bytes long but the message ends first")
            yield number, wire_type, message[position:position + length]
            position += length
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if position + width > size:
                raise WireError(f"field {number} is cut off by the end of the message")
            yield number, wire_type, int.from_bytes(message[position:position + width], "little")
            position += width
        else:
            raise WireError(f"field {number} has wire type {wire_type} (groups are not supported)")


def decode_message(message: bytes) -> dict[int, list[int | bytes]]:
    """Every field's values by field number (a singular field's value is the last one)."""
    found: dict[int, list[int | bytes]] = {}
    for number, _, value in decode_fields(message):
        found.setdefault(number, []).append(value)
    return found


def as_int32(value: int) -> int:
    """A decoded varint as int32/int64 (two's complement), e.g. a negative enum."""
    return value - (1 << 64) if value >> 63 else value


def as_sint(value: int) -> int:
    """A decoded varint as sint32/sint64 (ZigZag)."""
    return (value >> 1) ^ -(value & 1)


def as_double(value: int) -> float:
    """A decoded fixed64 as a double."""
    result: float = struct.unpack("<d", value.to_bytes(8, "little"))[0]
    return result


def as_float(value: int) -> float:
    """A decoded fixed32 as a float."""
    result: float = struct.unpack("<f", value.to_bytes(4, "little"))[0]
    return result


def decode_packed(value: int | bytes) -> list[int]:
    """A repeated varint field's values, whether sent packed (bytes) or one by one (int)."""
    if isinstance(value, int):
        return [value]
    numbers, position = [], 0
    while position < len(value):
        number, position = _read_varint(value, position)
        numbers.append(number)
    return numbers


def expect_bytes(value: int | bytes, where: str) -> bytes:
    """``value`` when it is length-delimited, else WireError naming ``where``."""
    if not isinstance(value, bytes):
        raise WireError(f"{where}: expected a length-delimited field, got a number")
    return value


def expect_int(value: int | bytes, where: str) -> int:
    """``value`` when it is a varint or fixed-width number, else WireError naming ``where``."""
    if not isinstance(value, int):
        raise WireError(f"{where}: expected a number, got a length-delimited field")
    return value


# -- google.protobuf.Struct ----------------------------------------------------------------------
# struct.proto: Struct { map<string, Value> fields = 1; }  (a map entry: key = 1, value = 2)
# Value { oneof kind { NullValue null_value = 1; double number_value = 2; string string_value = 3;
#                      bool bool_value = 4; Struct struct_value = 5; ListValue list_value = 6; } }
# ListValue { repeated Value values = 1; }

def encode_struct(fields: Mapping[str, Any]) -> bytes:
    """A ``google.protobuf.Struct`` holding ``fields`` (JSON-like values: None, bool, numbers, str, lists, dicts)."""
    return b"".join(encode_bytes(1, encode_bytes(1, key) + encode_bytes(2, encode_value(value)))
                    for key, value in fields.items())


def encode_value(value: Any) -> bytes:
    """A ``google.protobuf.Value``; TypeError for what JSON cannot hold."""
    if value is None:
        return encode_uint(1, 0)
    if isinstance(value, bool):  # before int: bool is an int
        return encode_uint(4, value)
    if isinstance(value, (int, float)):
        return encode_double(2, float(value))
    if isinstance(value, str):
        return encode_bytes(3, value)
    if isinstance(value, Mapping):
        return encode_bytes(5, encode_struct(value))
    if isinstance(value, (list, tuple)):
        return encode_bytes(6, b"".join(encode_bytes(1, encode_value(item)) for item in value))
    raise TypeError(f"{type(value).__name__} cannot be a google.protobuf.Value: use None, bool, numbers, str, "
                    "lists or dicts")


def decode_struct(message: bytes) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a dict (numbers as float, as protobuf's JSON mapping)."""
    result: dict[str, Any] = {}
    for number, _, entry in decode_fields(message):
        if number != 1:
            continue
        key, value = "", None
        for entry_number, _, item in decode_fields(expect_bytes(entry, "Struct.fields")):
            if entry_number == 1:
                key = expect_bytes(item, "Struct.fields.key").decode()
            elif entry_number == 2:
                value = decode_value(expect_bytes(item, "Struct.fields.value"))
        result[key] = value
    return result


def decode_value(message: bytes) -> Any:
    """A ``google.protobuf.Value`` as a Python value (None when no kind is set)."""
    value: Any = None
    for number, _, item in decode_fields(message):
        if number == 1:
            value = None
        elif number == 2:
            value = as_double(expect_int(item, "Value.number_value"))
        elif number == 3:
            value = expect_bytes(item, "Value.string_value").decode()
        elif number == 4:
            value = bool(expect_int(item, "Value.bool_value"))
        elif number == 5:
            value = decode_struct(expect_bytes(item, "Value.struct_value"))
        elif number == 6:
            value = [decode_value(expect_bytes(element, "ListValue.values"))
                     for element_number, _, element in decode_fields(expect_bytes(item, "Value.list_value"))
                     if element_number == 1]
    return value
