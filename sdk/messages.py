"""Headers, trailers and bodies of the stream being processed.

These objects hold no data: every call goes to Envoy, which owns the
stream.  They act on the context Envoy is currently calling (or the one the
SDK made effective for a callout response), so one instance per class is
shared by all contexts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from meshext.sdk.abi import BufferType, MapType, StreamType
from meshext.sdk.host import NativeBody, NativeHeaderMap, host

TYPE_CHECKING = False

Pairs = Iterable[tuple[str, str]]


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
        map_type: int

        def __init__(self, map_type: MapType) -> None: ...

        def get(self, name: str, default: str | None = None) -> str | None:
            """The first value of ``name`` (``get_all`` has every one), or ``default``."""

        def __getitem__(self, name: str) -> str: ...

        def __contains__(self, name: object) -> bool: ...

        def add(self, name: str, value: str) -> None:
            """Append a header line (keeps existing values of ``name``)."""

        def set(self, name: str, value: str) -> None:
            """Replace all values of ``name`` with ``value`` (adds it if absent)."""

        def __setitem__(self, name: str, value: str) -> None: ...

        def remove(self, name: str) -> None:
            """Remove every value of ``name``; absent names are fine."""

        def __delitem__(self, name: str) -> None: ...

    def items(self) -> list[tuple[str, str]]:
        """All (name, value) pairs in order, repeated names included."""
        return host.get_headers(self.map_type)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, one per header line."""
        name = name.lower()
        return [value for key, value in self.items() if key == name]

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, _ in self.items()])

    def __len__(self) -> int:
        return len(self.items())

    def replace_all(self, pairs: Pairs) -> None:
        """Replace the whole map with ``pairs``."""
        host.set_headers(self.map_type, list(pairs))


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

        def __init__(self, buffer_type: BufferType) -> None: ...

        def size(self) -> int:
            """How many bytes the buffer holds."""

        def read(self, start: int = 0, size: int | None = None) -> bytes:
            """``size`` bytes from ``start`` (default: to the end)."""

        def replace(self, data: bytes | str) -> None:
            """Replace the whole buffer (Envoy fixes ``content-length`` when it can)."""

        def append(self, data: bytes | str) -> None:
            """Add ``data`` at the end."""

        def prepend(self, data: bytes | str) -> None:
            """Add ``data`` at the start."""

    def text(self, encoding: str = "utf-8") -> str:
        return self.read().decode(encoding)


class Message:
    """One direction of an HTTP stream: its headers, body, trailers."""

    __slots__ = ("headers", "body", "trailers", "stream_type")

    def __init__(self, headers: MapType, body: BufferType, trailers: MapType, stream_type: StreamType) -> None:
        self.headers = HeaderMap(headers)
        self.body = Body(body)
        self.trailers = HeaderMap(trailers)
        self.stream_type = int(stream_type)

    def resume(self) -> None:
        """Continue a direction paused by ``Action.PAUSE`` (e.g. after a callout)."""
        host.continue_stream(self.stream_type)

    def reset(self) -> None:
        """Abort the stream in this direction."""
        host.close_stream(self.stream_type)


REQUEST = Message(
    MapType.HTTP_REQUEST_HEADERS, BufferType.HTTP_REQUEST_BODY, MapType.HTTP_REQUEST_TRAILERS, StreamType.HTTP_REQUEST
)
RESPONSE = Message(
    MapType.HTTP_RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY, MapType.HTTP_RESPONSE_TRAILERS, StreamType.HTTP_RESPONSE
)
