"""What a module did and the answers it gets: plain data the test host hands to tests.

Errors (``WasmTrap``), the host's header maps with Envoy's rules, log
records, local replies, callouts and the answers tests give them, metrics,
registered shared queues and upstream clusters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshext.errors import MeshextError
from meshext.runtime._abi import Pairs
from meshext.sdk.abi import LogLevel, MetricType

if TYPE_CHECKING:
    from meshext.runtime._callouts import Callouts
    from meshext.runtime._vm import Vm

# Headers as a test gives them: a mapping, or (name, value) pairs when order or repeats matter.
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class WasmTrap(MeshextError):
    """The module trapped (crashed) inside a callback; carries the Wasm backtrace.

    ``callback`` is the export that was running, ``frames`` the Wasm
    backtrace (innermost first) and ``module_logs`` the module's last
    warnings and errors, where SDK-built filters log their Python traceback.
    """

    def __init__(self, message: str, *, callback: str, frames: list[str], module_logs: list[str]) -> None:
        self.callback = callback
        self.frames = frames
        self.module_logs = module_logs
        if frames:
            text = f"{message}\nWasm backtrace (innermost first):\n" + "\n".join(f"  {frame}" for frame in frames)
        else:
            text = f"{message}\nWasm backtrace: none (the module ended itself, e.g. an SDK abort)"
        if module_logs:
            text += "\nLast messages the module logged before the trap:\n" + "\n".join(
                f"  {line}" for line in module_logs
            )
        super().__init__(text, where=callback, fix="fix the filter code at the frames above")


class MemoryFault(Exception):
    """A pointer/size from the module points outside its memory."""


class ModuleExit(Exception):
    """The module called WASI proc_exit (AssemblyScript's abort does): a crash for Envoy."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------
# Header maps


class EnvoyHeaderMap:
    """The host's header map of a stream or callout: an ordered multi-map with Envoy's rules.

    Names are lower-cased, pseudo-headers (``:path``) stay in front, and a
    lookup gives the first value of a repeated header.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: Pairs = []
        for key, value in pairs:
            self.add(key, value)

    def get(self, key: str) -> str | None:
        """The first value of ``key`` (any case), or None."""
        key = key.lower()
        for name, value in self.pairs:
            if name == key:
                return value
        return None

    def add(self, key: str, value: str) -> None:
        """Append a value (Envoy's addCopy); pseudo-headers go after the other pseudo-headers."""
        key = key.lower()
        if key.startswith(":"):
            position = 0
            while position < len(self.pairs) and self.pairs[position][0].startswith(":"):
                position += 1
            self.pairs.insert(position, (key, value))
        else:
            self.pairs.append((key, value))

    def replace(self, key: str, value: str) -> None:
        """Set ``key`` to one value."""
        # Envoy's setCopy removes every entry, then appends: the header moves to the end.
        self.remove(key)
        self.add(key, value)

    def remove(self, key: str) -> None:
        """Drop every value of ``key``."""
        key = key.lower()
        self.pairs = [pair for pair in self.pairs if pair[0] != key]

    def set_all(self, pairs: Pairs) -> None:
        """Replace the whole map (proxy_set_header_map_pairs)."""
        self.pairs = []
        for key, value in pairs:
            self.add(key, value)

    def as_dict(self) -> dict[str, str]:
        """One entry per name, repeated values joined with commas (Envoy's ``request.headers`` attribute)."""
        merged: dict[str, str] = {}
        for key, value in self.pairs:
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return merged

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __repr__(self) -> str:
        return f"EnvoyHeaderMap({self.pairs!r})"


def as_pairs(headers: Headers | None) -> Pairs:
    """Headers a test gave (mapping or pairs) as a list of string pairs."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


# ---------------------------------------------------------------------------
# Records of what a module did


@dataclass
class LogRecord:
    """One line the module logged (proxy_log, or stdout/stderr), with the plugin and context it came from."""

    level: LogLevel
    message: str
    plugin_name: str
    root_id: str
    vm_id: str
    context_id: int

    def __str__(self) -> str:
        return f"[{self.level.name.lower()}] {self.message}"


@dataclass
class LocalResponse:
    """A reply the filter generated with ``proxy_send_local_response``."""

    status: int
    body: bytes
    headers: Pairs
    details: str
    grpc_status: int | None


@dataclass
class HttpResponse:
    """The answer a test (or a real upstream) gives an HTTP callout."""

    status: int = 200
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)


@dataclass
class GrpcReply:
    """The answer a test (or a real gRPC server) gives a gRPC callout: messages, then a status.

    A unary call that fails reads its message as Envoy's gRPC client gives
    it: ``status_message`` followed by ``{via_upstream}`` (without a
    message: ``via_upstream``).
    """

    status: int = 0
    messages: list[bytes] = field(default_factory=list)
    initial_metadata: Headers = field(default_factory=list)
    trailing_metadata: Headers = field(default_factory=list)
    status_message: str = ""


@dataclass
class HttpCallout:
    """One ``proxy_http_call`` the module made (``plugin.http_calls``).

    ``headers`` are what the cluster receives: the module's headers, then
    what Envoy's async client adds (``content-length`` for a body,
    ``x-envoy-internal: true``, ``x-envoy-expected-rq-timeout-ms`` when the
    call has a timeout).  ``response`` is the answer the module got: the
    upstream's, or Envoy's own (504 after the timeout, 503 when the
    upstream's address refuses the connection); None while pending or after
    ``fail()``.
    """

    token: int
    cluster: str
    headers: Pairs
    body: bytes
    trailers: Pairs
    timeout_ms: int
    _callouts: Callouts = field(repr=False, compare=False)
    started_ns: int = 0
    deadline_ns: int = 0
    response: HttpResponse | None = None
    failed: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case) the cluster receives, or None when it has none."""
        return EnvoyHeaderMap(self.headers).get(name)

    def respond(self, status: int = 200, headers: Headers = (), body: bytes = b"", trailers: Headers = ()) -> None:
        """Answer a pending callout (when the handler returned None).

        ``status``, ``headers``, ``body`` and ``trailers`` are the upstream's
        answer (headers and trailers a dict or a sequence of pairs); the
        module's callback runs now.
        """
        self._callouts.answer_http(self, HttpResponse(status, as_pairs(headers), body, as_pairs(trailers)))

    def fail(self) -> None:
        """The upstream breaks off its answer (Envoy: a reset; the module's callback gets no headers, no body).

        A timeout is ``host.advance()`` past ``timeout_ms`` (Envoy answers
        504); an upstream that refuses connections is a cluster ``address``
        nothing listens on (503).
        """
        self._callouts.answer_http(self, None)


@dataclass
class GrpcCallout:
    """One ``proxy_grpc_call`` or ``proxy_grpc_stream`` the module opened (``plugin.grpc_calls``)."""

    token: int
    cluster: str
    service: str
    method: str
    initial_metadata: Pairs
    messages: list[bytes]
    timeout_ms: int
    is_stream: bool
    _callouts: Callouts = field(repr=False, compare=False)
    authority: str = ""  # the :authority Envoy sends: the module's, else the cluster name
    deadline_ns: int = 0  # unary calls with a timeout: when Envoy closes the call
    closed_by_module: bool = False
    cancelled: bool = False
    finished: bool = False

    def reply(self, message: bytes) -> None:
        """Answer with a message: a unary call then succeeds (Envoy: receive, no close)."""
        self._callouts.answer_grpc(self, message)

    def close(self, status: int = 0, status_message: str = "", trailing_metadata: Headers = ()) -> None:
        """End a stream, or fail a unary call with a gRPC status (Envoy: proxy_on_grpc_close).

        ``trailing_metadata`` (a dict or pairs) is what the module reads as
        the call's trailers.

        The module reads a unary call's message as Envoy's gRPC client gives
        it: ``status_message`` followed by ``{via_upstream}`` (without a
        message: ``via_upstream``).
        """
        self._callouts.end_grpc(self, status, status_message, as_pairs(trailing_metadata))


@dataclass
class Metric:
    """A metric the modules defined (``host.metrics``, by id): counters and gauges keep ``value``,
    histograms their ``samples``."""

    metric_id: int
    name: str
    type: MetricType
    value: int = 0
    samples: list[int] = field(default_factory=list)


@dataclass
class RegisteredQueue:
    """A shared queue a module registered (``host.queues``, by token); ``owner`` is notified of new items."""

    token: int
    vm_id: str
    name: str
    owner: Vm
    items: deque[bytes] = field(default_factory=deque)


HttpHandler = Callable[[HttpCallout], HttpResponse | None]
GrpcHandler = Callable[[GrpcCallout], GrpcReply | None]


@dataclass
class Cluster:
    """An upstream a module may call: a Python handler or a real address on loopback.

    ``healthy`` False: the cluster has no healthy endpoint, and Envoy refuses
    calls to it as they start (``proxy_http_call`` and ``proxy_grpc_call``
    return INTERNAL_FAILURE; a gRPC call then also gets
    ``proxy_on_grpc_close`` with UNAVAILABLE, "no healthy upstream").
    """

    name: str
    http_handler: HttpHandler | None = None
    grpc_handler: GrpcHandler | None = None
    address: tuple[str, int] | None = None
    healthy: bool = True
