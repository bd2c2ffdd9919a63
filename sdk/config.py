"""Validation of the plugin configuration against a dataclass.

A filter sets ``config_class = MyConfig`` (a dataclass) on its root
context; the JSON configuration is checked field by field and converted.
Errors name the field and the fix, and make Envoy refuse the configuration
(the previous one keeps serving).  Written by hand because pydantic's core
is native code that does not exist for wasm32-wasi, and jsonschema would add
megabytes to every module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from meshext.sdk.errors import ConfigError, SdkError

# Field types of each config dataclass, resolved at build time by prepare():
# string annotations need eval, and modules carry no compiler at run time.
_resolved_hints: dict[type, dict[str, Any]] = {}


def prepare(config_class: type) -> None:
    """Resolve the field types of ``config_class`` and the dataclasses it nests (at build time).

    Raises :class:`~meshext.sdk.SdkError` when ``config_class`` is not a
    dataclass, so that the build names the mistake.
    """
    _check_dataclass(config_class)
    if config_class in _resolved_hints:
        return
    hints = _resolved_hints[config_class] = typing.get_type_hints(config_class)
    pending = list(hints.values())
    while pending:
        hint = pending.pop()
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            prepare(hint)
        pending.extend(typing.get_args(hint))


def _hints(config_class: type) -> dict[str, Any]:
    hints = _resolved_hints.get(config_class)
    return hints if hints is not None else typing.get_type_hints(config_class)


def _check_dataclass(config_class: Any) -> None:
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise SdkError(f"must be a dataclass, not {config_class!r}", where="config_class",
                       fix="decorate the class with @dataclasses.dataclass")


def validate_config(config_class: type, data: Any, path: str = "config") -> Any:
    """``data`` (parsed JSON) converted into a ``config_class`` instance, field by field.

    ``path`` names ``data`` in messages.  Raises
    :class:`~meshext.sdk.ConfigError` naming the first field that does not
    fit, or the problem a ``__post_init__`` raised as ValueError.
    """
    _check_dataclass(config_class)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {_json_type(data)}", where=path)
    hints = _hints(config_class)
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}", where=path,
                          fix=f"use one of {', '.join(sorted(fields)) or '(none)'}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError("required field is missing", where=f"{path}.{name}",
                              fix=f"add {name!r} to the plugin configuration")
    try:
        return config_class(**values)
    except ConfigError:
        raise
    except ValueError as error:
        # The dataclass's own checks (__post_init__): the author's words name the problem.
        raise ConfigError(str(error) or type(error).__name__, where=path) from error


def _convert(expected: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(expected)
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(error)
        # An option whose shape the value has, refused deeper down, says the most;
        # otherwise the value fits none of them: name them all.
        deeper = [error for error in errors if error.where != path]
        if deeper:
            raise deeper[0]
        names = " or ".join(dict.fromkeys(_shape_name(option) for option in options))
        raise ConfigError(f"expected {names}, got {_json_type(value)}", where=path)
    if expected is type(None):
        if value is None:
            return None
        raise ConfigError(f"expected null, got {_json_type(value)}", where=path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {_json_type(value)}", where=path)
        (item_type,) = typing.get_args(expected) or (Any,)
        return [_convert(item_type, item, f"{path}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected an object, got {_json_type(value)}", where=path)
        _, value_type = typing.get_args(expected) or (str, Any)
        return {key: _convert(value_type, item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(expected, type) and dataclasses.is_dataclass(expected):
        return validate_config(expected, value, path)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (str, int, float, bool, dict, list):
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"expected {_TYPE_NAMES[expected]}, got {_json_type(value)} {value!r}", where=path)
    raise SdkError(f"unsupported field type {expected!r} in config_class", where=path,
                   fix="use str, int, float, bool, list, dict, Any, a nested dataclass, or a union of those")


def _shape_name(expected: Any) -> str:
    """How a configuration error names the JSON a field of type ``expected`` takes ("a list", "null")."""
    origin = typing.get_origin(expected) or expected
    if expected is type(None):
        return "null"
    if isinstance(expected, type) and dataclasses.is_dataclass(expected):
        return "an object"
    return _TYPE_NAMES.get(origin, "a value")


_TYPE_NAMES = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object", list: "a list",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return name
    return type(value).__name__
