"""One Wasm instance running one plugin, with every host function Envoy links.

``PluginVM`` instantiates the module against the ``proxy_*`` functions and
Envoy's WASI subset (refusing modules that import anything else), starts the
plugin like Envoy (context create, VM start, configure), and implements each
host function on top of the ``Host``'s shared state and the active context.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import wasmtime

from meshext.errors import MeshextError
from meshext.runtime import abi, wasi
from meshext.runtime.abi import Action, BufferType, LogLevel, MapType, MetricType, Pairs, Status, StreamType
from meshext.runtime.contexts import Context, RootContext
from meshext.runtime.fastcall import Crossing, Export, MemoryView, define_host_function
from meshext.runtime.modules import engine, instantiate
from meshext.runtime.properties import encode_property, split_path
from meshext.runtime.records import (
    Cluster,
    GrpcCallout,
    GrpcHandler,
    HeaderMap,
    HttpCallout,
    HttpResponse,
    LocalResponse,
    LogRecord,
    MemoryFault,
    Metric,
    ModuleExit,
    SharedQueue,
    WasmTrap,
    as_pairs,
)
from meshext.runtime.streams import HttpStream, TcpStream
from meshext.runtime.upstreams import grpc_cluster_name, real_grpc_call, real_http_call

if TYPE_CHECKING:
    from meshext.runtime.host import Host

MASK32 = 0xFFFFFFFF
ABI_VERSIONS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")


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
            self.instance = instantiate(linker, self.store, module)
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
        raw = self._callback("proxy_on_new_connection", stream, stream.id)
        stream.new_connection_action = Action.CONTINUE if raw in (None, 0) else Action.PAUSE
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
        stream.send_request_headers(request_headers + as_pairs(headers), end_stream=not body)
        if body:
            stream.send_request_body(body, end_stream=True)
        if stream.request.complete and stream.local_response is None:
            all_response_headers = [(":status", str(response_status))] + as_pairs(response_headers)
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
        except ModuleExit as exit_request:
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
            raise MemoryFault
        return ctypes.string_at(self._memory.base() + pointer, size) if size else b""

    def write(self, pointer: int, data: bytes) -> None:
        pointer &= MASK32
        if pointer + len(data) > self._memory.size():
            raise MemoryFault
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
                raise MemoryFault
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
        except MemoryFault:
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
        except MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    # buffers

    def _available_buffer(self, buffer_type: int) -> bytearray | int:
        """The buffer, or the status Envoy answers (unknown type, or not available here)."""
        if buffer_type not in BufferType._value2member_map_:
            return Status.BAD_ARGUMENT
        buffer = self._buffer(buffer_type)
        return Status.NOT_FOUND if buffer is None else buffer

    def _h_proxy_get_buffer_status(self, buffer_type: int, return_size: int, return_flags: int) -> int:
        buffer = self._available_buffer(buffer_type)
        if not isinstance(buffer, bytearray):
            return buffer

        def write() -> None:
            self.write_u32(return_size, len(buffer))
            self.write_u32(return_flags, 0)

        return self._guard(write)

    def _h_proxy_get_buffer_bytes(self, buffer_type: int, start: int, length: int, return_data: int,
                                  return_size: int) -> int:
        buffer = self._available_buffer(buffer_type)
        if not isinstance(buffer, bytearray):
            return buffer
        start &= MASK32
        length &= MASK32
        if start > len(buffer):
            length = 0
        length = min(length, len(buffer) - start)
        return self._guard(lambda: self.copy_out(bytes(buffer[start : start + length]), return_data, return_size))

    def _h_proxy_set_buffer_bytes(self, buffer_type: int, start: int, length: int, data_ptr: int,
                                  data_size: int) -> int:
        buffer = self._available_buffer(buffer_type)
        if not isinstance(buffer, bytearray):
            return buffer
        if buffer_type not in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY,
                               BufferType.DOWNSTREAM_DATA, BufferType.UPSTREAM_DATA):
            return Status.BAD_ARGUMENT  # Envoy: the other buffers are read-only
        try:
            data = self.read(data_ptr, data_size)
        except MemoryFault:
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
        return self._edit_map(map_type, lambda headers: headers.set_all(
            abi.deserialize_pairs(self.read(data_ptr, data_size))))

    def _h_proxy_get_header_map_value(self, map_type: int, key_ptr: int, key_size: int, return_data: int,
                                      return_size: int) -> int:
        if map_type not in MapType._value2member_map_:
            return Status.BAD_ARGUMENT
        try:
            key = self.read(key_ptr, key_size).decode("utf-8", "surrogateescape")
        except MemoryFault:
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

    def _edit_map(self, map_type: int, edit: Callable[[HeaderMap], None]) -> int:
        headers = self._writable_map(map_type)
        if not isinstance(headers, HeaderMap):
            return headers
        try:
            edit(headers)
        except MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        return Status.OK

    def _h_proxy_add_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                      value_size: int) -> int:
        return self._edit_map(map_type, lambda headers: headers.add(
            *self._key_value(key_ptr, key_size, value_ptr, value_size)))

    def _h_proxy_replace_header_map_value(self, map_type: int, key_ptr: int, key_size: int, value_ptr: int,
                                          value_size: int) -> int:
        return self._edit_map(map_type, lambda headers: headers.replace(
            *self._key_value(key_ptr, key_size, value_ptr, value_size)))

    def _h_proxy_remove_header_map_value(self, map_type: int, key_ptr: int, key_size: int) -> int:
        return self._edit_map(map_type, lambda headers: headers.remove(
            self.read(key_ptr, key_size).decode("utf-8", "surrogateescape")))

    # stream control

    def _stream_control(self, stream_type: int, action: str) -> int:
        """continue/close: Envoy applies them once the running callback has returned."""
        if stream_type not in StreamType._value2member_map_:
            return Status.BAD_ARGUMENT
        context = self.active
        if not isinstance(context, (HttpStream, TcpStream)):
            return Status.NOT_FOUND
        self.host.defer(lambda: getattr(context, action)(StreamType(stream_type)))
        return Status.OK

    def _h_proxy_continue_stream(self, stream_type: int) -> int:
        return self._stream_control(stream_type, "_continue")

    def _h_proxy_close_stream(self, stream_type: int) -> int:
        return self._stream_control(stream_type, "_close")

    def _h_proxy_send_local_response(self, status_code: int, details_ptr: int, details_size: int, body_ptr: int,
                                     body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
        context = self.active
        try:
            details = self.read(details_ptr, details_size).decode("utf-8", "replace")
            body = self.read(body_ptr, body_size)
            headers = abi.deserialize_pairs(self.read(headers_ptr, headers_size))
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
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
        except MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        self.http_calls.append(call)
        self._pending_http[token] = call
        self.host.post(lambda: self._answer_http(cluster, call))
        return Status.OK

    def _answer_http(self, cluster: Cluster, call: HttpCallout) -> None:
        if call.token not in self._pending_http:
            return
        if cluster.address is not None:
            self._deliver_http_response(call, real_http_call(cluster.address, call))
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
            headers = HeaderMap([(":status", str(response.status))] + as_pairs(response.headers)
                                + [("x-envoy-upstream-service-time", str(elapsed_ms))])
            body, trailers = bytes(response.body), HeaderMap(as_pairs(response.trailers))
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
        except MemoryFault:
            return Status.INVALID_MEMORY_ACCESS
        cluster_name = grpc_cluster_name(cluster_name)
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
        except MemoryFault:
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
            response = real_grpc_call(cluster.address, call)
        elif cluster.grpc_handler is not None:
            response = cluster.grpc_handler(call)
        else:
            response = None
        if response is None:
            return
        if response.status == 0 and response.messages:
            self._grpc_unary_success(call, response.messages[0])
        else:
            self._grpc_finish(call, response.status or 2, response.status_message, [])  # 2 = UNKNOWN

    def _grpc_unary_success(self, call: GrpcCallout, message: bytes) -> None:
        """Envoy answers a successful unary call with proxy_on_grpc_receive only: no metadata, no close."""
        call.finished = True
        self._grpc.pop(call.token, None)
        self._grpc_message(call, message)

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
        except MemoryFault:
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
        except MemoryFault:
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
            self._grpc_metadata(call, MapType.GRPC_CALL_INITIAL_METADATA, as_pairs(response.initial_metadata))
        for message in response.messages:
            self._grpc_message(call, message)
        if as_sent.closed_by_module or response.status != 0:
            self._grpc_finish(call, response.status, response.status_message, as_pairs(response.trailing_metadata))

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
        except MemoryFault:
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
        except MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_guard(self, action: Callable[[], None]) -> int:
        try:
            action()
        except MemoryFault:
            return abi.WASI_FAULT
        return abi.WASI_SUCCESS

    def _wasi_fd_fdstat_get(self, fd: int, return_stat: int) -> int:
        if fd not in (1, 2):
            return abi.WASI_BADF
        return self._wasi_guard(lambda: self.write(return_stat, struct.pack("<QQQ", 0, 64, 0)))  # FD_WRITE only

    def _environment(self) -> list[bytes]:
        return [f"{key}={value}".encode() + b"\0" for key, value in self.env.items()]

    def _wasi_environ_sizes_get(self, return_count: int, return_size: int) -> int:
        entries = self._environment()

        def write() -> None:
            self.write_u32(return_count, len(entries))
            self.write_u32(return_size, sum(len(entry) for entry in entries))

        return self._wasi_guard(write)

    def _wasi_environ_get(self, return_array: int, return_buffer: int) -> int:
        def write() -> None:
            address = return_buffer
            for index, entry in enumerate(self._environment()):
                self.write_u32(return_array + 4 * index, address)
                self.write(address, entry)
                address += len(entry)

        return self._wasi_guard(write)

    def _wasi_args_sizes_get(self, return_argc: int, return_size: int) -> int:
        return self._wasi_guard(lambda: (self.write_u32(return_argc, 0), self.write_u32(return_size, 0)))

    def _wasi_clock_time_get(self, clock_id: int, precision: int, return_time: int) -> int:
        clocks = {0: self.host.realtime_ns, 1: self.host.monotonic_ns}
        if clock_id not in clocks:
            return abi.WASI_NOTSUP
        return self._wasi_guard(lambda: self.write_u64(return_time, clocks[clock_id]))

    def _wasi_clock_res_get(self, clock_id: int, return_resolution: int) -> int:
        if clock_id not in (0, 1):
            return abi.WASI_NOTSUP
        return self._wasi_guard(lambda: self.write_u64(return_resolution, 1))

    def _wasi_random_get(self, pointer: int, size: int) -> int:
        size &= MASK32
        if size > 64 * 1024:
            return abi.WASI_INVAL
        return self._wasi_guard(lambda: self.write(pointer, os.urandom(size)))

    def _wasi_proc_exit(self, code: int) -> None:
        raise ModuleExit(code)

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
