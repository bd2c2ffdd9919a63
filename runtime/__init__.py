"""The test host room: a Proxy-Wasm host on wasmtime that behaves like Envoy 1.40, for filter tests.

The public surface is ``meshext.testing`` (the test API), ``cli`` (the
``meshext test`` command) and ``pytest_plugin`` (the pytest fixtures);
every ``_``-module is internal to the test host:

- ``_host``: ``Host``, one simulated Envoy - shared data, queues, metrics,
  the log, the clock, clusters and the event loop;
- ``_plugin``: ``PluginVM``, the test's handle on one loaded plugin;
- ``_vm``: ``Vm``, the host side of one plugin VM - contexts, the active
  context, calls into the module;
- ``_instance``: the Wasm instance - ABI marker, linking, memory, exports;
  ``_fastcall`` (wasmtime's unchecked C API) under it, and
  ``meshext.compiled_modules`` (the engine and compiled-module cache the
  builder shares) beside it;
- ``_hostcalls``: every host function Envoy links, one module per area,
  registered with ``@hostcall``, including Envoy's WASI subset;
- ``_callouts``: the HTTP and gRPC callout state machines, ``_upstreams``
  the real upstreams they can reach;
- ``_contexts`` and ``_streams``: what the callbacks act on (root, HTTP
  streams, TCP connections); ``_properties``: Envoy's attributes;
- ``_records``: data handed to tests; ``_abi``: ABI facts the SDK's enums
  do not carry;
- ``standard_workload``: the program `meshext build --cold-code` profiles a
  module with.

Imports: this room may use ``meshext.errors``, ``meshext.paths``,
``meshext.compiled_modules`` and ``meshext.sdk.abi``; ``cli`` alone also uses ``meshext.sdk.builder`` (to
build the filter ``meshext test`` runs).  Nothing here imports
``meshext.control``.
"""
