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
failure.  The direct calls come from ``meshext.wasm_code``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from meshext import wasm_binary as wb
from meshext import wasm_code
from meshext.paths import EvictableCache, content_key
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
# What pruning reads besides the name section; with the code that does it, the cache key.
_READ_SECTIONS = {wb.TYPE, wb.IMPORT, wb.FUNCTION, wb.EXPORT, wb.ELEMENT, wb.CODE}
_ALGORITHM = Path(__file__).read_bytes() + Path(wb.__file__).read_bytes() + Path(wasm_code.__file__).read_bytes()
_CACHE = EvictableCache("stages")


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
        self.names = wasm_code.function_names(self.sections)
        self.index_of = {name: index for index, name in self.names.items()}
        self.unique_names = {name for name, count in Counter(self.names.values()).items() if count == 1}
        self.bodies = wasm_code.code_bodies(self.sections)
        self.table_functions = wasm_code.table_functions(self.sections)
        self._types = wb.function_types(self.sections)
        self._type_of = wb.defined_function_type_indices(self.sections)

    def function(self, name: str) -> int:
        if name not in self.unique_names:
            raise ValueError(f"the shim has no single function {name!r} (built without a name section?)")
        return self.index_of[name]

    def calls(self, index: int) -> set[int]:
        return set(wasm_code.scan(self.bodies[index - self.imported_functions]).calls)

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

    The result's code and exports depend only on the sections read here,
    never on memory or globals, so every build of a filter with the same
    shim and the same callbacks and C modules gets them from the cache
    (``stages/`` in the meshext cache): decoding every function body takes
    most of a second.
    """
    sections = wb.parse_sections(module)
    dropped = sorted(set(drop_exports))
    choices = [dropped, sorted(removed_modules.items()), functions_by_part]
    parts = [_ALGORITHM, json.dumps(choices, sort_keys=True).encode()]
    for section in sections:
        if section.id in _READ_SECTIONS or (section.id == wb.CUSTOM and wb.Reader(section.payload).name() == "name"):
            parts += [bytes([section.id]), section.payload]
    name = f"pruned-{content_key(parts)}.bin"
    packed = _CACHE.read(name)
    if packed is not None:
        code_size = int.from_bytes(packed[:8], "little")
        code, exports = wb.Section(wb.CODE, packed[8:8 + code_size]), wb.Section(wb.EXPORT, packed[8 + code_size:])
    else:
        code, exports = _pruned_code_and_exports(Module(module), set(dropped), removed_modules, functions_by_part)
        _CACHE.store(name, len(code.payload).to_bytes(8, "little") + code.payload + exports.payload)
    kept = [section for section in sections if section.id != wb.CUSTOM]
    wb.replace_section(kept, code)
    wb.replace_section(kept, exports)
    return wb.encode_sections(kept)


def _pruned_code_and_exports(
    parsed: Module, dropped: set[str], removed_modules: dict[str, str], functions_by_part: dict[str, list[str]]
) -> tuple[wb.Section, wb.Section]:
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
    reachable = wasm_code.reachable(roots, parsed.calls, first=parsed.imported_functions, stop=set(redirect))

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
    return wasm_code.code_section(bodies), wb.export_section(exports)


def _raising_body(handler: int, results: bytes) -> bytes:
    """Call the handler (it sets the exception) and return its 0 as the result."""
    call = b"\x10" + wb.uleb(handler)
    if results == bytes([wb.I32]):
        return b"\x00" + call + b"\x0b"
    if results == b"":
        return b"\x00" + call + b"\x1a\x0b"  # drop
    raise ValueError(f"cannot redirect a function returning {results.hex()}")
