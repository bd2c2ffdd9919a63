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


class ConfigError(ValueError):
    """The plugin configuration does not fit the filter's config_class."""


# Field types of each config dataclass, resolved at build time by prepare():
# string annotations need eval, and modules carry no compiler at run time.
_resolved_hints: dict[type, dict[str, Any]] = {}


def prepare(config_class: type) -> None:
    """Resolve the field types of ``config_class`` and the dataclasses it nests."""
    if config_class in _resolved_hints or not dataclasses.is_dataclass(config_class):
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


def validate_config(config_class: type, data: Any, path: str = "config") -> Any:
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"config_class must be a dataclass, not {config_class!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {_json_type(data)}")
    hints = _hints(config_class)
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown field {unknown[0]!r}; fix: use one of {', '.join(sorted(fields)) or '(none)'}"
        )
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{name}: required field is missing; fix: add {name!r} to the plugin configuration")
    return config_class(**values)


def _convert(expected: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(expected)
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(expected):
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[-1])
    if expected is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {_json_type(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_json_type(value)}")
        (item_type,) = typing.get_args(expected) or (Any,)
        return [_convert(item_type, item, f"{path}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {_json_type(value)}")
        _, value_type = typing.get_args(expected) or (str, Any)
        return {key: _convert(value_type, item, f"{path}.{key}") for key, item in value.items()}
    if dataclasses.is_dataclass(expected):
        return validate_config(expected, value, path)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (str, int, float, bool, dict, list):
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{path}: expected {_TYPE_NAMES[expected]}, got {_json_type(value)} {value!r}")
    raise TypeError(f"{path}: unsupported type {expected!r} in config_class")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object", list: "a list"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return name
    return type(value).__name__
