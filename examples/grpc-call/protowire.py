"""The protobuf wire format, as much as a filter needs to speak to a gRPC service.

The ``protobuf`` package is a C extension (or, pure-Python, megabytes of
code) and a meshext module carries neither, so messages are written and read
by hand from their ``.proto`` definitions:

- writing: :func:`varint_field`, :func:`bytes_field` (strings, bytes, nested
  messages, one call per element of a repeated field);
- reading: :func:`fields` yields ``(field number, value)`` in wire order,
  varints as ``int`` and length-delimited values as ``bytes`` (parse nested
  messages with another :func:`fields`); 32- and 64-bit fields are skipped.

As proto3 requires, readers must accept unknown fields (skip numbers they do
not know), repeated fields (the same number several times) and absent fields
(the default: 0, empty).  Malformed input raises ``ValueError``.
"""

from collections.abc import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    if value < 0:
        raise ValueError(f"varint of a negative number {value}: proto3 encodes those as 10-byte two's complement")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """An integer, bool or enum field (omit it for 0: proto3 does not send defaults)."""
    return varint(number << 3 | VARINT) + varint(value)


def bytes_field(number: int, value: bytes | str) -> bytes:
    """A string, bytes or embedded-message field."""
    payload = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


def fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of ``message``, in wire order."""
    position = 0
    while position < len(message):
        key, position = _read_varint(message, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {position}: not a protobuf message")
        if wire_type == VARINT:
            value, position = _read_varint(message, position)
            yield number, value
        elif wire_type == LENGTH_DELIMITED:
            size, position = _read_varint(message, position)
            if position + size > len(message):
                raise ValueError(f"field {number} is {size} bytes long but the message ends first")
            yield number, message[position:position + size]
            position += size
        elif wire_type in (FIXED64, FIXED32):
            position += 8 if wire_type == FIXED64 else 4
            if position > len(message):
                raise ValueError(f"field {number} is cut off by the end of the message")
        else:
            raise ValueError(f"field {number} has wire type {wire_type} (groups are not supported)")


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift >= 64:
            raise ValueError("varint longer than 10 bytes")
    raise ValueError("the message ends inside a varint")
