"""The shim's reader of passive data segment 0 (sdk/shim/segment.c) gives back what the build packed.

`meshext build` carries segment 0 (the files read at run time, the cold
code's bodies) in blocks of DEFLATE (sdk/builder/packed_segment.py); the
shim inflates the blocks a read covers with a decoder of its own.  Here
tests/sdk/segment/reader.c, linked with that decoder alone, reads seeded
random slices of segments whose blocks zlib writes each way DEFLATE has:
stored (random bytes), fixed and dynamic Huffman codes, matches that
overlap what they copy.  Every slice must equal the bytes packed.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import wasmtime
from sdk_helpers import with_passive_segment_zero

from meshext.sdk.builder import packed_segment, toolchain
from meshext.sdk.builder.pipeline import SDK_DIR
from meshext.sdk.builder.shim import SHIM_SOURCES

READER = Path(__file__).parent / "segment" / "reader.c"
BLOCK = packed_segment.BLOCK_SIZE


class SegmentReader:
    """One instance of reader.c with ``content`` packed as its segment 0."""

    def __init__(self, module: bytes, content: bytes) -> None:
        self.store = wasmtime.Store()
        packed = with_passive_segment_zero(module, content)
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
