"""Access to the Proxy-Wasm host functions.

Inside a meshext module this is the built-in C module ``_meshext_host``.
Outside one (an IDE, type checking, plain ``python``), importing the SDK
works but calling the host fails with an explanation.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _meshext_host as host  # type: ignore[import-not-found]

    # The C bases of meshext.sdk.HeaderMap and Body (sdk/shim/hostcalls.c).
    NativeHeaderMap: type = host.HeaderMap
    NativeBody: type = host.Body
except ImportError:
    from meshext.sdk.errors import OutsideVmError

    def _outside_vm(what: str) -> OutsideVmError:
        return OutsideVmError(
            f"meshext.sdk: {what} exists only inside a Proxy-Wasm VM",
            fix="build the filter with `meshext build` and run it in Envoy, or test it with `meshext test` / "
            "the meshext.testing harness",
        )

    class _NoHost:
        def __getattr__(self, name: str) -> Any:
            raise _outside_vm(f"host function {name!r}")

    host = _NoHost()

    def _explaining(name: str) -> Any:
        def operation(self: object, *args: Any, **kwargs: Any) -> Any:
            raise _outside_vm(f"{type(self).__name__}.{name}")

        return operation

    # Stand-ins for the C bases of HeaderMap and Body: constructible, every
    # operation explains where it works.
    class NativeHeaderMap:  # type: ignore[no-redef]
        __slots__ = ("map_type",)

        def __init__(self, map_type: int) -> None:
            self.map_type = int(map_type)

    class NativeBody:  # type: ignore[no-redef]
        __slots__ = ("buffer_type",)

        def __init__(self, buffer_type: int) -> None:
            self.buffer_type = int(buffer_type)

    for _name in ("get", "get_many", "add", "set", "remove", "__getitem__", "__setitem__", "__delitem__",
                  "__contains__"):
        setattr(NativeHeaderMap, _name, _explaining(_name))
    for _name in ("size", "read", "replace", "append", "prepend"):
        setattr(NativeBody, _name, _explaining(_name))

