"""The wasmtime engine and the compiled-module cache (memory and disk).

Compiling a module to native code is the slow part of loading it: seconds
for a meshext module, whose CPython is 1.8 MB of Wasm code.  Two things keep
that off the edit-test loop:

- native code is cached on disk (``wasmtime/`` under the meshext cache,
  least recently used files evicted past ``MESHEXT_CACHE_LIMIT_MB``: see
  :mod:`meshext.paths`), keyed by what was compiled and the wasmtime version;
- a module is compiled without its active data segments, which
  :func:`instantiate` writes into the new instance's memory instead.  A
  rebuilt filter differs from the previous build only in its snapshot
  (active data segments; its passive one, the file data, holds none of the
  project's files), so its code, and therefore its native code, comes from
  the cache.

That split is exact for modules whose active data segments are at
constant offsets, after any passive ones, whose code names only the passive ones (no data
count section without a passive segment), and that have no start function
(what linkers and ``meshext build`` write): instantiation applies active
segments and then runs the start function, so with no start function
nothing can observe whether the bytes arrived at instantiation or just
after it.  Passive segments (a module's file data, read with
``memory.init``) stay in the compiled module, with their numbers.  A
snapshot ``meshext build`` defers to the first call
(:func:`meshext.wasm_binary.defer_snapshot`) is data too: its runs are
written at instantiation and its segment is emptied in the code-only
module, whose first call then restores nothing (no host of the test
runtime reads memory before its first call).  Any other module is
compiled as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import version
from typing import TypeVar, cast

import wasmtime

from meshext import function_profile
from meshext import wasm_binary as wb
from meshext.errors import MeshextError
from meshext.paths import EvictableCache

PAGE_SIZE = 65536
# Custom sections that change what wasmtime compiles: function names appear in traps.
_COMPILED_CUSTOM_SECTIONS = {"name"}

_Kind = TypeVar("_Kind", bound=wasmtime.Module)
_ENGINE: wasmtime.Engine | None = None
_MODULES: dict[str, wasmtime.Module] = {}
_DISK = EvictableCache("wasmtime")


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime engine (serialised modules must match its config)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine(wasmtime.Config())
    return _ENGINE


@dataclass(frozen=True)
class MemoryImage:
    """The data segments of a module, as one run of bytes, and the memory size it starts with."""

    memory_export: str
    pages: int
    offset: int
    data: bytes

    def apply(self, store: wasmtime.Store, instance: wasmtime.Instance) -> None:
        """Give a fresh instance of the code-only module the memory the full module starts with."""
        memory = instance.exports(store)[self.memory_export]
        if not isinstance(memory, wasmtime.Memory):
            raise TypeError(f"export {self.memory_export!r} is not a memory")
        memory.grow(store, self.pages - memory.size(store))
        if self.data:
            memory.write(store, self.data, self.offset)


class CodeOnlyModule(wasmtime.Module):
    """A module compiled without its data segments; :func:`instantiate` writes them."""

    memory_image: MemoryImage


def compile_module(code: bytes, *, where: str = "module") -> wasmtime.Module:
    """Compile once per process and once per machine: the native code is cached on disk.

    The cache key covers what is compiled and the wasmtime version, so an
    upgrade or an edited module never picks up stale native code.  Give the
    result to :func:`instantiate`, not to a linker directly.  With
    ``$MESHEXT_PROFILE_DIR`` set, the module is compiled instrumented
    (``meshext.function_profile``).
    """
    original = code
    profiling = function_profile.profile_dir() is not None
    digest = hashlib.sha256(code).hexdigest() + (" profiled" if profiling else "")
    cached = _MODULES.get(digest)
    if cached is not None:
        return cached
    if profiling:  # $MESHEXT_PROFILE_DIR: what `meshext build --cold-code` keeps compiled
        code = function_profile.instrument(code)
    split = _split_data(code)
    module: wasmtime.Module | None = None
    if split is not None:
        code_only, image = split
        try:
            code_only_module = _load(code_only, CodeOnlyModule)
        except wasmtime.WasmtimeError:
            pass  # e.g. code that names data segments (memory.init): compile the module as it is
        else:
            code_only_module.memory_image = image
            module = code_only_module
    if module is None:
        try:
            module = _load(code, wasmtime.Module)
        except wasmtime.WasmtimeError as error:
            raise MeshextError(f"not a valid Wasm module: {error}", where=where,
                               fix="give a core Wasm module (.wasm), e.g. from `meshext build`") from None
    if profiling:
        function_profile.mark_profiled(module, original)
    _MODULES[digest] = module
    return module


def forget_compiled_modules() -> None:
    """Drop this process's compiled modules (the disk cache stays): the next load deserialises from disk."""
    _MODULES.clear()


def instantiate(linker: wasmtime.Linker, store: wasmtime.Store, module: wasmtime.Module) -> wasmtime.Instance:
    """``linker.instantiate`` for a module from :func:`compile_module`, with its initial memory."""
    instance = linker.instantiate(store, module)
    if isinstance(module, CodeOnlyModule):
        module.memory_image.apply(store, instance)
    return instance


def _load(code: bytes, kind: type[_Kind]) -> _Kind:
    """``kind`` compiled from ``code``: from the disk cache, else compiled and cached."""
    name = f"{hashlib.sha256(code).hexdigest()}-{wasmtime_version()}.cwasm"
    path = _DISK.lookup(name)
    if path is not None:
        try:
            # wasmtime-py types its constructors as returning Module, not the subclass they build.
            return cast(_Kind, kind.deserialize_file(engine(), str(path)))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)  # damaged, or written by another build of wasmtime
    module = kind(engine(), code)
    _DISK.store(name, bytes(module.serialize()))
    return module


def _split_data(code: bytes) -> tuple[bytes, MemoryImage] | None:
    """The module without its active data (and with no initial memory), and
    that data; None when the split would not be exact (see the module
    docstring).  Passive segments stay in the module: the code reads them."""
    try:
        sections = wb.parse_sections(code)
        segments = wb.read_data_segments(sections)
        pages, maximum = wb.memory_limits(sections)
        memory_exports = [e.name for e in wb.read_exports(sections) if e.kind == wb.EXTERNAL_MEMORY and e.index == 0]
        imports_memory = wb.imports_by_kind(sections)[wb.EXTERNAL_MEMORY] > 0
        kept = [
            section for section in sections
            if section.id != wb.CUSTOM or wb.Reader(section.payload).name() in _COMPILED_CUSTOM_SECTIONS
        ]
    except (ValueError, IndexError):
        return None  # not a module this split understands; compiling it reports what is wrong
    if segments is None:
        return None
    passive = [data for offset, data in segments if offset is None]
    active = [(offset, data) for offset, data in segments if offset is not None]
    deferred = wb.deferred_snapshot(sections)
    if deferred is not None and not active and 0 <= deferred.segment < len(passive):
        # The snapshot's runs are written at instantiation like active data, and the code-only
        # module's copy of their segment holds none, so its first call restores nothing.
        active = wb.deferred_runs(passive[deferred.segment], packed=deferred.packed)
        passive[deferred.segment] = wb.empty_deferred_snapshot(packed=deferred.packed)
    if not active or not memory_exports or imports_memory:
        return None  # no data to set aside, or no way to write it, or memory 0 is not the one defined
    if not passive and wb.find_section(sections, wb.DATACOUNT) is not None:
        # The code names data segments (memory.init and data.drop validate only
        # with a data count), and the only ones it can name are active: the
        # code-only module would not validate, which wasmtime says only after
        # compiling nearly all of it (3 s for the shim, on every build).
        return None
    if any(offset is not None for offset, _ in segments[:len(passive)]):
        return None  # a passive segment after an active one: taking the active ones out would renumber it
    if wb.find_section(sections, wb.START) is not None:
        return None  # the start function would run before the data is written
    if any(offset + len(data) > pages * PAGE_SIZE for offset, data in active):
        return None  # instantiating the module fails: let wasmtime say so
    start = min(offset for offset, _ in active)
    image = bytearray(max(offset + len(data) for offset, data in active) - start)
    for offset, data in active:  # in order: a later segment overwrites an earlier one, as at instantiation
        image[offset - start:offset - start + len(data)] = data
    wb.replace_section(kept, wb.Section(wb.DATA, b"".join(
        [wb.uleb(len(passive)), *(b"\x01" + wb.uleb(len(data)) + data for data in passive)])))
    if wb.find_section(kept, wb.DATACOUNT) is not None:
        wb.replace_section(kept, wb.Section(wb.DATACOUNT, wb.uleb(len(passive))))
    # The initial size belongs to the data: a heap grown by a page must not change the code's cache key.
    wb.replace_section(kept, wb.memory_section(0, maximum))
    return wb.encode_sections(kept), MemoryImage(memory_exports[0], pages, start, bytes(image))


def wasmtime_version() -> str:
    """The installed wasmtime-py version (part of every compiled-code cache key)."""
    return version("wasmtime")
