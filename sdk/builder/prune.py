"""Prune a snapshotted module: code no request can reach becomes a trap.

Envoy's V8 compiles every function of a module with TurboFan before the
first request (proxy-wasm-cpp-host turns the baseline compiler off), at about
3 CPU-µs per byte of code on these machines, and keeps the machine code in
every Envoy.  After pre-initialisation much of CPython can no longer run:

- interpreter start-up, reachable only from the build-time exports the
  snapshot drops (``_initialize``, ``meshext_preinit``);
- the parser and compiler: the filter, the SDK and the stdlib were compiled
  at build time, so only ``eval``/``exec``/``compile`` of source text at run
  time would need them;
- C modules that nothing in the module's file system imports and that were
  not imported at build time;
- Proxy-Wasm callbacks the filter does not override: their exports go, so
  Envoy does not even call into the module for them.

Function indices, the table and memory stay as they are (the snapshot holds
function-table indices), only bodies change: a pruned function's body is
``unreachable``, and each way into removed code calls a shim function that
raises (``meshext_no_compiler``: SyntaxError, ``meshext_no_module``:
ImportError; sdk/shim/shim.c) and returns NULL, as the real one does on
failure.  No maintained Python library decodes Wasm code, so the few
instruction encodings needed to find direct calls are decoded here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from meshext.sdk.builder import wasm_binary as wb
from meshext.sdk.contexts import STREAM_CALLBACKS

# CPython's ways into the parser and compiler (Parser/peg_api.c, Python/compile.c,
# symtable.c, future.c, ast_opt.c, ast.c, Python-ast.c's converters, the
# tokenizer).  Each returns NULL or 0 with an exception set on failure.
COMPILER_ENTRY_POINTS = (
    "_PyParser_ASTFromString", "_PyParser_ASTFromFile", "_PyAST_Compile", "_PyAST_Optimize", "_PyAST_Validate",
    "_PySymtable_Build", "_Py_SymtableStringObjectFlags", "_PyFuture_FromAST", "PyAST_mod2obj", "PyAST_obj2mod",
    "_PyTokenizer_FromString", "_PyTokenizer_FromUTF8", "_PyTokenizer_FromFile",
    "_PyPegen_run_parser_from_string", "_PyAST_ExprAsUnicode",
)
# libpython objects whose code only the entry points above lead to.  Their
# address-taken functions (the generated parser passes rules by pointer) do
# not keep them alive through the function table.
COMPILER_OBJECTS = (
    "parser.o", "pegen.o", "pegen_errors.o", "action_helpers.o", "string_parser.o", "tokenizer.o", "peg_api.o",
    "compile.o", "symtable.o", "ast_opt.o", "future.o", "ast_unparse.o", "ast.o",
)
NO_COMPILER_HANDLER = "meshext_no_compiler"
NO_MODULE_HANDLER = "meshext_no_module"

_UNREACHABLE_BODY = b"\x00\x00\x0b"  # no locals; unreachable; end
_BLOCK_OPCODES = {0x02, 0x03, 0x04}
_ONE_ULEB = {0x0C, 0x0D, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0xD2}
_MEMARG = set(range(0x28, 0x3F))
_SATURATING_AND_BULK = {  # 0xFC sub-opcode -> number of uleb immediates
    0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1,
}


def unused_callback_exports(overridden: Iterable[str], *, root_on_done: bool) -> set[str]:
    """Exports of the stream callbacks (STREAM_CALLBACKS) that no context of the filter overrides.

    ``overridden`` names the methods its contexts override; ``root_on_done``
    keeps ``proxy_on_done``, which roots share.  Envoy skips a callback the
    module does not export: one call into the VM less per stream and event.
    """
    keep = set(overridden)
    unused = {callback.export for callback in STREAM_CALLBACKS if callback.method not in keep}
    if root_on_done:
        unused.discard("proxy_on_done")
    return unused


class Module:
    """The parts of a module pruning reads: functions, names, calls, roots."""

    def __init__(self, module: bytes) -> None:
        self.sections = wb.parse_sections(module)
        self.imported_functions = wb.imported_counts(self.sections)[0]
        self.exports = wb.read_exports(self.sections)
        self.names = _function_names(self.sections)
        self.index_of = {name: index for index, name in self.names.items()}
        self.unique_names = {name for name, count in Counter(self.names.values()).items() if count == 1}
        self.bodies = _code_bodies(self.sections)
        self.table_functions = _table_functions(self.sections)
        self._types = wb.function_types(self.sections)
        self._type_of = wb.defined_function_type_indices(self.sections)

    def function(self, name: str) -> int:
        if name not in self.unique_names:
            raise ValueError(f"the shim has no single function {name!r} (built without a name section?)")
        return self.index_of[name]

    def calls(self, index: int) -> set[int]:
        return _direct_calls(self.bodies[index - self.imported_functions])

    def result_types(self, index: int) -> bytes:
        return self._types[self._type_of[index - self.imported_functions]][1]


def prune(
    module: bytes,
    *,
    drop_exports: Iterable[str],
    removed_modules: dict[str, str],
    functions_by_part: dict[str, list[str]],
) -> bytes:
    """``module`` without ``drop_exports`` and with unreachable code trapping.

    ``removed_modules`` maps the C modules nothing can import any more to
    their init functions; ``functions_by_part`` names the functions only the
    compiler or one C module defines (sdk/builder/shim.py): being in the
    function table does not keep those alive.
    """
    parsed = Module(module)
    dropped = set(drop_exports)
    exports = [export for export in parsed.exports if export.name not in dropped]
    redirect = {parsed.function(name): NO_COMPILER_HANDLER for name in COMPILER_ENTRY_POINTS if name in parsed.index_of}
    redirect |= {parsed.function(init): NO_MODULE_HANDLER for init in removed_modules.values()}
    handlers = {name: parsed.function(name) for name in (NO_COMPILER_HANDLER, NO_MODULE_HANDLER)}
    unrooted = {
        parsed.index_of[name]
        for part in ("compiler", *removed_modules)
        for name in functions_by_part.get(part, ())
        if name in parsed.unique_names
    }

    roots = {export.index for export in exports if export.kind == wb.EXTERNAL_FUNC} | set(handlers.values())
    roots |= parsed.table_functions - set(redirect) - unrooted
    reachable = _reachable(parsed, roots, stop=set(redirect))

    first = parsed.imported_functions
    bodies = []
    for offset, body in enumerate(parsed.bodies):
        index = first + offset
        if index in redirect:
            bodies.append(_raising_body(handlers[redirect[index]], parsed.result_types(index)))
        elif index in reachable:
            bodies.append(body)
        else:
            bodies.append(_UNREACHABLE_BODY)
    payload = bytearray(wb.uleb(len(bodies)))
    for body in bodies:
        payload += wb.uleb(len(body)) + body
    sections = [section for section in parsed.sections if section.id != wb.CUSTOM]
    wb.replace_section(sections, wb.Section(wb.CODE, bytes(payload)))
    wb.replace_section(sections, wb.export_section(exports))
    return wb.encode_sections(sections)


def _raising_body(handler: int, results: bytes) -> bytes:
    """Call the handler (it sets the exception) and return its 0 as the result."""
    call = b"\x10" + wb.uleb(handler)
    if results == bytes([wb.I32]):
        return b"\x00" + call + b"\x0b"
    if results == b"":
        return b"\x00" + call + b"\x1a\x0b"  # drop
    raise ValueError(f"cannot redirect a function returning {results.hex()}")


def _reachable(parsed: Module, roots: set[int], *, stop: set[int]) -> set[int]:
    seen = set(roots)
    pending = [index for index in roots if index >= parsed.imported_functions]
    while pending:
        index = pending.pop()
        if index in stop:
            continue
        for callee in parsed.calls(index):
            if callee not in seen:
                seen.add(callee)
                if callee >= parsed.imported_functions:
                    pending.append(callee)
    return seen


def _function_names(sections: list[wb.Section]) -> dict[int, str]:
    for section in sections:
        if section.id != wb.CUSTOM:
            continue
        reader = wb.Reader(section.payload)
        if reader.name() != "name":
            continue
        names: dict[int, str] = {}
        while reader.position < len(section.payload):
            kind = reader.byte()
            end = reader.uleb() + reader.position
            if kind == 1:  # function names
                for _ in range(reader.uleb()):
                    index = reader.uleb()
                    names[index] = reader.name()
            reader.position = end
        return names
    return {}


def _code_bodies(sections: list[wb.Section]) -> list[bytes]:
    section = wb.find_section(sections, wb.CODE)
    if section is None:
        return []
    reader = wb.Reader(section.payload)
    bodies = []
    for _ in range(reader.uleb()):
        size = reader.uleb()
        bodies.append(section.payload[reader.position:reader.position + size])
        reader.position += size
    return bodies


def _table_functions(sections: list[wb.Section]) -> set[int]:
    """Functions in active element segments of the form wasm-ld writes."""
    section = wb.find_section(sections, wb.ELEMENT)
    if section is None:
        return set()
    reader = wb.Reader(section.payload)
    functions: set[int] = set()
    for _ in range(reader.uleb()):
        flags = reader.uleb()
        if flags not in (0, 2):
            raise ValueError(f"element segment kind {flags} is not supported")
        if flags == 2:
            reader.uleb()  # table index
        reader.skip_const_expr()
        if flags == 2:
            reader.byte()  # elemkind: funcref
        functions.update(reader.uleb() for _ in range(reader.uleb()))
    return functions


def _direct_calls(body: bytes) -> set[int]:
    """Indices of the functions a body calls directly (``call``)."""
    calls: set[int] = set()
    reader = wb.Reader(body)
    for _ in range(reader.uleb()):  # local declarations
        reader.uleb()
        reader.byte()
    size = len(body)
    while reader.position < size:
        opcode = reader.byte()
        if opcode == 0x10:
            calls.add(reader.uleb())
        elif opcode in _ONE_ULEB:
            reader.uleb()
        elif opcode in _MEMARG:
            reader.uleb()
            reader.uleb()
        elif opcode in _BLOCK_OPCODES:
            _skip_block_type(reader)
        elif opcode == 0x41 or opcode == 0x42:  # i32/i64.const: signed LEB, same byte layout
            reader.uleb()
        elif opcode == 0x43:
            reader.position += 4
        elif opcode == 0x44:
            reader.position += 8
        elif opcode == 0x0E:  # br_table
            for _ in range(reader.uleb() + 1):
                reader.uleb()
        elif opcode == 0x11:  # call_indirect: type, table
            reader.uleb()
            reader.uleb()
        elif opcode in (0x3F, 0x40, 0xD0):  # memory.size/grow, ref.null
            reader.byte()
        elif opcode == 0x1C:  # select with types
            for _ in range(reader.uleb()):
                reader.byte()
        elif opcode == 0xFC:
            sub = reader.uleb()
            if sub not in _SATURATING_AND_BULK:
                raise ValueError(f"unsupported instruction 0xFC {sub}")
            if sub in (10, 11):  # memory.copy / memory.fill: memory indices as bytes
                reader.position += 2 if sub == 10 else 1
            else:
                for _ in range(_SATURATING_AND_BULK[sub]):
                    reader.uleb()
        elif opcode in (0x12, 0x13, 0xFD, 0xFE, 0xFB):
            raise ValueError(f"unsupported instruction prefix 0x{opcode:02x} (tail calls, SIMD, threads or GC)")
    return calls


def _skip_block_type(reader: wb.Reader) -> None:
    first = reader.data[reader.position]
    if first == 0x40 or first in (wb.I32, wb.I64, wb.F32, wb.F64, 0x7B, 0x70, 0x6F):
        reader.position += 1
    else:
        reader.uleb()  # a type index (s33, non-negative here)
