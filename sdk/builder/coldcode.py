"""Carry a module's cold functions as data, run by the interpreter inside the module.

Envoy's V8 compiles every function of a module with TurboFan before the
first request, at about 3 CPU-µs per byte of code, and keeps the machine
code in every Envoy; after pre-initialisation a filter executes a few
hundred of CPython's thousands of functions.  ``meshext build --cold-code``
therefore moves each function outside the hot set (what the profile saw run,
``sdk/builder/profile.py``) out of the code section:

- its body, byte for byte, goes into passive data segment 0 (after the file
  data memfs.c reads from it; the segment is carried packed,
  src/meshext/packed_segment.py), which V8 keeps as module bytes and never
  compiles;
- its body becomes a stub that hands the parameters to the interpreter the
  shim carries (sdk/shim/interp.c: ``meshext_interp_enter`` reserves their
  slots, ``meshext_interp_invoke`` runs the body) and returns its result;
- or, when native code never enters it (it is not in the table, not
  exported, not called by compiled code), no function is left of it at
  all: the interpreter runs a cold callee by its body, never through its
  stub, and V8 would compile a stub as it compiles a small function.  The
  functions after it move down, and every index the module names is
  renumbered (calls and ``ref.func`` in compiled code, the table's
  segments, the exports); the interpreter keeps the original numbering
  (its function table, the stubs' immediates, the cold bodies' calls).

A cold function reached at run time is therefore correct, only slower.
The existing table slots, memory and globals do not change, so the
snapshot stays valid (CPython's function pointers are table slots, not
function indices).  The interpreter reads what it needs
from the region appended to segment 0 (:func:`_region`, the layout
interp.c documents): each function's type, table slot and body, the
function types, and the table slots of three functions written here for it
(a native call per function type through ``call_indirect``, and a getter
and setter of globals).

Compiled stay: the hot set, the interpreter and everything it calls, the
snapshot's restore (``wasm_binary.RESTORE_SNAPSHOT_EXPORT``) and all it calls, bodies
no bigger than their stub that native code enters, and bodies with an
instruction the interpreter does not run (``meshext.wasm_code``).

``$MESHEXT_INTERPRET_ALL`` (:func:`interpret_all`) makes every build move
everything it can, profile or not: the self-test that runs a test suite
with CPython itself interpreted, to show the interpreter correct on all
the code a suite reaches.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from meshext import packed_segment, wasm_code
from meshext import wasm_binary as wb
from meshext.errors import InternalError

INTERPRET_ALL_ENV = "MESHEXT_INTERPRET_ALL"
"""Set (to anything but empty or 0): every build runs all it can in the interpreter (:func:`interpret_all`)."""
INTERP_ENTER = "meshext_interp_enter"
INTERP_INVOKE = "meshext_interp_invoke"

_MAGIC, _VERSION = b"MXIC", 1
_HEADER = struct.Struct("<4s11I")
_FUNCTION = struct.Struct("<4I")
_TYPE = struct.Struct("<HHI")
_NO_SLOT = 0xFFFFFFFF
# (load opcode, store opcode, alignment) of each value type in a 64-bit slot.
_ACCESS = {wb.I32: (0x28, 0x36, 2), wb.I64: (0x29, 0x37, 3), wb.F32: (0x2A, 0x38, 2), wb.F64: (0x2B, 0x39, 3)}
# An i64 (the interpreter's slot) as each value type, and back.
_FROM_I64 = {wb.I32: b"\xa7", wb.I64: b"", wb.F32: b"\xa7\xbe", wb.F64: b"\xbf"}
_TO_I64 = {wb.I32: b"\xad", wb.I64: b"", wb.F32: b"\xbc\xad", wb.F64: b"\xbd"}
_NATIVE_CALL_TYPE = (bytes([wb.I32, wb.I32, wb.I32]), b"")
_GLOBAL_GET_TYPE = (bytes([wb.I32]), bytes([wb.I64]))
_GLOBAL_SET_TYPE = (bytes([wb.I32, wb.I64]), b"")


@dataclass(frozen=True)
class ColdCode:
    """A module with its cold code carried as data, and what moved."""

    module: bytes
    functions_moved: int
    functions_removed: int  # of those, the ones native code never enters: no stub, no function left
    bytes_moved: int  # body bytes now in the data segment instead of the code section
    code_size_before: int
    code_size_after: int


def interpret_all() -> bool:
    """Whether ``$MESHEXT_INTERPRET_ALL`` asks every build to interpret all it can."""
    return os.environ.get(INTERPRET_ALL_ENV, "") not in ("", "0")


def carry_cold_code(module: bytes, *, hot: Iterable[int]) -> ColdCode:
    """``module`` with every defined function outside ``hot`` (function
    indices) and outside what must stay compiled run by the interpreter."""
    sections = wb.parse_sections(module)
    types = wb.function_types(sections)
    imports = [item for item in wb.read_imports(sections) if item.kind == wb.EXTERNAL_FUNC]
    first = len(imports)
    type_of = [item.function_type for item in imports] + wb.defined_function_type_indices(sections)
    bodies = wasm_code.code_bodies(sections)
    facts = [wasm_code.scan(body) for body in bodies]
    exports = wb.read_exports(sections)
    entry = {export.name: export.index for export in exports if export.kind == wb.EXTERNAL_FUNC}
    if INTERP_ENTER not in entry or INTERP_INVOKE not in entry:
        raise InternalError(f"the shim exports no {INTERP_ENTER}/{INTERP_INVOKE} (sdk/shim/interp.c)")
    if any(len(results) > 1 for _, results in types):
        raise InternalError("cold code: a function type with several results (the interpreter's calls return one)")
    enter, invoke = entry[INTERP_ENTER], entry[INTERP_INVOKE]

    # The snapshot's restore runs before memory holds anything, the interpreter's state included.
    roots = {enter, invoke} | ({entry[wb.RESTORE_SNAPSHOT_EXPORT]} if wb.RESTORE_SNAPSHOT_EXPORT in entry else set())
    compiled = wasm_code.reachable(roots, lambda index: facts[index - first].calls, first=first) | set(hot)
    defined = range(first, first + len(bodies))
    candidates = {index for index in defined if index not in compiled and facts[index - first].interpretable}
    trampoline_guess = first + len(bodies) + len(types)  # a stub's size does not depend on it much

    def stub_size(index: int) -> int:
        return len(_stub(index, len(types[type_of[index]][0]), trampoline=trampoline_guess))

    # What native code can enter: the table's functions, the exports and what the compiled functions call.  A
    # candidate no bigger than its stub that native code enters stays compiled (compiling it costs V8 less
    # than a stub would), and what it calls can be entered too: hence the loop.  The other candidates are
    # carried as data: with a stub when native code enters them, else with no function left in the module at
    # all (the interpreter calls a cold function by its body, never through its stub): V8 compiles a function
    # for every index, and a stub costs it about what a small function does.
    start = wb.find_section(sections, wb.START)
    entered = wasm_code.table_functions(sections) | set(entry.values())
    if start is not None:
        entered.add(wb.Reader(start.payload).uleb())
    kept = set(defined) - candidates
    needed = set(entered)
    pending = set(kept)
    while pending:
        for index in pending:
            needed |= wasm_code.named_functions(bodies[index - first], facts[index - first])
        pending = {index for index in candidates - kept
                   if index in needed and len(bodies[index - first]) <= stub_size(index)}
        kept |= pending
    cold = sorted(candidates - kept)
    cold_set = set(cold)
    removed = {index for index in cold if index not in needed}

    # Indices after the removal (imports keep theirs); the interpreter keeps the original ones (its region's
    # function table, the stubs' immediates, the cold bodies' calls).
    new_index = {index: index for index in range(first)}
    for index in defined:
        if index not in removed:
            new_index[index] = len(new_index)

    # The functions written for the interpreter, appended: the three it calls, then one trampoline per type of
    # cold function (a stub passes its parameters and its index to its type's trampoline).
    cold_types = sorted({type_of[index] for index in cold})
    signatures = [_NATIVE_CALL_TYPE, _GLOBAL_GET_TYPE, _GLOBAL_SET_TYPE]
    signatures += [(types[index][0] + bytes([wb.I32]), types[index][1]) for index in cold_types]
    generated_types = [_type_index(types, signature) for signature in signatures]
    generated_first = first + len(bodies)
    for position in range(len(generated_types)):
        new_index[generated_first + position] = len(new_index)
    native_call, global_get, global_set = generated_first, generated_first + 1, generated_first + 2
    trampoline_of = {type_index: generated_first + 3 + position for position, type_index in enumerate(cold_types)}

    # Table slots for everything the interpreter calls natively.
    native = [index for index in range(generated_first) if index not in cold_set] + [native_call, global_get,
                                                                                      global_set]
    table_min, table_max = _table_limits(sections)
    slot_of = {index: table_min + position for position, index in enumerate(native)}
    size = table_min + len(native)

    data_section = wb.find_section(sections, wb.DATA)
    packed, rest = _split_first_segment(data_section)
    segment_zero = packed_segment.unpack(packed)
    meta = (len(segment_zero) + 7) & ~7
    region = _region(
        type_of=type_of + generated_types,
        types=types,
        slot_of=slot_of,
        cold_bodies={index: bodies[index - first] for index in cold},
        native_call=slot_of[native_call], global_get=slot_of[global_get], global_set=slot_of[global_set],
    )
    segment_zero = segment_zero + bytes(meta - len(segment_zero)) + region

    global_types = _all_global_types(sections)
    new_bodies = []
    for index in defined:
        if index in removed:
            continue
        if index in cold_set:
            new_bodies.append(_stub(index, len(types[type_of[index]][0]),
                                    trampoline=new_index[trampoline_of[type_of[index]]]))
        else:
            new_bodies.append(wasm_code.renumber_functions(bodies[index - first], facts[index - first], new_index))
    new_bodies += [_native_call_body(types), _global_get_body(global_types), _global_set_body(global_types)]
    new_bodies += [_trampoline(types[index], meta=meta, enter=new_index[enter], invoke=new_index[invoke])
                   for index in cold_types]

    code_before = wb.find_section(sections, wb.CODE)
    type_indices = [type_index for index, type_index in zip(defined, wb.defined_function_type_indices(sections),
                                                            strict=True) if index not in removed]
    wb.replace_section(sections, _type_section(types))
    wb.replace_section(sections, _function_section(type_indices + generated_types))
    wb.replace_section(sections, _table_section(size, None if table_max is None else max(size, table_max)))
    wb.replace_section(sections, _with_element_segment(sections, table_min, [new_index[index] for index in native],
                                                       new_index))
    wb.replace_section(sections, wb.export_section(
        [_renumbered(export, new_index) for export in exports if export.name not in (INTERP_ENTER, INTERP_INVOKE)]))
    if start is not None:
        wb.replace_section(sections, wb.Section(wb.START, wb.uleb(new_index[wb.Reader(start.payload).uleb()])))
    code = wasm_code.code_section(new_bodies)
    wb.replace_section(sections, code)
    packed = packed_segment.pack(segment_zero)
    wb.replace_section(sections, wb.Section(wb.DATA, rest[0] + b"\x01" + wb.uleb(len(packed)) + packed + rest[1]))
    return ColdCode(
        module=wb.encode_sections(sections),
        functions_moved=len(cold),
        functions_removed=len(removed),
        bytes_moved=sum(len(bodies[index - first]) for index in cold),
        code_size_before=len(code_before.payload) if code_before else 0,
        code_size_after=len(code.payload),
    )


def _renumbered(export: wb.Export, new_index: dict[int, int]) -> wb.Export:
    return wb.Export(export.name, export.kind, new_index[export.index]) if export.kind == wb.EXTERNAL_FUNC else export


def _stub(index: int, param_count: int, *, trampoline: int) -> bytes:
    """The body of cold function ``index``: its parameters and index to its type's trampoline."""
    code = bytearray(b"\x00")  # no locals
    for position in range(param_count):
        code += b"\x20" + wb.uleb(position)
    code += b"\x41" + wb.sleb(index) + b"\x10" + wb.uleb(trampoline)
    return bytes(code + b"\x0b")


def _trampoline(signature: tuple[bytes, bytes], *, meta: int, enter: int, invoke: int) -> bytes:
    """``(params..., function) -> result``: run ``function`` in the interpreter with ``params``."""
    params, results = signature
    function, args = len(params), len(params) + 1  # the index parameter; the one declared local
    code = bytearray(b"\x01\x01\x7f")
    code += b"\x41" + wb.sleb(_signed32(meta)) + b"\x20" + wb.uleb(function) + b"\x10" + wb.uleb(enter)
    code += b"\x21" + wb.uleb(args)
    for position, value_type in enumerate(params):
        _, store, align = _access(value_type)
        code += b"\x20" + wb.uleb(args) + b"\x20" + wb.uleb(position)
        code += bytes([store]) + wb.uleb(align) + wb.uleb(8 * position)
    code += b"\x20" + wb.uleb(function) + b"\x10" + wb.uleb(invoke)
    code += _FROM_I64[_value(results[0])] if results else b"\x1a"
    return bytes(code + b"\x0b")


def _native_call_body(types: list[tuple[bytes, bytes]]) -> bytes:
    """``native_call(type, slot, args)``: call_indirect with the type's params from args, result to args[0]."""
    cases = []
    for type_index, (params, results) in enumerate(types):
        if any(value_type not in _ACCESS for value_type in params + results):
            cases.append(b"\x00")  # unreachable: no function of such a type is interpreted or called
            continue
        case = bytearray(b"\x20\x02" if results else b"")
        for position, value_type in enumerate(params):
            load, _, align = _ACCESS[value_type]
            case += b"\x20\x02" + bytes([load]) + wb.uleb(align) + wb.uleb(8 * position)
        case += b"\x20\x01\x11" + wb.uleb(type_index) + b"\x00"
        if results:
            _, store, align = _ACCESS[results[0]]
            case += bytes([store]) + wb.uleb(align) + b"\x00"
        cases.append(bytes(case + b"\x0f"))
    return _switch(cases)


def _global_get_body(global_types: list[tuple[int, bool]]) -> bytes:
    cases = [b"\x23" + wb.uleb(index) + _TO_I64[value_type] + b"\x0f" if value_type in _TO_I64 else b"\x00"
             for index, (value_type, _) in enumerate(global_types)]
    return _switch(cases)


def _global_set_body(global_types: list[tuple[int, bool]]) -> bytes:
    cases = [b"\x20\x01" + _FROM_I64[value_type] + b"\x24" + wb.uleb(index) + b"\x0f"
             if value_type in _FROM_I64 and mutable else b"\x00"
             for index, (value_type, mutable) in enumerate(global_types)]
    return _switch(cases)


def _switch(cases: list[bytes]) -> bytes:
    """A body that runs ``cases[local 0]`` (each ends in return or unreachable), else traps."""
    count = len(cases)
    code = bytearray(b"\x00")  # no locals
    code += b"\x02\x40" * (count + 1)
    code += b"\x20\x00\x0e" + wb.uleb(count) + b"".join(wb.uleb(depth) for depth in range(count)) + wb.uleb(count)
    for case in cases:
        code += b"\x0b" + case
    return bytes(code + b"\x0b\x00\x0b")


def _region(*, type_of: list[int], types: list[tuple[bytes, bytes]], slot_of: dict[int, int],
            cold_bodies: dict[int, bytes], native_call: int, global_get: int, global_set: int) -> bytes:
    """What the interpreter reads from segment 0 (layout: sdk/shim/interp.c)."""
    valtypes = bytearray()
    type_table = bytearray()
    for params, results in types:
        type_table += _TYPE.pack(len(params), len(results), len(valtypes))
        valtypes += params + results
    bodies = bytearray()
    function_table = bytearray()
    for index, type_index in enumerate(type_of):
        body = cold_bodies.get(index)
        if body is None:
            function_table += _FUNCTION.pack(type_index, slot_of.get(index, _NO_SLOT), 0, 0)
        else:
            function_table += _FUNCTION.pack(type_index, _NO_SLOT, len(bodies), len(body))
            bodies += body
    functions_offset = _HEADER.size
    types_offset = functions_offset + len(function_table)
    valtypes_offset = types_offset + len(type_table)
    bodies_offset = (valtypes_offset + len(valtypes) + 7) & ~7
    total = bodies_offset + len(bodies)
    header = _HEADER.pack(_MAGIC, _VERSION, len(type_of), len(types), functions_offset, types_offset,
                          valtypes_offset, bodies_offset, native_call, global_get, global_set, total)
    padding = bytes(bodies_offset - valtypes_offset - len(valtypes))
    return header + bytes(function_table) + bytes(type_table) + bytes(valtypes) + padding + bytes(bodies)


def _access(value_type: int) -> tuple[int, int, int]:
    if value_type not in _ACCESS:
        raise InternalError(f"cold code: a parameter of type 0x{value_type:02x}")
    return _ACCESS[value_type]


def _value(value_type: int) -> int:
    if value_type not in _FROM_I64:
        raise InternalError(f"cold code: a result of type 0x{value_type:02x}")
    return value_type


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _type_index(types: list[tuple[bytes, bytes]], signature: tuple[bytes, bytes]) -> int:
    """The index of ``signature`` in ``types``, appended when absent."""
    if signature not in types:
        types.append(signature)
    return types.index(signature)


def _type_section(types: list[tuple[bytes, bytes]]) -> wb.Section:
    payload = bytearray(wb.uleb(len(types)))
    for params, results in types:
        payload += b"\x60" + wb.uleb(len(params)) + params + wb.uleb(len(results)) + results
    return wb.Section(wb.TYPE, bytes(payload))


def _function_section(type_indices: list[int]) -> wb.Section:
    return wb.Section(wb.FUNCTION, wb.uleb(len(type_indices)) + b"".join(wb.uleb(index) for index in type_indices))


def _all_global_types(sections: list[wb.Section]) -> list[tuple[int, bool]]:
    """(value type, mutable) of every global, imported ones first."""
    imported = [item.global_type for item in wb.read_imports(sections) if item.kind == wb.EXTERNAL_GLOBAL]
    return imported + wb.defined_global_types(sections)


def _table_limits(sections: list[wb.Section]) -> tuple[int, int | None]:
    section = wb.find_section(sections, wb.TABLE)
    if section is None or wb.imports_by_kind(sections)[wb.EXTERNAL_TABLE]:
        raise InternalError("cold code needs the module's own function table (wasm-ld's)")
    reader = wb.Reader(section.payload)
    if reader.uleb() != 1 or reader.byte() != 0x70:
        raise InternalError("cold code expects exactly one funcref table")
    flags = reader.byte()
    minimum = reader.uleb()
    return minimum, reader.uleb() if flags & 1 else None


def _table_section(minimum: int, maximum: int | None) -> wb.Section:
    limits = b"\x00" + wb.uleb(minimum) if maximum is None else b"\x01" + wb.uleb(minimum) + wb.uleb(maximum)
    return wb.Section(wb.TABLE, b"\x01\x70" + limits)


def _with_element_segment(sections: list[wb.Section], offset: int, functions: list[int],
                          new_index: dict[int, int]) -> wb.Section:
    """The element section with its segments' functions renumbered (``new_index``) and one more active segment:
    ``functions`` at table slot ``offset``.  Segments of the form wasm-ld writes (flags 0 or 2)."""
    segments = wasm_code.element_segments(sections)
    payload = bytearray(wb.uleb(len(segments) + 1))
    for head, members in segments:
        payload += head + wb.uleb(len(members)) + b"".join(wb.uleb(new_index[index]) for index in members)
    payload += (b"\x00\x41" + wb.sleb(offset) + b"\x0b" + wb.uleb(len(functions))
                + b"".join(wb.uleb(index) for index in functions))
    return wb.Section(wb.ELEMENT, bytes(payload))


def _split_first_segment(section: wb.Section | None) -> tuple[bytes, tuple[bytes, bytes]]:
    """(segment 0's bytes, (the data section's payload before it, after it)); segment 0 must be passive."""
    if section is None:
        raise InternalError("cold code needs the file data's passive segment 0 (sdk/builder/fsimage.py)")
    reader = wb.Reader(section.payload)
    count = reader.uleb()
    if not count or reader.uleb() != 1:
        raise InternalError("cold code needs the file data's passive segment 0 (sdk/builder/fsimage.py)")
    size = reader.uleb()
    data = section.payload[reader.position:reader.position + size]
    return data, (wb.uleb(count), section.payload[reader.position + size:])
