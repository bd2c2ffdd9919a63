"""OCI push, pull and inspect of extension images, and the verified module cache.

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
