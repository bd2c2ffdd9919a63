"""The 3scale module's value-stack operations (``ops`` of a credential source), with its code's semantics.

A source yields a stack of strings; each operation takes the stack and
returns a new one or fails (an empty result is a failure too), and a
failure makes the source not resolve.  Names, parameters and results follow
threescale-wasm-auth's ``src/configuration/operation/*.rs`` (v0.0.4), quirks
included:

- ``strlen`` counts bytes in both modes, and only ``utf8`` and ``Bytes``
  are modes (the docs' ``bytes`` is refused);
- ``split``/``rsplit`` ``max`` is the number of pieces (Rust's ``splitn``);
- a negative index (``dup``, ``swap``, ``indexes``) counts as Rust's ``%``
  makes it: ``-k`` works only when the stack length divides ``k`` (then it
  means index 0), otherwise it fails;
- ``partial`` takes at most one value whatever its ``max``;
- operations that take parameters need them: ``pop`` is ``pop: null`` or
  ``pop: 2`` (in YAML ``- pop:``), never a bare ``pop``;
- unknown parameters of an operation are ignored, an unknown operation is
  refused.
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

import binascii
import json
import re

from problems import ConfigProblem, kind, optional, want_int, want_list, want_object, want_string, want_strings
from protobuf import ProtoValue, decode_struct

from meshext.sdk import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Parser = Callable[[Any, str], "Operation"]
    Emit = Callable[[str], None]

# The module's log levels (src/log.rs), default info.
LOG_LEVELS = {"trace": log.trace, "debug": log.debug, "info": log.info, "warn": log.warn, "error": log.error,
              "critical": log.critical}


class Failed(Exception):
    """The operation did not succeed on this stack (the source does not resolve)."""


class Operation:
    """One parsed operation."""

    __slots__ = ()

    def run(self, stack: list[str]) -> list[str]:
        raise NotImplementedError


def run_all(operations: list[Operation], stack: list[str]) -> list[str]:
    """Apply ``operations`` in order (the module's ``process_operations``)."""
    for operation in operations:
        stack = operation.run(stack)
        if not stack:
            raise Failed("no values left")
    return stack


def _succeeds(operations: list[Operation], stack: list[str]) -> bool:
    try:
        run_all(operations, list(stack))
    except Failed:
        return False
    return True


def _rust_index(index: int, length: int) -> int:
    """Stack indexing as the module computes it: ``(i % len) as usize`` for negative ``i`` (Rust's ``%`` truncates)."""
    if index < 0:
        remainder = -((-index) % length)
        if remainder < 0:
            raise Failed("index out of bounds")
        index = remainder
    if index >= length:
        raise Failed("index out of bounds")
    return index


def _pieces_of_nothing(text: str) -> list[str]:
    # Rust's str::split("") yields "", every character, "".
    return ["", *text, ""]


def _split_all(text: str, separator: str) -> list[str]:
    return _pieces_of_nothing(text) if separator == "" else text.split(separator)


def _splitn(text: str, separator: str, pieces: int) -> list[str]:
    """Rust's ``splitn``: at most ``pieces`` pieces, the last one the unsplit rest."""
    if separator != "":
        return text.split(separator, pieces - 1)
    every = _pieces_of_nothing(text)
    if pieces == 1 or pieces >= len(every):
        return [text] if pieces == 1 else every
    return every[:pieces - 1] + [text[pieces - 2:]]


def _rsplitn(text: str, separator: str, pieces: int) -> list[str]:
    """Rust's ``rsplitn``: pieces from the right, in that order."""
    if separator != "":
        return text.rsplit(separator, pieces - 1)[::-1]
    every = _pieces_of_nothing(text)[::-1]
    if pieces == 1 or pieces >= len(every):
        return [text] if pieces == 1 else every
    return every[:pieces - 1] + [text[:len(text) - (pieces - 2)]]


# -- string operations: pop the top value, push results -----------------------------------------------------

class StrLen(Operation):
    __slots__ = ("minimum", "maximum")

    def __init__(self, minimum: int | None, maximum: int | None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def run(self, stack: list[str]) -> list[str]:
        length = len(_top(stack).encode())
        if (self.minimum is not None and length < self.minimum) or (self.maximum is not None and length > self.maximum):
            raise Failed("strlen")
        return stack


class StrRev(Operation):
    __slots__ = ()

    def run(self, stack: list[str]) -> list[str]:
        return [*stack[:-1], _top(stack)[::-1]]


class Split(Operation):
    __slots__ = ("separator", "pieces", "from_right")

    def __init__(self, separator: str, pieces: int, from_right: bool) -> None:
        self.separator, self.pieces, self.from_right = separator, pieces, from_right

    def run(self, stack: list[str]) -> list[str]:
        text = _top(stack)
        if self.from_right:
            parts = (_rsplitn(text, self.separator, self.pieces) if self.pieces
                     else _split_all(text, self.separator)[::-1])
        else:
            parts = _splitn(text, self.separator, self.pieces) if self.pieces else _split_all(text, self.separator)
        return [*stack[:-1], *parts]


class Replace(Operation):
    __slots__ = ("pattern", "replacement", "count")

    def __init__(self, pattern: str, replacement: str, count: int) -> None:
        self.pattern, self.replacement, self.count = pattern, replacement, count

    def run(self, stack: list[str]) -> list[str]:
        text = _top(stack)
        replaced = text.replace(self.pattern, self.replacement, self.count if self.count > 0 else -1)
        return [*stack[:-1], replaced]


class StringCheck(Operation):
    """``prefix``, ``suffix``, ``substr`` and ``glob``: the top value must pass; the stack is unchanged."""

    __slots__ = ("test",)

    def __init__(self, test: Callable[[str], bool]) -> None:
        self.test = test

    def run(self, stack: list[str]) -> list[str]:
        if not self.test(_top(stack)):
            raise Failed("string check")
        return stack


def _top(stack: list[str]) -> str:
    if not stack:
        raise Failed("no values")
    return stack[-1]


# -- decoding ------------------------------------------------------------------------------------------------

_URLSAFE = bytes.maketrans(b"-_", b"+/")


class Base64(Operation):
    """Strict base64 (padding required, as the module's base64 crate) whose result must be UTF-8."""

    __slots__ = ("urlsafe",)

    def __init__(self, urlsafe: bool) -> None:
        self.urlsafe = urlsafe

    def run(self, stack: list[str]) -> list[str]:
        data = _top(stack).encode()
        if self.urlsafe:
            if b"+" in data or b"/" in data:
                raise Failed("not url-safe base64")
            data = data.translate(_URLSAFE)
        elif b"-" in data or b"_" in data:
            raise Failed("not standard base64")
        try:
            decoded = binascii.a2b_base64(data, strict_mode=True).decode()
        except (binascii.Error, ValueError):
            raise Failed("base64") from None
        return [*stack[:-1], decoded]


# -- format: parse the top value, look a string up in it ------------------------------------------------------

class Format(Operation):
    __slots__ = ("protobuf", "path", "keys")

    def __init__(self, protobuf: bool, path: list[str], keys: list[str]) -> None:
        self.protobuf, self.path, self.keys = protobuf, path, keys

    def run(self, stack: list[str]) -> list[str]:
        text = _top(stack)
        try:
            value = (ProtoValue.struct(decode_struct(text.encode("utf-8", "surrogateescape"))) if self.protobuf
                     else ProtoValue.from_json(json.loads(text)))
        except ValueError:
            raise Failed("format: cannot parse") from None
        found = value.lookup(self.path)
        match = found.match_one(self.keys) if found is not None else None
        if match is None or not match.is_string():
            raise Failed("format: no string found")
        return [*stack[:-1], match.as_string()]


# -- stack operations: the whole stack ------------------------------------------------------------------------

class Length(Operation):
    __slots__ = ("minimum", "maximum")

    def __init__(self, minimum: int | None, maximum: int | None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        size = len(stack)
        if (self.minimum is not None and size < self.minimum) or (self.maximum is not None and size > self.maximum):
            raise Failed("length")
        return stack


class StackOp(Operation):
    """The stack operations that are one line each; ``verb`` names the module's variant."""

    __slots__ = ("verb", "argument")

    def __init__(self, verb: str, argument: Any) -> None:
        self.verb, self.argument = verb, argument

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        verb, argument = self.verb, self.argument
        if verb == "join":
            result = [argument.join(stack)]
        elif verb == "reverse":
            result = stack[::-1]
        elif verb == "contains":
            if argument not in stack:
                raise Failed("contains")
            result = stack
        elif verb == "push":
            result = [*stack, argument]
        elif verb == "pop":
            result = stack[:max(len(stack) - argument, 0)]
        elif verb == "dup":
            result = [*stack, stack[_rust_index(argument, len(stack))]]
        elif verb == "xchg":
            result = [*stack[:-1], argument]
        elif verb == "indexes":
            result = [stack[_rust_index(index, len(stack))] for index in argument] if argument else stack
        else:
            raise AssertionError(verb)
        if not result:
            raise Failed("no values left")
        return result


class TakeDrop(Operation):
    __slots__ = ("take", "head", "tail")

    def __init__(self, take: bool, head: int | None, tail: int | None) -> None:
        self.take, self.head, self.tail = take, head, tail

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        if self.take:
            heads, rest = (stack[:self.head], stack[self.head:]) if self.head is not None else ([], stack)
            tails = rest[max(len(rest) - self.tail, 0):] if self.tail is not None else []
            result = heads + tails
        else:
            rest = stack[min(self.head, len(stack)):] if self.head is not None else stack
            result = rest[:max(len(rest) - self.tail, 0)] if self.tail is not None else rest
        if not result:
            raise Failed("no values left")
        return result


class Swap(Operation):
    __slots__ = ("source", "target")

    def __init__(self, source: int, target: int) -> None:
        self.source, self.target = source, target

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        if self.source == self.target:
            return stack
        first, second = _rust_index(self.source, len(stack)), _rust_index(self.target, len(stack))
        result = list(stack)
        result[first], result[second] = result[second], result[first]
        return result


class EachValue(Operation):
    """``flat_map`` (every value must succeed) and ``select`` (values that fail are dropped)."""

    __slots__ = ("operations", "keep_going")

    def __init__(self, operations: list[Operation], keep_going: bool) -> None:
        self.operations, self.keep_going = operations, keep_going

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        result: list[str] = []
        for value in stack:
            try:
                result += run_all(self.operations, [value])
            except Failed:
                if not self.keep_going:
                    raise
        if not result:
            raise Failed("no values left")
        return result


class Values(Operation):
    """Log the stack (``[3scale-auth/stack]``), unchanged."""

    __slots__ = ("level", "label")

    def __init__(self, level: Emit, label: str | None) -> None:
        self.level, self.label = level, label

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        self.level(f"[3scale-auth/stack] values at {self.label or '()'}: "
                           + ", ".join(json.dumps(value) for value in stack))
        return stack


# -- check: side-effect free assertions -------------------------------------------------------------------------

class Check(Operation):
    __slots__ = ("verb", "operations")

    def __init__(self, verb: str, operations: list[Operation]) -> None:
        self.verb, self.operations = verb, operations

    def run(self, stack: list[str]) -> list[str]:
        verb, operations = self.verb, self.operations
        if verb == "ok":
            passed = True
        elif verb == "fail":
            passed = False
        elif verb == "any":
            passed = any(_succeeds([op], stack) for op in operations)
        elif verb == "one_of":
            passed = sum(_succeeds([op], stack) for op in operations) == 1
        elif verb == "all":
            passed = all(_succeeds([op], stack) for op in operations)
        elif verb == "none":
            passed = not any(_succeeds([op], stack) for op in operations)
        elif verb == "assert":
            passed = _succeeds(operations, stack)
        elif verb == "refute":
            passed = not _succeeds(operations, stack)
        else:
            raise AssertionError(verb)
        if not passed:
            raise Failed(verb)
        return stack


# -- control: evaluation flow -----------------------------------------------------------------------------------

class Test(Operation):
    __slots__ = ("condition", "then", "otherwise")

    def __init__(self, condition: Operation, then: list[Operation], otherwise: list[Operation]) -> None:
        self.condition, self.then, self.otherwise = condition, then, otherwise

    def run(self, stack: list[str]) -> list[str]:
        branch = self.then if _succeeds([self.condition], stack) else self.otherwise
        return run_all(branch, stack)


class Alternatives(Operation):
    """``or`` (the first that succeeds) and ``xor`` (exactly one may succeed); ``and`` is a sequence."""

    __slots__ = ("verb", "operations")

    def __init__(self, verb: str, operations: list[Operation]) -> None:
        self.verb, self.operations = verb, operations

    def run(self, stack: list[str]) -> list[str]:
        if self.verb == "and":
            return run_all(self.operations, stack)
        results = []
        for operation in self.operations:
            try:
                results.append(run_all([operation], list(stack)))
            except Failed:
                continue
            if self.verb == "or":
                return results[0]
            if len(results) > 1:
                break
        if len(results) != 1:
            raise Failed(self.verb)
        return results[0]


class Cloned(Operation):
    """``cloned`` (ops on a copy of the stack) and ``partial`` (ops on the top value, taken off)."""

    __slots__ = ("operations", "prepend", "partial", "take")

    def __init__(self, operations: list[Operation], prepend: bool, partial: bool, take: int = 1) -> None:
        self.operations, self.prepend, self.partial = operations, prepend, partial
        self.take = min(take, 1)  # the module caps partial's max at 1 (so max: 0 always fails)

    def run(self, stack: list[str]) -> list[str]:
        if self.partial:
            if not stack or self.take == 0:
                raise Failed("no values")
            stack, taken = stack[:-1], stack[-1:]
        else:
            taken = list(stack)
        produced = run_all(self.operations, taken)
        return produced + stack if self.prepend else stack + produced


class Top(Operation):
    __slots__ = ("operations",)

    def __init__(self, operations: list[Operation]) -> None:
        self.operations = operations

    def run(self, stack: list[str]) -> list[str]:
        if not stack:
            raise Failed("no values")
        return stack[:-1] + run_all(self.operations, [stack[-1]])


class Log(Operation):
    __slots__ = ("level", "message")

    def __init__(self, level: Emit, message: str) -> None:
        self.level, self.message = level, message

    def run(self, stack: list[str]) -> list[str]:
        self.level(f"[3scale-auth/config] {self.message}")
        return stack


# -- parsing ---------------------------------------------------------------------------------------------------

def _glob_regex(pattern: str) -> str:
    """The module's glob: ``*`` any run, ``+`` a non-empty run, ``?`` at most one character; ``\\`` escapes."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "*+?":
            out.append("." + char)
        else:
            out.append(re.escape(char))
    if escaped:
        out.append(re.escape("\\"))
    return r"\A" + "".join(out) + r"\Z"


def compile_globs(patterns: list[str], where: str) -> Callable[[str], bool]:
    """A matcher true when any glob matches the whole string (the module's ``GlobPatternSet``)."""
    try:
        compiled = [re.compile(_glob_regex(pattern)) for pattern in patterns]
    except re.error as error:
        raise ConfigProblem(where, f"glob does not compile ({error})", "escape special characters with \\") from None
    return lambda text: any(regex.match(text) for regex in compiled)


def _level(value: object, where: str) -> Emit:
    name = want_string(value, where)
    if name not in LOG_LEVELS:
        raise ConfigProblem(where, f"unknown log level {name!r}", f"use one of {', '.join(LOG_LEVELS)}")
    return LOG_LEVELS[name]


def _result_mode(value: object, where: str) -> bool:
    mode = want_string(value, where)
    if mode not in ("append", "prepend"):
        raise ConfigProblem(where, f"unknown result mode {mode!r}", "use append or prepend")
    return mode == "prepend"


def _length_mode(value: object, where: str) -> str:
    mode = want_string(value, where)
    if mode not in ("utf8", "Bytes"):
        raise ConfigProblem(where, f"unknown strlen mode {mode!r} (the module knows only 'utf8' and 'Bytes', "
                            "and counts bytes in both)", "write mode: utf8, or leave it out")
    return mode


def parse_operations(value: object, where: str) -> list[Operation]:
    """A list of operations (``ops``)."""
    return [parse_operation(item, f"{where}[{index}]") for index, item in enumerate(want_list(value, where))]


UNIT_OPERATIONS = ("strrev", "ok", "fail", "base64_standard", "base64_urlsafe", "reverse")
# The operations that write to Envoy's log (Log and Values below): a credential resolution that runs one is
# not memoised (credentials.py), since each request must log.
LOGGING_OPERATIONS = ("log", "values")


def parse_operation(value: object, where: str) -> Operation:
    """One operation: a bare name (operations without parameters) or a one-key object ``{name: parameters}``."""
    if isinstance(value, str):
        name, argument = value, None
        if name not in UNIT_OPERATIONS:
            fix = (f"write it as an object, e.g. '{name}: ...'" if name in PARSERS
                   else f"use one of {', '.join(sorted(PARSERS))}")
            raise ConfigProblem(where, f"{name!r} is not an operation without parameters", fix)
    elif isinstance(value, dict) and len(value) == 1:
        ((name, argument),) = value.items()
    else:
        raise ConfigProblem(where, f"expected an operation (a name, or an object with one key), got {kind(value)}",
                            "write e.g. '- split: {separator: \":\"}' or '- strrev'")
    parser = PARSERS.get(name)
    if parser is None:
        raise ConfigProblem(where, f"unknown operation {name!r}", f"use one of {', '.join(sorted(PARSERS))}")
    return parser(argument, f"{where}.{name}")


def _unit(build: Callable[[], Operation]) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        if argument is not None:
            raise ConfigProblem(where, f"takes no parameters, got {kind(argument)}", "write the bare operation name")
        return build()
    return parse


def _fields(argument: object, where: str) -> dict[str, Any]:
    return want_object(argument, where)


def _uint(value: object, where: str) -> int:
    return want_int(value, where, minimum=0)


def _parse_strlen(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    optional(fields, "mode", where, _length_mode)
    return StrLen(optional(fields, "min", where, _uint), optional(fields, "max", where, _uint))


def _parse_split(from_right: bool) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        fields = _fields(argument, where)
        return Split(optional(fields, "separator", where, want_string, ":"), optional(fields, "max", where, _uint, 0),
                     from_right)
    return parse


def _parse_replace(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    for key in ("pattern", "with"):
        if fields.get(key) is None:
            raise ConfigProblem(f"{where}.{key}", "required field is missing", f"give replace a {key!r}")
    return Replace(want_string(fields["pattern"], f"{where}.pattern"), want_string(fields["with"], f"{where}.with"),
                   optional(fields, "max", where, _uint, 0))


def _parse_string_test(test: Callable[[str, str], bool]) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        expected = want_string(argument, where)
        return StringCheck(lambda text: test(text, expected))
    return parse


def _parse_glob(argument: object, where: str) -> Operation:
    return StringCheck(compile_globs(want_strings(argument, where), where))


def _parse_format(protobuf: bool) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        fields = _fields(argument, where)
        if fields.get("keys") is None:
            raise ConfigProblem(f"{where}.keys", "required field is missing", "list the keys to look up")
        return Format(protobuf, optional(fields, "path", where, want_strings, []),
                      want_strings(fields["keys"], f"{where}.keys"))
    return parse


def _parse_length(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    return Length(optional(fields, "min", where, _uint), optional(fields, "max", where, _uint))


def _parse_stack_op(verb: str, read: Callable[[Any, str], Any], default: Any = None) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        if argument is None and default is None:
            raise ConfigProblem(where, "missing parameter", f"give {verb} its parameter")
        return StackOp(verb, default if argument is None else read(argument, where))
    return parse


def _ints(value: object, where: str) -> list[int]:
    return [want_int(item, f"{where}[{index}]") for index, item in enumerate(want_list(value, where))]


def _parse_take_drop(take: bool) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        fields = _fields(argument, where)
        return TakeDrop(take, optional(fields, "head", where, _uint), optional(fields, "tail", where, _uint))
    return parse


def _parse_swap(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    for key in ("from", "to"):
        if fields.get(key) is None:
            raise ConfigProblem(f"{where}.{key}", "required field is missing", "give swap 'from' and 'to' indexes")
    return Swap(want_int(fields["from"], f"{where}.from"), want_int(fields["to"], f"{where}.to"))


def _parse_each(keep_going: bool) -> Parser:
    return lambda argument, where: EachValue(parse_operations(argument, where), keep_going)


def _parse_values(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    return Values(optional(fields, "level", where, _level, LOG_LEVELS["info"]),
                  optional(fields, "id", where, want_string))


def _parse_check(verb: str) -> Parser:
    return lambda argument, where: Check(verb, parse_operations(argument, where))


def _parse_test(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    for key in ("if", "then"):
        if fields.get(key) is None:
            raise ConfigProblem(f"{where}.{key}", "required field is missing", "give test 'if' and 'then'")
    return Test(parse_operation(fields["if"], f"{where}.if"), parse_operations(fields["then"], f"{where}.then"),
                optional(fields, "else", where, parse_operations, []))


def _parse_alternatives(verb: str) -> Parser:
    return lambda argument, where: Alternatives(verb, parse_operations(argument, where))


def _parse_cloned(partial: bool) -> Parser:
    def parse(argument: object, where: str) -> Operation:
        fields = _fields(argument, where)
        if fields.get("ops") is None:
            raise ConfigProblem(f"{where}.ops", "required field is missing", "list the operations to run")
        return Cloned(parse_operations(fields["ops"], f"{where}.ops"),
                      optional(fields, "result", where, _result_mode, False), partial,
                      optional(fields, "max", where, _uint, 1) if partial else 1)
    return parse


def _parse_log(argument: object, where: str) -> Operation:
    fields = _fields(argument, where)
    if fields.get("msg") is None:
        raise ConfigProblem(f"{where}.msg", "required field is missing", "give log a msg")
    return Log(optional(fields, "level", where, _level, LOG_LEVELS["info"]), want_string(fields["msg"], f"{where}.msg"))


PARSERS: dict[str, Parser] = {
    # string
    "strlen": _parse_strlen, "strrev": _unit(StrRev), "split": _parse_split(False), "rsplit": _parse_split(True),
    "replace": _parse_replace, "prefix": _parse_string_test(str.startswith),
    "suffix": _parse_string_test(str.endswith), "substr": _parse_string_test(lambda text, part: part in text),
    "glob": _parse_glob,
    # check
    "any": _parse_check("any"), "one_of": _parse_check("one_of"), "all": _parse_check("all"),
    "none": _parse_check("none"), "assert": _parse_check("assert"), "refute": _parse_check("refute"),
    "ok": _unit(lambda: Check("ok", [])), "fail": _unit(lambda: Check("fail", [])),
    # control
    "test": _parse_test, "or": _parse_alternatives("or"), "xor": _parse_alternatives("xor"),
    "and": _parse_alternatives("and"), "cloned": _parse_cloned(False), "partial": _parse_cloned(True),
    "top": lambda argument, where: Top(parse_operations(argument, where)), "log": _parse_log,
    # decode
    "base64_standard": _unit(lambda: Base64(False)), "base64_urlsafe": _unit(lambda: Base64(True)),
    # format
    "json": _parse_format(False), "protobuf": _parse_format(True),
    # stack
    "length": _parse_length, "join": _parse_stack_op("join", want_string),
    "reverse": _unit(lambda: StackOp("reverse", None)),
    "contains": _parse_stack_op("contains", want_string), "push": _parse_stack_op("push", want_string),
    "pop": _parse_stack_op("pop", _uint, 1), "dup": _parse_stack_op("dup", want_int, -1),
    "xchg": _parse_stack_op("xchg", want_string), "take": _parse_take_drop(True), "drop": _parse_take_drop(False),
    "swap": _parse_swap, "indexes": _parse_stack_op("indexes", _ints, []), "flat_map": _parse_each(False),
    "select": _parse_each(True), "values": _parse_values,
}
