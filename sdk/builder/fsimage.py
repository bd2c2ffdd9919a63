"""The module's read-only file system image (read by sdk/shim/memfs.c).

Layout: ``b"MXFS"``, u32 version, u32 entry count, then per entry (sorted
by path) five u32: path offset, path length, data offset, data length, kind
(``FILE``, ``DIRECTORY``, or ``SEGMENT_FILE``: a file whose data offset
counts from the start of the module's passive data segment 0, not from the
image's start); then all path strings, then all file contents.  Paths are
absolute without the leading ``/``.  Parent directories are added
automatically.

The build writes the image into the module's memory and pre-initialises
the interpreter over it; then :func:`detach` moves what is left of the file
data (files nothing imported at build time: lazy imports, sources for
traceback lines) into a passive data segment, which V8 keeps once per
module instead of in every VM's linear memory (compressed:
src/meshext/packed_segment.py).  The header, the entry table
and the paths stay in memory: they come first, so they take a few pages,
not one per path.  So does the data of the files an author edits (the
project's sources): a rebuilt filter then keeps its passive segment, and
the test host its compiled code (meshext.compiled_modules).

What goes where: the SDK, the filter's modules and its dependencies are
imported from ``/app`` (on ``sys.path``, sdk/shim/shim.c), the stdlib from
``/lib/python3.11``; in a module built from several projects, each
project's modules from its own ``/roots/ROOT_ID`` (put on ``sys.path`` only
while ``sdk/_dispatch.py`` imports that project).  Tracebacks show a file under the name its code object
carries and read the line from that path (relative to ``/``, the module's
working directory): so a project file's source sits at the name the author
knows, ``my-filter/filter.py``, and ``/app`` holds its bytecode alone
(pipeline.collect_files, bytecode.PythonFile).
"""

from __future__ import annotations

import struct
from typing import Any

from meshext.errors import InternalError, MeshextError

VERSION = 2
FILE, DIRECTORY, SEGMENT_FILE = 0, 1, 2
_HEADER = struct.Struct("<4s2I")  # magic, version, entry count
_ENTRY = struct.Struct("<5I")  # path offset, path length, data offset, data length, kind
APP_DIR = "app"
ROOTS_DIR = "roots"


def build_config(roots: list[dict[str, Any]], preload: list[str]) -> bytes:
    """The build configuration ``sdk/_dispatch.py``'s ``preinit`` reads (at
    ``_dispatch.BUILD_CONFIG_PATH``): per root its ``root_id`` ("" serves
    every root_id), ``name``, ``entry``, ``fail_policy``, ``path`` (its own
    import folder; None: ``/app``) and ``preload`` (its own modules to import
    at build time), and the stdlib modules to import at build time.

    As a Python literal, which the module's CPython reads without importing
    anything (json would stay in every VM's snapshot)."""
    return repr({"roots": roots, "preload": preload}).encode()


def root(name: str, entry: str, fail_policy: str, *, root_id: str = "", path: str | None = None,
         preload: list[str] | None = None) -> dict[str, Any]:
    """One root of :func:`build_config`."""
    return {"root_id": root_id, "name": name, "entry": entry, "fail_policy": fail_policy, "path": path,
            "preload": preload or []}


def add_files(files: dict[str, bytes], new: dict[str, bytes], owner: str) -> None:
    """Add ``new`` to ``files``; a path two parts of the module claim is a build error naming ``owner``."""
    for path, data in new.items():
        if path in files and files[path] != data:
            raise MeshextError(
                f"{owner} would put /{path} into the module, where something else already is",
                where=owner,
                fix="rename the project folder or module so that the two do not collide",
            )
        files[path] = data


def build_image(files: dict[str, bytes]) -> bytes:
    """The image memfs.c mounts, holding ``files`` (path without leading ``/`` -> contents)."""
    entries: dict[str, bytes | None] = {path.strip("/"): data for path, data in files.items()}
    directories = {path.rsplit("/", depth)[0] for path in entries for depth in range(1, path.count("/") + 1)}
    if clashes := sorted(directories & set(entries)):
        raise InternalError(f"the module's file system holds both a file and a directory at /{clashes[0]}")
    entries.update(dict.fromkeys(directories))
    ordered = sorted(entries.items(), key=lambda item: item[0].encode())

    header_size = _HEADER.size + _ENTRY.size * len(ordered)
    paths = [path.encode() for path, _ in ordered]
    path_offset = header_size
    data_offset = header_size + sum(map(len, paths))
    table = bytearray()
    for encoded, (_, content) in zip(paths, ordered, strict=True):
        table += _ENTRY.pack(path_offset, len(encoded), data_offset, len(content or b""),
                             FILE if content is not None else DIRECTORY)
        path_offset += len(encoded)
        data_offset += len(content or b"")
    contents = [content for _, content in ordered if content is not None]
    return b"".join([_HEADER.pack(b"MXFS", VERSION, len(ordered)), bytes(table), *paths, *contents])


def detach(memory: bytearray, at: int, size: int, in_memory: set[str]) -> bytes:
    """Move the file data of the image at ``memory[at:at + size]`` (as
    pre-initialisation left it) into the bytes of a passive data segment,
    except for the files at the paths ``in_memory``.

    Those stay in memory, packed after the paths; the rest of the data
    region is zeroed (so no active segment of the snapshot covers it), and
    each moved file becomes a ``SEGMENT_FILE`` at its offset in the returned
    segment.  Files pre-initialisation forgot (``meshext_memfs_forget``:
    length 0) take no room.
    """
    magic, version, count = _HEADER.unpack_from(memory, at)
    if magic != b"MXFS" or version != VERSION:
        raise InternalError(f"no file-system image (version {VERSION}) at {at} after pre-initialisation")
    table = [_ENTRY.unpack_from(memory, at + _HEADER.size + _ENTRY.size * index) for index in range(count)]
    data_start = _HEADER.size + _ENTRY.size * count + sum(path_length for _, path_length, *_ in table)
    kept = bytearray()
    segment = bytearray()
    for index, (path_offset, path_length, data_offset, data_length, kind) in enumerate(table):
        if kind == DIRECTORY:
            continue
        if kind != FILE:
            raise InternalError(f"entry {index} of the file-system image is of kind {kind} before the snapshot")
        data = memory[at + data_offset:at + data_offset + data_length]
        if memory[at + path_offset:at + path_offset + path_length].decode() in in_memory:
            data_offset, kind = data_start + len(kept), FILE
            kept += data
        elif data_length:
            data_offset, kind = len(segment), SEGMENT_FILE
            segment += data
        _ENTRY.pack_into(memory, at + _HEADER.size + _ENTRY.size * index,
                         path_offset, path_length, data_offset, data_length, kind)
    memory[at + data_start:at + size] = kept + bytes(size - data_start - len(kept))
    return bytes(segment)
