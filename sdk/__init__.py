"""meshext.sdk: write Envoy filters in Python.

A filter is a :class:`RootContext` subclass whose ``http_context`` (or
``stream_context``) class overrides the callbacks it needs::

    from meshext.sdk import Action, HttpContext, RootContext

    class AddPathLength(HttpContext):
        def on_request_headers(self, end_of_stream):
            path = self.request.headers.get(":path", "")
            self.request.headers.add("x-path-length", str(len(path)))
            return Action.CONTINUE

    class Root(RootContext):
        http_context = AddPathLength

`meshext build` compiles it, with CPython, into a Proxy-Wasm module that
stock Envoy runs.  This package is what runs inside that module; importing
it elsewhere works (for editors and type checkers) but host calls fail.

What lives here, and what it may import:

- The in-VM SDK, every ``sdk/*.py`` but ``cli.py``: the public API below
  (``contexts``, ``messages``, ``callouts``, ``log``, ``metrics``,
  ``properties``, ``shared``, ``errors``, ``config``, ``abi``) and the
  shim's Python half (``_dispatch``, ``host``).  `meshext build` copies these
  files and ``meshext/__init__.py`` into every module, and nothing else of
  meshext: they import only each other, ``meshext/__init__`` and the
  stdlib, and of the stdlib as little as they can, since every module
  imported at build time is memory in every VM: ``typing`` only for type
  checkers (``if TYPE_CHECKING:``, which the build does not import; see
  ``callouts.py``), the configuration validation (``config``: dataclasses,
  inspect) only for a root with a ``config_class``, ``json`` only for a root
  that validates its configuration (``config_class`` or ``check_config``;
  else json when a configuration comes), and no ``typing`` for the
  validation either unless the field types need it.  tests/sdk/test_sdk_snapshot_modules.py checks it.
- The C shim (``sdk/shim/``): embeds CPython, exports the Proxy-Wasm
  callbacks, and provides the host functions as ``_meshext_host``.
- Host side, never inside a module: ``sdk/builder/`` (`meshext build`) and
  ``sdk/cli.py``.  They may import ``meshext.errors``, ``meshext.paths``,
  ``meshext.phases``, ``meshext.function_profile``, wasmtime and the in-VM
  SDK.  The cold-code profile runs the built module in the test host as
  programs (``python -m meshext.runtime.standard_workload``, ``meshext
  test --module``), so nothing here imports the test host.

Besides :class:`Action`, the ABI enums exported here are the two the API
hands to filters (:class:`LogLevel` from ``log.level()``, :class:`PeerType`
in ``on_*_close``); the others (map, buffer, stream, metric types, host
statuses) are in :mod:`meshext.sdk.abi` for the rare filter that builds a
``HeaderMap`` or ``Body`` itself.  Every exception the SDK raises derives
from :class:`SdkError`.
"""

from meshext.sdk import properties
from meshext.sdk.abi import Action, LogLevel, PeerType
from meshext.sdk.callouts import GrpcResponse, GrpcStream, GrpcStreamHandler, HttpCallResponse
from meshext.sdk.contexts import FailPolicy, HttpContext, RootContext, StreamContext
from meshext.sdk.errors import CalloutError, CasMismatch, ConfigError, HostError, SdkError
from meshext.sdk.log import log
from meshext.sdk.messages import Body, HeaderMap, Message
from meshext.sdk.metrics import Counter, Gauge, Histogram
from meshext.sdk.shared import SharedData, SharedQueue

__all__ = [
    "Action", "Body", "CalloutError", "CasMismatch", "ConfigError", "Counter", "FailPolicy", "Gauge",
    "GrpcResponse", "GrpcStream", "GrpcStreamHandler", "HeaderMap", "Histogram", "HostError", "HttpCallResponse",
    "HttpContext", "LogLevel", "Message", "PeerType", "RootContext", "SdkError", "SharedData", "SharedQueue",
    "StreamContext", "log", "properties",
]
