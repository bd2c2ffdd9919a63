"""The module's read-only file system image (read by sdk/shim/memfs.c).

Layout: ``b"MXFS"``, u32 version, u32 entry count, then per entry (sorted by
path) five u32: path offset, path length, data offset, data length, kind
(0 file, 1 directory); then the path strings and file contents.  Paths are
absolute without the leading ``/``.  Parent directories are added
automatically.
"""

from __future__ import annotations

import struct

VERSION = 1
FILE, DIRECTORY = 0, 1


def build_image(files: dict[str, bytes]) -> bytes:
    entries: dict[str, bytes | None] = {}
    for path, data in files.items():
        path = path.strip("/")
        entries[path] = data
        parts = path.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), None)
    ordered = sorted(entries.items(), key=lambda item: item[0].encode())

    header_size = 12 + 20 * len(ordered)
    blob = bytearray()
    table = bytearray()
    for path, data in ordered:
        encoded = path.encode()
        path_offset = header_size + len(blob)
        blob += encoded
        data_offset = header_size + len(blob)
        if data is not None:
            blob += data
        table += struct.pack(
            "<5I", path_offset, len(encoded), data_offset, len(data or b""), FILE if data is not None else DIRECTORY
        )
    return b"MXFS" + struct.pack("<2I", VERSION, len(ordered)) + bytes(table) + bytes(blob)
