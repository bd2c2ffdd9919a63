"""Which functions of a module ran: the profile that picks what stays compiled.

``meshext build --cold-code`` (sdk/builder/coldcode.py) keeps compiled what
the profile saw run (sdk/builder/profile.py chooses from it).  With ``MESHEXT_PROFILE_DIR`` set, every module the test
host loads is :func:`instrument`-ed (a global per function, in which it
records the phases it ran in), and when an instance goes away a line of the
functions that ran in it, with their phases, is added to ``<dir>/<sha256 of
the module>.txt`` (:func:`executed` reads them back).  Indices, not names:
the modules ``meshext build`` writes carry no names, and pre-initialisation
and pruning keep the shim's indices, so the shim's name section names them.

Phases and instances, because a test suite starts far more than it serves,
and tests each edge case in a VM of its own: what runs only while a VM
starts (:data:`STARTING`: its start function, ``proxy_on_vm_start``,
``proxy_on_configure``, the root context's creation) runs a few times per
Envoy, and what few of a suite's VMs ran while serving is seldom what every
request runs.  ``sdk/builder/profile.py`` decides from both.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Callable, Sequence
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
""":func:`instrument`'s exported globals: ``meshext_profile_<function index>``, the phases it ran in."""
PHASE_EXPORT = "meshext_profiling_phase"
""":func:`instrument`'s phase global: what the host says runs now (:data:`STARTING` or :data:`SERVING`)."""
STARTING = 1
"""The phase bit of a VM's start: its start function, ``proxy_on_vm_start``,
``proxy_on_configure`` and a root context's creation."""
SERVING = 2
"""The phase bit of every other callback: streams, connections, timers, callouts, queues, logs."""
_STARTING_CALLBACKS = frozenset({"_initialize", "_start", "main", "proxy_on_vm_start", "proxy_on_configure"})

_ORIGINAL_DIGEST = "_meshext_profiled_digest"


def profile_dir() -> Path | None:
    """The folder profiles go to, or None when profiling is off."""
    configured = os.environ.get(PROFILE_ENV)
    return Path(configured) if configured else None


def instrument(module: bytes) -> bytes:
    """``module`` with a phase global (``meshext_profiling_phase``, :data:`STARTING`
    until the host says otherwise) and a global per defined function, exported as
    ``meshext_profile_<function index>``, into which each run ORs the phase."""
    sections = wb.parse_sections(module)
    first_function, first_global = wb.imported_counts(sections)
    defined_globals = len(wb.defined_global_types(sections))
    bodies = wasm_code.code_bodies(sections)
    exports = wb.read_exports(sections)
    phase = wb.uleb(first_global + defined_globals)
    exports.append(wb.Export(PHASE_EXPORT, wb.EXTERNAL_GLOBAL, first_global + defined_globals))
    marked = []
    for offset, body in enumerate(bodies):
        global_index = first_global + defined_globals + 1 + offset
        mark = wb.uleb(global_index)
        start = wasm_code.scan(body).locals_end
        # global.get mark; global.get phase; i32.or; global.set mark
        marked.append(body[:start] + b"\x23" + mark + b"\x23" + phase + b"\x72\x24" + mark + body[start:])
        exports.append(wb.Export(f"{PROFILE_EXPORT_PREFIX}{first_function + offset}", wb.EXTERNAL_GLOBAL,
                                 global_index))
    section = wb.find_section(sections, wb.GLOBAL)
    existing = section.payload if section else wb.uleb(0)
    reader = wb.Reader(existing)
    count = reader.uleb()
    mutable_i32_starting = b"\x7f\x01\x41" + wb.sleb(STARTING) + b"\x0b"
    mutable_i32_zero = b"\x7f\x01\x41\x00\x0b"
    payload = (wb.uleb(count + 1 + len(bodies)) + existing[reader.position:] + mutable_i32_starting
               + mutable_i32_zero * len(bodies))
    wb.replace_section(sections, wb.Section(wb.GLOBAL, payload))
    wb.replace_section(sections, wb.export_section(exports))
    wb.replace_section(sections, wasm_code.code_section(marked))
    return wb.encode_sections(sections)


def mark_profiled(module: wasmtime.Module, original: bytes) -> None:
    """Remember that ``module`` was compiled from ``instrument(original)``."""
    setattr(module, _ORIGINAL_DIGEST, hashlib.sha256(original).hexdigest())


def watch(owner: object, module: wasmtime.Module, store: wasmtime.Store,
          instance: wasmtime.Instance) -> Callable[[str, Sequence[int]], None] | None:
    """Record what ran in ``instance`` of a profiled module, and in which phases, when
    ``owner`` (what runs it) goes away.  Returns what the owner calls before each call
    into the instance from outside it, with the export's name and arguments (it tells
    the profile the phase), or None when ``module`` is not profiled."""
    digest = getattr(module, _ORIGINAL_DIGEST, None)
    folder = profile_dir()
    if digest is None or folder is None:
        return None
    exports = instance.exports(store)
    marks = [(int(name[len(PROFILE_EXPORT_PREFIX):]), item) for name, item in exports.items()
             if name.startswith(PROFILE_EXPORT_PREFIX) and isinstance(item, wasmtime.Global)]
    # The finaliser holds the store, so the globals are still readable when the owner is collected.
    weakref.finalize(owner, _record, folder / f"{digest}.txt", store, marks)
    phase = exports[PHASE_EXPORT]
    assert isinstance(phase, wasmtime.Global)

    def enter(callback: str, arguments: Sequence[int]) -> None:
        phase.set_value(store, phase_of(callback, arguments))

    return enter


def phase_of(callback: str, arguments: Sequence[int]) -> int:
    """The phase a call of the export ``callback`` with ``arguments`` runs in."""
    creates_root = callback == "proxy_on_context_create" and len(arguments) > 1 and arguments[1] == 0
    return STARTING if callback in _STARTING_CALLBACKS or creates_root else SERVING


def _record(path: Path, store: wasmtime.Store, marks: list[tuple[int, wasmtime.Global]]) -> None:
    ran = {index: phases for index, mark in marks if (phases := mark.value(store))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as profile:  # one line per instance, written at once (test processes may share the file)
        profile.write(" ".join(f"{index}:{ran[index]}" for index in sorted(ran)) + "\n")


def executed(folder: Path, module: bytes) -> list[dict[int, int]]:
    """What ran in each profiled instance of ``module``, one dict per instance:
    function index -> the phases (:data:`STARTING`, :data:`SERVING`) it ran in, ORed."""
    path = folder / f"{hashlib.sha256(module).hexdigest()}.txt"
    if not path.exists():
        return []
    return [{int(index): int(phases) for index, phases in (mark.split(":") for mark in line.split())}
            for line in path.read_text().splitlines()]
