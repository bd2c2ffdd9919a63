"""Headers, trailers and bodies of the stream being processed.

These objects hold no data: every call goes to Envoy, which owns the
stream.  They act on the context Envoy is currently calling (or the one the
SDK made effective for a callout response), so one instance per class is
shared by all contexts.
"""

from __future__ import annotations

from meshext.sdk.abi import BufferType, MapType, StreamType
from meshext.sdk.host import NativeBody, NativeHeaderMap, host

# typing only for checkers: importing it would grow every VM (see callouts.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    # What the SDK takes wherever it takes headers, trailers or gRPC metadata.
    Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def header_pairs(headers: Headers) -> list[tuple[str, str]]:
    """``headers`` as a list of ``(name, value)`` pairs, for the host functions.

    Takes anything with an ``items()`` method (a dict or other Mapping, a
    :class:`HeaderMap`) or any iterable of pairs.
    """
    items = getattr(headers, "items", None)
    return list(items() if callable(items) else headers)


class HeaderMap(NativeHeaderMap):
    """Headers or trailers: ``get``, ``add``, ``set``, ``remove``, ``items``.

    Names are case-insensitive (Envoy stores them lower-case); pseudo-headers
    such as ``:path`` and ``:status`` are included.  ``headers[name]`` raises
    KeyError when absent, ``headers[name] = value`` is ``set``, ``del
    headers[name]`` is ``remove``.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        # Implemented in C (HeaderMap in sdk/shim/hostcalls.c): these run on
        # every request, and one C call is much cheaper than a Python method.
        # The docstrings repeat the C ones for editors and type checkers.
        map_type: int

        def __init__(self, map_type: MapType) -> None:
            """The headers or trailers of Proxy-Wasm map ``map_type`` (the contexts give them ready-made)."""

        def get(self, name: str, default: str | None = None) -> str | None:
            """The first value of ``name`` (``get_all`` has every one), or ``default`` (None) when absent."""

        def get_many(self, names: tuple[str, ...]) -> tuple[str | None, ...]:
            """The first value of each of ``names``, None where absent: one host call for the whole map.

            For a filter that reads several headers per request: cheaper than a ``get`` each, or than building
            a dict of ``items()`` to pick a few.
            """

        def __getitem__(self, name: str) -> str:
            """The first value of ``name``; raises KeyError when absent."""

        def __contains__(self, name: object) -> bool:
            """Whether ``name`` (a str) is present."""

        def add(self, name: str, value: str) -> None:
            """Append a header line (keeps existing values of ``name``).

            Raises :class:`~meshext.sdk.HostError` when Envoy refuses (the map
            cannot change any more, e.g. the headers went downstream).
            """

        def set(self, name: str, value: str) -> None:
            """Replace all values of ``name`` with ``value`` (adds it if absent); raises HostError like :meth:`add`."""

        def __setitem__(self, name: str, value: str) -> None:
            """``headers[name] = value`` is :meth:`set`."""

        def remove(self, name: str) -> None:
            """Remove every value of ``name``; absent names are fine."""

        def __delitem__(self, name: str) -> None:
            """``del headers[name]`` is :meth:`remove` (no KeyError when absent)."""

    def items(self) -> list[tuple[str, str]]:
        """All (name, value) pairs in order, repeated names included."""
        return host.get_headers(self.map_type)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, one per header line."""
        name = name.lower()
        return [value for key, value in self.items() if key == name]

    def __iter__(self) -> Iterator[str]:
        """The header names in order, a repeated name once per line."""
        return iter([name for name, _ in self.items()])

    def __len__(self) -> int:
        """The number of header lines."""
        return len(self.items())

    def replace_all(self, headers: Headers) -> None:
        """Replace the whole map with ``headers`` (a dict or a sequence of ``(name, value)`` pairs)."""
        host.set_headers(self.map_type, header_pairs(headers))


class Body(NativeBody):
    """A body (or TCP data) buffer: what Envoy has received so far.

    In ``on_request_body(size, end_of_stream)`` the buffer holds the current
    chunk, or, if earlier calls returned ``Action.PAUSE``, everything
    buffered so far.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        # Implemented in C (Body in sdk/shim/hostcalls.c), like HeaderMap's methods.
        buffer_type: int

        def __init__(self, buffer_type: BufferType) -> None:
            """The Proxy-Wasm buffer ``buffer_type`` (the contexts give them ready-made)."""

        def size(self) -> int:
            """How many bytes the buffer holds (0 when there is none)."""

        def read(self, start: int = 0, size: int | None = None) -> bytes:
            """``size`` bytes from ``start`` (None: to the end); b"" past the end or without a buffer."""

        def replace(self, data: bytes | str) -> None:
            """Replace the whole buffer (Envoy fixes ``content-length`` when it can).

            ``data`` is bytes or str (sent as UTF-8).  Raises
            :class:`~meshext.sdk.HostError` when Envoy refuses.
            """

        def append(self, data: bytes | str) -> None:
            """Add ``data`` at the end; raises HostError like :meth:`replace`."""

        def prepend(self, data: bytes | str) -> None:
            """Add ``data`` at the start; raises HostError like :meth:`replace`."""

    def text(self, encoding: str = "utf-8") -> str:
        """The whole buffer decoded as ``encoding``; raises UnicodeDecodeError for other bytes."""
        return self.read().decode(encoding)


class Message:
    """One direction of an HTTP stream: ``headers``, ``body`` and ``trailers``.

    ``HttpContext.request`` and ``HttpContext.response`` are the two
    instances; each acts on the stream Envoy is calling now.
    """

    __slots__ = ("headers", "body", "trailers", "stream_type")

    def __init__(self, headers: MapType, body: BufferType, trailers: MapType, stream_type: StreamType) -> None:
        self.headers = HeaderMap(headers)
        self.body = Body(body)
        self.trailers = HeaderMap(trailers)
        self.stream_type = int(stream_type)

    def resume(self) -> None:
        """Continue this direction after a callback answered ``Action.PAUSE`` (e.g. from a callout's callback).

        Raises :class:`~meshext.sdk.HostError` when Envoy refuses (the stream is gone).
        """
        host.continue_stream(self.stream_type)

    def reset(self) -> None:
        """Abort the stream in this direction; raises HostError like :meth:`resume`."""
        host.close_stream(self.stream_type)


REQUEST = Message(
    MapType.HTTP_REQUEST_HEADERS, BufferType.HTTP_REQUEST_BODY, MapType.HTTP_REQUEST_TRAILERS, StreamType.HTTP_REQUEST
)
RESPONSE = Message(
    MapType.HTTP_RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY, MapType.HTTP_RESPONSE_TRAILERS,
    StreamType.HTTP_RESPONSE,
)
