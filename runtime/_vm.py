"""One plugin VM as the host side sees it: its contexts, the active one, and calls into the module.

``Vm`` starts the plugin like Envoy (context create, VM start, configure),
keeps the contexts and which one the host functions act on, hands callout
answers to the module while its callback runs, and ends contexts in
Envoy's order.  Its public methods are the API the rest of the test host
uses: the host functions (``_hostcalls``, through ``memory``, ``active``,
``header_map``, ``buffer``, ``log``, ``callouts``), the streams
(``callback``, ``end_context``) and the ``Host`` (``start``, ``timers``).
Tests hold a ``PluginVM`` (``_plugin``) instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import wasmtime

from meshext.errors import MeshextError
from meshext.runtime._callouts import Callouts
from meshext.runtime._contexts import HostContext, HostRootContext
from meshext.runtime._instance import WasmInstance
from meshext.runtime._records import EnvoyHeaderMap, LogRecord
from meshext.runtime._streams import HttpStream, TcpStream
from meshext.sdk.abi import Action, BufferType, LogLevel, MapType

if TYPE_CHECKING:
    from meshext.runtime._host import Host

Timer = tuple[int, Callable[[], None]]  # (monotonic deadline in ns, what fires then)


class Vm:
    """One Wasm instance running one plugin, with its root context and streams."""

    def __init__(self, host: Host, module: wasmtime.Module, *, where: str, config: bytes, vm_config: bytes,
                 name: str, root_id: str, vm_id: str, env: dict[str, str], properties: dict[str, Any]) -> None:
        self.host = host
        self.where = where
        self.config = config
        self.vm_config = vm_config
        self.name = name
        self.root_id = root_id
        self.vm_id = vm_id
        self.env = env
        self.properties = properties
        self.contexts: dict[int, HostContext] = {}
        self.callouts = Callouts(self)
        self._next_context_id = 1
        self._active: HostContext | None = None
        # Callout answers (and the VM configuration at start) the module may read during one callback.
        self._handed_maps: dict[int, EnvoyHeaderMap] = {}
        self._handed_buffers: dict[int, bytearray] = {}
        self._awaiting_done: set[int] = set()
        self.instance = WasmInstance(module, where=where, vm=self, problem_logs=self.recent_problem_logs)
        self.memory = self.instance.memory
        self.root = HostRootContext(self, self._new_context_id())
        self.contexts[self.root.id] = self.root

    @property
    def failed(self) -> bool:
        """The module trapped or refused to start: Envoy stops using such a VM."""
        return self.instance.failed

    # -- start and end ---------------------------------------------------------

    def start(self) -> None:
        """_initialize/_start, then proxy_on_context_create, proxy_on_vm_start, proxy_on_configure."""
        instance = self.instance
        if instance.has_export("_initialize"):
            instance.call("_initialize")
            if instance.has_export("main"):
                instance.call("main", 0, 0)
        elif instance.has_export("_start"):
            instance.call("_start")
        instance.call("proxy_on_context_create", self.root.id, 0)
        with self.handing(buffers={BufferType.VM_CONFIGURATION: bytearray(self.vm_config)}):
            started = instance.call("proxy_on_vm_start", self.root.id, len(self.vm_config))
        if started == 0:
            instance.failed = True
            # A multi-root module refuses a root_id it lacks here too (its log names its roots).
            raise MeshextError("proxy_on_vm_start returned false: the module refused to start" + self._said(),
                               where=self.where, fix=f"check the VM configuration ({self.vm_config!r}) and the "
                               f"root_id ({self.root_id!r}) against the module's log above")
        configured = instance.call("proxy_on_configure", self.root.id, len(self.config))
        if configured == 0:
            instance.failed = True
            raise MeshextError(
                "proxy_on_configure returned false: the filter refused its plugin configuration" + self._said(),
                where=self.where, fix=f"check the plugin configuration: {self.config[:200]!r}")

    def _said(self) -> str:
        """The module's recent warnings and errors, indented under an error message."""
        return "".join(f"\n  {line}" for line in self.recent_problem_logs())

    def shutdown(self) -> None:
        """Envoy's drain: proxy_on_done (then proxy_on_delete) on the root context."""
        if self.root.done or self.failed:
            return
        self.end_context(self.root, self.callback("proxy_on_done", self.root, self.root.id))

    def end_context(self, context: HostContext, done_answer: int | None) -> None:
        """After proxy_on_done: delete the context now, or (answer false) once the module calls proxy_done."""
        if done_answer in (None, 1):
            self._delete(context)
        else:
            self._awaiting_done.add(context.id)

    def release_done(self) -> bool:
        """proxy_done from the active context: delete it after the callback; False if it was not waiting."""
        context = self.active
        if context.id not in self._awaiting_done:
            return False
        self._awaiting_done.discard(context.id)
        self.host.defer(lambda: self._delete(context))
        return True

    def _delete(self, context: HostContext) -> None:
        context.done = True
        self.callback("proxy_on_delete", context, context.id)
        if context is not self.root:
            self.contexts.pop(context.id, None)

    def _new_context_id(self) -> int:
        context_id = self._next_context_id
        self._next_context_id += 1
        return context_id

    # -- streams ---------------------------------------------------------------

    def http_stream(self, properties: Mapping[str, Any] | None = None) -> HttpStream:
        """A new HTTP stream context (proxy_on_context_create(stream, root))."""
        stream = HttpStream(self, self._new_context_id(), dict(properties or {}))
        self.contexts[stream.id] = stream
        self.callback("proxy_on_context_create", stream, stream.id, self.root.id)
        return stream

    def tcp_stream(self, properties: Mapping[str, Any] | None = None) -> TcpStream:
        """A new TCP connection context: proxy_on_context_create, then proxy_on_new_connection."""
        stream = TcpStream(self, self._new_context_id(), dict(properties or {}))
        self.contexts[stream.id] = stream
        self.callback("proxy_on_context_create", stream, stream.id, self.root.id)
        raw = self.callback("proxy_on_new_connection", stream, stream.id)
        stream.new_connection_action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
        return stream

    # -- calling into the module -----------------------------------------------

    def callback(self, name: str, context: HostContext, *args: int) -> int | None:
        """Call a proxy_on_* callback with ``context`` active, then run deferred actions."""
        previous = self._active
        self._active = context
        try:
            result = self.instance.call(name, *args)
        finally:
            self._active = previous
        if not self.instance.running and self.host.auto_dispatch:
            self.host.dispatch()
        return result

    @contextlib.contextmanager
    def handing(self, *, maps: Mapping[int, EnvoyHeaderMap] | None = None,
                buffers: Mapping[int, bytearray] | None = None) -> Iterator[None]:
        """Let the module read these maps and buffers (a callout's answer) until the block ends."""
        maps, buffers = maps or {}, buffers or {}
        self._handed_maps.update(maps)
        self._handed_buffers.update(buffers)
        try:
            yield
        finally:
            for map_type in maps:
                self._handed_maps.pop(map_type, None)
            for buffer_type in buffers:
                self._handed_buffers.pop(buffer_type, None)

    # -- what the host functions act on ----------------------------------------

    @property
    def active(self) -> HostContext:
        """The context the running callback belongs to (or the one proxy_set_effective_context chose)."""
        return self._active or self.root

    def set_active(self, context_id: int) -> bool:
        """proxy_set_effective_context: False if no such context."""
        context = self.contexts.get(context_id)
        if context is None:
            return False
        self._active = context
        return True

    def header_map(self, map_type: int) -> EnvoyHeaderMap | None:
        """The map of ``map_type`` the module may read now: a callout answer, or the active context's."""
        handed = self._handed_maps.get(map_type)
        if handed is not None:
            return handed
        return self.active._module_header_map(map_type)

    def writable_header_map(self, map_type: int) -> EnvoyHeaderMap | None:
        """The map of ``map_type`` the module may change now (callout answers are read-only), or None."""
        if map_type in self._handed_maps or map_type >= MapType.GRPC_CALL_INITIAL_METADATA:
            return None
        return self.active._module_header_map(map_type)

    def buffer(self, buffer_type: int) -> bytearray | None:
        """The buffer of ``buffer_type`` the module may use now, or None."""
        handed = self._handed_buffers.get(buffer_type)
        if handed is not None:
            return handed
        if buffer_type == BufferType.PLUGIN_CONFIGURATION:
            return bytearray(self.config)
        return self.active._module_buffer(buffer_type)

    def log(self, level: int, message: str) -> None:
        """Record a line the module logged, from the active context."""
        self.host.logs.append(LogRecord(LogLevel(level), message, self.name, self.root_id, self.vm_id,
                                        self.active.id))

    @property
    def logs(self) -> list[LogRecord]:
        """What this plugin logged (proxy_log, stdout, stderr), oldest first."""
        return [record for record in self.host.logs
                if record.vm_id == self.vm_id and record.plugin_name == self.name and record.root_id == self.root_id]

    def recent_problem_logs(self) -> list[str]:
        """The module's last warnings and errors: SDKs log the cause (a Python traceback) there."""
        return [str(record) for record in self.logs[-20:] if record.level >= LogLevel.WARN][-10:]

    # -- the clock -------------------------------------------------------------

    def timers(self) -> list[Timer]:
        """What is due on the host's clock: the root's next tick, and callout timeouts."""
        timers: list[Timer] = []
        root = self.root
        if root.tick_period_ns and not self.failed and not root.done:
            def tick() -> None:
                root.next_tick_ns += root.tick_period_ns
                self.callback("proxy_on_tick", root, root.id)
            timers.append((root.next_tick_ns, tick))
        timers.extend(self.callouts.timers())
        return timers
