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
import sys
import types

from meshext.sdk.errors import ConfigError, SdkError

# typing is not imported here: it is about 0.7 MiB in every VM.  A filter
# whose field types are typing's objects (Any, Optional, List) has imported it
# itself, and then its functions serve; otherwise a field type is a class, a
# builtin generic (list[str]) or a union (str | None), which need no typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Field types of each config dataclass, resolved at build time by prepare():
# string annotations need eval, and modules carry no compiler at run time.
_resolved_hints: dict[type, dict[str, Any]] = {}
# The item type of a bare List or Dict annotation: any value.
_OPEN = object()


def prepare(config_class: type) -> None:
    """Resolve the field types of ``config_class`` and the dataclasses it nests (at build time).

    Raises :class:`~meshext.sdk.SdkError` when ``config_class`` is not a
    dataclass, so that the build names the mistake.
    """
    _check_dataclass(config_class)
    if config_class in _resolved_hints:
        return
    hints = _resolved_hints[config_class] = _type_hints(config_class)
    pending = list(hints.values())
    while pending:
        hint = pending.pop()
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            prepare(hint)
        pending.extend(_origin_and_args(hint)[1])


def _hints(config_class: type) -> dict[str, Any]:
    hints = _resolved_hints.get(config_class)
    return hints if hints is not None else _type_hints(config_class)


def _type_hints(config_class: type) -> dict[str, Any]:
    """``typing.get_type_hints(config_class)``, importing typing only when the hints need it.

    Without typing imported, a string annotation (``from __future__ import
    annotations``) is evaluated as get_type_hints evaluates it: in the
    namespace of the module that declares it, then of its class.  A string
    left inside a generic (``list["Rule"]``) is typing's to resolve.
    """
    if "typing" not in sys.modules:
        hints = {}
        for base in reversed(config_class.__mro__):
            module = sys.modules.get(base.__module__)
            module_namespace = vars(module) if module is not None else {}
            for name, hint in base.__dict__.get("__annotations__", {}).items():
                if isinstance(hint, str):
                    hint = eval(hint, dict(vars(base)), module_namespace)  # the filter's own annotation
                hints[name] = type(None) if hint is None else hint
        if not any(_holds_string(hint) for hint in hints.values()):
            return hints
    import typing

    return typing.get_type_hints(config_class)


def _holds_string(hint: Any) -> bool:
    return isinstance(hint, str) or any(_holds_string(arg) for arg in _origin_and_args(hint)[1])


def _origin_and_args(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``typing.get_origin(hint)`` and ``typing.get_args(hint)``, without importing
    typing (see above); the origin of every union is ``types.UnionType``,
    ``Optional[int]`` and ``Union[int, None]`` as well as ``int | None``."""
    typing = sys.modules.get("typing")
    if typing is not None:
        origin = typing.get_origin(hint)
        return types.UnionType if origin is typing.Union else origin, typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return types.UnionType, hint.__args__
    if isinstance(hint, types.GenericAlias):
        return hint.__origin__, hint.__args__
    return None, ()


def _takes_anything(hint: Any) -> bool:
    """``hint`` is typing.Any, or the open item type of a bare List or Dict."""
    return hint is _OPEN or hint is getattr(sys.modules.get("typing"), "Any", _OPEN)


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
    if _takes_anything(expected):
        return value
    origin, options = _origin_and_args(expected)
    if origin is types.UnionType:
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
        (item_type,) = options or (_OPEN,)
        return [_convert(item_type, item, f"{path}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected an object, got {_json_type(value)}", where=path)
        _, value_type = options or (str, _OPEN)
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
    origin = _origin_and_args(expected)[0] or expected
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
