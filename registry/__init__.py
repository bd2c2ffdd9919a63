"""OCI push, pull and inspect of extension images, and the verified module cache.

What lives here: ``reference`` (image references), ``client`` (one registry
repository over oras-py), ``credentials``, ``formats`` (the three image
layouts, Maistra's manifest.yaml), ``image`` (reading an image), ``_pull``
and ``_push`` (private: their functions are this package's ``pull``,
``inspect`` and ``push``), ``cache`` (the content-addressed module cache),
``progress``, ``local_registry`` (Debian's docker-registry on loopback, for tests and
demos) and ``cli`` (`meshext push`, `pull`, `inspect`).

It may import ``meshext.errors``, ``meshext.paths``, ``meshext.phases`` and
``meshext.sdk.builder.metadata`` (what `meshext build` recorded in a module).

The control plane and the CLI use this surface::

    pull(reference, policy=..., cache=..., credentials=..., plain_http=..., ca_file=..., sha256=...) -> PulledModule
    push(path, reference, format=..., maistra_manifest=..., ...) -> "sha256:..."
    inspect(reference, ...) -> ImageInfo
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from meshext.registry._pull import ImageInfo as ImageInfo
    from meshext.registry._pull import PulledModule as PulledModule
    from meshext.registry._pull import inspect as inspect
    from meshext.registry._pull import pull as pull
    from meshext.registry._push import push as push
    from meshext.registry.cache import ModuleCache as ModuleCache
    from meshext.registry.credentials import Credentials as Credentials
    from meshext.registry.formats import FORMATS as FORMATS
    from meshext.registry.formats import MaistraManifest as MaistraManifest

# Where each public name lives, imported on first use: pulling and pushing load oras and requests, which
# `meshext push --help` (and every `meshext up` command's --help) must not pay for.
_PUBLIC = {
    "FORMATS": "formats", "MaistraManifest": "formats", "Credentials": "credentials", "ModuleCache": "cache",
    "ImageInfo": "_pull", "PulledModule": "_pull", "inspect": "_pull", "pull": "_pull", "push": "_push",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """The public names, from their modules on first use (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'meshext.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"meshext.registry.{module}"), name)
    globals()[name] = value
    return value
