"""The telemetry filter as a module file: built from ``filter/`` once per content, then cached.

The control plane runs this at start.  Why build instead of shipping a
module or pulling an image: the module must match this install's SDK, shim
and builder exactly, no registry has to be reachable for the mesh's own
telemetry, and the cache key is the content of everything that goes into the
build, so a restart (or a second control plane on the machine) reuses it in
milliseconds while any change to the filter or the SDK rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import meshext
from meshext.paths import cache_root

FILTER_DIR = Path(__file__).resolve().parent / "filter"
_MESHEXT_DIR = Path(meshext.__file__).resolve().parent
# What a build reads besides the filter: the in-VM SDK, the shim and the builder itself.
_BUILD_INPUTS = (_MESHEXT_DIR / "sdk",)


def content_key() -> str:
    """sha256 over the filter project and every SDK, shim and builder file a build reads."""
    digest = hashlib.sha256()
    roots = (FILTER_DIR, *(path.resolve() for path in _BUILD_INPUTS))
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".wasm"):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(meshext.__version__.encode())
    return digest.hexdigest()


def telemetry_module() -> tuple[Path, str]:
    """(path, sha256) of the built telemetry module, building it if this content was never built."""
    from meshext.sdk.builder import build_filter

    target = cache_root() / "telemetry" / f"{content_key()}.wasm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            partial = Path(scratch) / "telemetry.wasm"
            build_filter(FILTER_DIR, partial)
            os.replace(partial, target)  # atomic: a concurrent builder's result is identical
    return target, hashlib.sha256(target.read_bytes()).hexdigest()
