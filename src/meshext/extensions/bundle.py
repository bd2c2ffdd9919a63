"""The project's own extensions as one module: telemetry, ratelimit and 3scale, one root each.

A sidecar that runs several of them pays one CPython per thread instead of one
per extension (issue 16: four separate modules 360 MB and 11.2 s to the first
answer, one multi-root module of the same four 170 MB and 2.86 s).  The
control plane runs its telemetry extension from this module (``meshext
control serve``), and `meshext up` publishes the very same file as its
``meshext/extensions`` image, which the shipped rate limit and 3scale resources
name (``deploy/local/``): one module, one publisher, so the control plane gives
their plugins one ``vm_id`` (control/envoy_config.py ``vm_id_for``).  Each
project is still an ordinary project that builds, tests and ships alone.

Why build instead of shipping a module or pulling an image: the module must
match this install's SDK, shim and builder exactly, and no registry has to be
reachable for the mesh's own telemetry.  Built with ``build_filters`` once per
content (the projects, the SDK, meshext's version), cached, one build at a
time per content: the control plane and `meshext up` start together on a cold
cache and must end with one file, built once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import meshext
from meshext.paths import cache_root
from meshext.sdk.builder import MESHEXT_BUILD_FILES

_EXTENSIONS_DIR = Path(__file__).resolve().parent
# In root order; each project's [filter] name is its root_id in the module.
PROJECTS = tuple((_EXTENSIONS_DIR / name / "filter").resolve() for name in ("telemetry", "ratelimit", "threescale"))
"""The filter projects of the bundle: telemetry, ratelimit, 3scale."""

CACHE_FOLDER = "extensions"
"""Where under the cache root the bundle is kept: ``<content key>.wasm``."""

_MESHEXT_DIR = Path(meshext.__file__).resolve().parent
# What a build reads besides the projects: the in-VM SDK, the shim and the builder itself.
_BUILD_INPUTS = ((_MESHEXT_DIR / "sdk").resolve(),)


# Parts of a project a build does not read: its default output folder, its tests, compiled caches.
_SKIPPED_PARTS = {"build", "tests", "__pycache__"}


def content_key(projects: Sequence[Path]) -> str:
    """sha256 over the filter ``projects``, every SDK, shim and builder file a build reads (the SDK folder
    and the meshext files ``MESHEXT_BUILD_FILES`` names), and meshext's version: what a module built from
    them depends on."""
    digest = hashlib.sha256(meshext.__version__.encode())
    for name in MESHEXT_BUILD_FILES:  # the builder's Wasm code decoder and the like, outside the SDK
        digest.update(name.encode() + b"\0" + (_MESHEXT_DIR / name).read_bytes() + b"\0")
    for root in (*projects, *_BUILD_INPUTS):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root)
            if _SKIPPED_PARTS.isdisjoint(relative.parts) and path.suffix not in (".pyc", ".wasm"):
                digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_module(projects: Sequence[Path], folder: str) -> Path | None:
    """The module :func:`built_module` keeps for ``projects`` under ``folder``; None while it was never built."""
    target = cache_root() / folder / f"{content_key(projects)}.wasm"
    return target if target.is_file() else None


def built_module(projects: Sequence[Path], folder: str,
                 progress: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """(path, sha256) of the module built from ``projects`` (one: ``build_filter``; several: one root each),
    cached under the cache root's ``folder`` by :func:`content_key`, built if this content never was.

    Another process building the same content is waited for (a lock file beside the module, left
    there: removing it would let a third process lock a new one while the second still builds), not
    raced: both then use its file."""
    from meshext.sdk.builder import build_filter, build_filters

    directory = cache_root() / folder
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{content_key(projects)}.wasm"
    if not target.exists():
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            if not target.exists():
                with tempfile.TemporaryDirectory(dir=directory) as scratch:
                    partial = Path(scratch) / target.name
                    if len(projects) == 1:
                        build_filter(projects[0], partial, progress=progress)
                    else:
                        build_filters(projects, partial, progress=progress)
                    os.replace(partial, target)  # atomic: a reader sees the whole module or none
    return target, hashlib.sha256(target.read_bytes()).hexdigest()


def bundle_module(progress: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """(path, sha256) of the bundle (:data:`PROJECTS`), built if this content never was (``progress``:
    the build's messages)."""
    return built_module(PROJECTS, CACHE_FOLDER, progress)
