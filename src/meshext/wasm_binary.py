"""Just enough of the WebAssembly binary format to snapshot a module.

Pre-initialisation (what Wizer does) needs to export a module's globals,
then rewrite its memory size, global initialisers, data segments and
exports.  No maintained Python library writes Wasm sections, so this reads
and writes the few sections involved and copies every other byte as is.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from meshext import packed_segment

MAGIC = b"\0asm\x01\0\0\0"
CUSTOM, TYPE, IMPORT, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, START, ELEMENT, CODE, DATA, DATACOUNT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
)
I32, I64, F32, F64 = 0x7F, 0x7E, 0x7D, 0x7C
EXTERNAL_FUNC, EXTERNAL_TABLE, EXTERNAL_MEMORY, EXTERNAL_GLOBAL = 0, 1, 2, 3
END = 0x0B


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


class Reader:
    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data = data
        self.position = position

    def byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def sleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result - (1 << shift) if byte & 0x40 else result

    def name(self) -> str:
        length = self.uleb()
        value = self.data[self.position:self.position + length].decode()
        self.position += length
        return value

    def skip_limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()

    def skip_const_expr(self) -> None:
        # Constant expressions of the globals we meet end at the first END
        # opcode; their immediates never contain 0x0B in an opcode position.
        while True:
            opcode = self.byte()
            if opcode == END:
                return
            if opcode in (0x41, 0x42):  # i32.const / i64.const
                self.uleb()
            elif opcode == 0x43:
                self.position += 4
            elif opcode == 0x44:
                self.position += 8
            elif opcode in (0x23, 0xD2):  # global.get / ref.func
                self.uleb()
            elif opcode == 0xD0:  # ref.null
                self.byte()


@dataclass
class Section:
    id: int
    payload: bytes


@dataclass
class Export:
    name: str
    kind: int
    index: int


@dataclass
class Import:
    module: str
    name: str
    kind: int
    function_type: int = -1  # the type index of an imported function
    global_type: tuple[int, bool] = (0, False)  # (value type, mutable) of an imported global


def parse_sections(module: bytes) -> list[Section]:
    if module[:8] != MAGIC:
        raise ValueError("not a WebAssembly 1.0 module")
    reader = Reader(module, 8)
    sections = []
    while reader.position < len(module):
        section_id = reader.byte()
        size = reader.uleb()
        sections.append(Section(section_id, module[reader.position:reader.position + size]))
        reader.position += size
    return sections


def encode_sections(sections: list[Section]) -> bytes:
    parts = [MAGIC]
    for section in sections:
        parts += (bytes([section.id]), uleb(len(section.payload)), section.payload)
    return b"".join(parts)  # one copy of payloads of megabytes


def keep_custom_sections(module: bytes, names: set[str]) -> bytes:
    """``module`` without the custom sections whose names are not in ``names``."""
    kept = [
        section for section in parse_sections(module)
        if section.id != CUSTOM or Reader(section.payload).name() in names
    ]
    return encode_sections(kept)


def find_section(sections: list[Section], section_id: int) -> Section | None:
    return next((section for section in sections if section.id == section_id), None)


def imported_counts(sections: list[Section]) -> tuple[int, int]:
    """(imported functions, imported globals): defined ones are numbered after them."""
    counts = imports_by_kind(sections)
    return counts[EXTERNAL_FUNC], counts[EXTERNAL_GLOBAL]


_Entry = TypeVar("_Entry")


def _entries(sections: list[Section], section_id: int, read_entry: Callable[[Reader], _Entry]) -> list[_Entry]:
    """Each entry of the vector that section ``section_id`` holds, read by ``read_entry``; none without it."""
    section = find_section(sections, section_id)
    if section is None:
        return []
    reader = Reader(section.payload)
    return [read_entry(reader) for _ in range(reader.uleb())]


def _import(reader: Reader) -> Import:
    module = reader.name()
    name = reader.name()
    kind = reader.byte()
    if kind == EXTERNAL_FUNC:
        return Import(module, name, kind, reader.uleb())
    if kind == EXTERNAL_TABLE:
        reader.byte()
        reader.skip_limits()
    elif kind == EXTERNAL_MEMORY:
        reader.skip_limits()
    elif kind == EXTERNAL_GLOBAL:
        value_type = reader.byte()
        return Import(module, name, kind, global_type=(value_type, bool(reader.byte())))
    else:
        raise ValueError(f"unknown import kind {kind}")
    return Import(module, name, kind)


def read_imports(sections: list[Section]) -> list[Import]:
    """The module's imports, in order."""
    return _entries(sections, IMPORT, _import)


def imports_by_kind(sections: list[Section]) -> dict[int, int]:
    """How many functions, tables, memories and globals (``EXTERNAL_*``) the module imports."""
    counts = dict.fromkeys((EXTERNAL_FUNC, EXTERNAL_TABLE, EXTERNAL_MEMORY, EXTERNAL_GLOBAL), 0)
    for item in read_imports(sections):
        counts[item.kind] += 1
    return counts


def _global_type(reader: Reader) -> tuple[int, bool]:
    value_type = reader.byte()
    mutable = bool(reader.byte())
    reader.skip_const_expr()
    return value_type, mutable


def defined_global_types(sections: list[Section]) -> list[tuple[int, bool]]:
    """(value type, mutable) of each global the module defines."""
    return _entries(sections, GLOBAL, _global_type)


def _function_type(reader: Reader) -> tuple[bytes, bytes]:
    if reader.byte() != 0x60:
        raise ValueError("only function types are supported")
    params = bytes(reader.byte() for _ in range(reader.uleb()))
    results = bytes(reader.byte() for _ in range(reader.uleb()))
    return params, results


def function_types(sections: list[Section]) -> list[tuple[bytes, bytes]]:
    """(parameter types, result types) of each entry of the type section."""
    return _entries(sections, TYPE, _function_type)


def defined_function_type_indices(sections: list[Section]) -> list[int]:
    """The type index of each function the module defines (not imports)."""
    return _entries(sections, FUNCTION, Reader.uleb)


_LINKING_SYMBOL_TABLE = 8
_SYMBOL_FUNCTION, _SYMBOL_DATA, _SYMBOL_GLOBAL, _SYMBOL_SECTION, _SYMBOL_EVENT, _SYMBOL_TABLE = range(6)
_SYMBOL_UNDEFINED, _SYMBOL_EXPLICIT_NAME = 0x10, 0x40


def object_function_names(obj: bytes) -> set[str]:
    """Names of the functions a relocatable object (a .o of an archive) defines,
    static ones included, from its ``linking`` section (the tool conventions'
    object file format)."""
    for section in parse_sections(obj):
        if section.id != CUSTOM:
            continue
        reader = Reader(section.payload)
        if reader.name() != "linking":
            continue
        reader.uleb()  # version
        names: set[str] = set()
        while reader.position < len(section.payload):
            kind = reader.byte()
            end = reader.uleb() + reader.position
            if kind == _LINKING_SYMBOL_TABLE:
                for _ in range(reader.uleb()):
                    symbol_kind = reader.byte()
                    flags = reader.uleb()
                    if symbol_kind in (_SYMBOL_FUNCTION, _SYMBOL_GLOBAL, _SYMBOL_EVENT, _SYMBOL_TABLE):
                        reader.uleb()  # index
                        if not flags & _SYMBOL_UNDEFINED or flags & _SYMBOL_EXPLICIT_NAME:
                            name = reader.name()
                            if symbol_kind == _SYMBOL_FUNCTION and not flags & _SYMBOL_UNDEFINED:
                                names.add(name)
                    elif symbol_kind == _SYMBOL_DATA:
                        reader.name()
                        if not flags & _SYMBOL_UNDEFINED:
                            reader.uleb()
                            reader.uleb()
                            reader.uleb()
                    elif symbol_kind == _SYMBOL_SECTION:
                        reader.uleb()
            reader.position = end
        return names
    return set()


def _export(reader: Reader) -> Export:
    name = reader.name()
    kind = reader.byte()
    return Export(name, kind, reader.uleb())


def read_exports(sections: list[Section]) -> list[Export]:
    """The module's exports, in order."""
    return _entries(sections, EXPORT, _export)


def export_section(exports: list[Export]) -> Section:
    payload = bytearray(uleb(len(exports)))
    for export in exports:
        encoded = export.name.encode()
        payload += uleb(len(encoded)) + encoded + bytes([export.kind]) + uleb(export.index)
    return Section(EXPORT, bytes(payload))


# Where each non-custom section goes (the data count section sits before code).
_SECTION_ORDER = (TYPE, IMPORT, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, START, ELEMENT, DATACOUNT, CODE, DATA)


def replace_section(sections: list[Section], new: Section) -> None:
    """Replace the section with ``new``'s id, or insert it in canonical order."""
    for position, section in enumerate(sections):
        if section.id == new.id:
            sections[position] = new
            return
    later = _SECTION_ORDER[_SECTION_ORDER.index(new.id) + 1:]
    for position, section in enumerate(sections):
        if section.id in later:
            sections.insert(position, new)
            return
    sections.append(new)


def memory_limits(sections: list[Section]) -> tuple[int, int | None]:
    """(minimum, maximum or None) pages of the one memory the module defines."""
    section = find_section(sections, MEMORY)
    if section is None:
        raise ValueError("the module defines no memory")
    reader = Reader(section.payload)
    if reader.uleb() != 1:
        raise ValueError("expected exactly one memory")
    flags = reader.byte()
    if flags & ~1:
        raise ValueError("shared and 64-bit memories are not supported")
    minimum = reader.uleb()
    return minimum, reader.uleb() if flags & 1 else None


def memory_section(minimum: int, maximum: int | None) -> Section:
    """A memory section defining one 32-bit memory with these limits (pages)."""
    limits = uleb(minimum) if maximum is None else uleb(minimum) + uleb(maximum)
    return Section(MEMORY, uleb(1) + bytes([0 if maximum is None else 1]) + limits)


def with_data_count(module: bytes) -> bytes:
    """``module`` with a data count section (``memory.init`` validates only
    with one; wasm-ld writes it only for shared memory)."""
    sections = parse_sections(module)
    data = find_section(sections, DATA)
    replace_section(sections, Section(DATACOUNT, uleb(Reader(data.payload).uleb() if data else 0)))
    return encode_sections(sections)


def read_data_segments(sections: list[Section]) -> list[tuple[int | None, bytes]] | None:
    """(offset, bytes) of each data segment, in order, the offset None for a
    passive segment; None when an active one is not in memory 0 at a
    constant offset (linkers and :func:`snapshot` write only those)."""
    section = find_section(sections, DATA)
    if section is None:
        return []
    reader = Reader(section.payload)
    segments: list[tuple[int | None, bytes]] = []
    for _ in range(reader.uleb()):
        flags = reader.uleb()
        offset: int | None = None
        if flags != 1:
            if flags == 2 and reader.uleb() != 0:
                return None
            if flags not in (0, 2) or reader.byte() != 0x41:  # an offset other than i32.const
                return None
            offset = reader.sleb() & 0xFFFFFFFF
            if reader.byte() != END:
                return None
        size = reader.uleb()
        segments.append((offset, section.payload[reader.position:reader.position + size]))
        reader.position += size
    return segments


GLOBAL_EXPORT_PREFIX = "__meshext_global_"


def export_globals(module: bytes) -> bytes:
    """The same module with every defined global exported (to read them after init)."""
    sections = parse_sections(module)
    first = imported_counts(sections)[1]
    exports = read_exports(sections)
    for offset, _ in enumerate(defined_global_types(sections)):
        exports.append(Export(f"{GLOBAL_EXPORT_PREFIX}{offset}", EXTERNAL_GLOBAL, first + offset))
    replace_section(sections, export_section(exports))
    return encode_sections(sections)


def _const(value_type: int, value: int | float) -> bytes:
    if value_type == I32:
        return b"\x41" + sleb(int(value) - (1 << 32) if int(value) >= 1 << 31 else int(value)) + bytes([END])
    if value_type == I64:
        return b"\x42" + sleb(int(value) - (1 << 64) if int(value) >= 1 << 63 else int(value)) + bytes([END])
    if value_type == F32:
        return b"\x43" + struct.pack("<f", value) + bytes([END])
    if value_type == F64:
        return b"\x44" + struct.pack("<d", value) + bytes([END])
    raise ValueError(f"cannot snapshot a global of type 0x{value_type:02x}")


# V8's and wasmparser's (wasmtime's) limit on data segments in a module.
MAX_DATA_SEGMENTS = 100_000
# A data segment costs 8 to 10 bytes of module besides its data (flags,
# offset expression, length): a run of zeros longer than that is cheaper
# left out than carried.  16 measured best on the header filter (README,
# "File data and data segments"): 23,248 segments, 0.8 MB less module than
# 1 KiB gaps, Envoy's RSS 2 MB lower, start-up the same.
ZERO_GAP = 16


def data_segments(memory: bytes, gap: int = ZERO_GAP) -> list[tuple[int, bytes]]:
    """(offset, bytes) runs covering every non-zero byte of ``memory``, split
    where ``gap`` or more zero bytes follow each other."""
    segments = []
    position = 0
    for zeros in re.finditer(b"\\0{%d,}" % gap, memory):
        if zeros.start() > position:
            segments.append((position, memory[position:zeros.start()]))
        position = zeros.end()
    if position < len(memory):
        segments.append((position, memory[position:]))
    trimmed = []
    for offset, data in segments:  # a few zeros at either end of memory
        stripped = data.lstrip(b"\0")
        if stripped:
            trimmed.append((offset + len(data) - len(stripped), stripped.rstrip(b"\0")))
    return trimmed


def _active_segments(memory: bytes, room: int) -> list[tuple[int, bytes]]:
    """:func:`data_segments` of ``memory``, with a wider gap while they are more than ``room``."""
    gap = ZERO_GAP
    while len(segments := data_segments(memory, gap)) > room:
        gap *= 2
    return segments


def snapshot(
    module: bytes,
    memory: bytes,
    global_values: list[int | float],
    *,
    drop_exports: tuple[str, ...],
    passive: Sequence[bytes] = (),
    keep_names: bool = False,
) -> bytes:
    """``module`` with its state replaced by a snapshot taken after initialisation.

    ``passive`` become passive data segments 0, 1, ... (the code reads them
    with ``memory.init``); the active segments that write ``memory`` follow.
    """
    sections = parse_sections(module)
    page_count = len(memory) // 65536

    replace_section(sections, memory_section(page_count, memory_limits(sections)[1]))

    types = defined_global_types(sections)
    if len(types) != len(global_values):
        raise ValueError(f"{len(types)} globals but {len(global_values)} snapshot values")
    payload = bytearray(uleb(len(types)))
    for (value_type, mutable), value in zip(types, global_values, strict=True):
        payload += bytes([value_type, int(mutable)]) + _const(value_type, value)
    replace_section(sections, Section(GLOBAL, bytes(payload)))

    segments = _active_segments(memory, MAX_DATA_SEGMENTS - len(passive))
    parts = [uleb(len(passive) + len(segments))]
    for data in passive:
        parts += (b"\x01", uleb(len(data)), data)
    for offset, data in segments:
        parts += (b"\x00\x41", sleb(offset), bytes([END]), uleb(len(data)), data)
    replace_section(sections, Section(DATA, b"".join(parts)))
    if passive or find_section(sections, DATACOUNT) is not None:  # memory.init needs it to validate
        replace_section(sections, Section(DATACOUNT, uleb(len(passive) + len(segments))))

    exports = [
        e for e in read_exports(sections) if e.name not in drop_exports and not e.name.startswith(GLOBAL_EXPORT_PREFIX)
    ]
    replace_section(sections, export_section(exports))

    sections = [s for s in sections if s.id != START]
    if not keep_names:
        sections = [s for s in sections if s.id != CUSTOM]
    return encode_sections(sections)


# The custom section that marks a snapshot carried in a passive segment (its
# payload: that segment's index, then 1 when the segment is packed), restored
# on the module's first call.
DEFERRED_SNAPSHOT_SECTION = "meshext.deferred_snapshot"
RESTORE_SNAPSHOT_EXPORT = "meshext_restore_snapshot"
"""The shim's function that writes a packed deferred snapshot (sdk/shim/segment.c): the generated restore
calls it, and the export goes."""
PACKED_SNAPSHOT_SEGMENT = 1
"""The segment segment.c reads a packed snapshot from (memory.init's index is an immediate): the shim's code
names it before the snapshot exists."""
RESTORE_AREA_SIZE = 64 * 1024
"""Bytes the snapshot leaves zero that the packed restore works in (segment.c traps if it needs more)."""
# Where the restore reads each run's header (unpacked) or the area's address (packed): 8 bytes the
# snapshot leaves zero (wasm-ld puts static data at 1024 and up), zeroed again once it is done.
_READ_AT = 0
_RUN_HEADER = struct.Struct("<II")  # (offset in memory, length); a length of 0 ends the runs
# A packed snapshot's segment starts with the address of the restore's area (0: nothing to restore, as in
# the test host's code-only module), then the runs' stream, packed.  The address is data, not code, so that
# a build whose snapshot alone changed keeps the compiled code of the last.
_AREA = struct.Struct("<I")
_NO_PARAMS_NO_RESULTS = (b"", b"")


@dataclass(frozen=True)
class DeferredSnapshot:
    """Where a module carries its deferred snapshot (:func:`defer_snapshot`)."""

    segment: int  # the passive data segment's index
    packed: bool  # its runs' stream is packed (meshext.packed_segment) for the shim's restore


def _append_entries(sections: list[Section], section_id: int, entries: Sequence[bytes]) -> None:
    """Add ``entries`` at the end of the vector section ``section_id`` (made if missing)."""
    section = find_section(sections, section_id)
    count, rest = 0, b""
    if section is not None:
        reader = Reader(section.payload)
        count = reader.uleb()
        rest = section.payload[reader.position:]
    replace_section(sections, Section(section_id, b"".join([uleb(count + len(entries)), rest, *entries])))


def _function_body(code: bytes, locals_: bytes = b"\x00") -> bytes:
    """A code section entry: ``locals_`` (already a vector) then ``code`` and its END."""
    return uleb(len(locals_) + len(code) + 1) + locals_ + code + bytes([END])


def _restore_body(segment: int, restored_global: int) -> bytes:
    """Once per instance: copy each run of segment ``segment`` to its place in memory, then drop it."""
    init = b"\xfc\x08" + uleb(segment) + b"\x00"  # memory.init segment, memory 0
    header, header_length = _READ_AT, _RUN_HEADER.size
    position, destination, length = 0, 1, 2  # the locals
    code = b"".join([
        b"\x23" + uleb(restored_global) + b"\x04\x40\x0f\x0b",  # if restored: return
        b"\x41\x01\x24" + uleb(restored_global),  # restored = 1 (before anything can trap)
        b"\x03\x40",  # loop: read the next run's header into memory[header:header + 8]
        b"\x41" + sleb(header) + b"\x20" + uleb(position) + b"\x41" + sleb(header_length) + init,
        b"\x41" + sleb(header) + b"\x28\x02\x00\x21" + uleb(destination),
        b"\x41" + sleb(header) + b"\x28\x02\x04\x22" + uleb(length),
        b"\x04\x40",  # if length: copy the run, step past it and loop
        b"\x20" + uleb(destination) + b"\x20" + uleb(position) + b"\x41" + sleb(header_length) + b"\x6a",
        b"\x20" + uleb(length) + init,
        b"\x20" + uleb(position) + b"\x20" + uleb(length) + b"\x6a\x41" + sleb(header_length) + b"\x6a",
        b"\x21" + uleb(position) + b"\x0c\x01\x0b\x0b",  # br to the loop; end if; end loop
        b"\x41" + sleb(header) + b"\x42\x00\x37\x03\x00",  # the header's bytes back to the snapshot's zeros
        b"\xfc\x09" + uleb(segment),  # data.drop: nothing reads the runs again
    ])
    return _function_body(code, locals_=b"\x01\x03" + bytes([I32]))


def _packed_restore_body(segment: int, restored_global: int, restore: int) -> bytes:
    """Once per instance: read the restore's area from the first bytes of segment ``segment`` (through
    memory at ``_READ_AT``, zero again after), and unless it is 0 have the shim's ``restore`` unpack the rest of the
    segment into memory, working there; then drop the segment."""
    init = b"\xfc\x08" + uleb(segment) + b"\x00"  # memory.init segment, memory 0
    area = 0  # the local
    return _function_body(b"".join([
        b"\x23" + uleb(restored_global) + b"\x04\x40\x0f\x0b",  # if restored: return
        b"\x41\x01\x24" + uleb(restored_global),  # restored = 1 (before anything can trap)
        b"\x41" + sleb(_READ_AT) + b"\x41\x00\x41" + sleb(_AREA.size) + init,
        b"\x41" + sleb(_READ_AT) + b"\x28\x02\x00\x21" + uleb(area),
        b"\x41" + sleb(_READ_AT) + b"\x41\x00\x36\x02\x00",  # the snapshot's zeros back
        b"\x20" + uleb(area) + b"\x04\x40",  # if area: restore(area, size, where the packed runs start)
        b"\x20" + uleb(area) + b"\x41" + sleb(RESTORE_AREA_SIZE) + b"\x41" + sleb(_AREA.size),
        b"\x10" + uleb(restore) + b"\x0b",
        b"\xfc\x09" + uleb(segment),  # data.drop: nothing reads the runs again
    ]), locals_=b"\x01\x01" + bytes([I32]))


def _restore_area(runs: Sequence[tuple[int, bytes]], memory_size: int) -> int | None:
    """The start (16-byte aligned) of the widest stretch of ``memory_size`` bytes that no run writes, above
    the bytes the restore reads through, if it holds the packed restore's area; None if none does."""
    writes = sorted((offset, offset + len(data)) for offset, data in runs)
    gap_starts = [_READ_AT + _RUN_HEADER.size, *(end for _, end in writes)]
    gap_ends = [*(offset for offset, _ in writes), memory_size]
    start, end = max(zip(gap_starts, gap_ends, strict=True), key=lambda gap: gap[1] - gap[0])
    start += -start % 16
    return start if end - start >= RESTORE_AREA_SIZE else None


def _run_stream(runs: Sequence[tuple[int, bytes]]) -> bytes:
    """``runs`` as the deferred snapshot's segment: each run's header and bytes, then an empty header."""
    parts: list[bytes] = []
    for offset, data in runs:
        parts += (_RUN_HEADER.pack(offset, len(data)), data)
    parts.append(_RUN_HEADER.pack(0, 0))
    return b"".join(parts)


def deferred_runs(segment: bytes, *, packed: bool) -> list[tuple[int, bytes]]:
    """The (offset, bytes) runs a deferred snapshot's segment writes, in order."""
    if packed:
        (area,) = _AREA.unpack_from(segment)
        if not area:
            return []
        segment = packed_segment.unpack(segment[_AREA.size:])
    runs: list[tuple[int, bytes]] = []
    position = 0
    while True:
        offset, length = _RUN_HEADER.unpack_from(segment, position)
        if not length:
            return runs
        position += _RUN_HEADER.size
        runs.append((offset, segment[position:position + length]))
        position += length


def empty_deferred_snapshot(*, packed: bool) -> bytes:
    """A deferred snapshot's segment that writes nothing."""
    return _AREA.pack(0) if packed else _run_stream(())


def deferred_snapshot(sections: list[Section]) -> DeferredSnapshot | None:
    """Where the module carries its deferred snapshot; None if it has none."""
    for section in sections:
        if section.id == CUSTOM:
            reader = Reader(section.payload)
            if reader.name() == DEFERRED_SNAPSHOT_SECTION:
                segment = reader.uleb()
                return DeferredSnapshot(segment, packed=reader.position < len(reader.data) and reader.byte() == 1)
    return None


def initial_memory(sections: list[Section]) -> list[tuple[int, bytes]] | None:
    """The (offset, bytes) runs every instance's memory holds before its code runs: its active segments,
    or its deferred snapshot; None as for :func:`read_data_segments`."""
    segments = read_data_segments(sections)
    if segments is None:
        return None
    deferred = deferred_snapshot(sections)
    if deferred is not None:
        return deferred_runs(segments[deferred.segment][1], packed=deferred.packed)
    return [(offset, data) for offset, data in segments if offset is not None]


def defer_snapshot(module: bytes) -> bytes:
    """``module`` with its active data segments carried in one passive segment, written into memory by
    the first call of any exported function instead of at instantiation.

    An instance that is never called then holds none of the snapshot: Envoy
    keeps a base VM per module only to clone the others from, and never
    calls into it.  Every exported function becomes a wrapper that restores
    the snapshot once (a check of one global afterwards) and calls the
    original; internal calls and the table are unchanged.  The module must
    have no start function (it would run before the restore).

    A module with the shim's :data:`RESTORE_SNAPSHOT_EXPORT` and one passive
    segment before the snapshot's (meshext's builds) carries the runs packed
    (``meshext.packed_segment``: the header filter's 3.87 MB take 1.43), and
    the shim unpacks them, working in :data:`RESTORE_AREA_SIZE` bytes of
    the widest stretch the snapshot leaves zero; otherwise the runs are
    copied as they are.  Either restore reads through the 8 bytes at address
    0, which the snapshot must leave zero.
    """
    sections = parse_sections(module)
    segments = read_data_segments(sections)
    if segments is None or find_section(sections, START) is not None:
        raise ValueError("only a module without a start function whose active segments are at constant "
                         "offsets can defer its snapshot")
    passive = [data for offset, data in segments if offset is None]
    runs = [(offset, data) for offset, data in segments if offset is not None]
    if any(offset is not None for offset, _ in segments[:len(passive)]):
        raise ValueError("a passive segment after an active one")
    segment = len(passive)
    exports = read_exports(sections)
    restore_export = next((e for e in exports if e.name == RESTORE_SNAPSHOT_EXPORT and e.kind == EXTERNAL_FUNC),
                          None)
    area = None
    if restore_export is not None and segment == PACKED_SNAPSHOT_SEGMENT:
        area = _restore_area(runs, memory_limits(sections)[0] * 65536)
    if any(offset < _READ_AT + _RUN_HEADER.size for offset, _ in runs):
        raise ValueError(f"the snapshot writes below address {_RUN_HEADER.size}, where the restore reads")
    data_parts = [uleb(segment + 1), *(b"\x01" + uleb(len(data)) + data for data in passive)]
    stream = _run_stream(runs)
    if area is not None:
        stream = _AREA.pack(area) + packed_segment.pack(stream)
    replace_section(sections, Section(DATA, b"".join([*data_parts, b"\x01", uleb(len(stream)), stream])))
    replace_section(sections, Section(DATACOUNT, uleb(segment + 1)))

    imported_functions, imported_globals = imported_counts(sections)
    restored_global = imported_globals + len(defined_global_types(sections))
    _append_entries(sections, GLOBAL, [bytes([I32, 1]) + _const(I32, 0)])

    types = function_types(sections)
    if _NO_PARAMS_NO_RESULTS in types:
        restore_type = types.index(_NO_PARAMS_NO_RESULTS)
    else:
        restore_type = len(types)
        _append_entries(sections, TYPE, [b"\x60\x00\x00"])
    all_types = [*(item.function_type for item in read_imports(sections) if item.kind == EXTERNAL_FUNC),
                 *defined_function_type_indices(sections)]
    restore = imported_functions + len(defined_function_type_indices(sections))
    if restore_export is not None and area is not None:
        exports.remove(restore_export)  # only the restore calls it
        body = _packed_restore_body(segment, restored_global, restore_export.index)
    else:
        body = _restore_body(segment, restored_global)
    new_types, bodies = [restore_type], [body]
    for export in exports:
        if export.kind != EXTERNAL_FUNC:
            continue
        params = types[all_types[export.index]][0]
        arguments = b"".join(b"\x20" + uleb(number) for number in range(len(params)))
        new_types.append(all_types[export.index])
        bodies.append(_function_body(b"\x10" + uleb(restore) + arguments + b"\x10" + uleb(export.index)))
        export.index = restore + len(bodies) - 1
    _append_entries(sections, FUNCTION, [uleb(index) for index in new_types])
    _append_entries(sections, CODE, bodies)
    replace_section(sections, export_section(exports))
    name = DEFERRED_SNAPSHOT_SECTION.encode()
    sections.append(Section(CUSTOM, uleb(len(name)) + name + uleb(segment) + bytes([area is not None])))
    return encode_sections(sections)
