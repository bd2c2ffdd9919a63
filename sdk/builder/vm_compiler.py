"""Runs inside the module's CPython at build time: compiles Python files to ``.pyc``.

:mod:`meshext.sdk.builder.bytecode` pre-initialises the shim with this file
as the entry module :data:`ENTRY_MODULE` and a list of jobs in
:data:`JOBS_PATH`; importing it compiles each job with the interpreter the
module runs (CPython 3.11 for wasm32-wasi, whatever Python runs the build)
and logs each result on one line (:data:`RESULT_PREFIX`, then JSON with the
``.pyc`` in base64, or the syntax error).  Imported on the host, as
``meshext.sdk.builder.vm_compiler``, it does nothing.

The ``.pyc`` layout is PEP 552's: the magic number, a flags word, then
either a source hash (flags 1: hash-based, unchecked, for files whose source
ships next to them) or a zero timestamp and size (flags 0, for stdlib files
shipped without their source), then the marshalled code object.
"""

from __future__ import annotations

import _imp
import binascii
import json
import marshal
import sys

# importlib.util would give the same two values, but needs importlib/_abc.py,
# which the module's file system holds only if the filter imports it; the
# frozen bootstrap is always loaded, and it is this interpreter's own.
from _frozen_importlib_external import MAGIC_NUMBER

from meshext.sdk import RootContext
from meshext.sdk.host import host

ENTRY_MODULE = "__meshext_compiler__"
JOBS_PATH = "/meshext-compile/jobs.json"
RESULT_PREFIX = "meshext-bytecode "
_TRACE = 0

_UNCHECKED_HASH_BASED = 0b01
_TIMESTAMP_BASED = 0


def pyc(source: bytes, filename: str, *, optimize: int, hash_based: bool) -> bytes:
    """``source`` compiled by this interpreter into the bytes of a ``.pyc`` file."""
    code = compile(source, filename, "exec", dont_inherit=True, optimize=optimize)
    if hash_based:
        source_hash = _imp.source_hash(int.from_bytes(MAGIC_NUMBER, "little"), source)
        header = _UNCHECKED_HASH_BASED.to_bytes(4, "little") + source_hash
    else:
        header = _TIMESTAMP_BASED.to_bytes(4, "little") + bytes(8)  # mtime 0, size 0: never compared
    return MAGIC_NUMBER + header + marshal.dumps(code)


def run() -> None:
    """Compile every job of :data:`JOBS_PATH` and log the results."""
    _settle_interning()
    with open(JOBS_PATH) as file:
        jobs = json.load(file)
    for job in jobs:
        with open(job["read"], "rb") as source_file:
            source = source_file.read()
        result: dict[str, object] = {"key": job["key"]}
        try:
            compiled = pyc(source, job["filename"], optimize=job["optimize"], hash_based=job["hash_based"])
        except SyntaxError as error:
            result |= {"error": str(error.msg), "line": error.lineno or 1}
        else:
            result["pyc"] = binascii.b2a_base64(compiled, newline=False).decode()
        host.log(_TRACE, RESULT_PREFIX + json.dumps(result))


def _settle_interning() -> None:
    """Make what marshal writes independent of what this interpreter did before.

    marshal marks a string as interned when it is, and CPython 3.11's
    one-character strings are shared objects that become interned the first
    time any code interns one: without this, a ``.pyc`` would depend on the
    files compiled before it in the same VM.
    """
    for code_point in range(256):
        sys.intern(chr(code_point))


class Root(RootContext):
    """The entry class pre-initialisation asks for; this VM never serves requests."""


if __name__ == ENTRY_MODULE:
    run()
