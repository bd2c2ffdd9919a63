"""Resolve an extension's image to a verified module file.

Registry references (``oci://``, ``https://``, bare ``host/repo:tag``) go
through :mod:`meshext.registry`.  Until that package is on this branch, only
``file://`` URLs resolve, by the small local reader below (a ``.wasm`` file,
or a directory laid out like a Maistra image: ``manifest.yaml`` + the module).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from meshext.errors import MeshextError


@dataclass(frozen=True)
class MaistraDefaults:
    phase: str | None
    priority: int | None


@dataclass(frozen=True)
class ResolvedModule:
    path: Path
    module_sha256: str
    digest: str  # the manifest digest (registry) or the module's own sha256 (file)
    reference: str  # digest-pinned where the source has digests
    maistra: MaistraDefaults | None


def resolve_image(
    image: str, *, policy: str, expected_sha256: str | None, credentials: Any = None, where: str
) -> ResolvedModule:
    """Pull (or find) the module an extension names and verify its sha256."""
    if image.startswith("file://"):
        resolved = _resolve_file(image, where)
    else:
        resolved = _resolve_registry(image, policy=policy, credentials=credentials, where=where)
    if expected_sha256 and resolved.module_sha256 != expected_sha256:
        raise MeshextError(
            f"module sha256 is {resolved.module_sha256}, the resource expects {expected_sha256}",
            where=f"{where}: spec.sha256",
            fix="set spec.sha256 to the module's real sha256, or point spec.url at the intended module",
        )
    return resolved


def _resolve_registry(image: str, *, policy: str, credentials: Any, where: str) -> ResolvedModule:
    try:
        from meshext.registry import pull
    except ImportError:
        raise MeshextError(
            f"cannot pull {image!r}: registry support is not installed in this build",
            where=where, fix="use a file:// URL, or install a meshext build with meshext.registry",
        ) from None
    pulled = pull(image, policy=policy, credentials=credentials)
    maistra = pulled.maistra
    return ResolvedModule(
        path=Path(pulled.path),
        module_sha256=pulled.module_sha256,
        digest=pulled.manifest_digest,
        reference=pulled.reference,
        maistra=MaistraDefaults(maistra.phase, maistra.priority) if maistra else None,
    )


def _resolve_file(url: str, where: str) -> ResolvedModule:
    path = Path(unquote(urlparse(url).path))
    maistra = None
    if path.is_dir():
        manifest_path = path / "manifest.yaml"
        try:
            manifest = yaml.safe_load(manifest_path.read_text()) or {}
            module_name = manifest["module"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
            raise MeshextError(f"no usable manifest.yaml in {path}: {error}", where=where,
                               fix="a Maistra image directory holds manifest.yaml naming its module") from None
        maistra = MaistraDefaults(manifest.get("phase"), manifest.get("priority"))
        path = path / module_name
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MeshextError(f"cannot read module {path}: {error.strerror}", where=where,
                           fix="point the image at an existing .wasm file") from None
    if not data.startswith(b"\0asm"):
        raise MeshextError(f"{path} is not a WebAssembly module", where=where,
                           fix="point the image at a compiled .wasm module")
    sha256 = hashlib.sha256(data).hexdigest()
    return ResolvedModule(path=path, module_sha256=sha256, digest=f"sha256:{sha256}", reference=url, maistra=maistra)
