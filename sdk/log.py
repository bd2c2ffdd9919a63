"""Logging into Envoy's log, at Envoy's levels.

``log.info("...")`` etc.; messages below Envoy's current level for the
``wasm`` component are dropped by Envoy.  ``print()`` also works: stdout
lines are logged at info, stderr lines at error.
"""

from __future__ import annotations

from meshext.sdk.abi import LogLevel
from meshext.sdk.host import host


class Logger:
    """Writes to Envoy's log; the one instance is :data:`log`.

    Each method takes the message as a str; Envoy drops messages below its
    current level for the ``wasm`` component.
    """

    __slots__ = ()

    # Levels as the numbers of LogLevel: an enum member lookup per call is
    # slow in Python 3.11 (see _speed_up_action_lookup in _dispatch.py).

    def trace(self, message: str) -> None:
        """Log ``message`` at trace level."""
        host.log(0, message)

    def debug(self, message: str) -> None:
        """Log ``message`` at debug level."""
        host.log(1, message)

    def info(self, message: str) -> None:
        """Log ``message`` at info level."""
        host.log(2, message)

    def warn(self, message: str) -> None:
        """Log ``message`` at warning level (also :meth:`warning`)."""
        host.log(3, message)

    warning = warn

    def error(self, message: str) -> None:
        """Log ``message`` at error level."""
        host.log(4, message)

    def critical(self, message: str) -> None:
        """Log ``message`` at critical level."""
        host.log(5, message)

    def level(self) -> LogLevel:
        """Envoy's current log level for Wasm code (skip building costly messages below it)."""
        return LogLevel(host.get_log_level())


log = Logger()
"""The logger filters use: ``log.info("...")``."""
