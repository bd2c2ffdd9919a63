"""OCI push, pull and inspect of extension images, and the verified module cache.

What lives here: ``reference`` (image references), ``client`` (one registry
repository over oras-py), ``credentials``, ``formats`` (the three image
layouts, Maistra's manifest.yaml), ``image`` (reading an image), ``pull``,
``push``, ``cache`` (the content-addressed module cache), ``progress``,
``local_registry`` (Debian's docker-registry on loopback, for tests and
demos) and ``cli`` (`meshext push`, `pull`, `inspect`).

It may import ``meshext.errors``, ``meshext.paths``, ``meshext.phases`` and
``meshext.sdk.builder.metadata`` (what `meshext build` recorded in a module).

The control plane and the CLI use this surface::

    pull(reference, policy=..., cache=..., credentials=..., plain_http=..., ca_file=..., sha256=...) -> PulledModule
    push(path, reference, format=..., maistra_manifest=..., ...) -> "sha256:..."
    inspect(reference, ...) -> ImageInfo
"""

from meshext.registry.cache import ModuleCache
from meshext.registry.credentials import Credentials
from meshext.registry.formats import FORMATS, MaistraManifest
from meshext.registry.pull import ImageInfo, PulledModule, inspect, pull
from meshext.registry.push import push

__all__ = [
    "FORMATS", "Credentials", "ImageInfo", "MaistraManifest", "ModuleCache", "PulledModule",
    "inspect", "pull", "push",
]
