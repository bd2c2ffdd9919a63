"""The table of host functions Envoy links, filled by ``@hostcall`` next to each function.

Each host function is a plain function taking the ``Vm`` it runs for and
then the module's arguments; the decorator records its import name and
Wasm signature where it is defined::

    @hostcall("proxy_get_header_map_size", "ii", "i")
    def get_header_map_size(vm: Vm, map_type: int, return_size: int) -> int: ...

Signatures are one letter per value: ``i`` an i32, ``I`` an i64; the result
is ``"i"`` (a proxy_status_t or WASI errno) or ``""``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from meshext.errors import InternalError
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm

ENV = "env"
WASI = "wasi"  # both WASI import modules (WASI_MODULES) share one table
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

HostImplementation = Callable[..., int | None]
_Function = TypeVar("_Function", bound=HostImplementation)


@dataclass(frozen=True)
class HostFunction:
    """One function Envoy links: where the module imports it from, its Wasm signature, its code."""

    namespace: str  # ENV or WASI
    name: str
    params: str
    results: str
    implementation: HostImplementation
    # The ABI version marker a module must export to be given this function (None: every module).
    requires_abi: str | None = None

    def bind(self, vm: Vm) -> Callable[..., int | None]:
        """The function as the linker calls it: the module's arguments only."""
        return functools.partial(self.implementation, vm)


HOST_FUNCTIONS: dict[tuple[str, str], HostFunction] = {}


def hostcall(name: str, params: str, results: str, *, namespace: str = ENV,
             requires_abi: str | None = None) -> Callable[[_Function], _Function]:
    """Register the decorated function as the host function ``name`` with this Wasm signature."""
    if set(params) - {"i", "I"} or results not in ("i", ""):
        raise InternalError(f"host function {name}: bad signature {params!r} -> {results!r}")

    def register(implementation: _Function) -> _Function:
        if (namespace, name) in HOST_FUNCTIONS:
            raise InternalError(f"host function {namespace}.{name} is registered twice")
        HOST_FUNCTIONS[(namespace, name)] = HostFunction(namespace, name, params, results, implementation,
                                                         requires_abi)
        return implementation

    return register


def guarded(action: Callable[[], object]) -> int:
    """Run ``action`` (writes into the module's memory): OK, or INVALID_MEMORY_ACCESS on a bad pointer."""
    try:
        action()
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK
