"""Logging into Envoy's log, at Envoy's levels.

``log.info("...")`` etc.; messages below Envoy's current level for the
``wasm`` component are dropped by Envoy.  ``print()`` also works: stdout
lines are logged at info, stderr lines at error.
"""

from __future__ import annotations

from meshext.sdk.abi import LogLevel
from meshext.sdk.host import host


class Logger:
    __slots__ = ()

    def trace(self, message: str) -> None:
        host.log(0, message)

    def debug(self, message: str) -> None:
        host.log(1, message)

    def info(self, message: str) -> None:
        host.log(2, message)

    def warn(self, message: str) -> None:
        host.log(3, message)

    warning = warn

    def error(self, message: str) -> None:
        host.log(4, message)

    def critical(self, message: str) -> None:
        host.log(5, message)

    def level(self) -> LogLevel:
        """Envoy's current log level for Wasm code (skip building costly messages below it)."""
        return LogLevel(host.get_log_level())


log = Logger()
