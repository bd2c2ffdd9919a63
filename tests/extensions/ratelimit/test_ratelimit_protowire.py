"""meshext.sdk.protowire against protobuf's own generated classes (xds-protos) on the host."""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from meshext.sdk import protowire as wire


def test_an_explicit_default_is_read_by_protobuf_though_proto3_leaves_it_out() -> None:
    assert wrappers_pb2.UInt64Value.FromString(wire.encode_uint(1, 0)).value == 0
    assert wrappers_pb2.UInt64Value(value=0).SerializeToString() == b""


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**32 - 1, 2**63 - 1, 2**64 - 1])
def test_varints_match_protobuf(value: int) -> None:
    assert wire.encode_uint(1, value) == wrappers_pb2.UInt64Value(value=value).SerializeToString()
    ((number, wire_type, decoded),) = wire.decode_fields(wire.encode_uint(1, value))
    assert (number, wire_type, decoded) == (1, wire.VARINT, value)


@pytest.mark.parametrize("value", [-1, -2**31, -2**63, 5])
def test_negative_ints_are_ten_byte_twos_complement_as_in_protobuf(value: int) -> None:
    encoded = wire.encode_uint(1, value)
    assert encoded == wrappers_pb2.Int64Value(value=value).SerializeToString()
    assert wire.as_int32(wire.decode_message(encoded)[1][0]) == value  # type: ignore[arg-type]


def test_zigzag_doubles_and_fixed_widths_round_trip() -> None:
    for value in (0, -1, 1, -2**40, 2**40):
        (_, _, raw), = wire.decode_fields(wire.encode_sint(3, value))
        assert wire.as_sint(raw) == value  # type: ignore[arg-type]
    assert wire.encode_double(1, 2.5) == wrappers_pb2.DoubleValue(value=2.5).SerializeToString()
    assert wire.encode_float(1, 0.5) == wrappers_pb2.FloatValue(value=0.5).SerializeToString()
    (_, _, raw), = wire.decode_fields(wire.encode_double(1, -7.25))
    assert wire.as_double(raw) == -7.25  # type: ignore[arg-type]
    (_, _, raw), = wire.decode_fields(wire.encode_fixed32(2, 7))
    assert raw == 7


def test_nested_and_repeated_messages_match_protobuf() -> None:
    entries = [("user", "ann"), ("path", "/ä")]
    descriptor = b"".join(wire.encode_bytes(1, wire.encode_bytes(1, key) + wire.encode_bytes(2, value))
                          for key, value in entries)
    descriptor += wire.encode_bytes(2, wire.encode_uint(1, 10) + wire.encode_uint(2, 2))
    message = wire.encode_bytes(1, "shop") + wire.encode_bytes(2, descriptor) + wire.encode_bytes(2, descriptor) \
        + wire.encode_uint(3, 4)
    expected = rls_pb2.RateLimitRequest(domain="shop", hits_addend=4, descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries],
        limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=10, unit=2))] * 2)
    assert message == expected.SerializeToString()
    fields = wire.decode_message(expected.SerializeToString())
    assert fields[1] == [b"shop"] and len(fields[2]) == 2 and fields[3] == [4]


def test_packed_repeated_fields_decode_either_way() -> None:
    packed = wire.encode_packed(1, [1, 300, 5])
    assert wire.decode_packed(wire.decode_message(packed)[1][0]) == [1, 300, 5]
    assert wire.decode_packed(300) == [300]


STRUCT = {"name": "ann", "count": 3.0, "ok": True, "nothing": None, "nested": {"list": [1.0, "two", [False]]}}


def test_struct_encodes_as_protobuf_reads_it() -> None:
    parsed = struct_pb2.Struct.FromString(wire.encode_struct(STRUCT))
    expected = struct_pb2.Struct()
    expected.update(STRUCT)
    assert parsed == expected


def test_struct_decodes_what_protobuf_writes() -> None:
    message = struct_pb2.Struct()
    message.update(STRUCT)
    assert wire.decode_struct(message.SerializeToString()) == STRUCT


def test_unknown_fields_are_skipped_and_the_last_singular_value_wins() -> None:
    message = wire.encode_uint(9, 1) + wire.encode_double(8, 1.0) + wire.encode_fixed32(7, 3) \
        + wire.encode_uint(1, 1) + wire.encode_uint(1, 2)
    parsed = rls_pb2.RateLimitResponse.FromString(message)
    assert parsed.overall_code == 2 and wire.decode_message(message)[1][-1] == 2


@pytest.mark.parametrize(("data", "problem"), [
    (b"\x0a\x05ab", "5 bytes long but the message ends first"),
    (b"\x08", "varint cut off"),
    (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (b"\x00\x01", "field number 0"),
    (b"\x0b", "wire type 3"),
    (b"\x09\x01\x02", "cut off by the end"),
])
def test_malformed_input_raises_wire_error(data: bytes, problem: str) -> None:
    with pytest.raises(wire.WireError, match=problem):
        list(wire.decode_fields(data))


def test_wrong_wire_types_are_named() -> None:
    with pytest.raises(wire.WireError, match="Value.string_value: expected a length-delimited field"):
        wire.decode_value(wire.encode_uint(3, 1))
    with pytest.raises(TypeError, match="cannot be a google.protobuf.Value"):
        wire.encode_struct({"x": object()})
