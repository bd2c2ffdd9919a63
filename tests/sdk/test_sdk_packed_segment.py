"""The shim's readers of its packed segments (sdk/shim/segment.c) give back what the build packed.

`meshext build` carries segment 0 (the files read at run time, the cold
code's bodies) in blocks of DEFLATE (src/meshext/packed_segment.py); the
shim inflates the blocks a read covers with a decoder of its own.  Here
tests/sdk/segment/reader.c, linked with that decoder alone, reads seeded
random slices of segments whose blocks zlib writes each way DEFLATE has:
stored (random bytes), fixed and dynamic Huffman codes, matches that
overlap what they copy.  Every slice must equal the bytes packed.  The
shim restores a deferred snapshot packed the same way in segment 1
(``wasm_binary.defer_snapshot``): every run lands where it belongs, and
nothing else changes, and what unpacks it keeps nothing in memory the
snapshot writes.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
import wasmtime
from sdk_helpers import with_passive_segments

from meshext import packed_segment
from meshext import wasm_binary as wb
from meshext.sdk.builder import toolchain
from meshext.sdk.builder.pipeline import SDK_DIR
from meshext.sdk.builder.shim import SHIM_SOURCES, build_shim

READER = Path(__file__).parent / "segment" / "reader.c"
BLOCK = packed_segment.BLOCK_SIZE


class SegmentReader:
    """One instance of reader.c with ``content`` packed as its segment 0."""

    def __init__(self, module: bytes, content: bytes) -> None:
        self.store = wasmtime.Store()
        packed = with_passive_segments(module, content)
        self.exports = wasmtime.Instance(self.store, wasmtime.Module(self.store.engine, packed), []).exports(self.store)
        self.exports["_initialize"](self.store)
        self.buffer = self.exports["allocate"](self.store, len(content) + 1)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``, as the shim reads them."""
        self.exports["read"](self.store, self.buffer, offset, size)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        return bytes(memory.read(self.store, self.buffer, self.buffer + size))


@pytest.fixture(scope="module")
def reader_module(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    output = tmp_path_factory.mktemp("segment") / "reader.wasm"
    subprocess.run([*toolchain.zig_cc(), "-target", "wasm32-wasi", "-mexec-model=reactor", "-Oz", f"-I{SHIM_SOURCES}",
                    str(SHIM_SOURCES / "segment.c"), str(READER), "-o", str(output)], check=True)
    return output.read_bytes()


def block_types(packed: bytes) -> set[int]:
    """The DEFLATE block type (0 stored, 1 fixed, 2 dynamic) each packed block starts with."""
    count = int.from_bytes(packed[12:16], "little")
    starts = [int.from_bytes(packed[16 + 4 * index:20 + 4 * index], "little") for index in range(count)]
    return {packed[start] >> 1 & 3 for start in starts}


def mixed_content() -> bytes:
    """Blocks of each kind zlib writes, and slices that cross from one kind into the next."""
    chooser = random.Random(1951)
    text = b"".join(path.read_bytes() for path in sorted(SDK_DIR.glob("*.py")))
    content = b"".join([
        text[:3 * BLOCK + 123],  # dynamic codes
        chooser.randbytes(2 * BLOCK + 7),  # stored: nothing to compress
        bytes(BLOCK + 5) + b"abc" * 4000,  # long matches copying bytes they write themselves
    ])
    return content + bytes(-len(content) % BLOCK) + b"a short last block"  # alone in its block: fixed codes


def test_random_slices_read_as_packed(reader_module: bytes) -> None:
    content = mixed_content()
    assert block_types(packed_segment.pack(content)) == {0, 1, 2}  # every kind of block is read below
    reader = SegmentReader(reader_module, content)
    chooser = random.Random(16)
    for _ in range(400):
        offset = chooser.randrange(len(content))
        size = chooser.choice([1, 2, 17, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, len(content) - offset])
        size = min(size, len(content) - offset)
        assert reader.read(offset, size) == content[offset:offset + size], (offset, size)
    assert reader.read(0, len(content)) == content


def test_an_empty_segment_and_reads_outside_the_segment(reader_module: bytes) -> None:
    assert SegmentReader(reader_module, b"").read(0, 0) == b""
    content = b"0123456789" * 5000
    reader = SegmentReader(reader_module, content)
    assert reader.read(len(content) - 3, 3) == b"789"
    with pytest.raises(wasmtime.Trap):  # as memory.init past a segment's end traps
        reader.read(len(content) - 3, 4)


def run_stream(runs: list[tuple[int, bytes]]) -> bytes:
    """The deferred snapshot's runs as segment.c reads them: per run a u32 offset and a u32 length, then its
    bytes; a length of 0 ends them."""
    return b"".join(struct.pack("<II", offset, len(data)) + data for offset, data in runs) + bytes(8)


class Restore:
    """One instance of reader.c whose segment 1 packs ``stream`` (:func:`run_stream`) as the build packs a
    deferred snapshot; memory from ``base`` on (4 MiB grown for the test) starts as 0xAA bytes, as if
    something else were there."""

    SIZE = 4 << 20

    def __init__(self, module: bytes, stream: bytes) -> None:
        self.store = wasmtime.Store()
        instance = wasmtime.Instance(self.store, wasmtime.Module(self.store.engine, with_passive_segments(
            module, b"segment 0", stream)), [])
        self.exports = instance.exports(self.store)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.base = memory.data_len(self.store)
        memory.grow(self.store, self.SIZE // 65536)
        memory.write(self.store, b"\xaa" * self.SIZE, self.base)

    def restore(self, area: int, area_size: int = wb.RESTORE_AREA_SIZE) -> bytes:
        """Zero ``area`` (the snapshot leaves it zero), restore, and return the test's 4 MiB of memory."""
        self.memory.write(self.store, bytes(area_size), area)
        self.exports["meshext_restore_snapshot"](self.store, area, area_size, 0)  # type: ignore[operator]
        return bytes(self.memory.read(self.store, self.base, self.base + self.SIZE))


def test_the_restore_writes_every_run_and_nothing_else(reader_module: bytes) -> None:
    # Run headers and bytes cross block boundaries at every place; zero bytes inside runs are written too.
    chooser = random.Random(1951)
    text = b"".join(path.read_bytes() for path in sorted(SDK_DIR.glob("*.py")))
    probe = Restore(reader_module, run_stream([]))
    base, area = probe.base, probe.base + 3 * (1 << 20)
    runs, position = [], base + 5
    while True:
        length = chooser.choice([1, 3, 8, 100, BLOCK - 5, BLOCK + 9, 3 * BLOCK])
        if position + length > area:
            break
        start = chooser.randrange(len(text) - length) if length < len(text) else 0
        data = chooser.choice([text[start:start + length], chooser.randbytes(length), bytes(length // 2) + b"x",
                               (b"abcdefg"[:chooser.randrange(2, 8)] * length)[:length]])  # overlapping matches
        runs.append((position, data))
        position += len(data) + chooser.choice([1, 16, 4096])
    stream = run_stream(runs)
    assert len(stream) > 20 * BLOCK and {0, 2} <= block_types(packed_segment.pack(stream))  # fixed codes: above
    expected = bytearray(b"\xaa" * Restore.SIZE)
    for offset, data in runs:
        expected[offset - base:offset - base + len(data)] = data
    expected[area - base:area - base + wb.RESTORE_AREA_SIZE] = bytes(wb.RESTORE_AREA_SIZE)  # zero, as it began
    assert Restore(reader_module, stream).restore(area) == bytes(expected)


def test_a_restore_refuses_a_stream_without_its_end_and_an_area_too_small(reader_module: bytes) -> None:
    restore = Restore(reader_module, run_stream([]))
    runs = [(restore.base + 64, b"snapshot")]
    with pytest.raises(wasmtime.Trap):
        Restore(reader_module, run_stream(runs)[:-8]).restore(restore.base + (1 << 20))
    with pytest.raises(wasmtime.Trap):
        Restore(reader_module, run_stream(runs)).restore(restore.base + (1 << 20), area_size=16 * 1024)
    assert Restore(reader_module, run_stream(runs)).restore(restore.base + (1 << 20))[64:72] == b"snapshot"


def test_the_shims_restore_keeps_nothing_in_the_memory_it_writes() -> None:
    # The restore runs while memory holds none of the snapshot, and writes all of it: a frame on the shadow
    # stack (the stack pointer is a global) or state in a static variable would be overwritten under it.
    printed = subprocess.run([toolchain.wasm_tools(), "print", str(build_shim()[0])], check=True,
                             capture_output=True, text=True).stdout
    bodies = dict(re.findall(r"^  \(func \$(\S+) (.*?)(?=^  \()", printed, re.MULTILINE | re.DOTALL))
    reached, pending = set(), [wb.RESTORE_SNAPSHOT_EXPORT]
    while pending:
        name = pending.pop()
        if name not in reached:
            reached.add(name)
            pending += re.findall(r"^\s*call \$(\S+)", bodies[name], re.MULTILINE)
    assert "copy_snapshot" in reached
    for name in reached:
        assert not re.search(r"global\.[gs]et|call_indirect", bodies[name]), name
