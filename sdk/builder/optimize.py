"""Optimise a pruned module's code with Binaryen's ``wasm-opt -Oz``.

Envoy's V8 compiles every function of a module with TurboFan before the
first request (research/envoy-v8.md), so start-up grows with the code V8 is
given: the number of functions as well as their bytes.  clang's ``-Oz``
leaves room that Binaryen's whole-module passes take (inlining, merging
identical functions, removing the functions pruning left unreachable once
nothing refers to them): on the header filter, 6343 functions and 1.78 MB of
code become 4020 and 1.46 MB, Envoy's time to the first answer 2.60 s ->
2.11 s and its RSS 165 -> 155 MB (README, "Code size, issue 16").

Only the code is optimised: wasm-opt gets the module without its data (the
snapshot; the passive segment of the file data, fsimage.detach, and the
one the snapshot will be carried in, as empty stand-ins, with
memory-packing, the one pass that would read or repack them, skipped), and
the result gets the original data back, byte for byte.
No other pass reads memory or segment contents, the function table keeps
its slots (the heap holds them as function pointers) and exports keep
their names, so the snapshot stays valid.  What wasm-opt reads is the same
for every build of filters with the same callbacks and C modules (pruning's
choices), so its output is cached in ``stages/`` like pruning's: wasm-opt
takes tens of seconds on CPython.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from meshext import wasm_binary as wb
from meshext.errors import InternalError
from meshext.paths import EvictableCache, content_key
from meshext.sdk.builder import toolchain

# Wasm 2.0 features clang's wasm32-wasi output may use; wasm-opt must not add others.
FEATURES = ("--enable-bulk-memory", "--enable-sign-ext", "--enable-nontrapping-float-to-int",
            "--enable-mutable-globals")
OPTIONS = ("-Oz", *FEATURES, "--skip-pass=memory-packing")
_DATA_SECTIONS = {wb.DATA, wb.DATACOUNT}
_ALGORITHM = Path(__file__).read_bytes()
_CACHE = EvictableCache("stages")


def optimize(module: bytes) -> bytes:
    """``module`` with its code optimised by ``wasm-opt -Oz`` and its data unchanged."""
    sections = wb.parse_sections(module)
    segments = wb.read_data_segments(sections)
    if segments is None:
        raise InternalError("the pruned module has data segments that meshext build does not write")
    passive = sum(offset is None for offset, _ in segments)
    # The code names passive segments (memory.init), and the shim's restore names the one the snapshot will
    # be carried in: they must exist to validate, their contents need not.
    named = max(passive, wb.PACKED_SNAPSHOT_SEGMENT + 1)
    stand_in = [wb.Section(wb.DATACOUNT, wb.uleb(named)),
                wb.Section(wb.DATA, wb.uleb(named) + b"\x01\x00" * named)] if passive else []
    code_part = [section for section in sections if section.id not in _DATA_SECTIONS and section.id != wb.CUSTOM]
    code_part = _in_section_order(code_part + stand_in)
    key = content_key([_ALGORITHM, toolchain.BINARYEN_VERSION.encode(), " ".join(OPTIONS).encode(),
                       wb.encode_sections(code_part)])
    name = f"optimized-{key}.wasm"
    optimized = _CACHE.read(name)
    if optimized is None:
        optimized = _run_wasm_opt(wb.encode_sections(code_part))
        _CACHE.store(name, optimized)
    kept = [section for section in wb.parse_sections(optimized) if section.id != wb.CUSTOM]
    if [section.payload for section in kept if section.id in _DATA_SECTIONS] != [
            section.payload for section in stand_in] or wb.find_section(kept, wb.MEMORY) is None:
        raise InternalError("wasm-opt changed the data or removed the memory of a module it was given without data")
    data = [section for section in sections if section.id in _DATA_SECTIONS]
    return wb.encode_sections(_in_section_order([section for section in kept if section.id not in _DATA_SECTIONS]
                                                + data))


def _run_wasm_opt(module: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "in.wasm", Path(scratch) / "out.wasm"
        source.write_bytes(module)
        result = subprocess.run([*toolchain.wasm_opt(), str(source), *OPTIONS, "-o", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise InternalError(f"wasm-opt failed on the pruned module:\n{result.stderr.strip()}")
        return target.read_bytes()


# The binary format's section order: DATACOUNT (12) sits between ELEMENT and CODE.
_ORDER = [wb.TYPE, wb.IMPORT, wb.FUNCTION, wb.TABLE, wb.MEMORY, wb.GLOBAL, wb.EXPORT, wb.START, wb.ELEMENT,
          wb.DATACOUNT, wb.CODE, wb.DATA]


def _in_section_order(sections: list[wb.Section]) -> list[wb.Section]:
    return sorted(sections, key=lambda section: _ORDER.index(section.id))
