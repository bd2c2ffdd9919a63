"""RLS v3 messages, encoded with ``meshext.sdk.protowire`` from their ``.proto`` definitions.

Field numbers used (envoyproxy/data-plane-api)::

    // envoy/service/ratelimit/v3/rls.proto
    message RateLimitRequest { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
                               uint32 hits_addend = 3; }                     // 0 (not sent) means 1
    message RateLimitResponse {
      enum Code { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }
      Code overall_code = 1; repeated DescriptorStatus statuses = 2;
      repeated HeaderValue response_headers_to_add = 3; repeated HeaderValue request_headers_to_add = 4;
      bytes raw_body = 5;                                                  // 6, 7: skipped
      message RateLimit { string name = 3; uint32 requests_per_unit = 1; Unit unit = 2; }
      message DescriptorStatus { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
                                 google.protobuf.Duration duration_until_reset = 4; }   // 5: skipped
    }
    // envoy/extensions/common/ratelimit/v3/ratelimit.proto
    message RateLimitDescriptor {
      message Entry { string key = 1; string value = 2; }
      message RateLimitOverride { uint32 requests_per_unit = 1; RateLimitUnit unit = 2; }
      repeated Entry entries = 1; RateLimitOverride limit = 2;             // 3: not sent
    }
    // envoy/config/core/v3/base.proto
    message HeaderValue { string key = 1; string value = 2; bytes raw_value = 3; }
    // google/protobuf/duration.proto
    message Duration { int64 seconds = 1; int32 nanos = 2; }
"""

from __future__ import annotations

from meshext.sdk.protowire import decode_fields, encode_bytes, encode_uint, expect_bytes, expect_int

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
CODE_UNKNOWN, CODE_OK, CODE_OVER_LIMIT = 0, 1, 2

Entries = list[tuple[str, str]]


def encode_request(domain: str, descriptors: list[tuple[Entries, tuple[int, int] | None]]) -> bytes:
    """A RateLimitRequest; each descriptor is (entries, (requests_per_unit, unit number) override or None)."""
    message = encode_bytes(1, domain)
    for entries, override in descriptors:
        descriptor = b"".join(encode_bytes(1, encode_bytes(1, key) + encode_bytes(2, value))
                              for key, value in entries)
        if override is not None:
            descriptor += encode_bytes(2, encode_uint(1, override[0]) + encode_uint(2, override[1]))
        message += encode_bytes(2, descriptor)
    return message


class DescriptorStatus:
    """One descriptor's answer."""

    __slots__ = ("code", "requests_per_unit", "unit", "limit_remaining", "reset_seconds")

    def __init__(self, message: bytes) -> None:
        self.code = CODE_UNKNOWN
        self.requests_per_unit = 0  # 0: the service has no limit for it
        self.unit = 0
        self.limit_remaining = 0
        self.reset_seconds = 0
        for number, _, value in decode_fields(message):
            if number == 1:
                self.code = expect_int(value, "DescriptorStatus.code")
            elif number == 2:
                for inner, _, item in decode_fields(expect_bytes(value, "DescriptorStatus.current_limit")):
                    if inner == 1:
                        self.requests_per_unit = expect_int(item, "RateLimit.requests_per_unit")
                    elif inner == 2:
                        self.unit = expect_int(item, "RateLimit.unit")
            elif number == 3:
                self.limit_remaining = expect_int(value, "DescriptorStatus.limit_remaining")
            elif number == 4:
                for inner, _, item in decode_fields(expect_bytes(value, "DescriptorStatus.duration_until_reset")):
                    if inner == 1:
                        self.reset_seconds = expect_int(item, "Duration.seconds")


class Answer:
    """The fields of a RateLimitResponse the filter acts on; ValueError when it is not one."""

    def __init__(self, message: bytes) -> None:
        self.code = CODE_UNKNOWN
        self.statuses: list[DescriptorStatus] = []
        self.response_headers: list[tuple[str, str]] = []
        self.request_headers: list[tuple[str, str]] = []
        self.body = b""
        for number, _, value in decode_fields(message):
            if number == 1:
                self.code = expect_int(value, "RateLimitResponse.overall_code")
            elif number == 2:
                self.statuses.append(DescriptorStatus(expect_bytes(value, "RateLimitResponse.statuses")))
            elif number in (3, 4):
                header = _header_value(expect_bytes(value, "HeaderValue"))
                (self.response_headers if number == 3 else self.request_headers).append(header)
            elif number == 5:
                self.body = expect_bytes(value, "RateLimitResponse.raw_body")


def _header_value(message: bytes) -> tuple[str, str]:
    """(key, value) of a HeaderValue; ``raw_value`` when ``value`` is empty."""
    parts = {1: b"", 2: b"", 3: b""}
    for number, _, value in decode_fields(message):
        if number in parts:
            parts[number] = expect_bytes(value, "HeaderValue")
    return parts[1].decode(), (parts[2] or parts[3]).decode()
