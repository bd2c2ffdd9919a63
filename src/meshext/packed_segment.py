"""Passive data segments as the module carries them: cut in blocks, each compressed with DEFLATE.

Segment 0 holds what the module reads at run time but never keeps in every
VM's memory: the file data memfs.c serves (:func:`fsimage.detach`) and the
cold code's region the interpreter reads (sdk/builder/coldcode.py).  V8 and
Envoy each keep the module's bytes, so every byte of the segment costs about
two bytes of a sidecar's RSS; compressed, the header filter's 3.3 MB take
1.2 MB.  The blocks are compressed apart from each other, so a read inflates
only the blocks it covers (sdk/shim/segment.c, which documents the layout
with this module).  Offsets into segment 0 everywhere else in the build
(file data offsets, the cold region's) count in the unpacked bytes.  The
deferred snapshot's segment (``wasm_binary.defer_snapshot``) is packed the
same way, and unpacked whole by each VM's first call.

Layout, little endian: ``"MXZ1"``, u32 block size, u32 unpacked size, u32
block count; block count + 1 u32 offsets, from the segment's start, of each
block's compressed bytes and of their end; the blocks, raw DEFLATE (RFC
1951), each unpacking to the block size (the last to what is left).
"""

from __future__ import annotations

import itertools
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

from meshext.errors import InternalError

MAGIC = b"MXZ1"
BLOCK_SIZE = 16 * 1024
"""Unpacked bytes per block: a read inflates whole blocks (16 KiB packs 3.3 MB of the header filter's
segment to 1.15 MB; 32 KiB to 1.08 MB, but makes each first read of a cold function inflate twice as
much)."""
_HEADER = struct.Struct("<4sIII")
_OFFSET = struct.Struct("<I")


def _compress(block: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # -15: raw DEFLATE, no zlib header
    return compressor.compress(block) + compressor.flush()


def pack(unpacked: bytes) -> bytes:
    """``unpacked`` in the packed layout (deterministic: the same bytes give the same segment).

    The blocks are compressed apart, so on threads (zlib lets go of the GIL):
    every build packs segment 0 and the snapshot, about 8 MB at level 9,
    which took the edit-test loop's rebuild 0.55 s on one core.
    """
    with ThreadPoolExecutor() as pool:
        blocks = list(pool.map(_compress, (unpacked[start:start + BLOCK_SIZE]
                                           for start in range(0, len(unpacked), BLOCK_SIZE))))
    position = _HEADER.size + _OFFSET.size * (len(blocks) + 1)
    offsets = []
    for block in blocks:
        offsets.append(position)
        position += len(block)
    offsets.append(position)
    return b"".join([_HEADER.pack(MAGIC, BLOCK_SIZE, len(unpacked), len(blocks)),
                     *(_OFFSET.pack(offset) for offset in offsets), *blocks])


def unpack(packed: bytes) -> bytes:
    """The bytes :func:`pack` packed."""
    magic, _block_size, size, count = _HEADER.unpack_from(packed)
    if magic != MAGIC:
        raise InternalError(f"a packed data segment starts with {magic!r}, not {MAGIC.decode()}")
    offsets = [_OFFSET.unpack_from(packed, _HEADER.size + _OFFSET.size * index)[0] for index in range(count + 1)]
    unpacked = b"".join(zlib.decompress(packed[start:end], -15) for start, end in itertools.pairwise(offsets))
    if len(unpacked) != size:
        raise InternalError(f"a packed data segment unpacks to {len(unpacked)} bytes, not {size}")
    return unpacked
