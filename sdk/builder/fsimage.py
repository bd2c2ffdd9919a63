"""The module's read-only file system image (read by sdk/shim/memfs.c).

Layout: ``b"MXFS"``, u32 version, u32 entry count, then per entry (sorted by
path) five u32: path offset, path length, data offset, data length, kind
(0 file, 1 directory); then the path strings and file contents.  Paths are
absolute without the leading ``/``.  Parent directories are added
automatically.

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

VERSION = 1
FILE, DIRECTORY = 0, 1
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

    header_size = 12 + 20 * len(ordered)
    blob = bytearray()
    table = bytearray()
    for path, content in ordered:
        encoded = path.encode()
        path_offset = header_size + len(blob)
        blob += encoded
        data_offset = header_size + len(blob)
        if content is not None:
            blob += content
        table += struct.pack(
            "<5I", path_offset, len(encoded), data_offset, len(content or b""),
            FILE if content is not None else DIRECTORY,
        )
    return b"MXFS" + struct.pack("<2I", VERSION, len(ordered)) + bytes(table) + bytes(blob)
