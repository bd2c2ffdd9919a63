"""The errors every layer raises: bad user input, and meshext's own bugs.

A user-facing error (:class:`MeshextError`) names *what* was wrong (the file,
field or reference), and *how to fix it*.  The CLI prints it without a Python
traceback and exits with the error's ``exit_code``; libraries and the control
plane put the same text in logs and resource status.

A broken invariant inside meshext is not the user's to fix: it is raised as
:class:`InternalError`, which the CLI shows with its traceback and a request
to report it, never with a "fix".
"""

from __future__ import annotations

from typing import Any

# Exit codes of the `meshext` command (click itself uses 2 for usage errors).
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3  # a registry, proxy or control plane could not be reached
EXIT_INTERNAL = 70  # EX_SOFTWARE: a meshext bug


class MeshextError(Exception):
    """Bad input or an unusable environment, explained for the user."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class UnavailableError(MeshextError):
    """A service we depend on (registry, Envoy, control plane) did not answer."""

    exit_code = EXIT_UNAVAILABLE


class InternalError(Exception):
    """A meshext bug: an invariant of meshext's own code does not hold (not the user's input)."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(f"internal error (a meshext bug, please report it): {message}")


def first_validation_problem(error: Any, default_location: str) -> tuple[str, dict[str, Any]]:
    """The field path and details of a pydantic ValidationError's first problem.

    One naming of fields for every layer's messages (``spec.phase``,
    ``spec.jwtRules[0].issuer``, ``[filter] entry``...): list positions in
    brackets, as the SDK names configuration fields.
    """
    problem = error.errors()[0]
    path = ""
    for part in problem["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or default_location, problem
