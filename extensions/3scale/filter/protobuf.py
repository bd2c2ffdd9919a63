"""Envoy's dynamic metadata and ``google.protobuf.Struct`` values, read from the protobuf wire format.

The ``filter`` credential source reads the ``metadata`` property, which
Envoy answers with an ``envoy.config.core.v3.Metadata`` message
(``filter_metadata``: filter name -> Struct; ``typed_filter_metadata`` is
skipped, as the module does), and the ``protobuf`` operation parses a
Struct.  A meshext module carries no protobuf runtime, so the few messages
are decoded by hand.  Lookups follow the module's ``ValueExt``
(``src/proxy/metadata.rs``): a struct by key (``"0"`` = its sole entry), a
list by index, a scalar only by its own value.
"""

from __future__ import annotations

import re
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_INDEX = re.compile(r"\+?[0-9]+")


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, offset


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) in wire order: varints as int, the rest as bytes."""
    offset = 0
    while offset < len(data):
        key, offset = _varint(data, offset)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, offset = _varint(data, offset)
            yield number, wire, value
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if offset + size > len(data):
                raise ValueError("truncated fixed field")
            yield number, wire, data[offset:offset + size]
            offset += size
        elif wire == LENGTH_DELIMITED:
            size, offset = _varint(data, offset)
            if offset + size > len(data):
                raise ValueError("truncated field")
            yield number, wire, data[offset:offset + size]
            offset += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


class ProtoValue:
    """A ``google.protobuf.Value`` (or the same shape from JSON): struct, list, string, number, bool or null."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: object) -> None:
        self.kind, self.value = kind, value

    @classmethod
    def struct(cls, entries: dict[str, ProtoValue]) -> ProtoValue:
        return cls("struct", entries)

    @classmethod
    def from_json(cls, value: object) -> ProtoValue:
        if isinstance(value, dict):
            return cls("struct", {key: cls.from_json(item) for key, item in value.items()})
        if isinstance(value, list):
            return cls("list", [cls.from_json(item) for item in value])
        if isinstance(value, str):
            return cls("string", value)
        if isinstance(value, bool):
            return cls("bool", value)
        if isinstance(value, (int, float)):
            return cls("number", float(value))
        return cls("null", None)

    def is_string(self) -> bool:
        return self.kind == "string"

    def as_string(self) -> str:
        assert isinstance(self.value, str)
        return self.value

    def strings(self) -> list[str] | None:
        """What a ``filter`` source takes from a value: a string, a list of strings, or a 1-entry struct of those."""
        if self.kind == "string":
            return [self.as_string()]
        if self.kind == "list":
            items = self.value
            assert isinstance(items, list)
            return [item.value for item in items] if all(item.kind == "string" for item in items) else None
        if self.kind == "struct" and isinstance(self.value, dict) and len(self.value) == 1:
            (sole,) = self.value.values()
            return sole.strings() if sole.kind in ("string", "list") else None
        return None

    def match_one(self, keys: list[str]) -> ProtoValue | None:
        """The first key that finds something here (the module's ``match_one``)."""
        kind, value = self.kind, self.value
        if kind == "struct":
            assert isinstance(value, dict)
            for key in keys:
                if key in value:
                    return value[key]
            return next(iter(value.values())) if len(value) == 1 and "0" in keys else None
        if kind == "list":
            assert isinstance(value, list)
            for key in keys:
                if _INDEX.fullmatch(key) and int(key) < len(value):
                    return value[int(key)]
            return None
        if kind == "string":
            return self if value in keys else None
        if kind == "number":
            assert isinstance(value, float)
            for key in keys:
                try:
                    number = float(key) if "_" not in key and key.strip() == key else None
                except ValueError:
                    number = None
                if number is not None and abs(value - number) < 2.220446049250313e-16:
                    return self
            return None
        if kind == "bool":
            return self if ("true" if value else "false") in keys else None
        return None

    def lookup(self, path: list[str]) -> ProtoValue | None:
        """Walk ``path`` (empty segments stay in place), or None where a segment finds nothing."""
        current: ProtoValue | None = self
        for segment in path:
            if segment and current is not None:
                current = current.match_one([segment])
        return current


def _decode_value(data: bytes) -> ProtoValue:
    result = ProtoValue("null", None)
    for number, wire, value in fields(data):
        if number == 1 and wire == VARINT:
            result = ProtoValue("null", None)
        elif number == 2 and wire == FIXED64:
            assert isinstance(value, bytes)
            result = ProtoValue("number", struct.unpack("<d", value)[0])
        elif number == 3 and wire == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            result = ProtoValue("string", value.decode("utf-8", "surrogateescape"))
        elif number == 4 and wire == VARINT:
            result = ProtoValue("bool", bool(value))
        elif number == 5 and wire == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            result = ProtoValue.struct(decode_struct(value))
        elif number == 6 and wire == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            result = ProtoValue("list", [_decode_value(item) for item_number, item_wire, item in fields(value)
                                         if item_number == 1 and isinstance(item, bytes)])
    return result


def _map_entry(data: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, wire, item in fields(data):
        if number == 1 and wire == LENGTH_DELIMITED and isinstance(item, bytes):
            key = item.decode("utf-8", "surrogateescape")
        elif number == 2 and wire == LENGTH_DELIMITED and isinstance(item, bytes):
            value = item
    return key, value


def decode_struct(data: bytes) -> dict[str, ProtoValue]:
    """A ``google.protobuf.Struct``: field name -> value."""
    entries = {}
    for number, wire, item in fields(data):
        if number == 1 and wire == LENGTH_DELIMITED and isinstance(item, bytes):
            key, value = _map_entry(item)
            entries[key] = _decode_value(value)
    return entries


def decode_filter_metadata(data: bytes) -> dict[str, dict[str, ProtoValue]]:
    """``envoy.config.core.v3.Metadata.filter_metadata``: filter name -> its Struct."""
    result = {}
    for number, wire, item in fields(data):
        if number == 1 and wire == LENGTH_DELIMITED and isinstance(item, bytes):
            key, value = _map_entry(item)
            result[key] = decode_struct(value)
    return result
