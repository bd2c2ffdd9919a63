"""Counting what a filter's Python does per request, without a VM: a stand-in host and a step counter.

In the VM the SDK calls the shim's C module ``_meshext_host``; here a Python
module of the same name takes its place, answers from dicts and counts
every call by name, and :func:`count_steps` counts the bytecode
instructions the filter and the SDK execute (``sys.settrace`` opcode
events).  The same bytecode runs in the VM, so the count is what a request
costs in interpreter steps, deterministic on a shared machine.  Used by
``ratelimit_local.py --steps`` and ``telemetry_host_calls.py``.
"""

from __future__ import annotations

import collections
import sys
import tomllib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAS_MISMATCH = 8  # Proxy-Wasm's WasmResult for a failed compare-and-swap


class StandInHost:
    """A Python ``_meshext_host``: headers by map type, attributes and shared data from dicts.

    ``headers`` maps an SDK ``MapType`` number to (name, value) pairs,
    ``properties`` an encoded attribute path to its encoded value; change
    them between requests.  ``calls`` counts each host function called."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.headers: dict[int, list[tuple[str, str]]] = {}
        self.properties: dict[bytes, bytes] = {}
        self.shared: dict[str, tuple[bytes, int]] = {}
        self.metric_ids: dict[str, int] = {}

    def install(self) -> None:
        """Make this the ``_meshext_host`` the SDK imports, and drop an SDK imported before against no host."""
        sys.modules["_meshext_host"] = self.module()
        for name in [name for name in sys.modules if name == "meshext.sdk" or name.startswith("meshext.sdk.")]:
            del sys.modules[name]

    def module(self) -> types.ModuleType:
        """The module object, its functions bound to this host."""
        host = self
        calls = self.calls

        class HeaderMap:
            __slots__ = ("map_type",)

            def __init__(self, map_type: int) -> None:
                self.map_type = int(map_type)

            def get(self, name: str, default: str | None = None) -> str | None:
                calls["header get"] += 1
                return next((value for key, value in host.headers.get(self.map_type, ()) if key == name), default)

            def get_many(self, names: tuple[str, ...]) -> tuple[str | None, ...]:
                calls["header pairs get"] += 1
                first: dict[str, str] = {}
                for key, value in host.headers.get(self.map_type, ()):
                    first.setdefault(key, value)
                return tuple(first.get(name.lower()) for name in names)

            def set(self, name: str, value: str) -> None:
                calls["header set/add"] += 1

            add = set

            def remove(self, name: str) -> None:
                calls["header remove"] += 1

        def get_headers(map_type: int) -> list[tuple[str, str]]:
            calls["header pairs get"] += 1
            return list(host.headers.get(int(map_type), ()))

        def get_property(path: bytes) -> bytes | None:
            calls["property get"] += 1
            return host.properties.get(path)

        def get_shared_data(key: str) -> tuple[bytes, int] | None:
            calls["shared data get"] += 1
            return host.shared.get(key)

        def set_shared_data(key: str, value: bytes | str, cas: int) -> int:
            calls["shared data set"] += 1
            entry = host.shared.get(key)
            if cas and entry is not None and entry[1] != cas:
                return CAS_MISMATCH
            host.shared[key] = (value.encode() if isinstance(value, str) else value, (entry[1] if entry else 0) + 1)
            return 0

        def define_metric(kind: int, name: str) -> int:
            calls["define metric"] += 1
            return host.metric_ids.setdefault(name, len(host.metric_ids) + 1)

        def counted(name: str, answer: Any = None) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                calls[name] += 1
                return answer
            return call

        module = types.ModuleType("_meshext_host")
        module.HeaderMap = HeaderMap  # type: ignore[attr-defined]
        module.Body = type("Body", (), {"__init__": lambda self, buffer_type: None})  # type: ignore[attr-defined]
        for function in (get_headers, get_property, get_shared_data, set_shared_data, define_metric):
            setattr(module, function.__name__, function)
        for name, answer in (("increment_metric", None), ("record_metric", None), ("log", None),
                             ("get_log_level", 2), ("set_tick_period", None), ("send_local_response", 0),
                             ("set_effective_context", None)):
            setattr(module, name, counted(name.replace("_", " "), answer))
        return module


def filter_root(project: Path) -> Any:
    """The root context class of the filter project ``project`` (its ``meshext.toml`` entry), imported here."""
    entry = tomllib.loads((project / "meshext.toml").read_text())["filter"]["entry"]
    module_name, _, class_name = entry.partition(":")
    sys.path.insert(0, str(project))
    return getattr(__import__(module_name), class_name)


def count_steps(run: Callable[[], None], *, not_counted: tuple[str, ...]) -> int:
    """Bytecode instructions executed by ``run()``, except in functions of the files ``not_counted`` (the
    stand-in host, which is C in the VM, and the benchmark's driver, which is the shim's C)."""
    skipped = {__file__, *not_counted}
    steps = 0

    def count_opcodes(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "opcode":
            steps += 1
        return count_opcodes

    def trace_calls(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in skipped:
            return None
        frame.f_trace_opcodes = True
        return count_opcodes

    sys.settrace(trace_calls)
    try:
        run()
    finally:
        sys.settrace(None)
    return steps


def overridden(context_class: type, base: type, callbacks: tuple[str, ...]) -> list[str]:
    """Of ``callbacks``, those ``context_class`` overrides: the only ones the shim calls."""
    return [name for name in callbacks if getattr(context_class, name) is not getattr(base, name)]
