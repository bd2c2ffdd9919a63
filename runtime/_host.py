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
tests/runtime/test_runtime_conformance.py): context ids (root 1, streams from 2),
context create -> vm start -> configure, stream end as log -> done -> delete,
body buffering while paused, HTTP callouts owned by the root context,
``continue_stream`` and ``send_local_response`` taking effect after the
callback returns while callout answers and queue notifications arrive on a
later event-loop turn, local replies from the request path running through
the filter's response callbacks (but not those from the response path),
header maps readable only until their callback continues, header names
lower-cased, first value returned for repeated headers.

The pieces: ``records`` (data handed to tests), ``modules`` (engine and
compiled-module cache), ``vm`` (one instance and its host functions),
``contexts`` and ``streams`` (what the module's callbacks act on),
``upstreams`` (real callout targets).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshext.errors import MeshextError
from meshext.runtime._abi import LogLevel, MetricType
from meshext.runtime._modules import compile_module
from meshext.runtime._records import (
    Cluster,
    GrpcHandler,
    HttpHandler,
    LogRecord,
    Metric,
    SharedQueue,
)
from meshext.runtime._vm import PluginVM


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
