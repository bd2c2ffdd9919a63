"""Proxy-Wasm ABI 0.2.1 constants, as Python enums.

Values are the ABI's.  Filter code mostly needs only :class:`Action`;
``meshext.sdk`` also exports :class:`LogLevel` and :class:`PeerType`, which
the API hands to filters.
"""

from __future__ import annotations

from enum import EnumType, IntEnum


class _ActionType(EnumType):
    """Action's own metaclass, so that _dispatch.preinit can make ``Action.CONTINUE``
    a plain class-attribute lookup without touching other enums."""


class Action(IntEnum, metaclass=_ActionType):
    """What a stream callback tells Envoy to do next.

    ``PAUSE`` stops iteration: for headers Envoy waits (resume with
    ``self.request.resume()``), for bodies Envoy buffers the data until the
    filter continues or the stream ends.
    """

    CONTINUE = 0
    PAUSE = 1


class LogLevel(IntEnum):
    """Envoy's log levels (what ``log.level()`` answers)."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class Status(IntEnum):
    """What a host function answers (``HostError.status``)."""

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


class BufferType(IntEnum):
    """The buffers a filter can read and write (``Body(BufferType.X)``)."""

    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_CALL_MESSAGE = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    FOREIGN_FUNCTION_ARGUMENTS = 8


class MapType(IntEnum):
    """The header maps a filter can read and write (``HeaderMap(MapType.X)``)."""

    HTTP_REQUEST_HEADERS = 0
    HTTP_REQUEST_TRAILERS = 1
    HTTP_RESPONSE_HEADERS = 2
    HTTP_RESPONSE_TRAILERS = 3
    GRPC_CALL_INITIAL_METADATA = 4
    GRPC_CALL_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class PeerType(IntEnum):
    """Which end closed a TCP connection (``peer`` of ``on_downstream_close`` / ``on_upstream_close``)."""

    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class StreamType(IntEnum):
    """A direction of a stream, for resuming or closing it."""

    HTTP_REQUEST = 0
    HTTP_RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class MetricType(IntEnum):
    """The kinds of Envoy metric (:class:`~meshext.sdk.Counter`, ``Gauge``, ``Histogram``)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
