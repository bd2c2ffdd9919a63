"""Just enough of WebAssembly's code to prune it and to carry it as data.

Pruning (``sdk/builder/prune.py``) needs each function's direct calls; carrying cold
code (``sdk/builder/coldcode.py``) needs the same, plus whether a body uses an
instruction the module's interpreter does not run, and where its local
declarations end.  No maintained Python library decodes Wasm code, so the
instruction encodings are decoded here: every instruction a wasm32-wasi
CPython built by clang contains (the MVP, sign extension, saturating
truncation and bulk memory); the prefixes of tail calls, SIMD, threads and
GC are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from meshext import wasm_binary as wb

_BLOCK_OPCODES = {0x02, 0x03, 0x04}
_ONE_ULEB = {0x0C, 0x0D, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0xD2}
_MEMARG = set(range(0x28, 0x3F))
_SATURATING_AND_BULK = {  # 0xFC sub-opcode -> number of uleb immediates
    0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1,
}
# What the interpreter inside the module (sdk/shim/interp.c) runs: the MVP's
# control, parametric, variable, memory and numeric instructions, sign
# extension, and 0xFC's saturating truncations, memory.copy and memory.fill
# (0xFC is checked by its sub-opcode; not memory.init, data.drop, tables or
# references); block types without
# vectors or references.  A body with anything else stays compiled.
_INTERPRETED = {*range(0x00, 0x06), *range(0x0B, 0x12), 0x1A, 0x1B, 0x1C, *range(0x20, 0x25), *range(0x28, 0xC5), 0xFC}
_INTERPRETED_FC = {0, 1, 2, 3, 4, 5, 6, 7, 10, 11}
_INTERPRETED_BLOCK_TYPES = {0x40, wb.I32, wb.I64, wb.F32, wb.F64}


@dataclass(frozen=True)
class CodeFacts:
    """What one function body does, as far as pruning and cold code need it."""

    calls: frozenset[int]  # functions it calls directly (``call``)
    interpretable: bool  # no instruction the module's interpreter lacks
    locals_end: int  # offset of the first instruction (after the local declarations)
    function_sites: tuple[int, ...]  # offsets of the function indices it names (``call``, ``ref.func``)


def scan(body: bytes) -> CodeFacts:
    """Decode ``body`` (a code-section entry without its size) instruction by instruction."""
    calls: set[int] = set()
    sites: list[int] = []
    interpretable = True
    reader = wb.Reader(body)
    for _ in range(reader.uleb()):  # local declarations
        reader.uleb()
        reader.byte()
    locals_end = reader.position
    size = len(body)
    while reader.position < size:
        opcode = reader.byte()
        if opcode not in _INTERPRETED:
            interpretable = False
        if opcode == 0x10 or opcode == 0xD2:  # call, ref.func
            sites.append(reader.position)
            callee = reader.uleb()
            if opcode == 0x10:
                calls.add(callee)
        elif opcode in _ONE_ULEB:
            reader.uleb()
        elif opcode in _MEMARG:
            reader.uleb()
            reader.uleb()
        elif opcode in _BLOCK_OPCODES:
            first = reader.data[reader.position]
            if 0x40 <= first < 0x80 and first not in _INTERPRETED_BLOCK_TYPES:  # a one-byte type, not an index
                interpretable = False
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
            if reader.uleb() != 0:
                interpretable = False
        elif opcode in (0x3F, 0x40, 0xD0):  # memory.size/grow, ref.null
            reader.byte()
        elif opcode == 0x1C:  # select with types
            for _ in range(reader.uleb()):
                reader.byte()
        elif opcode == 0xFC:
            sub = reader.uleb()
            if sub not in _SATURATING_AND_BULK:
                raise ValueError(f"unsupported instruction 0xFC {sub}")
            if sub not in _INTERPRETED_FC:
                interpretable = False
            if sub in (10, 11):  # memory.copy / memory.fill: memory indices as bytes
                reader.position += 2 if sub == 10 else 1
            else:
                for _ in range(_SATURATING_AND_BULK[sub]):
                    reader.uleb()
        elif opcode in (0x12, 0x13, 0xFD, 0xFE, 0xFB):
            raise ValueError(f"unsupported instruction prefix 0x{opcode:02x} (tail calls, SIMD, threads or GC)")
    return CodeFacts(frozenset(calls), interpretable, locals_end, tuple(sites))


def named_functions(body: bytes, facts: CodeFacts) -> set[int]:
    """The functions ``body`` calls or takes a reference to (``ref.func``)."""
    return {wb.Reader(body, site).uleb() for site in facts.function_sites}


def renumber_functions(body: bytes, facts: CodeFacts, new_index: dict[int, int]) -> bytes:
    """``body`` with each function index it names (``call``, ``ref.func``) replaced by ``new_index[index]``."""
    out = bytearray()
    done = 0
    for site in facts.function_sites:
        reader = wb.Reader(body, site)
        old = reader.uleb()
        out += body[done:site] + wb.uleb(new_index[old])
        done = reader.position
    return bytes(out + body[done:])


def reachable(roots: Iterable[int], calls: Callable[[int], Iterable[int]], *, first: int,
              stop: Collection[int] = ()) -> set[int]:
    """``roots`` and every function they reach by direct calls.

    ``calls(index)`` gives a defined function's callees; ``first`` is the
    number of imported functions (imports call nothing here); the search
    does not go on from a function in ``stop``.
    """
    seen = set(roots)
    pending = [index for index in seen if index >= first]
    while pending:
        index = pending.pop()
        if index in stop:
            continue
        for callee in calls(index):
            if callee not in seen:
                seen.add(callee)
                if callee >= first:
                    pending.append(callee)
    return seen


def _skip_block_type(reader: wb.Reader) -> None:
    first = reader.data[reader.position]
    if first == 0x40 or first in (wb.I32, wb.I64, wb.F32, wb.F64, 0x7B, 0x70, 0x6F):
        reader.position += 1
    else:
        reader.uleb()  # a type index (s33, non-negative here)


def function_names(sections: list[wb.Section]) -> dict[int, str]:
    """Function index -> name, from the ``name`` custom section (empty without one)."""
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


def code_bodies(sections: list[wb.Section]) -> list[bytes]:
    """Each defined function's body (local declarations and expression), in order."""
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


def code_section(bodies: list[bytes]) -> wb.Section:
    """A code section holding ``bodies``."""
    payload = bytearray(wb.uleb(len(bodies)))
    for body in bodies:
        payload += wb.uleb(len(body)) + body
    return wb.Section(wb.CODE, bytes(payload))


def element_segments(sections: list[wb.Section]) -> list[tuple[bytes, list[int]]]:
    """Each active element segment of the form wasm-ld writes (flags 0 or 2): its encoding up to the function
    count (flags, table, offset, kind), and its functions."""
    section = wb.find_section(sections, wb.ELEMENT)
    if section is None:
        return []
    reader = wb.Reader(section.payload)
    segments = []
    for _ in range(reader.uleb()):
        start = reader.position
        flags = reader.uleb()
        if flags not in (0, 2):
            raise ValueError(f"element segment kind {flags} is not supported")
        if flags == 2:
            reader.uleb()  # table index
        reader.skip_const_expr()
        if flags == 2:
            reader.byte()  # elemkind: funcref
        head = reader.data[start:reader.position]
        segments.append((head, [reader.uleb() for _ in range(reader.uleb())]))
    return segments


def table_functions(sections: list[wb.Section]) -> set[int]:
    """Functions in active element segments of the form wasm-ld writes."""
    return {index for _, functions in element_segments(sections) for index in functions}
