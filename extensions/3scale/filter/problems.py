"""The one error type of configuration parsing, and the helpers every parser uses.

The 3scale module parses its configuration with serde: objects ignore keys
they do not know (except ``credentials`` and ``upstream``, which refuse
them), and a value of the wrong type fails the whole configuration.  These
helpers read a JSON value that way and raise :class:`ConfigProblem` naming
the field (``config.services[0].credentials.user_key[1].header.keys``) and
the fix, so Envoy refuses the configuration and keeps the last good one.
"""

from __future__ import annotations

# typing only for checkers: importing it would grow every VM (as in meshext.sdk).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Reader = Callable[[Any, str], Any]


class ConfigProblem(ValueError):
    """A configuration the module refuses: ``where`` is the field, ``fix`` what to write instead."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        super().__init__(f"{where}: {problem}; fix: {fix}")
        self.where = where


def kind(value: object) -> str:
    """The JSON type of ``value`` as a user would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def want_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigProblem(where, f"expected an object, got {kind(value)}", "write a map of fields here")
    return value


def want_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigProblem(where, f"expected a list, got {kind(value)}", "write a list here")
    return value


def want_string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigProblem(where, f"expected a string, got {kind(value)}", "quote the value")
    return value


def want_strings(value: object, where: str) -> list[str]:
    return [want_string(item, f"{where}[{index}]") for index, item in enumerate(want_list(value, where))]


def want_int(value: object, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigProblem(where, f"expected an integer, got {kind(value)}", "write a whole number")
    if minimum is not None and value < minimum:
        raise ConfigProblem(where, f"{value} is below {minimum}", f"write a number of at least {minimum}")
    return value


def want_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigProblem(where, f"expected true or false, got {kind(value)}", "write true or false")
    return value


def optional(data: dict[str, Any], key: str, where: str, read: Reader, default: Any = None) -> Any:
    """``read(data[key], where.key)`` when the key is there and not null (serde's Option), else ``default``."""
    value = data.get(key)
    return default if value is None else read(value, f"{where}.{key}")


def required(data: dict[str, Any], key: str, where: str, read: Reader, fix: str) -> Any:
    if data.get(key) is None:
        raise ConfigProblem(f"{where}.{key}", "required field is missing", fix)
    return read(data[key], f"{where}.{key}")


def only_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """For the two objects the module parses strictly (``credentials``, ``upstream``)."""
    for key in data:
        if key not in allowed:
            raise ConfigProblem(f"{where}.{key}", "unknown field (the 3scale module refuses it too)",
                                f"use one of {', '.join(allowed)}")
