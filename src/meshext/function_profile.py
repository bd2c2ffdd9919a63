"""Which functions of a module ran: the profile that picks what stays compiled.

``meshext build --cold-code`` (sdk/builder/coldcode.py) keeps compiled what
a profile saw run.  With ``MESHEXT_PROFILE_DIR`` set, every module the test
host loads is :func:`instrument`-ed (a global per function, set when it
first runs), and when an instance goes away the indices of the functions
that ran are added to ``<dir>/<sha256 of the module>.txt``
(:func:`executed` reads them back).  Indices, not names: the modules
``meshext build`` writes carry no names, and pre-initialisation and pruning
keep the shim's indices, so the shim's name section names them.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import wasmtime

from meshext import wasm_binary as wb
from meshext import wasm_code

PROFILE_ENV = "MESHEXT_PROFILE_DIR"
"""The environment variable that turns profiling on: the folder the profiles go to."""
ROOT_ID_ENV = "MESHEXT_TEST_ROOT_ID"
"""The ``root_id`` the test host loads modules with when a test names none: the
profiler's way to run one project's tests on a module of several."""
PROFILE_EXPORT_PREFIX = "meshext_profile_"
""":func:`instrument`'s exported globals: ``meshext_profile_<function index>``, 1 once it ran."""

_ORIGINAL_DIGEST = "_meshext_profiled_digest"


def profile_dir() -> Path | None:
    """The folder profiles go to, or None when profiling is off."""
    configured = os.environ.get(PROFILE_ENV)
    return Path(configured) if configured else None


def instrument(module: bytes) -> bytes:
    """``module`` with a global per defined function, set to 1 when it first
    runs and exported as ``meshext_profile_<function index>``."""
    sections = wb.parse_sections(module)
    first_function, first_global = wb.imported_counts(sections)
    defined_globals = len(wb.defined_global_types(sections))
    bodies = wasm_code.code_bodies(sections)
    exports = wb.read_exports(sections)
    marked = []
    for offset, body in enumerate(bodies):
        global_index = first_global + defined_globals + offset
        start = wasm_code.scan(body).locals_end
        marked.append(body[:start] + b"\x41\x01\x24" + wb.uleb(global_index) + body[start:])  # i32.const 1; global.set
        exports.append(wb.Export(f"{PROFILE_EXPORT_PREFIX}{first_function + offset}", wb.EXTERNAL_GLOBAL,
                                 global_index))
    section = wb.find_section(sections, wb.GLOBAL)
    existing = section.payload if section else wb.uleb(0)
    reader = wb.Reader(existing)
    count = reader.uleb()
    mutable_i32_zero = b"\x7f\x01\x41\x00\x0b"
    payload = wb.uleb(count + len(bodies)) + existing[reader.position:] + mutable_i32_zero * len(bodies)
    wb.replace_section(sections, wb.Section(wb.GLOBAL, payload))
    wb.replace_section(sections, wb.export_section(exports))
    wb.replace_section(sections, wasm_code.code_section(marked))
    return wb.encode_sections(sections)


def mark_profiled(module: wasmtime.Module, original: bytes) -> None:
    """Remember that ``module`` was compiled from ``instrument(original)``."""
    setattr(module, _ORIGINAL_DIGEST, hashlib.sha256(original).hexdigest())


def watch(owner: object, module: wasmtime.Module, store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    """Record what ran in ``instance`` of a profiled module when ``owner`` (what runs it) goes away."""
    digest = getattr(module, _ORIGINAL_DIGEST, None)
    folder = profile_dir()
    if digest is None or folder is None:
        return
    marks = [(int(name[len(PROFILE_EXPORT_PREFIX):]), item) for name, item in instance.exports(store).items()
             if name.startswith(PROFILE_EXPORT_PREFIX) and isinstance(item, wasmtime.Global)]
    # The finaliser holds the store, so the globals are still readable when the owner is collected.
    weakref.finalize(owner, _record, folder / f"{digest}.txt", store, marks)


def _record(path: Path, store: wasmtime.Store, marks: list[tuple[int, wasmtime.Global]]) -> None:
    ran = {index for index, mark in marks if mark.value(store)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as profile:
        profile.write("".join(f"{index}\n" for index in sorted(ran)))


def executed(folder: Path, module: bytes) -> set[int]:
    """The indices of the functions of ``module`` that ran in any profiled instance."""
    path = folder / f"{hashlib.sha256(module).hexdigest()}.txt"
    if not path.exists():
        return set()
    return {int(line) for line in path.read_text().split()}
