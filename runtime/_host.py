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
body buffering while paused, HTTP callouts owned by the root context and
sent with the headers Envoy adds, ``continue_stream`` and
``send_local_response`` taking effect after the callback returns while
callout answers and queue notifications arrive on a later event-loop turn,
Envoy's own answers to callouts whose upstream gives none (timeouts,
refused connections, clusters without healthy endpoints), local replies
from the request path running through the filter's response callbacks (but
not those from the response path) with Envoy's content headers, header maps
readable only until their callback continues, header names lower-cased,
first value returned for repeated headers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from meshext.compiled_modules import compile_module
from meshext.errors import MeshextError
from meshext.function_profile import ROOT_ID_ENV
from meshext.runtime._abi import MASK32
from meshext.runtime._plugin import PluginVM
from meshext.runtime._records import (
    Cluster,
    GrpcHandler,
    HttpHandler,
    LogRecord,
    Metric,
    RegisteredQueue,
)
from meshext.runtime._vm import Vm
from meshext.sdk.abi import LogLevel, MetricType


class Host:
    """One simulated Envoy: what it shares between its Wasm VMs, plus the test's controls.

    Tests load modules (``load``), declare upstreams (``add_cluster``), move
    the clock (``advance``) and read what the modules left behind:
    ``logs`` / ``log_lines()``, ``metric(name)`` / ``metric_values()`` for
    counters and gauges, ``histogram(name)`` for a histogram's values,
    ``shared_data`` (keyed by ``(vm_id, key)``, values ``(bytes, cas)``),
    ``queues``.  ``foreign_functions`` maps names to Python functions
    (bytes in, bytes out) for ``proxy_call_foreign_function``.

    Events: actions a callback asks for (continue, local reply, close,
    ``proxy_done``) run when it returns (``defer``); callout answers and
    queue notifications arrive on a later turn of the event loop (``post``),
    after the whole step the test is driving (``step()``).  With
    ``auto_dispatch = False`` nothing runs until the test calls
    ``dispatch()``.
    """

    def __init__(self, *, log_level: LogLevel = LogLevel.TRACE, start_time_ns: int | None = None) -> None:
        self.log_level = log_level
        self.realtime_ns = start_time_ns if start_time_ns is not None else time.time_ns()
        self.monotonic_ns = 1_000_000_000
        self.logs: list[LogRecord] = []
        self.metrics: dict[int, Metric] = {}
        self.shared_data: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.queues: dict[int, RegisteredQueue] = {}
        self.clusters: dict[str, Cluster] = {}
        self.foreign_functions: dict[str, Callable[[bytes], bytes]] = {}
        self.auto_dispatch = True
        self._vms: list[Vm] = []
        self._metric_ids: dict[str, int] = {}
        self._next_cas = 1
        self._queue_tokens: dict[tuple[str, str], int] = {}
        self._next_queue_token = 1
        self._deferred: deque[Callable[[], object]] = deque()
        self._posted: deque[Callable[[], object]] = deque()
        self._operations = 0
        self._dispatching = False

    # -- loading -------------------------------------------------------------

    def load(
        self,
        module: str | os.PathLike[str] | bytes | bytearray,
        *,
        config: str | bytes | dict[str, Any] | list[Any] = b"",
        vm_config: str | bytes = b"",
        name: str = "",
        root_id: str = "",
        vm_id: str = "",
        env: Mapping[str, str] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> PluginVM:
        """Instantiate a module and start its plugin the way Envoy does.

        ``config`` is the plugin configuration (Envoy's ``configuration``
        field; a dict or list is sent as JSON), ``vm_config`` the VM
        configuration; ``name``, ``root_id`` and ``vm_id`` are the plugin's
        Envoy names (VMs with the same ``vm_id`` share data and queues);
        ``env`` the VM's environment variables, ``properties`` attributes
        every context of the plugin sees.  ``root_id`` defaults to
        ``$MESHEXT_TEST_ROOT_ID`` (``meshext build --cold-code`` sets it to
        profile a project's tests on a module of several projects).
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
        root_id = root_id or os.environ.get(ROOT_ID_ENV, "")
        vm = Vm(
            self, compile_module(code, where=where), where=where,
            config=config.encode() if isinstance(config, str) else bytes(config),
            vm_config=vm_config.encode() if isinstance(vm_config, str) else bytes(vm_config),
            name=name, root_id=root_id, vm_id=vm_id, env=dict(env or {}), properties=dict(properties or {}),
        )
        self._vms.append(vm)
        vm.start()
        return PluginVM(self, vm)

    # -- upstreams -----------------------------------------------------------

    def add_cluster(self, name: str, handler: HttpHandler | None = None, *,
                    grpc: GrpcHandler | None = None, address: tuple[str, int] | None = None,
                    healthy: bool = True) -> Cluster:
        """Declare an upstream cluster ``name`` (returned): callouts to an undeclared cluster fail as in Envoy.

        ``handler`` answers HTTP callouts and ``grpc`` gRPC ones (returning
        None leaves the call pending for the test to answer, or to time
        out); ``address`` sends them to a real upstream on loopback instead
        (nothing listening there: Envoy answers 503 / UNAVAILABLE).
        ``healthy=False`` declares a cluster with no healthy endpoint: Envoy
        refuses each call as it starts (INTERNAL_FAILURE).
        """
        cluster = Cluster(name, http_handler=handler, grpc_handler=grpc, address=address, healthy=healthy)
        self.clusters[name] = cluster
        return cluster

    # -- clock ---------------------------------------------------------------

    def advance(self, milliseconds: float) -> None:
        """Move the clock forward by ``milliseconds``, firing due ticks and callout timeouts in time order.

        A pending HTTP callout past its timeout gets Envoy's 504 answer, a
        unary gRPC call a close with UNAVAILABLE ("upstream request timeout").
        """
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
        for vm in self._vms:
            for when, fire in vm.timers():
                if when <= limit and (best is None or when < best[0]):
                    best = (when, fire)
        return best

    # -- deferred actions ----------------------------------------------------
    # Two kinds, as in Envoy: actions that take effect as soon as the callback returns
    # (continue, local reply, close, proxy_done), and events that arrive later from the
    # event loop (callout answers, queue notifications) - after the whole step the test
    # is driving (e.g. a stream's teardown) has finished.

    def defer(self, action: Callable[[], object]) -> None:
        """Run ``action`` right after the running callback returns."""
        self._deferred.append(action)

    def post(self, event: Callable[[], object]) -> None:
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

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Group one driving step (a send_* call, a stream's end): posted events wait until it is over."""
        self._operations += 1
        try:
            yield
        finally:
            self._operations -= 1
        if self._operations == 0 and self.auto_dispatch:
            self.dispatch()

    @contextlib.contextmanager
    def hold_dispatch(self) -> Iterator[None]:
        """Hold deferred actions during the block, then run them (a stream applies a callback's answer first)."""
        held, self._dispatching = self._dispatching, True
        try:
            yield
        finally:
            self._dispatching = held
        if self.auto_dispatch:
            self.dispatch()

    # -- shared state --------------------------------------------------------

    def set_shared_data(self, vm_id: str, key: str, value: bytes, cas: int) -> bool:
        """Store ``value`` under ``key`` of ``vm_id`` with a new CAS.

        False (nothing stored) if ``cas`` is set and stale.
        """
        entry = self.shared_data.get((vm_id, key))
        if cas and entry is not None and entry[1] != cas:
            return False
        self.shared_data[(vm_id, key)] = (value, self._next_cas)
        self._next_cas = self._next_cas + 1 if self._next_cas < MASK32 else 1
        return True

    def register_queue(self, vm_id: str, name: str, owner: Vm) -> int:
        """The token of queue ``name`` of ``vm_id``, created if new; ``owner`` is notified of its items."""
        token = self._queue_tokens.get((vm_id, name))
        if token is None:
            token = self._next_queue_token
            self._next_queue_token += 1
            self._queue_tokens[(vm_id, name)] = token
            self.queues[token] = RegisteredQueue(token, vm_id, name, owner)
        else:
            self.queues[token].owner = owner
        return token

    def resolve_queue(self, vm_id: str, name: str) -> int | None:
        """The token of queue ``name`` registered by a VM of ``vm_id``, or None when none registered it."""
        return self._queue_tokens.get((vm_id, name))

    def define_metric(self, name: str, metric_type: MetricType) -> int:
        """The id of metric ``name`` of ``metric_type``, created if new.

        Every VM defining the name gets the same metric.
        """
        metric_id = self._metric_ids.get(name)
        if metric_id is None:
            metric_id = len(self.metrics) + 1
            self._metric_ids[name] = metric_id
            self.metrics[metric_id] = Metric(metric_id, name, metric_type)
        return metric_id

    def metric(self, name: str) -> int | None:
        """Current value of metric ``name`` as the modules defined it (None if never defined)."""
        metric_id = self._metric_ids.get(name)
        return None if metric_id is None else self.metrics[metric_id].value

    def metric_values(self) -> dict[str, int]:
        """Every counter and gauge by name."""
        return {m.name: m.value for m in self.metrics.values() if m.type != MetricType.HISTOGRAM}

    def histogram(self, name: str) -> list[int] | None:
        """The values recorded into histogram ``name``, oldest first (None if no module defined it)."""
        metric_id = self._metric_ids.get(name)
        if metric_id is None:
            return None
        metric = self.metrics[metric_id]
        if metric.type != MetricType.HISTOGRAM:
            raise MeshextError(f"metric {name!r} is a {metric.type.name.lower()}, not a histogram", where="test",
                               fix=f"read it with host.metric({name!r})")
        return list(metric.samples)

    def log_lines(self, min_level: LogLevel = LogLevel.TRACE) -> list[str]:
        """The messages every plugin logged at ``min_level`` or above, oldest first."""
        return [record.message for record in self.logs if record.level >= min_level]
