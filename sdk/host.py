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
    # The C bases of meshext.sdk.HeaderMap and Body (sdk/shim/hostcalls.c).
    NativeHeaderMap: type = host.HeaderMap
    NativeBody: type = host.Body
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

    class _OutsideVM:
        """Stands in for the C bases of HeaderMap and Body: constructible, every operation explains."""

        __slots__ = ()

        def _explain(self, *args: Any, **kwargs: Any) -> Any:
            return host.get_header  # raises the explanation

    class NativeHeaderMap(_OutsideVM):  # type: ignore[no-redef]
        __slots__ = ("map_type",)

        def __init__(self, map_type: int) -> None:
            self.map_type = int(map_type)

        get = add = set = remove = _OutsideVM._explain
        __getitem__ = __setitem__ = __delitem__ = __contains__ = _OutsideVM._explain

    class NativeBody(_OutsideVM):  # type: ignore[no-redef]
        __slots__ = ("buffer_type",)

        def __init__(self, buffer_type: int) -> None:
            self.buffer_type = int(buffer_type)

        size = read = replace = append = prepend = _OutsideVM._explain


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
