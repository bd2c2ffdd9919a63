"""What a module did and what answers it gets: plain data the harness hands to tests.

Header maps (with Envoy's rules), log records, local replies, callouts and
their answers, metrics, shared queues, upstream clusters, and ``WasmTrap``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshext.errors import MeshextError
from meshext.runtime._abi import LogLevel, MetricType, Pairs

if TYPE_CHECKING:
    from meshext.runtime._vm import PluginVM


class WasmTrap(MeshextError):
    """The module trapped (crashed) inside a callback; carries the Wasm backtrace."""

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


class HeaderMap:
    """An ordered multi-map with Envoy's rules: names lower-cased, pseudo-headers first."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: list[tuple[str, str]] = []
        for key, value in pairs:
            self.add(key, value)

    def get(self, key: str) -> str | None:
        key = key.lower()
        for name, value in self.pairs:
            if name == key:
                return value
        return None

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def get_all(self, key: str) -> list[str]:
        key = key.lower()
        return [value for name, value in self.pairs if name == key]

    def add(self, key: str, value: str) -> None:
        key = key.lower()
        if key.startswith(":"):
            position = 0
            while position < len(self.pairs) and self.pairs[position][0].startswith(":"):
                position += 1
            self.pairs.insert(position, (key, value))
        else:
            self.pairs.append((key, value))

    def replace(self, key: str, value: str) -> None:
        # Envoy's setCopy removes every entry, then appends: the header moves to the end.
        self.remove(key)
        self.add(key, value)

    def remove(self, key: str) -> None:
        key = key.lower()
        self.pairs = [pair for pair in self.pairs if pair[0] != key]

    def set_all(self, pairs: Pairs) -> None:
        self.pairs = []
        for key, value in pairs:
            self.add(key, value)

    def as_dict(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for key, value in self.pairs:
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return merged

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __repr__(self) -> str:
        return f"HeaderMap({self.pairs!r})"


def as_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Pairs:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


# ---------------------------------------------------------------------------
# Records of what a module did


@dataclass
class LogRecord:
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
    """The answer to an HTTP callout (from a test handler or a real upstream)."""

    status: int = 200
    headers: Pairs | Mapping[str, str] = field(default_factory=list)
    body: bytes = b""
    trailers: Pairs | Mapping[str, str] = field(default_factory=list)


@dataclass
class GrpcResponse:
    """The answer to a gRPC call: messages then a status, like a real gRPC server."""

    status: int = 0
    messages: list[bytes] = field(default_factory=list)
    initial_metadata: Pairs | Mapping[str, str] = field(default_factory=list)
    trailing_metadata: Pairs | Mapping[str, str] = field(default_factory=list)
    status_message: str = ""


@dataclass
class HttpCallout:
    """One ``proxy_http_call`` the module made."""

    token: int
    cluster: str
    headers: Pairs
    body: bytes
    trailers: Pairs
    timeout_ms: int
    vm: PluginVM
    started_ns: int = 0
    deadline_ns: int = 0
    response: HttpResponse | None = None
    failed: bool = False

    def header(self, name: str) -> str | None:
        return HeaderMap(self.headers).get(name)

    def respond(self, status: int = 200, headers: Pairs | Mapping[str, str] = (), body: bytes = b"",
                trailers: Pairs | Mapping[str, str] = ()) -> None:
        """Answer a pending callout (when the handler returned None)."""
        self.vm._deliver_http_response(self, HttpResponse(status, as_pairs(headers), body, as_pairs(trailers)))
        self.vm.host.dispatch()

    def fail(self) -> None:
        """Make the callout fail (Envoy: reset, timeout, or no healthy upstream)."""
        self.vm._deliver_http_response(self, None)
        self.vm.host.dispatch()


@dataclass
class GrpcCallout:
    """One ``proxy_grpc_call`` or ``proxy_grpc_stream`` the module opened."""

    token: int
    cluster: str
    service: str
    method: str
    initial_metadata: Pairs
    messages: list[bytes]
    timeout_ms: int
    is_stream: bool
    vm: PluginVM
    closed_by_module: bool = False
    cancelled: bool = False
    finished: bool = False

    def reply(self, message: bytes) -> None:
        """Answer with a message: a unary call then succeeds (Envoy: receive, no close)."""
        if self.is_stream:
            self.vm._grpc_message(self, message)
        else:
            self.vm._grpc_unary_success(self, message)
        self.vm.host.dispatch()

    def close(self, status: int = 0, status_message: str = "", trailing_metadata: Pairs | Mapping[str, str] = ()) -> None:
        """End a stream, or fail a unary call with a gRPC status (Envoy: proxy_on_grpc_close)."""
        self.vm._grpc_finish(self, status, status_message, as_pairs(trailing_metadata))
        self.vm.host.dispatch()


@dataclass
class Metric:
    metric_id: int
    name: str
    type: MetricType
    value: int = 0
    samples: list[int] = field(default_factory=list)


@dataclass
class SharedQueue:
    token: int
    vm_id: str
    name: str
    owner: PluginVM
    items: deque = field(default_factory=deque)


HttpHandler = Callable[[HttpCallout], HttpResponse | None]
GrpcHandler = Callable[[GrpcCallout], GrpcResponse | None]


@dataclass
class Cluster:
    """An upstream a module may call: a Python handler or a real address on loopback."""

    name: str
    http_handler: HttpHandler | None = None
    grpc_handler: GrpcHandler | None = None
    address: tuple[str, int] | None = None
