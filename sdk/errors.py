"""The exceptions the SDK raises: one base, :class:`SdkError`.

As in httpx, every error the SDK raises on purpose derives from one root, so
``except SdkError`` catches them all, and each keeps the built-in base it
had (``CalloutError`` is still a ``RuntimeError``, ``ConfigError`` a
``ValueError``).  Like :class:`meshext.errors.MeshextError` an error names
*what* it is about (``where``) and, when the filter author can do something,
*how to fix it* (``fix``); ``str(error)`` shows both, on one line
(``where: message; fix: fix``) since it ends up in Envoy's log, one record per
line.  This module cannot use
``meshext.errors``: it runs inside the Wasm VM, where the SDK imports nothing
but ``meshext.sdk`` and ``meshext/__init__`` (``meshext.errors`` imports
``typing``, megabytes in every VM).
"""

from __future__ import annotations

from meshext.sdk.abi import Status


class SdkError(Exception):
    """Base of the SDK's exceptions: ``message``, ``where`` and ``fix``.

    ``where`` names the thing the error is about (a cluster, a field of the
    plugin configuration, a shared-data key) or is None; ``fix`` says what the
    filter author can change, or is None when the error is a condition to
    handle rather than a mistake (for example :class:`CasMismatch`).
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}; fix: {self.fix}" if self.fix else text


class HostError(SdkError, RuntimeError):
    """A Proxy-Wasm host function answered with a status other than OK.

    ``function`` is the host function (``"proxy_http_call"``), ``status`` its
    :class:`~meshext.sdk.abi.Status`.  Raised by the C module
    ``_meshext_host`` (sdk/shim/hostcalls.c); "not found" answers of getters
    come back as None instead.
    """

    def __init__(self, function: str, status: int) -> None:
        self.function = function
        self.status = status
        try:
            status_name = Status(status).name
        except ValueError:
            status_name = str(status)
        super().__init__(f"{function} answered {status_name}")


class OutsideVmError(SdkError, RuntimeError):
    """SDK code called the host outside a Proxy-Wasm VM (plain ``python``, an editor, a unit test)."""


class CalloutError(SdkError, RuntimeError):
    """Envoy refused to start an HTTP or gRPC call (unknown cluster, missing pseudo-headers, no healthy endpoint...).

    The message names the call and the cluster; the call was not made and no
    callback will run.
    """


class CasMismatch(SdkError):
    """Another VM changed a shared-data key since it was read: read it again and retry.

    ``key`` is the key.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__("changed by another VM since it was read", where=f"shared data key {key!r}")


class ConfigError(SdkError, ValueError):
    """The plugin configuration is refused: not JSON, or it does not fit the root's ``config_class``.

    ``where`` is the field's path (``config.limits[0].burst``).  Raised by
    validation, and by a config dataclass's ``__post_init__`` raising
    ValueError; the root context logs it and Envoy keeps the previous
    configuration.
    """
