"""The Python half of the shim: what sdk/shim/shim.c calls besides filter methods.

Creates root and child contexts, routes callout answers by token, applies
the fail policy when filter code raises, and (at build time) imports the
filter.  Not part of the public API.
"""

from __future__ import annotations

import gc
import sys

from meshext.sdk import callouts
from meshext.sdk.abi import Action, BufferType, LogLevel, MapType, StreamType
from meshext.sdk.contexts import (
    ALL_CALLBACKS,
    RESPONSE_HEADERS_BIT,
    STREAM_CALLBACKS,
    FailPolicy,
    HttpContext,
    RootContext,
    StreamContext,
    callback_mask,
    response_headers_to_add,
)
from meshext.sdk.errors import SdkError
from meshext.sdk.host import host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Written by `meshext build` into the module's file system, as a Python literal
# that preinit evaluates with the compiler the module still has at build time:
# JSON would need the json module (and re) in every VM's snapshot, also of a
# filter that never reads JSON.
BUILD_CONFIG_PATH = "/app/meshext-build.txt"
# The log line that carries build facts back to `meshext build`
# (sdk/builder/pipeline.py), as a Python literal too, for the same reason.
BUILD_FACTS_PREFIX = "meshext-build-facts "

class RootEntry:
    """One project of the module: what ``root_id`` selects (see :func:`select_root`)."""

    __slots__ = ("root_id", "name", "entry_class", "fail_policy")

    def __init__(self, root_id: str, name: str, entry_class: type[RootContext], fail_policy: FailPolicy) -> None:
        self.root_id = root_id  # "" in a single-project module: it serves every root_id
        self.name = name
        self.entry_class = entry_class
        self.fail_policy = fail_policy


# Filled by preinit, in build order.
roots: dict[str, RootEntry] = {}
_by_class: dict[type, RootEntry] = {}
# Multi-root modules: each root's own modules, taken out of sys.modules (see _ProjectModules).
root_modules: dict[str, dict[str, Any]] = {}
_vm_started = False


def preinit() -> None:
    """Build time: import each project's filter, then settle the heap for the snapshot."""
    with open(BUILD_CONFIG_PATH, encoding="utf-8") as file:
        build = eval(file.read(), {"__builtins__": {}})  # the literal `meshext build` wrote
    for spec in build["roots"]:
        _import_root(spec)
    for name in build.get("preload", []):
        __import__(name)
    if root_modules:
        sys.meta_path.insert(0, _ProjectModules)
    # Imported modules never read their compiled code again: drop the bytes.
    for module in [*sys.modules.values(), *(m for found in root_modules.values() for m in found.values())]:
        compiled = getattr(module, "__cached__", None) or getattr(module, "__file__", None) or ""
        if compiled.endswith(".pyc"):
            host.forget_file(compiled)
    _speed_up_action_lookup()
    _report_build_facts()
    # Everything imported so far is permanent: keep the collector away from it.
    gc.collect()
    gc.freeze()


def _import_root(spec: dict[str, Any]) -> None:
    """Import one project's entry class.  A project of a multi-root module
    (``spec["path"]`` set) is imported from its own folder, and its modules
    are then taken out of ``sys.modules``: the next project's ``filter`` or
    ``config`` is its own."""
    folder = spec["path"]
    if folder:
        sys.path.insert(0, folder)
    try:
        module_name, _, class_name = spec["entry"].partition(":")
        module = __import__(module_name, fromlist=["_"])
        for name in spec["preload"]:
            __import__(name)
        candidate = getattr(module, class_name, None)
        if not (isinstance(candidate, type) and issubclass(candidate, RootContext)):
            raise SdkError(
                f"{class_name!r} in {module.__file__} is not a RootContext subclass",
                where=f"entry point {spec['entry']!r}",
                fix="point `entry` in meshext.toml at your RootContext class",
            )
        # Decided here, once the filter is imported: a root that validates
        # its configuration (a config_class, or its own check_config) is
        # given one as JSON, parsed by a json imported once, now, instead of
        # in every VM; any other root's VMs carry no json (RootContext._parse
        # imports it if a configuration comes) and none carry the validation
        # without a config_class.
        if candidate.config_class is not None or candidate.check_config is not RootContext.check_config:
            import json  # noqa: F401
        if candidate.config_class is not None:
            # Type hints are resolved now: at run time the module has no
            # compiler to evaluate string annotations.
            from meshext.sdk.config import prepare

            prepare(candidate.config_class)
    finally:
        if folder:
            sys.path.remove(folder)
    if folder:
        own = {name: loaded for name, loaded in sys.modules.items()
               if (getattr(loaded, "__file__", None) or "").startswith(folder + "/")}
        for name in own:
            del sys.modules[name]
        root_modules[spec["root_id"]] = own
    entry = RootEntry(spec["root_id"], spec["name"], candidate, FailPolicy(spec["fail_policy"]))
    roots[entry.root_id] = entry
    _by_class[candidate] = entry


class _ProjectModules:
    """Finds a multi-root module's project modules that code imports at run
    time (``import helpers`` inside a function): the one root that has a
    module of that name gives it.  A name several roots use (each project's
    ``filter``) cannot be told apart at run time: that import is refused."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        owners = [root_id for root_id, found in root_modules.items() if name in found]
        if not owners:
            return None
        if len(owners) > 1:
            raise ImportError(
                f"module {name!r} is in several roots of this module ({', '.join(owners)}): an import at run time "
                "cannot tell whose; fix: import it at the top of the file that uses it", name=name)
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, _Imported(root_modules[owners[0]][name]))  # type: ignore[arg-type]  # duck-typed


class _Imported:
    """The loader of a module imported at build time: it is already there."""

    __slots__ = ("module",)

    def __init__(self, module: Any) -> None:
        self.module = module

    def create_module(self, spec: Any) -> Any:
        """The module itself (an import changes nothing in it)."""
        return self.module

    def exec_module(self, module: Any) -> None:
        """Nothing to run: the module ran at build time."""


def select_root() -> RootEntry:
    """The project the plugin's ``root_id`` names: in a single-project module
    its one root, whatever the id; in a multi-root module the root of that
    name, or ``NAME/...`` (one project run as several plugins, e.g.
    ``telemetry/tcp``)."""
    only = roots.get("")
    if only is not None:
        return only
    root_id = (host.get_property(b"plugin_root_id") or b"").decode()
    entry = roots.get(root_id) or roots.get(root_id.partition("/")[0])
    if entry is None:
        raise SdkError(
            f"this module has no root {root_id!r}",
            where="the plugin configuration's root_id",
            fix=f"set root_id to one of {', '.join(repr(name) for name in roots)}",
        )
    return entry


def _entry_of(context: Any) -> RootEntry | None:
    """The project a root or stream context belongs to."""
    return _by_class.get(type(getattr(context, "root", context)))


def _filter_name(context: Any) -> str:
    entry = _entry_of(context)
    if entry is not None:
        return entry.name
    return next(iter(roots.values())).name if len(roots) == 1 else "module"


def vm_start(root: RootContext, vm_config: bytes) -> int:
    """proxy_on_vm_start: 1 starts the VM, 0 makes Envoy refuse it."""
    global _vm_started
    if not _vm_started:
        _vm_started = True
        _reseed()
    started = _accepted(root.on_vm_start(vm_config))
    if not started:
        # Envoy itself only says "Failed to start base Wasm".
        where = f"meshext filter {_filter_name(root)!r}: {type(root).__name__}.on_vm_start"
        host.log(LogLevel.ERROR, f"{where} answered False: Envoy refuses the VM")
    return started


def _accepted(answer: object) -> int:
    """A root's answer to the VM or plugin configuration as the ABI's bool.

    Only False refuses: a method without a return statement (None) accepts,
    as None continues a stream, and so does an Action a filter returns out
    of habit."""
    return 0 if answer is False else 1


def _reseed() -> None:
    # The heap comes from a build-time snapshot: without this every VM of a
    # module would draw the same `random` sequence.
    random = sys.modules.get("random")
    if random is not None:
        random.seed()


def configure(root: RootContext, config: bytes) -> int:
    """proxy_on_configure: 1 accepts the plugin configuration, 0 makes Envoy refuse it.

    Once it is accepted the shim asks :func:`children` which callbacks to
    make: the root may have chosen its context classes for this configuration."""
    if not _accepted(root.on_configure(config)):
        return 0
    beyond = _exported_mask(root) & ~_exported_mask(type(root))
    if beyond:
        names = ", ".join(callback.method for bit, callback in enumerate(STREAM_CALLBACKS) if beyond & 1 << bit)
        raise SdkError(
            f"{type(root).__name__}.on_configure chose context classes that override {names}, which the classes "
            "set on the root class do not: the module only exports those classes' callbacks",
            where=f"{type(root).__name__}.http_context / stream_context",
            fix="set on the root class the context class with every callback, and choose one that overrides "
                "fewer of them in on_configure (e.g. its base class)",
        )
    return 1


def create_root(context_id: int) -> RootContext:
    """The root for ``context_id`` (the shim asks :func:`children` once its configuration is accepted)."""
    return select_root().entry_class(context_id)


def children(root: RootContext) -> tuple[int, type | None, type | None, tuple[tuple[str, str], ...]]:
    """The callbacks the root's children override, the child classes the
    shim may create itself (no Python code runs for them), and the headers
    the shim sets on every response of its HTTP children
    (``response_headers_to_add``).

    Read from the root object, not its class: a root may set ``http_context``
    or ``stream_context`` in ``on_configure`` to a class with fewer callbacks
    (a rate limiter that adds no response headers has no
    ``on_response_headers``), and Envoy then calls into Python less."""
    cls = type(root)
    custom_http = cls.new_http_context is not RootContext.new_http_context
    custom_stream = cls.new_stream_context is not RootContext.new_stream_context
    http_class, stream_class = root.http_context, root.stream_context
    fast_http = http_class if not custom_http and _plain_init(http_class, HttpContext) else None
    fast_stream = stream_class if not custom_stream and _plain_init(stream_class, StreamContext) else None
    return _children_mask(root), fast_http, fast_stream, response_headers_to_add(http_class)


def _children_mask(root: RootContext | type[RootContext]) -> int:
    """The callbacks the HTTP and TCP contexts of a root (or of a root class) override."""
    cls = root if isinstance(root, type) else type(root)
    if cls.new_http_context is not RootContext.new_http_context or (
        cls.new_stream_context is not RootContext.new_stream_context
    ):
        return ALL_CALLBACKS  # children chosen at run time: any callback may matter
    return callback_mask(root.http_context, HttpContext) | callback_mask(root.stream_context, StreamContext)


def _exported_mask(root: RootContext | type[RootContext]) -> int:
    """The callbacks the module must export for a root: those its children override, and on_response_headers
    for headers the shim adds (``response_headers_to_add``, checked here, so a bad one fails the build)."""
    adds = bool(response_headers_to_add(root.http_context))
    return _children_mask(root) | (1 << RESPONSE_HEADERS_BIT if adds else 0)


def _speed_up_action_lookup() -> None:
    """Filters return ``Action.CONTINUE`` on every callback; EnumType's
    ``__getattr__`` makes that lookup slow in 3.11 (see plain_class_lookup in
    sdk/shim/hostcalls.c).  The plain lookup is equivalent while every member
    is a class attribute, so check that first."""
    if all(vars(Action).get(member.name) is member for member in Action):
        host.plain_class_lookup(type(Action))


def _report_build_facts() -> None:
    """Tell `meshext build` (through its log) what it may prune from the module."""
    # One module's exports serve all its roots: the union of what they override.
    mask = 0
    for entry in roots.values():
        mask |= _exported_mask(entry.entry_class)
    facts = {
        "callbacks": sorted(callback.method for bit, callback in enumerate(STREAM_CALLBACKS) if mask & 1 << bit),
        "root_on_done": any(entry.entry_class.on_done is not RootContext.on_done for entry in roots.values()),
        "builtin_modules": sorted(name for name in sys.builtin_module_names if name in sys.modules),
    }
    host.log(LogLevel.TRACE, BUILD_FACTS_PREFIX + repr(facts))


def _plain_init(cls: Any, base: Any) -> bool:
    """The shim may make `cls` itself: no custom __init__/__new__, and `root`
    and `context_id` are the base's slots, which the shim writes directly."""
    return (cls is not None and cls.__init__ is base.__init__ and cls.__new__ is object.__new__
            and cls.root is base.root and cls.context_id is base.context_id)


def create_child(root: RootContext, context_id: int, stream: bool) -> Any:
    """The context object for a new stream, when the shim cannot make it itself (see children)."""
    return root.new_stream_context(context_id) if stream else root.new_http_context(context_id)


def delete_context(context_id: int) -> None:
    """Forget the pending callouts of a context: their answers would find no one."""
    stale = [token for token, call in callouts.pending.items()
             if getattr(call.context, "context_id", None) == context_id]
    for token in stale:
        del callouts.pending[token]


def tick(root: RootContext) -> None:
    """proxy_on_tick."""
    root.on_tick()


def queue_ready(root: RootContext, queue_id: int) -> None:
    """proxy_on_queue_ready."""
    root.on_queue_ready(queue_id)


def foreign_function(root: RootContext, function_id: int, arguments: bytes) -> None:
    """proxy_on_foreign_function."""
    root.on_foreign_function(function_id, arguments)


# ---- callout answers ----

def _deliver(call: callouts.Pending, what: str, function: Any, *args: Any) -> None:
    """Run a callout callback; the caller has made the calling context effective."""
    try:
        function(*args)
    except BaseException as error:  # noqa: BLE001 - the fail policy decides
        if handle_error(call.context, what, error) == Action.CONTINUE and not isinstance(call.context, RootContext):
            # Failing open: the stream may be held for this answer, and no
            # filter code of it runs again to resume it.
            host.resume_paused(call.context.context_id)


def http_call_response(token: int, num_headers: int, body_size: int, num_trailers: int) -> None:
    """proxy_on_http_call_response: the answer goes to the callback of the call ``token``."""
    call = callouts.pending.pop(token, None)
    if call is None:
        return
    host.set_effective_context(call.context.context_id)
    response = callouts.HttpCallResponse(
        token,
        host.get_headers(MapType.HTTP_CALL_RESPONSE_HEADERS) if num_headers else [],
        host.get_buffer(BufferType.HTTP_CALL_RESPONSE_BODY, 0, body_size) if body_size else b"",
        host.get_headers(MapType.HTTP_CALL_RESPONSE_TRAILERS) if num_trailers else [],
    )
    _deliver(call, "http_call callback", call.callback, response)


def _grpc_metadata(token: int, count: int, map_type: MapType, event: str) -> None:
    call = callouts.pending.get(token)
    if call is not None and call.handler is not None:
        host.set_effective_context(call.context.context_id)
        metadata = host.get_headers(map_type) if count else []
        _deliver(call, f"grpc {event}", getattr(call.handler, event), metadata)


def grpc_initial_metadata(token: int, count: int) -> None:
    """proxy_on_grpc_receive_initial_metadata, for a stream's handler."""
    _grpc_metadata(token, count, MapType.GRPC_CALL_INITIAL_METADATA, "on_initial_metadata")


def grpc_message(token: int, size: int) -> None:
    """proxy_on_grpc_receive: a stream's next message, or a unary call's answer."""
    call = callouts.pending.get(token)
    if call is None:
        return
    host.set_effective_context(call.context.context_id)
    message = host.get_buffer(BufferType.GRPC_CALL_MESSAGE, 0, size) if size else b""
    if call.handler is not None:
        _deliver(call, "grpc on_message", call.handler.on_message, message)
    else:
        # A unary call is complete with its one message.
        del callouts.pending[token]
        _deliver(call, "grpc_call callback", call.callback, callouts.GrpcResponse(token, 0, message))


def grpc_trailing_metadata(token: int, count: int) -> None:
    """proxy_on_grpc_receive_trailing_metadata, for a stream's handler."""
    _grpc_metadata(token, count, MapType.GRPC_CALL_TRAILING_METADATA, "on_trailing_metadata")


def grpc_close(token: int, status_code: int) -> None:
    """proxy_on_grpc_close: a stream ended, or a unary call failed."""
    call = callouts.pending.pop(token, None)
    if call is None:
        return
    host.set_effective_context(call.context.context_id)
    try:
        _, status_message = host.get_status()
    except Exception:  # noqa: BLE001 - older hosts lack proxy_get_status
        status_message = ""
    if call.handler is not None:
        _deliver(call, "grpc on_close", call.handler.on_close, status_code, status_message)
    else:
        _deliver(call, "grpc_call callback", call.callback,
                 callouts.GrpcResponse(token, status_code, b"", status_message))


# ---- errors ----

def _policy(context: Any) -> FailPolicy:
    root = getattr(context, "root", context)
    entry = _entry_of(context)
    return getattr(root, "fail_policy", None) or (entry.fail_policy if entry is not None else FailPolicy.OPEN)


def format_exception(error: BaseException) -> str:
    """A traceback like Python's, chained exceptions included.  Not the
    `traceback` module: importing it at run time defines namedtuples, which
    needs the compiler that modules no longer carry (sdk/builder/prune.py)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        block = ["Traceback (most recent call last):"]
        frame = current.__traceback__
        while frame is not None:
            code = frame.tb_frame.f_code
            block.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}')
            source = _source_line(code.co_filename, frame.tb_lineno)
            if source:
                block.append(f"    {source}")
            frame = frame.tb_next
        name = type(current).__qualname__
        module = type(current).__module__
        block.append(f"{name if module == 'builtins' else module + '.' + name}: {current}".removesuffix(": "))
        parts.insert(0, "\n".join(block))
        if current.__cause__ is not None:
            parts.insert(0, "\nThe above exception was the direct cause of the following exception:\n")
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            parts.insert(0, "\nDuring handling of the above exception, another exception occurred:\n")
            current = current.__context__
        else:
            current = None
    return "\n".join(parts)


def _source_line(filename: str, line: int) -> str:
    try:
        with open(filename, encoding="utf-8") as file:
            for number, text in enumerate(file, 1):
                if number == line:
                    return text.strip()
    except OSError:
        pass
    return ""


def handle_error(context: Any, callback: str, error: BaseException | None) -> int:
    """Log an exception from filter code and apply the fail policy; returns the action."""
    where = type(context).__name__ if context is not None else "filter"
    try:
        details = format_exception(error) if error is not None else "(no exception)"
    except Exception:  # noqa: BLE001 - never let reporting hide the original error
        details = f"{type(error).__name__}: {error}"
    host.log(LogLevel.ERROR, f"meshext filter {_filter_name(context)!r}: {where}.{callback} raised:\n{details}")
    if isinstance(context, RootContext) or context is None:
        return 0  # for on_configure / on_vm_start: 0 makes Envoy refuse the configuration
    # The stream's state is whatever the failing code left: the shim calls
    # none of its code again (not even for the fail-closed reply below, which
    # Envoy runs through this filter's response callbacks), and answers to its
    # pending callouts are dropped.
    host.stop_calls(context.context_id)
    delete_context(context.context_id)
    if _policy(context) is FailPolicy.OPEN:
        return Action.CONTINUE
    if isinstance(context, HttpContext):
        try:
            host.send_local_response(
                500,
                "meshext_filter_error",
                f"meshext: filter {_filter_name(context)!r} failed ({type(error).__name__}); "
                "request rejected (fail closed)\n",
                [("content-type", "text/plain")],
                -1,
            )
        except Exception:  # noqa: BLE001 - response already started: reset instead
            host.close_stream(StreamType.HTTP_RESPONSE)
        return Action.PAUSE
    host.close_stream(StreamType.DOWNSTREAM)
    return Action.PAUSE
