"""The host functions Envoy links, one module per area, each registered with ``@hostcall``.

``env`` (the Proxy-Wasm ABI): ``log``, ``headers``, ``buffers``,
``properties``, ``metrics``, ``shared`` (data and queues), ``timers``,
``contexts`` (effective context, proxy_done), ``streams`` (continue, close,
local replies), ``callouts`` (HTTP and gRPC), ``extras`` (foreign
functions, Emscripten helpers).  ``wasi``: Envoy's WASI subset.
``resolve`` answers what Envoy would link for one import of a module.
"""

from __future__ import annotations

from meshext.runtime._hostcalls import (  # noqa: F401 - importing a module registers its host functions
    buffers,
    callouts,
    contexts,
    extras,
    headers,
    log,
    metrics,
    properties,
    shared,
    streams,
    timers,
    wasi,
)
from meshext.runtime._hostcalls.registry import ENV, HOST_FUNCTIONS, WASI, WASI_MODULES, HostFunction


def resolve(module: str, name: str, abi_version: str) -> HostFunction | str:
    """The host function Envoy links for the import ``module.name``, or why Envoy refuses it."""
    if module == ENV:
        function = HOST_FUNCTIONS.get((ENV, name))
        if function is None:
            return "not a Proxy-Wasm host function Envoy provides"
        if function.requires_abi is not None and function.requires_abi != abi_version:
            return "only provided to modules declaring ABI " + _version(function.requires_abi)
        return function
    if module in WASI_MODULES:
        if name in wasi.REFUSED_BY_ENVOY:
            return "Envoy declares it with a wrong signature and refuses the module (import type mismatch)"
        function = HOST_FUNCTIONS.get((WASI, name))
        if function is None:
            return "not a WASI function Envoy provides"
        return function
    return f"Envoy provides no import module named {module!r}"


def _version(marker: str) -> str:
    """``proxy_abi_version_0_2_1`` -> ``0.2.1``."""
    return marker.removeprefix("proxy_abi_version_").replace("_", ".")
