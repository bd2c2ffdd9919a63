"""A Proxy-Wasm ABI 0.2.1 host on wasmtime that behaves like Envoy 1.40.

Objects, outermost first:

- ``Host``: what one Envoy process shares between its VMs - the clock, shared
  data (with CAS), shared queues, metrics, the log, the upstream clusters
  callouts go to, and the actions deferred until the running callback returns.
- ``PluginVM``: one Wasm instance running one plugin (Envoy runs one per
  worker thread; load the same module twice with one ``vm_id`` to get two VMs
  that share data and queues).  It owns the root context and creates streams.
- ``HttpStream`` / ``TcpStream``: one request or connection, driven by the
  test; they call the ``proxy_on_*`` callbacks in Envoy's order and keep what
  the filter did (forwarded headers and bodies, pauses, local replies).

Envoy-specific behaviour copied on purpose (checked against Envoy 1.40 by
tests/runtime/test_conformance.py): context ids (root 1, streams from 2),
context create -> vm start -> configure, stream end as log -> done -> delete,
body buffering while paused, HTTP callouts owned by the root context,
``continue_stream`` and ``send_local_response`` taking effect after the
callback returns, header names lower-cased, first value returned for repeated
headers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import http.client
import json
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from meshext.errors import MeshextError
from meshext.runtime import abi, wasi
from meshext.runtime.fastcall import Crossing, Export, MemoryView, define_host_function
from meshext.runtime.abi import Action, BufferType, LogLevel, MapType, MetricType, Pairs, Status, StreamType
from meshext.runtime.properties import CONNECTION_DEFAULTS, encode_property, request_attributes, split_path

MASK32 = 0xFFFFFFFF
ABI_VERSIONS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")


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


class _MemoryFault(Exception):
    """A pointer/size from the module points outside its memory."""


class _ModuleExit(Exception):
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


def _as_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Pairs:
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
        self.vm._deliver_http_response(self, HttpResponse(status, _as_pairs(headers), body, _as_pairs(trailers)))
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
        self.vm._grpc_message(self, message)
        self.vm.host.dispatch()

    def close(self, status: int = 0, status_message: str = "", trailing_metadata: Pairs | Mapping[str, str] = ()) -> None:
        self.vm._grpc_finish(self, status, status_message, _as_pairs(trailing_metadata))
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


# ---------------------------------------------------------------------------
# Engine and compiled-module cache

_ENGINE: wasmtime.Engine | None = None
_MODULES: dict[str, wasmtime.Module] = {}


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime engine (serialised modules must match its config)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine(wasmtime.Config())
    return _ENGINE


def module_cache_dir() -> Path:
    base = os.environ.get("MESHEXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "meshext"
    )
    return Path(base) / "wasmtime"


def compile_module(code: bytes, *, where: str = "module") -> wasmtime.Module:
    """Compile once per process and once per machine: the native code is cached on disk.

    The cache key covers the module bytes and the wasmtime version, so an
    upgrade or an edited module never picks up stale native code.
    """
    digest = hashlib.sha256(code).hexdigest()
    cached = _MODULES.get(digest)
    if cached is not None:
        return cached
    path = module_cache_dir() / f"{digest}-{wasmtime_version()}.cwasm"
    module: wasmtime.Module | None = None
    if path.exists():
        try:
            module = wasmtime.Module.deserialize_file(engine(), str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
    if module is None:
        try:
            module = wasmtime.Module(engine(), code)
        except wasmtime.WasmtimeError as error:
            raise MeshextError(f"not a valid Wasm module: {error}", where=where,
                               fix="give a core Wasm module (.wasm), e.g. from `meshext build`") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(module.serialize())
        partial.replace(path)
    _MODULES[digest] = module
    return module


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


# ---------------------------------------------------------------------------
# Host


class Host:
    """What one Envoy process shares between its Wasm VMs, plus the test's controls."""

    def __init__(self, *, log_level: LogLevel = LogLevel.TRACE, start_time_ns: int | None = None) -> None:
        self.log_level = log_level
        self.realtime_ns = start_time_ns if start_time_ns is not None else time.time_ns()
        self.monotonic_ns = 1_000_000_000
        self.logs: list[LogRecord] = []
        self.metrics: dict[int, Metric] = {}
        self._metric_ids: dict[str, int] = {}
        self.shared_data: dict[tuple[str, str], tuple[bytes, int]] = {}
        self._next_cas = 1
        self.queues: dict[int, SharedQueue] = {}
        self._queue_tokens: dict[tuple[str, str], int] = {}
        self.clusters: dict[str, Cluster] = {}
        self.foreign_functions: dict[str, Callable[[bytes], bytes]] = {}
        self.vms: list[PluginVM] = []
        self.auto_dispatch = True
        self._deferred: deque[Callable[[], None]] = deque()
        self._posted: deque[Callable[[], None]] = deque()
        self._operations = 0
        self._dispatching = False
        self._next_token = 1

    # -- loading -------------------------------------------------------------

    def load(
        self,
        module: str | os.PathLike | bytes,
        *,
        config: str | bytes | dict | list = b"",
        vm_config: str | bytes = b"",
        name: str = "",
        root_id: str = "",
        vm_id: str = "",
        env: Mapping[str, str] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> PluginVM:
        """Instantiate a module and start its plugin the way Envoy does.

        ``config`` is the plugin configuration (Envoy's ``configuration``
        field), ``vm_config`` the VM configuration; ``name``, ``root_id`` and
        ``vm_id`` are the plugin's Envoy names (VMs with the same ``vm_id``
        share data and queues).
        """
        if isinstance(module, (str, os.PathLike)):
            path = Path(module)
            if not path.is_file():
                raise MeshextError(f"no such module file: {path}", where="module",
                                   fix="build the filter first (meshext build) or pass the right path")
            code, where = path.read_bytes(), str(path)
        else:
            code, where = bytes(module), "module"
        if isinstance(config, (dict, list)):
            config = json.dumps(config)
        vm = PluginVM(
            self, compile_module(code, where=where), where=where,
            config=config.encode() if isinstance(config, str) else bytes(config),
            vm_config=vm_config.encode() if isinstance(vm_config, str) else bytes(vm_config),
            name=name, root_id=root_id, vm_id=vm_id, env=dict(env or {}), properties=dict(properties or {}),
        )
        self.vms.append(vm)
        vm.start()
        return vm

    # -- upstreams -----------------------------------------------------------

    def add_cluster(self, name: str, handler: HttpHandler | GrpcHandler | None = None, *,
                    grpc: GrpcHandler | None = None, address: tuple[str, int] | None = None) -> Cluster:
        """Declare an upstream cluster: callouts to an undeclared cluster fail as in Envoy."""
        cluster = Cluster(name, http_handler=handler, grpc_handler=grpc, address=address)  # type: ignore[arg-type]
        self.clusters[name] = cluster
        return cluster

    # -- clock ---------------------------------------------------------------

    def advance(self, milliseconds: float) -> None:
        """Move the clock forward, firing due ticks and callout timeouts in time order."""
        target = self.monotonic_ns + int(milliseconds * 1_000_000)
        while True:
            due = self._next_timer(target)
            if due is None:
                break
            when, fire = due
            self._set_monotonic(when)
            fire()
            self.dispatch()
        self._set_monotonic(target)

    def _set_monotonic(self, value: int) -> None:
        self.realtime_ns += value - self.monotonic_ns
        self.monotonic_ns = value

    def _next_timer(self, limit: int) -> tuple[int, Callable[[], None]] | None:
        best: tuple[int, Callable[[], None]] | None = None
        for vm in self.vms:
            for when, fire in vm._timers():
                if when <= limit and (best is None or when < best[0]):
                    best = (when, fire)
        return best

    # -- deferred actions ----------------------------------------------------
    # Two kinds, as in Envoy: actions that take effect as soon as the callback returns
    # (continue, local reply, close, proxy_done), and events that arrive later from the
    # event loop (callout answers, queue notifications) - after the whole step the test
    # is driving (e.g. a stream's teardown) has finished.

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` right after the running callback returns."""
        self._deferred.append(action)

    def post(self, event: Callable[[], None]) -> None:
        """Deliver ``event`` on a later turn of the event loop."""
        self._posted.append(event)

    def dispatch(self) -> None:
        """Run deferred actions, then (outside a driving step) posted events, until quiet."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while True:
                while self._deferred:
                    self._deferred.popleft()()
                if not self._posted or self._operations:
                    break
                self._posted.popleft()()
        finally:
            self._dispatching = False

    def step(self) -> _Step:
        """Context manager around one driving step (a send_* call, a stream's end)."""
        return _Step(self)

    # -- shared state --------------------------------------------------------

    def next_token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    def metric(self, name: str) -> int | None:
        """Current value of a metric the modules defined (None if never defined)."""
        metric_id = self._metric_ids.get(name)
        return None if metric_id is None else self.metrics[metric_id].value

    def metric_values(self) -> dict[str, int]:
        return {m.name: m.value for m in self.metrics.values() if m.type != MetricType.HISTOGRAM}

    def log_lines(self, min_level: LogLevel = LogLevel.TRACE) -> list[str]:
        return [record.message for record in self.logs if record.level >= min_level]


class _Step:
    def __init__(self, host: Host) -> None:
        self.host = host

    def __enter__(self) -> None:
        self.host._operations += 1

    def __exit__(self, *exc_info: object) -> None:
        self.host._operations -= 1
        if self.host._operations == 0 and self.host.auto_dispatch and exc_info[0] is None:
            self.host.dispatch()


# ---------------------------------------------------------------------------
# One VM running one plugin


class Context:
    def __init__(self, vm: PluginVM, context_id: int, parent: Context | None) -> None:
        self.vm = vm
        self.id = context_id
        self.parent = parent
        self.done = False

    def header_map(self, map_type: int) -> HeaderMap | None:
        return None

    def buffer(self, buffer_type: int) -> bytearray | None:
        return None

    def property(self, path: tuple[str, ...]) -> Any:
        return None


class RootContext(Context):
    def __init__(self, vm: PluginVM, context_id: int) -> None:
        super().__init__(vm, context_id, None)
        self.tick_period_ns = 0
        self.next_tick_ns = 0


class PluginVM:
    """One Wasm instance with its plugin's root context, started like Envoy starts it."""

    def __init__(self, host: Host, module: wasmtime.Module, *, where: str, config: bytes, vm_config: bytes,
                 name: str, root_id: str, vm_id: str, env: dict[str, str], properties: dict[str, Any]) -> None:
        self.host = host
        self.module = module
        self.where = where
        self.config = config
        self.vm_config = vm_config
        self.name = name
        self.root_id = root_id
        self.vm_id = vm_id
        self.env = env
        self.properties = properties
        self.contexts: dict[int, Context] = {}
        self.http_calls: list[HttpCallout] = []
        self.grpc_calls: list[GrpcCallout] = []
        self._pending_http: dict[int, HttpCallout] = {}
        self._grpc: dict[int, GrpcCallout] = {}
        self.failed = False
        self.configured = False
        self._next_context_id = 1
        self._active: Context | None = None
        self._transient_buffers: dict[int, bytearray] = {}
        self._transient_maps: dict[int, HeaderMap] = {}
        self._status: tuple[int, bytes] = (0, b"")
        self._depth = 0
        self._pending_done: set[int] = set()
        self._http_token, self._grpc_call_token, self._grpc_stream_token = 0, 1, 2
        self.store = wasmtime.Store(engine())
        self._crossing = Crossing()
        self._keep_alive: list[Any] = []  # native callbacks must outlive the instance
        self._abi = self._check_abi()
        linker = wasmtime.Linker(engine())
        self._link(linker)
        try:
            self.instance = linker.instantiate(self.store, module)
        except wasmtime.Trap as trap:
            raise self._trap_error(trap, "instantiation (start function)") from None
        except wasmtime.WasmtimeError as error:
            raise MeshextError(f"Envoy would refuse this module: {error}", where=where) from None
        exports = self.instance.exports(self.store)
        self._exports: dict[str, Export] = {}
        memory = None
        for export_name, item in exports.items():
            if isinstance(item, wasmtime.Func):
                self._exports[export_name] = Export(self.store, item, self._crossing)
            elif isinstance(item, wasmtime.Memory) and memory is None:
                memory = item
        if memory is None:
            raise MeshextError("module exports no memory", where=where,
                               fix="Proxy-Wasm modules must export their linear memory as `memory`")
        self.memory: wasmtime.Memory = memory
        self._memory = MemoryView(self.store, memory)
        self._malloc = self._exports.get("malloc") or self._exports.get("proxy_on_memory_allocate")
        if self._malloc is None:
            raise MeshextError("module exports neither proxy_on_memory_allocate nor malloc", where=where,
                               fix="export proxy_on_memory_allocate (every Proxy-Wasm SDK does)")
        self.root = RootContext(self, self._alloc_context_id())
        self.contexts[self.root.id] = self.root

    # -- start-up -------------------------------------------------------------

    def _check_abi(self) -> str:
        names = {export.name for export in self.module.exports}
        for version in ABI_VERSIONS:
            if version in names:
                return version
        if "proxy_abi_version_0_1_0" in names:
            raise MeshextError("module targets Proxy-Wasm ABI 0.1.0, which this host does not run",
                               where=self.where, fix="rebuild with an SDK targeting ABI 0.2.x")
        raise MeshextError(
            "module does not export a Proxy-Wasm ABI version marker (proxy_abi_version_0_2_1)",
            where=self.where, fix="build it with a Proxy-Wasm SDK; Envoy refuses modules without the marker",
        )

    def start(self) -> None:
        """_initialize/_start, then proxy_on_context_create, proxy_on_vm_start, proxy_on_configure."""
        if "_initialize" in self._exports:
            self._call("_initialize")
            if "main" in self._exports:
                self._call("main", 0, 0)
        elif "_start" in self._exports:
            self._call("_start")
        self._call("proxy_on_context_create", self.root.id, 0)
        self._transient_buffers[BufferType.VM_CONFIGURATION] = bytearray(self.vm_config)
        try:
            started = self._call("proxy_on_vm_start", self.root.id, len(self.vm_config))
        finally:
            self._transient_buffers.pop(BufferType.VM_CONFIGURATION, None)
        if started == 0:
            self.failed = True
            raise MeshextError("proxy_on_vm_start returned false: the module refused its VM configuration",
                               where=self.where, fix=f"check the VM configuration: {self.vm_config!r}")
        configured = self._call("proxy_on_configure", self.root.id, len(self.config))
        if configured == 0:
            self.failed = True
            said = "".join(f"\n  {line}" for line in self._recent_problem_logs())
            raise MeshextError(
                "proxy_on_configure returned false: the filter refused its plugin configuration" + said,
                where=self.where, fix=f"check the plugin configuration: {self.config[:200]!r}")
        self.configured = True

    def __enter__(self) -> PluginVM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.failed:
            self.shutdown()

    def shutdown(self) -> None:
        """Envoy's drain: proxy_on_done (then proxy_on_delete) on the root context."""
        if self.root.done or self.failed:
            return
        if self._callback("proxy_on_done", self.root, self.root.id) in (None, 1):
            self._delete(self.root)
        else:
            self._pending_done.add(self.root.id)  # the module calls proxy_done when it is ready

    def _alloc_context_id(self) -> int:
        context_id = self._next_context_id
        self._next_context_id += 1
        return context_id

    # -- streams --------------------------------------------------------------

    def http_stream(self, properties: Mapping[str, Any] | None = None) -> HttpStream:
        """A new HTTP stream context (proxy_on_context_create(stream, root))."""
        stream = HttpStream(self, self._alloc_context_id(), dict(properties or {}))
        self.contexts[stream.id] = stream
        self._callback("proxy_on_context_create", stream, stream.id, self.root.id)
        return stream

    def tcp_stream(self, properties: Mapping[str, Any] | None = None) -> TcpStream:
        stream = TcpStream(self, self._alloc_context_id(), dict(properties or {}))
        self.contexts[stream.id] = stream
        self._callback("proxy_on_context_create", stream, stream.id, self.root.id)
        return stream

    def exchange(self, method: str = "GET", path: str = "/", *, authority: str = "example.com",
                 headers: Pairs | Mapping[str, str] = (), body: bytes = b"",
                 response_status: int = 200, response_headers: Pairs | Mapping[str, str] = (),
                 response_body: bytes = b"", properties: Mapping[str, Any] | None = None) -> HttpStream:
        """One complete request/response round trip through the filter.

        The response is sent only if the request reached the upstream (not
        answered locally, not left paused); the stream then ends (log, done,
        delete) like Envoy ends it.
        """
        stream = self.http_stream(properties)
        request_headers = [(":authority", authority), (":path", path), (":method", method), (":scheme", "http")]
        stream.send_request_headers(request_headers + _as_pairs(headers), end_stream=not body)
        if body:
            stream.send_request_body(body, end_stream=True)
        if stream.request.complete and stream.local_response is None:
            all_response_headers = [(":status", str(response_status))] + _as_pairs(response_headers)
            stream.send_response_headers(all_response_headers, end_stream=not response_body)
            if response_body:
                stream.send_response_body(response_body, end_stream=True)
        return stream

    @property
    def logs(self) -> list[LogRecord]:
        """What this plugin logged (proxy_log, stdout, stderr), oldest first."""
        return [record for record in self.host.logs
                if record.vm_id == self.vm_id and record.plugin_name == self.name and record.root_id == self.root_id]

    def log_messages(self, min_level: LogLevel = LogLevel.TRACE) -> list[str]:
        return [record.message for record in self.logs if record.level >= min_level]

    # -- calling into the module ---------------------------------------------

    def _call(self, name: str, *args: int) -> int | None:
        func = self._exports.get(name)
        if func is None:
            return None
        if self.failed:
            raise MeshextError(f"the VM crashed earlier; {name} not called", where=self.where,
                               fix="see the first WasmTrap; Envoy would also stop using this VM")
        self._depth += 1
        try:
            return func(*args)
        except wasmtime.Trap as trap:
            self.failed = True
            raise self._trap_error(trap, name) from None
        except _ModuleExit as exit_request:
            self.failed = True
            raise WasmTrap(f"Wasm module exited with proc_exit({exit_request.code}) in {name}", callback=name,
                           frames=[], module_logs=self._recent_problem_logs()) from None
        except wasmtime.WasmtimeError as error:
            self.failed = True
            raise MeshextError(f"{name} failed: {error}", where=self.where) from None
        finally:
            self._depth -= 1

    def _callback(self, name: str, context: Context, *args: int) -> int | None:
        """Call a proxy_on_* callback with ``context`` active, then run deferred actions."""
        previous = self._active
        self._active = context
        try:
            result = self._call(name, *args)
        finally:
            self._active = previous
        if self._depth == 0 and self.host.auto_dispatch:
            self.host.dispatch()
        return result

    def _trap_error(self, trap: wasmtime.Trap, callback: str) -> WasmTrap:
        frames = []
        for frame in trap.frames or []:
            function = frame.func_name or f"func[{frame.func_index}]"
            frames.append(f"{frame.module_name or 'module'}!{function} @ 0x{frame.module_offset:x}")
        module_logs = self._recent_problem_logs()
        # wasmtime puts the cause last ("Caused by: wasm trap: integer divide by zero").
        causes = [line.strip() for line in trap.message.split("Caused by:", 1)[-1].splitlines() if line.strip()]
        message = causes[-1] if causes else trap.message.splitlines()[0]
        return WasmTrap(f"Wasm trap in {callback}: {message}", callback=callback, frames=frames,
                        module_logs=module_logs)

    def _recent_problem_logs(self) -> list[str]:
        """The module's last warnings and errors: SDKs log the cause (a Python traceback) there."""
        return [str(record) for record in self.logs[-20:] if record.level >= LogLevel.WARN][-10:]

    # -- memory helpers --------------------------------------------------------

    def read(self, pointer: int, size: int) -> bytes:
        pointer &= MASK32
        size &= MASK32
        if pointer + size > self._memory.size():
            raise _MemoryFault
        return ctypes.string_at(self._memory.base() + pointer, size) if size else b""

    def write(self, pointer: int, data: bytes) -> None:
        pointer &= MASK32
        if pointer + len(data) > self._memory.size():
            raise _MemoryFault
        if data:
            ctypes.memmove(self._memory.base() + pointer, data, len(data))

    def write_u32(self, pointer: int, value: int) -> None:
        self.write(pointer, struct.pack("<I", value & MASK32))

    def write_u64(self, pointer: int, value: int) -> None:
        self.write(pointer, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def copy_out(self, data: bytes, pointer_pointer: int, size_pointer: int) -> None:
        """Copy ``data`` into memory the module allocates, then store its address and size."""
        if data:
            address = self._malloc(len(data)) & MASK32
            if address == 0:
                raise _MemoryFault
            self.write(address, data)
        else:
            address = 0
        self.write_u32(pointer_pointer, address)
        self.write_u32(size_pointer, len(data))

    # -- linking ---------------------------------------------------------------

    def _link(self, linker: wasmtime.Linker) -> None:
        problems = []
        for item in self.module.imports:
            implementation, signature, reason = self._implementation(item.module, item.name or "")
            if implementation is None:
                problems.append(f"{item.module}.{item.name}: {reason}")
                continue
            param_spec, has_result = signature
            params, results = _types(param_spec), _types("i" if has_result else "")
            wanted = item.type
            if not isinstance(wanted, wasmtime.FuncType):
                problems.append(f"{item.module}.{item.name}: imports a {type(wanted).__name__}, Envoy provides only functions")
                continue
            if [str(t) for t in wanted.params] != [str(t) for t in params] or \
                    [str(t) for t in wanted.results] != [str(t) for t in results]:
                problems.append(
                    f"{item.module}.{item.name}: import type mismatch (module wants "
                    f"{_signature(wanted.params, wanted.results)}, Envoy provides {_signature(params, results)})")
                continue
            define_host_function(linker, item.module, item.name or "", param_spec, has_result, implementation,
                                 self._crossing, self._keep_alive)
        if problems:
            raise MeshextError(
                "Envoy 1.40 would refuse this module; it imports what Envoy does not provide:\n  "
                + "\n  ".join(problems),
                where=self.where,
                fix="remove these imports (define them inside the module, or keep to the WASI subset Envoy links)",
            )

    def _implementation(self, module: str, name: str) -> tuple[Callable | None, tuple[str, bool], str]:
        """(Python function, (parameter kinds, returns i32?), why not provided)."""
        if module == "env":
            spec = PROXY_FUNCTIONS.get(name)
            if spec is None:
                return None, ("", False), "not a Proxy-Wasm host function Envoy provides"
            if name == "proxy_get_log_level" and self._abi != "proxy_abi_version_0_2_1":
                return None, ("", False), "only provided to modules declaring ABI 0.2.1"
            params, result = spec
            return getattr(self, "_h_" + name), (params, bool(result)), ""
        if module in wasi.WASI_MODULES:
            if name in wasi.REFUSED_BY_ENVOY:
                return None, ("", False), "Envoy declares it with a wrong signature and refuses the module (import type mismatch)"
            spec_w = wasi.WASI_FUNCTIONS.get(name)
            if spec_w is None:
                return None, ("", False), "not a WASI function Envoy provides"
            params, has_result, errno = spec_w
            implementation = getattr(self, "_wasi_" + name, None)
            if implementation is None:
                implementation = _wasi_stub(name, errno)
            return implementation, (params, has_result), ""
        return None, ("", False), f"Envoy provides no import module named {module!r}"

    # -- contexts as the module sees them ---------------------------------------

    @property
    def active(self) -> Context:
        return self._active or self.root

    def _map(self, map_type: int) -> HeaderMap | None:
        transient = self._transient_maps.get(map_type)
        if transient is not None:
            return transient
        return self.active.header_map(map_type)

    def _buffer(self, buffer_type: int) -> bytearray | None:
        transient = self._transient_buffers.get(buffer_type)
        if transient is not None:
            return transient
        if buffer_type == BufferType.PLUGIN_CONFIGURATION:
            return bytearray(self.config)
        return self.active.buffer(buffer_type)

    def log(self, level: int, message: str) -> None:
        self.host.logs.append(LogRecord(LogLevel(level), message, self.name, self.root_id, self.vm_id,
                                        self.active.id))

    # -- env.proxy_* host functions ---------------------------------------------
    # Each returns a proxy_status_t.  Memory faults become INVALID_MEMORY_ACCESS.

    def _h_proxy_log(self, level: int, pointer: int, size: int) -> int:
        if level not in LogLevel._value2member_map_:
            return Status.BAD_ARGUMENT
        try:
            message = self.read(pointer, size).decode("utf-8", "replace")
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        if level >= self.host.log_level:
            self.log(level, message)
        return Status.OK

    def _h_proxy_get_log_level(self, return_level: int) -> int:
        return self._guard(lambda: self.write_u32(return_level, int(self.host.log_level)))

    def _h_proxy_get_current_time_nanoseconds(self, return_time: int) -> int:
        return self._guard(lambda: self.write_u64(return_time, self.host.realtime_ns))

    def _h_proxy_set_tick_period_milliseconds(self, period: int) -> int:
        root = self.root
        root.tick_period_ns = (period & MASK32) * 1_000_000
        root.next_tick_ns = self.host.monotonic_ns + root.tick_period_ns
        return Status.OK

    def _h_proxy_get_status(self, return_code: int, return_message: int, return_size: int) -> int:
        code, message = self._status

        def write() -> None:
            self.write_u32(return_code, code)
            self.copy_out(message, return_message, return_size)

        return self._guard(write)

    def _h_proxy_done(self) -> int:
        context = self.active
        if context.id not in self._pending_done:
            return Status.NOT_FOUND
        self._pending_done.discard(context.id)
        self.host.defer(lambda: self._delete(context))
        return Status.OK

    def _delete(self, context: Context) -> None:
        context.done = True
        self._callback("proxy_on_delete", context, context.id)
        if context is not self.root:
            self.contexts.pop(context.id, None)

    def _h_proxy_set_effective_context(self, context_id: int) -> int:
        context = self.contexts.get(context_id & MASK32)
        if context is None:
            return Status.BAD_ARGUMENT
        self._active = context
        return Status.OK

    def _h_proxy_call_foreign_function(self, name_ptr: int, name_size: int, args_ptr: int, args_size: int,
                                       return_results: int, return_size: int) -> int:
        try:
            name = self.read(name_ptr, name_size).decode()
            arguments = self.read(args_ptr, args_size)
            function = self.host.foreign_functions.get(name)
            if function is None:
                return Status.NOT_FOUND
            self.copy_out(function(arguments), return_results, return_size)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    # buffers

    def _h_proxy_get_buffer_status(self, buffer_type: int, return_size: int, return_flags: int) -> int:
        if buffer_type not in BufferType._value2member_map_:
            return Status.BAD_ARGUMENT
        buffer = self._buffer(buffer_type)
        if buffer is None:
            return Status.NOT_FOUND

        def write() -> None:
            self.write_u32(return_size, len(buffer))
            self.write_u32(return_flags, 0)

        return self._guard(write)

    def _h_proxy_get_buffer_bytes(self, buffer_type: int, start: int, length: int, return_data: int,
                                  return_size: int) -> int:
        if buffer_type not in BufferType._value2member_map_:
            return Status.BAD_ARGUMENT
        buffer = self._buffer(buffer_type)
        if buffer is None:
            return Status.NOT_FOUND
        start &= MASK32
        length &= MASK32
        if start > len(buffer):
            length = 0
        length = min(length, len(buffer) - start)
        return self._guard(lambda: self.copy_out(bytes(buffer[start : start + length]), return_data, return_size))

    def _h_proxy_set_buffer_bytes(self, buffer_type: int, start: int, length: int, data_ptr: int,
                                  data_size: int) -> int:
        if buffer_type not in BufferType._value2member_map_:
            return Status.BAD_ARGUMENT
        buffer = self._buffer(buffer_type)
        if buffer is None:
            return Status.NOT_FOUND
        if buffer_type not in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY,
                               BufferType.DOWNSTREAM_DATA, BufferType.UPSTREAM_DATA):
            return Status.BAD_ARGUMENT  # Envoy: the other buffers are read-only
        try:
            data = self.read(data_ptr, data_size)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        start &= MASK32
        length &= MASK32
        # Envoy supports exactly: prepend (0, 0), replace all (0, >= size), append (start >= size).
        if start == 0 and length == 0:
            buffer[0:0] = data
        elif start == 0 and length >= len(buffer):
            buffer[:] = data
        elif start >= len(buffer):
            buffer.extend(data)
        else:
            return Status.BAD_ARGUMENT
        return Status.OK

    # header maps

    def _h_proxy_get_header_map_size(self, map_type: int, return_size: int) -> int:
        if map_type not in MapType._value2member_map_:
            return Status.BAD_ARGUMENT
        headers = self._map(map_type)
        size = len(abi.serialize_pairs(headers.pairs)) if headers else 0
        return self._guard(lambda: self.write_u32(return_size, size))

    def _h_proxy_get_header_map_pairs(self, map_type: int, return_data: int, return_size: int) -> int:
        if map_type not in MapType._value2member_map_:
            return Status.BAD_ARGUMENT
        headers = self._map(map_type)
        data = abi.serialize_pairs(headers.pairs) if headers else b""
        return self._guard(lambda: self.copy_out(data, return_data, return_size))

    def _h_proxy_set_header_map_pairs(self, map_type: int, data_ptr: int, data_size: int) -> int:
        headers = self._writable_map(map_type)
        if not isinstance(headers, HeaderMap):
            return headers
        try:
            headers.set_all(abi.deserialize_pairs(self.read(data_ptr, data_size)))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    def _h_proxy_get_header_map_value(self, map_type: int, key_ptr: int, key_size: int, return_data: int,
                                      return_size: int) -> int:
        if map_type not in MapType._value2member_map_:
            return Status.BAD_ARGUMENT
        try:
            key = self.read(key_ptr, key_size).decode("utf-8", "surrogateescape")
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        headers = self._map(map_type)
        value = headers.get(key) if headers is not None else None
        if value is None:
            return Status.NOT_FOUND
        return self._guard(lambda: self.copy_out(value.encode("utf-8", "surrogateescape"), return_data, return_size))

    def _key_value(self, key_ptr: int, key_size: int, value_ptr: int, value_size: int) -> tuple[str, str]:
        return (self.read(key_ptr, key_size).decode("utf-8", "surrogateescape"),
                self.read(value_ptr, value_size).decode("utf-8", "surrogateescape"))

    def _writable_map(self, map_type: int) -> HeaderMap | int:
        if map_type not in MapType._value2member_map_:
            return Status.BAD_ARGUMENT
        if map_type in self._transient_maps or map_type >= MapType.GRPC_CALL_INITIAL_METADATA:
            return Status.BAD_ARGUMENT  # callout answers are read-only
        headers = self.active.header_map(map_type)
        if headers is None:
            return Status.BAD_ARGUMENT
        return headers

    def _h_proxy_add_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                      value_size: int) -> int:
        headers = self._writable_map(map_type)
        if not isinstance(headers, HeaderMap):
            return headers
        try:
            headers.add(*self._key_value(key_ptr, key_size, value_ptr, value_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    def _h_proxy_replace_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                          value_size: int) -> int:
        headers = self._writable_map(map_type)
        if not isinstance(headers, HeaderMap):
            return headers
        try:
            headers.replace(*self._key_value(key_ptr, key_size, value_ptr, value_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    def _h_proxy_remove_header_map_value(self, map_type: int, key_ptr: int, key_size: int) -> int:
        headers = self._writable_map(map_type)
        if not isinstance(headers, HeaderMap):
            return headers
        try:
            headers.remove(self.read(key_ptr, key_size).decode("utf-8", "surrogateescape"))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    # stream control

    def _h_proxy_continue_stream(self, stream_type: int) -> int:
        if stream_type not in StreamType._value2member_map_:
            return Status.BAD_ARGUMENT
        context = self.active
        if not isinstance(context, (HttpStream, TcpStream)):
            return Status.NOT_FOUND
        self.host.defer(lambda: context._continue(StreamType(stream_type)))
        return Status.OK

    def _h_proxy_close_stream(self, stream_type: int) -> int:
        if stream_type not in StreamType._value2member_map_:
            return Status.BAD_ARGUMENT
        context = self.active
        if not isinstance(context, (HttpStream, TcpStream)):
            return Status.NOT_FOUND
        self.host.defer(lambda: context._close(StreamType(stream_type)))
        return Status.OK

    def _h_proxy_send_local_response(self, status_code: int, details_ptr: int, details_size: int, body_ptr: int,
                                     body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
        context = self.active
        try:
            details = self.read(details_ptr, details_size).decode("utf-8", "replace")
            body = self.read(body_ptr, body_size)
            headers = abi.deserialize_pairs(self.read(headers_ptr, headers_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        if not isinstance(context, HttpStream):
            return Status.BAD_ARGUMENT
        grpc = grpc_status if 0 <= grpc_status <= 16 else None  # SDKs pass -1 for "no gRPC status"
        # Envoy replaces whitespace in the details with underscores.
        reply = LocalResponse(status_code & MASK32, body, headers, "_".join(details.split(" ")), grpc)
        context._local_reply_pending = True
        self.host.defer(lambda: context._send_local_reply(reply))
        return Status.OK

    # properties

    def _h_proxy_get_property(self, path_ptr: int, path_size: int, return_data: int, return_size: int) -> int:
        try:
            path = split_path(self.read(path_ptr, path_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        value = self._property(path)
        if value is None:
            return Status.NOT_FOUND
        try:
            data = encode_property(value)
        except TypeError:
            return Status.SERIALIZATION_FAILURE
        return self._guard(lambda: self.copy_out(data, return_data, return_size))

    def _h_proxy_set_property(self, path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
        try:
            path = split_path(self.read(path_ptr, path_size))
            value = self.read(value_ptr, value_size)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        context = self.active
        state = getattr(context, "filter_state", None)
        if state is None:
            state = self.properties
        # Envoy keeps the whole path as one filter-state key; reading resolves only the
        # first segment there, so only one-segment paths read back.
        state["\0".join(path)] = value
        return Status.OK

    def _property(self, path: tuple[str, ...]) -> Any:
        dotted = ".".join(path)
        context = self.active
        stream_state = getattr(context, "filter_state", {})
        if len(path) == 1 and path[0] in stream_state:
            return stream_state[path[0]]
        for source in (getattr(context, "properties", {}), self.properties):
            if dotted in source:
                return source[dotted]
        plugin = {"plugin_name": self.name, "plugin_root_id": self.root_id, "plugin_vm_id": self.vm_id}
        if dotted in plugin:
            return plugin[dotted]
        return context.property(path)

    # shared data and queues

    def _h_proxy_get_shared_data(self, key_ptr: int, key_size: int, return_data: int, return_size: int,
                                 return_cas: int) -> int:
        try:
            key = self.read(key_ptr, key_size).decode("utf-8", "surrogateescape")
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        entry = self.host.shared_data.get((self.vm_id, key))
        if entry is None:
            return Status.NOT_FOUND
        value, cas = entry

        def write() -> None:
            self.copy_out(value, return_data, return_size)
            self.write_u32(return_cas, cas)

        return self._guard(write)

    def _h_proxy_set_shared_data(self, key_ptr: int, key_size: int, value_ptr: int, value_size: int,
                                 cas: int) -> int:
        try:
            key = self.read(key_ptr, key_size).decode("utf-8", "surrogateescape")
            value = self.read(value_ptr, value_size)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        host = self.host
        entry = host.shared_data.get((self.vm_id, key))
        cas &= MASK32
        if cas and entry is not None and entry[1] != cas:
            return Status.CAS_MISMATCH
        new_cas = host._next_cas
        host._next_cas = host._next_cas + 1 if host._next_cas < MASK32 else 1
        host.shared_data[(self.vm_id, key)] = (value, new_cas)
        return Status.OK

    def _h_proxy_register_shared_queue(self, name_ptr: int, name_size: int, return_token: int) -> int:
        try:
            name = self.read(name_ptr, name_size).decode("utf-8", "surrogateescape")
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        host = self.host
        token = host._queue_tokens.get((self.vm_id, name))
        if token is None:
            token = host.next_token()
            host._queue_tokens[(self.vm_id, name)] = token
            host.queues[token] = SharedQueue(token, self.vm_id, name, self)
        else:
            host.queues[token].owner = self
        return self._guard(lambda: self.write_u32(return_token, token))

    def _h_proxy_resolve_shared_queue(self, vm_id_ptr: int, vm_id_size: int, name_ptr: int, name_size: int,
                                      return_token: int) -> int:
        try:
            vm_id = self.read(vm_id_ptr, vm_id_size).decode("utf-8", "surrogateescape")
            name = self.read(name_ptr, name_size).decode("utf-8", "surrogateescape")
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        token = self.host._queue_tokens.get((vm_id, name))
        if token is None:
            return Status.NOT_FOUND
        return self._guard(lambda: self.write_u32(return_token, token))

    def _h_proxy_enqueue_shared_queue(self, token: int, data_ptr: int, data_size: int) -> int:
        queue = self.host.queues.get(token & MASK32)
        if queue is None:
            return Status.NOT_FOUND
        try:
            queue.items.append(self.read(data_ptr, data_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        owner = queue.owner
        self.host.post(lambda: owner._callback("proxy_on_queue_ready", owner.root, owner.root.id, queue.token))
        return Status.OK

    def _h_proxy_dequeue_shared_queue(self, token: int, return_data: int, return_size: int) -> int:
        queue = self.host.queues.get(token & MASK32)
        if queue is None:
            return Status.NOT_FOUND
        if not queue.items:
            return Status.EMPTY
        item = queue.items.popleft()
        return self._guard(lambda: self.copy_out(item, return_data, return_size))

    # metrics

    def _h_proxy_define_metric(self, metric_type: int, name_ptr: int, name_size: int, return_id: int) -> int:
        if metric_type not in MetricType._value2member_map_:
            return Status.BAD_ARGUMENT
        try:
            name = self.read(name_ptr, name_size).decode()
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        host = self.host
        metric_id = host._metric_ids.get(name)
        if metric_id is None:
            metric_id = len(host.metrics) + 1
            host._metric_ids[name] = metric_id
            host.metrics[metric_id] = Metric(metric_id, name, MetricType(metric_type))
        return self._guard(lambda: self.write_u32(return_id, metric_id))

    def _h_proxy_increment_metric(self, metric_id: int, delta: int) -> int:
        metric = self.host.metrics.get(metric_id & MASK32)
        if metric is None:
            return Status.NOT_FOUND
        if metric.type == MetricType.HISTOGRAM or (metric.type == MetricType.COUNTER and delta < 0):
            return Status.BAD_ARGUMENT
        metric.value += delta
        return Status.OK

    def _h_proxy_record_metric(self, metric_id: int, value: int) -> int:
        metric = self.host.metrics.get(metric_id & MASK32)
        if metric is None:
            return Status.NOT_FOUND
        value &= 0xFFFFFFFFFFFFFFFF
        if metric.type == MetricType.HISTOGRAM:
            metric.samples.append(value)
        elif metric.type == MetricType.COUNTER:
            metric.value = max(metric.value, value)  # a counter never goes down
        else:
            metric.value = value
        return Status.OK

    def _h_proxy_get_metric(self, metric_id: int, return_value: int) -> int:
        metric = self.host.metrics.get(metric_id & MASK32)
        if metric is None:
            return Status.NOT_FOUND
        if metric.type == MetricType.HISTOGRAM:
            return Status.BAD_ARGUMENT
        return self._guard(lambda: self.write_u64(return_value, metric.value))

    # HTTP callouts

    def _h_proxy_http_call(self, cluster_ptr: int, cluster_size: int, headers_ptr: int, headers_size: int,
                           body_ptr: int, body_size: int, trailers_ptr: int, trailers_size: int, timeout: int,
                           return_token: int) -> int:
        try:
            cluster_name = self.read(cluster_ptr, cluster_size).decode("utf-8", "replace")
            headers = abi.deserialize_pairs(self.read(headers_ptr, headers_size))
            body = self.read(body_ptr, body_size)
            trailers = abi.deserialize_pairs(self.read(trailers_ptr, trailers_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        cluster = self.host.clusters.get(cluster_name)
        names = {key.lower() for key, _ in headers}
        if cluster is None or not {":method", ":path", ":authority"} <= names:
            return Status.BAD_ARGUMENT
        self._http_token += 4  # Envoy numbers HTTP callouts 4, 8, 12, ... per VM
        token = self._http_token
        call = HttpCallout(token, cluster_name, headers, body, trailers, timeout & MASK32, self,
                           started_ns=self.host.monotonic_ns,
                           deadline_ns=self.host.monotonic_ns + (timeout & MASK32) * 1_000_000)
        try:
            self.write_u32(return_token, token)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        self.http_calls.append(call)
        self._pending_http[token] = call
        self.host.post(lambda: self._answer_http(cluster, call))
        return Status.OK

    def _answer_http(self, cluster: Cluster, call: HttpCallout) -> None:
        if call.token not in self._pending_http:
            return
        if cluster.address is not None:
            self._deliver_http_response(call, _real_http_call(cluster.address, call))
        elif cluster.http_handler is not None:
            response = cluster.http_handler(call)
            if response is not None:
                self._deliver_http_response(call, response)

    def _deliver_http_response(self, call: HttpCallout, response: HttpResponse | None) -> None:
        if self._pending_http.pop(call.token, None) is None:
            raise MeshextError(f"HTTP callout {call.token} was already answered")
        call.response = response
        call.failed = response is None
        if response is None:
            headers, body, trailers = HeaderMap(), b"", HeaderMap()
        else:
            # Envoy's async client runs a router, which adds its timing header to every answer.
            elapsed_ms = max(0, (self.host.monotonic_ns - call.started_ns) // 1_000_000)
            headers = HeaderMap([(":status", str(response.status))] + _as_pairs(response.headers)
                                + [("x-envoy-upstream-service-time", str(elapsed_ms))])
            body, trailers = bytes(response.body), HeaderMap(_as_pairs(response.trailers))
        self._transient_maps[MapType.HTTP_CALL_RESPONSE_HEADERS] = headers
        self._transient_maps[MapType.HTTP_CALL_RESPONSE_TRAILERS] = trailers
        self._transient_buffers[BufferType.HTTP_CALL_RESPONSE_BODY] = bytearray(body)
        try:
            self._callback("proxy_on_http_call_response", self.root, self.root.id, call.token, len(headers),
                           len(body), len(trailers))
        finally:
            self._transient_maps.pop(MapType.HTTP_CALL_RESPONSE_HEADERS, None)
            self._transient_maps.pop(MapType.HTTP_CALL_RESPONSE_TRAILERS, None)
            self._transient_buffers.pop(BufferType.HTTP_CALL_RESPONSE_BODY, None)

    # gRPC callouts

    def _open_grpc(self, is_stream: bool, cluster_ptr: int, cluster_size: int, service_ptr: int,
                   service_size: int, method_ptr: int, method_size: int, metadata_ptr: int, metadata_size: int,
                   message: bytes | None, timeout: int, return_token: int) -> int:
        try:
            cluster_name = self.read(cluster_ptr, cluster_size).decode("utf-8", "replace")
            service = self.read(service_ptr, service_size).decode("utf-8", "replace")
            method = self.read(method_ptr, method_size).decode("utf-8", "replace")
            metadata = abi.deserialize_pairs(self.read(metadata_ptr, metadata_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        cluster_name = _grpc_cluster_name(cluster_name)
        cluster = self.host.clusters.get(cluster_name)
        if cluster is None:
            return Status.PARSE_FAILURE
        # Envoy keeps gRPC calls and streams apart from HTTP callouts by token residue mod 4.
        if is_stream:
            self._grpc_stream_token += 4
            token = self._grpc_stream_token
        else:
            self._grpc_call_token += 4
            token = self._grpc_call_token
        call = GrpcCallout(token, cluster_name, service, method, metadata, [] if message is None else [message],
                           timeout & MASK32, is_stream, self)
        try:
            self.write_u32(return_token, token)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        self.grpc_calls.append(call)
        self._grpc[token] = call
        if not is_stream:
            self.host.post(lambda: self._answer_grpc(cluster, call))
        return Status.OK

    def _answer_grpc(self, cluster: Cluster, call: GrpcCallout) -> None:
        if call.finished or call.cancelled:
            return
        if cluster.address is not None:
            response = _real_grpc_call(cluster.address, call)
        elif cluster.grpc_handler is not None:
            response = cluster.grpc_handler(call)
        else:
            response = None
        if response is None:
            return
        if response.initial_metadata:
            self._grpc_metadata(call, MapType.GRPC_CALL_INITIAL_METADATA, _as_pairs(response.initial_metadata))
        for message in response.messages:
            self._grpc_message(call, message)
        self._grpc_finish(call, response.status, response.status_message, _as_pairs(response.trailing_metadata))

    def _grpc_metadata(self, call: GrpcCallout, map_type: MapType, pairs: Pairs) -> None:
        callback = ("proxy_on_grpc_receive_initial_metadata" if map_type == MapType.GRPC_CALL_INITIAL_METADATA
                    else "proxy_on_grpc_receive_trailing_metadata")
        self._transient_maps[map_type] = HeaderMap(pairs)
        try:
            self._callback(callback, self.root, self.root.id, call.token, len(pairs))
        finally:
            self._transient_maps.pop(map_type, None)

    def _grpc_message(self, call: GrpcCallout, message: bytes) -> None:
        self._transient_buffers[BufferType.GRPC_CALL_MESSAGE] = bytearray(message)
        try:
            self._callback("proxy_on_grpc_receive", self.root, self.root.id, call.token, len(message))
        finally:
            self._transient_buffers.pop(BufferType.GRPC_CALL_MESSAGE, None)

    def _grpc_finish(self, call: GrpcCallout, status: int, status_message: str, trailing: Pairs) -> None:
        if call.finished:
            return
        call.finished = True
        self._grpc.pop(call.token, None)
        if trailing:
            self._grpc_metadata(call, MapType.GRPC_CALL_TRAILING_METADATA, trailing)
        self._status = (status, status_message.encode())
        self._callback("proxy_on_grpc_close", self.root, self.root.id, call.token, status)

    def _h_proxy_grpc_call(self, cluster_ptr: int, cluster_size: int, service_ptr: int, service_size: int,
                           method_ptr: int, method_size: int, metadata_ptr: int, metadata_size: int,
                           message_ptr: int, message_size: int, timeout: int, return_token: int) -> int:
        try:
            message = self.read(message_ptr, message_size)
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return self._open_grpc(False, cluster_ptr, cluster_size, service_ptr, service_size, method_ptr,
                               method_size, metadata_ptr, metadata_size, message, timeout, return_token)

    def _h_proxy_grpc_stream(self, cluster_ptr: int, cluster_size: int, service_ptr: int, service_size: int,
                             method_ptr: int, method_size: int, metadata_ptr: int, metadata_size: int,
                             return_token: int) -> int:
        return self._open_grpc(True, cluster_ptr, cluster_size, service_ptr, service_size, method_ptr,
                               method_size, metadata_ptr, metadata_size, None, 0, return_token)

    def _h_proxy_grpc_send(self, token: int, message_ptr: int, message_size: int, end_stream: int) -> int:
        call = self._grpc.get(token & MASK32)
        if call is None:
            return Status.NOT_FOUND
        if not call.is_stream:
            return Status.BAD_ARGUMENT
        try:
            call.messages.append(self.read(message_ptr, message_size))
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        if end_stream:
            call.closed_by_module = True
        handler = self.host.clusters[call.cluster].grpc_handler
        if handler is not None:
            # The handler sees the stream as it was when this message was sent.
            as_sent = dataclasses.replace(call, messages=list(call.messages))
            self.host.post(lambda: self._stream_handler(handler, call, as_sent))
        return Status.OK

    def _stream_handler(self, handler: GrpcHandler, call: GrpcCallout, as_sent: GrpcCallout) -> None:
        if call.finished or call.cancelled:
            return
        response = handler(as_sent)
        if response is None:
            return
        if response.initial_metadata:
            self._grpc_metadata(call, MapType.GRPC_CALL_INITIAL_METADATA, _as_pairs(response.initial_metadata))
        for message in response.messages:
            self._grpc_message(call, message)
        if as_sent.closed_by_module or response.status != 0:
            self._grpc_finish(call, response.status, response.status_message, _as_pairs(response.trailing_metadata))

    def _h_proxy_grpc_cancel(self, token: int) -> int:
        call = self._grpc.pop(token & MASK32, None)
        if call is None:
            return Status.NOT_FOUND
        call.cancelled = True
        return Status.OK

    def _h_proxy_grpc_close(self, token: int) -> int:
        call = self._grpc.get(token & MASK32)
        if call is None:
            return Status.NOT_FOUND
        call.closed_by_module = True
        if not call.is_stream:
            self._grpc.pop(call.token, None)
            call.cancelled = True
        return Status.OK

    # env extras Envoy links for Emscripten-built modules

    def _h_pthread_equal(self, left: int, right: int) -> int:
        return int(left == right)

    def _h_emscripten_notify_memory_growth(self, memory_index: int) -> None:
        return None

    def _guard(self, action: Callable[[], None]) -> int:
        try:
            action()
        except _MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    # -- WASI functions with behaviour (the rest are stubs, see wasi.py) -------------

    def _wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, return_written: int) -> int:
        if fd not in (1, 2):
            return abi.WASI_BADF
        try:
            chunks = []
            for index in range(iovs_len & MASK32):
                buf, size = struct.unpack("<II", self.read(iovs + 8 * index, 8))
                chunks.append(self.read(buf, size))
            data = b"".join(chunks)
            if data:
                text = data.decode("utf-8", "replace")
                self.log(LogLevel.INFO if fd == 1 else LogLevel.ERROR, text[:-1] if text.endswith("\n") else text)
            self.write_u32(return_written, len(data))
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_fd_fdstat_get(self, fd: int, return_stat: int) -> int:
        if fd not in (1, 2):
            return abi.WASI_BADF
        try:
            self.write(return_stat, struct.pack("<QQQ", 0, 64, 0))  # rights: FD_WRITE only
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _environment(self) -> list[bytes]:
        return [f"{key}={value}".encode() + b"\0" for key, value in self.env.items()]

    def _wasi_environ_sizes_get(self, return_count: int, return_size: int) -> int:
        entries = self._environment()
        try:
            self.write_u32(return_count, len(entries))
            self.write_u32(return_size, sum(len(entry) for entry in entries))
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_environ_get(self, return_array: int, return_buffer: int) -> int:
        try:
            for index, entry in enumerate(self._environment()):
                self.write_u32(return_array + 4 * index, return_buffer)
                self.write(return_buffer, entry)
                return_buffer += len(entry)
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_args_sizes_get(self, return_argc: int, return_size: int) -> int:
        try:
            self.write_u32(return_argc, 0)
            self.write_u32(return_size, 0)
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_clock_time_get(self, clock_id: int, precision: int, return_time: int) -> int:
        if clock_id == 0:
            now = self.host.realtime_ns
        elif clock_id == 1:
            now = self.host.monotonic_ns
        else:
            return abi.WASI_NOTSUP
        try:
            self.write_u64(return_time, now)
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_clock_res_get(self, clock_id: int, return_resolution: int) -> int:
        if clock_id not in (0, 1):
            return abi.WASI_NOTSUP
        try:
            self.write_u64(return_resolution, 1)
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_random_get(self, pointer: int, size: int) -> int:
        size &= MASK32
        if size > 64 * 1024:
            return abi.WASI_INVAL
        try:
            self.write(pointer, os.urandom(size))
        except _MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_proc_exit(self, code: int) -> None:
        raise _ModuleExit(code)

    # -- timers ----------------------------------------------------------------------

    def _timers(self) -> list[tuple[int, Callable[[], None]]]:
        timers: list[tuple[int, Callable[[], None]]] = []
        root = self.root
        if root.tick_period_ns and not self.failed and not root.done:
            def tick() -> None:
                root.next_tick_ns += root.tick_period_ns
                self._callback("proxy_on_tick", root, root.id)
            timers.append((root.next_tick_ns, tick))
        for call in list(self._pending_http.values()):
            if call.timeout_ms:
                timers.append((call.deadline_ns, lambda call=call: self._deliver_http_response(call, None)))
        return timers


# ---------------------------------------------------------------------------
# Streams


class Direction:
    """One direction of an HTTP stream: what arrived, what the filter let through."""

    def __init__(self) -> None:
        self.headers: HeaderMap | None = None
        self.trailers: HeaderMap | None = None
        self.buffer = bytearray()
        self.end_stream = False
        self.headers_paused = False
        self.body_paused = False
        self.trailers_paused = False
        self.forwarded_headers: Pairs | None = None
        self.forwarded_body = bytearray()
        self.forwarded_trailers: Pairs | None = None
        self.complete = False
        # Envoy forgets a header map once its callback answered CONTINUE (it stays readable
        # while paused, and again in proxy_on_log).
        self.headers_visible = False
        self.trailers_visible = False
        self.actions: list[tuple[str, Action]] = []

    @property
    def paused(self) -> bool:
        return self.headers_paused or self.body_paused or self.trailers_paused

    def header(self, name: str) -> str | None:
        return HeaderMap(self.forwarded_headers or []).get(name)


class HttpStream(Context):
    """One HTTP request/response through the filter, driven step by step by the test.

    ``request`` / ``response`` record what the filter let through
    (``forwarded_headers``, ``forwarded_body``, ``forwarded_trailers``,
    ``complete``) and whether it is paused; ``local_response`` holds a reply
    the filter generated.  The stream ends itself (log, done, delete) once
    the response is complete, like Envoy's.
    """

    def __init__(self, vm: PluginVM, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id, vm.root)
        self.properties = properties
        self.filter_state: dict[str, Any] = {}
        self.request = Direction()
        self.response = Direction()
        self.local_response: LocalResponse | None = None
        self._local_reply_pending = False
        self._in_log = False
        self.reset = False
        self.ended = False

    @property
    def request_headers(self) -> HeaderMap | None:
        """The request headers as the filter left them (what the upstream gets once forwarded)."""
        return self.request.headers

    @property
    def response_headers(self) -> HeaderMap | None:
        return self.response.headers

    # what the module sees

    def header_map(self, map_type: int) -> HeaderMap | None:
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_REQUEST_TRAILERS):
            direction = self.request
        elif map_type in (MapType.HTTP_RESPONSE_HEADERS, MapType.HTTP_RESPONSE_TRAILERS):
            direction = self.response
        else:
            return None
        if map_type in (MapType.HTTP_REQUEST_HEADERS, MapType.HTTP_RESPONSE_HEADERS):
            return direction.headers if (direction.headers_visible or self._in_log) else None
        return direction.trailers if (direction.trailers_visible or self._in_log) else None

    def buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.HTTP_REQUEST_BODY and self.request.headers is not None:
            return self.request.buffer
        if buffer_type == BufferType.HTTP_RESPONSE_BODY and self.response.headers is not None:
            return self.response.buffer
        return None

    def property(self, path: tuple[str, ...]) -> Any:
        if not path:
            return None
        connection = CONNECTION_DEFAULTS.get(".".join(path))
        if connection is not None:
            return connection
        if path[0] == "request" and len(path) >= 2:
            if path[1] == "protocol":
                return "HTTP/1.1"
            request_headers = self.header_map(MapType.HTTP_REQUEST_HEADERS)
            if path[1] == "headers" and len(path) == 3:
                return request_headers.get(path[2]) if request_headers else None
            getter = request_attributes(request_headers).get(path[1])
            return getter() if getter else None
        if path[0] == "response" and len(path) >= 2:
            headers = self.response.headers
            if path[1] == "code":
                status = headers.get(":status") if headers else None
                return int(status) if status else None
            headers = self.header_map(MapType.HTTP_RESPONSE_HEADERS)
            if path[1] == "headers":
                if len(path) == 3:
                    return headers.get(path[2]) if headers else None
                return headers.as_dict() if headers else None
            if path[1] == "code_details" and self.local_response is not None:
                return self.local_response.details
        return None

    # the test drives these

    def send_request_headers(self, headers: Pairs | Mapping[str, str], end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._headers(self.request, "proxy_on_request_headers", headers, end_stream)

    def send_request_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._body(self.request, "proxy_on_request_body", chunk, end_stream)

    def send_request_trailers(self, trailers: Pairs | Mapping[str, str]) -> Action | None:
        with self.vm.host.step():
            return self._trailers(self.request, "proxy_on_request_trailers", trailers)

    def send_response_headers(self, headers: Pairs | Mapping[str, str], end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._headers(self.response, "proxy_on_response_headers", headers, end_stream)

    def send_response_body(self, chunk: bytes, end_stream: bool = False) -> Action | None:
        with self.vm.host.step():
            return self._body(self.response, "proxy_on_response_body", chunk, end_stream)

    def send_response_trailers(self, trailers: Pairs | Mapping[str, str]) -> Action | None:
        with self.vm.host.step():
            return self._trailers(self.response, "proxy_on_response_trailers", trailers)

    def end(self) -> None:
        """Finish the stream now (downstream reset or test done): log, done, delete."""
        with self.vm.host.step():
            self._finish()

    # the machinery

    def _stopped(self, direction: Direction) -> bool:
        return self.ended or (direction is self.request and (self.local_response is not None or self._local_reply_pending))

    def _run(self, direction: Direction, callback: str, *args: int) -> Action:
        raw = self.vm._callback(callback, self, self.id, *args)
        action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        direction.actions.append((callback, action))
        return action

    def _headers(self, direction: Direction, callback: str, headers: Pairs | Mapping[str, str],
                 end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        direction.headers = HeaderMap(_as_pairs(headers))
        direction.headers_visible = True
        direction.end_stream = end_stream
        direction.headers_paused = True  # until the callback's answer says otherwise
        raw = self._call_now(direction, callback, len(direction.headers), int(end_stream))
        return raw

    def _call_now(self, direction: Direction, callback: str, *args: int) -> Action:
        """Call a stream callback; apply its action before deferred actions (continue) run."""
        host = self.vm.host
        dispatching, host._dispatching = host._dispatching, True  # hold deferred actions
        try:
            action = self._run(direction, callback, *args)
            if callback.endswith("_headers"):
                direction.headers_paused = action == Action.PAUSE
                direction.headers_visible = direction.headers_paused
                if not direction.headers_paused and not self._stopped(direction) and not self._local_reply_pending:
                    self._forward_headers(direction)
            elif callback.endswith("_body"):
                direction.body_paused = action == Action.PAUSE
                if not direction.body_paused and not self._local_reply_pending:
                    self._forward_body(direction)
            else:
                direction.trailers_paused = action == Action.PAUSE
                direction.trailers_visible = direction.trailers_paused
                if not direction.trailers_paused and not self._local_reply_pending:
                    self._forward_body(direction)
                    self._forward_trailers(direction)
        finally:
            host._dispatching = dispatching
        if host.auto_dispatch:
            host.dispatch()
        return action

    def _body(self, direction: Direction, callback: str, chunk: bytes, end_stream: bool) -> Action | None:
        if self._stopped(direction):
            return None
        if direction.headers is None:
            raise MeshextError("body sent before headers", where="test", fix="send headers first")
        direction.buffer.extend(chunk)
        direction.end_stream = end_stream
        if direction.headers_paused:
            return None  # Envoy holds body data while headers are stopped (StopAllIteration)
        return self._call_now(direction, callback, len(direction.buffer), int(end_stream))

    def _trailers(self, direction: Direction, callback: str, trailers: Pairs | Mapping[str, str]) -> Action | None:
        if self._stopped(direction):
            return None
        direction.trailers = HeaderMap(_as_pairs(trailers))
        direction.trailers_visible = True
        direction.end_stream = True
        if direction.headers_paused:
            return None
        return self._call_now(direction, callback, len(direction.trailers))

    def _forward_headers(self, direction: Direction) -> None:
        direction.forwarded_headers = list(direction.headers.pairs) if direction.headers else []
        if direction.end_stream and not direction.buffer and direction.trailers is None:
            self._direction_complete(direction)

    def _forward_body(self, direction: Direction) -> None:
        direction.forwarded_body.extend(direction.buffer)
        direction.buffer.clear()
        if direction.end_stream and direction.trailers is None:
            self._direction_complete(direction)

    def _forward_trailers(self, direction: Direction) -> None:
        direction.forwarded_trailers = list(direction.trailers.pairs) if direction.trailers else []
        self._direction_complete(direction)

    def _direction_complete(self, direction: Direction) -> None:
        direction.complete = True
        if direction is self.response:
            self._finish()

    def _continue(self, stream_type: StreamType) -> None:
        direction = self.request if stream_type == StreamType.HTTP_REQUEST else self.response
        if self.ended or (direction is self.request and self.local_response is not None):
            return
        prefix = "proxy_on_request_" if direction is self.request else "proxy_on_response_"
        if direction.headers_paused:
            direction.headers_paused = False
            self._forward_headers(direction)
            # Data that arrived while stopped goes to this filter first (Envoy's CanStartFromCurrent).
            if direction.buffer:
                self._call_now(direction, prefix + "body", len(direction.buffer),
                               int(direction.end_stream and direction.trailers is None))
            if direction.trailers is not None and not direction.paused and not direction.complete:
                self._call_now(direction, prefix + "trailers", len(direction.trailers))
        elif direction.body_paused:
            direction.body_paused = False
            self._forward_body(direction)
            if direction.trailers is not None:
                self._call_now(direction, prefix + "trailers", len(direction.trailers))
        elif direction.trailers_paused:
            direction.trailers_paused = False
            self._forward_body(direction)
            self._forward_trailers(direction)

    def _close(self, stream_type: StreamType) -> None:
        self.reset = True
        self._finish()

    def _send_local_reply(self, reply: LocalResponse) -> None:
        self._local_reply_pending = False
        if self.ended or self.response.forwarded_headers is not None:
            return  # Envoy: too late once response headers went downstream
        self.local_response = reply
        headers = [(":status", str(reply.status))] + list(reply.headers)
        if reply.body:
            headers += [("content-length", str(len(reply.body))), ("content-type", "text/plain")]
        if self.response.headers is not None:
            # Sent while the upstream's response was in the filter: Envoy answers directly,
            # without running the reply through this filter again.
            self.response = Direction()
            self.response.headers = HeaderMap(headers)
            self.response.forwarded_headers = list(self.response.headers.pairs)
            self.response.forwarded_body.extend(reply.body)
            self._direction_complete(self.response)
            return
        # From the request path: Envoy runs the reply through the encoder filters (this one too).
        self.response = Direction()
        self._headers(self.response, "proxy_on_response_headers", headers, end_stream=not reply.body)
        if reply.body and not self.ended:
            self._body(self.response, "proxy_on_response_body", reply.body, end_stream=True)

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        vm = self.vm
        self._in_log = True  # Envoy hands the final header maps to the access-log phase
        try:
            vm._callback("proxy_on_log", self, self.id)
        finally:
            self._in_log = False
        if vm._callback("proxy_on_done", self, self.id) in (None, 1):
            vm._delete(self)
        else:
            vm._pending_done.add(self.id)


class TcpStream(Context):
    """One TCP connection through a network filter (proxy_on_new_connection ... close)."""

    def __init__(self, vm: PluginVM, context_id: int, properties: dict[str, Any]) -> None:
        super().__init__(vm, context_id, vm.root)
        self.properties = properties
        self.filter_state: dict[str, Any] = {}
        self.downstream = bytearray()
        self.upstream = bytearray()
        self.to_upstream = bytearray()
        self.to_downstream = bytearray()
        self.downstream_paused = False
        self.upstream_paused = False
        self.closed = False
        self.new_connection_action = self.vm._callback("proxy_on_new_connection", self, self.id)

    def property(self, path: tuple[str, ...]) -> Any:
        return CONNECTION_DEFAULTS.get(".".join(path))

    def buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == BufferType.DOWNSTREAM_DATA:
            return self.downstream
        if buffer_type == BufferType.UPSTREAM_DATA:
            return self.upstream
        return None

    def send_downstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        self.downstream.extend(data)
        action = Action(self.vm._callback("proxy_on_downstream_data", self, self.id, len(self.downstream),
                                          int(end_stream)) or 0)
        self.downstream_paused = action == Action.PAUSE
        if not self.downstream_paused:
            self.to_upstream.extend(self.downstream)
            self.downstream.clear()
        return action

    def send_upstream_data(self, data: bytes, end_stream: bool = False) -> Action:
        self.upstream.extend(data)
        action = Action(self.vm._callback("proxy_on_upstream_data", self, self.id, len(self.upstream),
                                          int(end_stream)) or 0)
        self.upstream_paused = action == Action.PAUSE
        if not self.upstream_paused:
            self.to_downstream.extend(self.upstream)
            self.upstream.clear()
        return action

    def _continue(self, stream_type: StreamType) -> None:
        if stream_type == StreamType.DOWNSTREAM and self.downstream_paused:
            self.downstream_paused = False
            self.to_upstream.extend(self.downstream)
            self.downstream.clear()
        elif stream_type == StreamType.UPSTREAM and self.upstream_paused:
            self.upstream_paused = False
            self.to_downstream.extend(self.upstream)
            self.upstream.clear()

    def _close(self, stream_type: StreamType) -> None:
        self.close()

    def close(self, peer: abi.PeerType = abi.PeerType.REMOTE) -> None:
        """Both sides close: connection-close callbacks, then done, log, delete (Envoy's TCP order)."""
        if self.closed:
            return
        self.closed = True
        vm = self.vm
        vm._callback("proxy_on_downstream_connection_close", self, self.id, int(peer))
        vm._callback("proxy_on_upstream_connection_close", self, self.id, int(peer))
        done = vm._callback("proxy_on_done", self, self.id)
        vm._callback("proxy_on_log", self, self.id)
        if done in (None, 1):
            vm._delete(self)
        else:
            vm._pending_done.add(self.id)


# ---------------------------------------------------------------------------
# Real upstreams for callouts


def _real_http_call(address: tuple[str, int], call: HttpCallout) -> HttpResponse | None:
    headers = HeaderMap(call.headers)
    connection = http.client.HTTPConnection(address[0], address[1], timeout=(call.timeout_ms or 30000) / 1000)
    try:
        connection.putrequest(headers.get(":method") or "GET", headers.get(":path") or "/",
                              skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", headers.get(":authority") or "")
        for key, value in call.headers:
            if not key.startswith(":"):
                connection.putheader(key, value)
        # What Envoy's async client adds on the way out.
        connection.putheader("x-envoy-internal", "true")
        if call.timeout_ms:
            connection.putheader("x-envoy-expected-rq-timeout-ms", str(call.timeout_ms))
        if call.body:
            connection.putheader("content-length", str(len(call.body)))
        connection.endheaders(call.body or None)
        reply = connection.getresponse()
        body = reply.read()
        return HttpResponse(reply.status, [(k.lower(), v) for k, v in reply.getheaders()], body)
    except OSError:
        return None
    finally:
        connection.close()


def _real_grpc_call(address: tuple[str, int], call: GrpcCallout) -> GrpcResponse:
    import grpc

    with grpc.insecure_channel(f"{address[0]}:{address[1]}") as channel:
        method = channel.unary_unary(f"/{call.service}/{call.method}", request_serializer=None,
                                     response_deserializer=None)
        try:
            answer, state = method.with_call(call.messages[0] if call.messages else b"",
                                             timeout=(call.timeout_ms or 30000) / 1000,
                                             metadata=[(k, v) for k, v in call.initial_metadata])
            return GrpcResponse(0, [answer], list(state.initial_metadata() or []),
                                list(state.trailing_metadata() or []))
        except grpc.RpcError as error:
            return GrpcResponse(error.code().value[0], [], [], list(error.trailing_metadata() or []),
                                error.details() or "")


def _grpc_cluster_name(raw: str) -> str:
    """Envoy accepts a cluster name or a serialised GrpcService proto; take the cluster name."""
    if raw and raw[0] == "\n":  # field 1 (envoy_grpc), length-delimited
        data = raw.encode("latin-1", "replace")
        inner_length = data[1]
        inner = data[2 : 2 + inner_length]
        if inner and inner[0] == 0x0A:
            return inner[2 : 2 + inner[1]].decode()
    return raw


# ---------------------------------------------------------------------------
# Function tables

PROXY_FUNCTIONS: dict[str, tuple[str, str]] = {
    "proxy_log": ("iii", "i"),
    "proxy_get_log_level": ("i", "i"),
    "proxy_get_status": ("iii", "i"),
    "proxy_set_property": ("iiii", "i"),
    "proxy_get_property": ("iiii", "i"),
    "proxy_send_local_response": ("iiiiiiii", "i"),
    "proxy_get_shared_data": ("iiiii", "i"),
    "proxy_set_shared_data": ("iiiii", "i"),
    "proxy_register_shared_queue": ("iii", "i"),
    "proxy_resolve_shared_queue": ("iiiii", "i"),
    "proxy_dequeue_shared_queue": ("iii", "i"),
    "proxy_enqueue_shared_queue": ("iii", "i"),
    "proxy_get_header_map_value": ("iiiii", "i"),
    "proxy_add_header_map_value": ("iiiii", "i"),
    "proxy_replace_header_map_value": ("iiiii", "i"),
    "proxy_remove_header_map_value": ("iii", "i"),
    "proxy_get_header_map_pairs": ("iii", "i"),
    "proxy_set_header_map_pairs": ("iii", "i"),
    "proxy_get_header_map_size": ("ii", "i"),
    "proxy_get_buffer_status": ("iii", "i"),
    "proxy_get_buffer_bytes": ("iiiii", "i"),
    "proxy_set_buffer_bytes": ("iiiii", "i"),
    "proxy_http_call": ("iiiiiiiiii", "i"),
    "proxy_grpc_call": ("iiiiiiiiiiii", "i"),
    "proxy_grpc_stream": ("iiiiiiiii", "i"),
    "proxy_grpc_close": ("i", "i"),
    "proxy_grpc_cancel": ("i", "i"),
    "proxy_grpc_send": ("iiii", "i"),
    "proxy_set_tick_period_milliseconds": ("i", "i"),
    "proxy_get_current_time_nanoseconds": ("i", "i"),
    "proxy_define_metric": ("iiii", "i"),
    "proxy_increment_metric": ("iI", "i"),
    "proxy_record_metric": ("iI", "i"),
    "proxy_get_metric": ("ii", "i"),
    "proxy_set_effective_context": ("i", "i"),
    "proxy_done": ("", "i"),
    "proxy_call_foreign_function": ("iiiiii", "i"),
    "proxy_continue_stream": ("i", "i"),
    "proxy_close_stream": ("i", "i"),
    "pthread_equal": ("ii", "i"),
    "emscripten_notify_memory_growth": ("i", ""),
}


def _types(spec: str) -> list[wasmtime.ValType]:
    return [wasmtime.ValType.i64() if letter == "I" else wasmtime.ValType.i32() for letter in spec]


def _signature(params: Iterable[Any], results: Iterable[Any]) -> str:
    return f"({', '.join(str(p) for p in params)}) -> ({', '.join(str(r) for r in results)})"


def _wasi_stub(name: str, errno: int) -> Callable[..., int]:
    if name in wasi.STDIO_ONLY:
        def stdio_only(fd: int, *_: int) -> int:
            return abi.WASI_SUCCESS if fd in (1, 2) else abi.WASI_BADF
        return stdio_only

    def stub(*_: int) -> int:
        return errno

    return stub
