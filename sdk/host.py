"""Access to the Proxy-Wasm host functions.

Inside a meshext module this is the built-in C module ``_meshext_host``.
Outside one (an IDE, type checking, plain ``python``), importing the SDK
works but calling the host fails with an explanation.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from meshext.sdk.abi import Status

try:
    import _meshext_host as host  # type: ignore[import-not-found]

    HostError: type[Exception] = host.HostError
    # The C base of meshext.sdk.HeaderMap (sdk/shim/hostcalls.c).
    NativeHeaderMap: type = host.HeaderMap
except ImportError:

    class HostError(RuntimeError):  # type: ignore[no-redef]
        """A host function answered with a status other than OK."""

    class _NoHost:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(
                f"meshext.sdk: host function {name!r} exists only inside a Proxy-Wasm VM. "
                "Build the filter with `meshext build` and run it in Envoy, or test it "
                "with `meshext test` / the meshext.testing harness."
            )

    host = _NoHost()

    class NativeHeaderMap:  # type: ignore[no-redef]
        """Stands in for the C base of HeaderMap: constructible, every operation explains."""

        __slots__ = ("map_type",)

        def __init__(self, map_type: int) -> None:
            self.map_type = int(map_type)

        def _outside_vm(self, *args: Any, **kwargs: Any) -> Any:
            return host.get_header  # raises the explanation

        get = add = set = remove = __getitem__ = __setitem__ = __delitem__ = __contains__ = _outside_vm


def describe_host_error(error: BaseException) -> str:
    """'proxy_http_call answered BAD_ARGUMENT' from a HostError."""
    if len(error.args) == 2:
        function, status = error.args
        try:
            status_name = Status(status).name
        except ValueError:
            status_name = str(status)
        return f"{function} answered {status_name}"
    return str(error)
