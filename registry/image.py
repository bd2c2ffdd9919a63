"""Reading an extension image: resolve a tag through manifest lists to one image
manifest, tell which of the three formats it is, and take the module out of it."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from meshext.errors import MeshextError
from meshext.registry.client import Descriptor, RegistryClient
from meshext.registry.formats import (
    DOCKER_MODULE_FILE,
    IMAGE_MANIFEST_TYPES,
    MAISTRA_MANIFEST_FILE,
    MANIFEST_LIST_TYPES,
    TAR_LAYER_TYPES,
    WASM_CONFIG,
    WASM_LAYER,
    MaistraManifest,
    read_root_files,
)
from meshext.registry.progress import TransferProgress

WASM_MAGIC = b"\0asm"
# Manifest-list entries that describe no runnable image (buildx attestations).
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


@dataclass(frozen=True)
class ResolvedImage:
    """One image manifest, reached from a tag or digest (possibly through a manifest list)."""

    digest: str  # what the reference resolved to: pin this
    image_digest: str  # the image manifest itself (differs from ``digest`` behind a manifest list)
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]

    @property
    def is_wasm_artifact(self) -> bool:
        """Whether this is Istio's Wasm OCI artifact rather than a container image."""
        return self.config.media_type == WASM_CONFIG or any(layer.media_type == WASM_LAYER for layer in self.layers)


def resolve(client: RegistryClient, target: str, where: str) -> ResolvedImage:
    """Fetch the manifest ``target`` (tag or digest) points at, stepping through a
    manifest list, and check its media types are ones meshext can read."""
    media_type, raw, digest = client.fetch_manifest(target)
    image_digest = digest
    if media_type in MANIFEST_LIST_TYPES:
        entry = _choose_platform(_load(raw, where).get("manifests"), where)
        media_type, raw, image_digest = client.fetch_manifest(entry.digest)
    if media_type not in IMAGE_MANIFEST_TYPES:
        raise MeshextError(
            f"unknown manifest media type {media_type!r}", where=where,
            fix=f"meshext reads {', '.join(IMAGE_MANIFEST_TYPES + MANIFEST_LIST_TYPES)}; "
                "push the module with `meshext push`",
        )
    manifest = _load(raw, where)
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest.get("layers"), list):
        raise MeshextError("image manifest has no config or layers", where=where, fix="push the image again")
    image = ResolvedImage(
        digest=digest, image_digest=image_digest, media_type=media_type,
        config=Descriptor.from_json(manifest["config"], where),
        layers=[Descriptor.from_json(layer, where) for layer in manifest["layers"]],
        annotations=manifest.get("annotations") or {},
    )
    _check_layer_types(image, where)
    return image


def module_from_tar_layers(client: RegistryClient, image: ResolvedImage, bars: TransferProgress,
                           where: str) -> tuple[str, MaistraManifest | None, bytes]:
    """Download a container image's layers (verified) and take the module from its
    root: (format, Maistra manifest or None, module bytes)."""
    blobs = []
    for layer in image.layers:
        buffer = io.BytesIO()
        client.stream_blob(layer, buffer, bars.bar(f"layer {layer.digest[7:19]}", layer.size))
        blobs.append((layer.media_type, buffer.getvalue()))
    files = read_root_files(blobs, where)
    if MAISTRA_MANIFEST_FILE in files:
        maistra = MaistraManifest.parse(files[MAISTRA_MANIFEST_FILE], where)
        if maistra.module not in files:
            raise MeshextError(
                f"manifest.yaml names module {maistra.module!r} but the image root holds {_listing(files)}",
                where=f"{where} manifest.yaml:module",
                fix="set module: to the .wasm file the image carries at its root, or add that file",
            )
        return "maistra", maistra, check_wasm(files[maistra.module], where)
    if DOCKER_MODULE_FILE in files:
        return "docker", None, check_wasm(files[DOCKER_MODULE_FILE], where)
    raise MeshextError(
        f"image root holds neither {DOCKER_MODULE_FILE} nor {MAISTRA_MANIFEST_FILE} (found {_listing(files)})",
        where=where,
        fix=f"put the module at /{DOCKER_MODULE_FILE} (Istio image layout) or add a Maistra {MAISTRA_MANIFEST_FILE}",
    )


def check_wasm(content: bytes, where: str) -> bytes:
    """``content``, if it starts with the Wasm magic; else a MeshextError naming ``where``."""
    if not content.startswith(WASM_MAGIC):
        raise MeshextError("content is not a WebAssembly module (no \\0asm header)", where=where,
                           fix="push a .wasm file built with `meshext build` (or another Proxy-Wasm SDK)")
    return content


def _check_layer_types(image: ResolvedImage, where: str) -> None:
    if image.is_wasm_artifact:
        if len(image.layers) != 1 or image.layers[0].media_type != WASM_LAYER:
            raise MeshextError(
                f"a Wasm OCI artifact must have exactly one {WASM_LAYER} layer, found "
                f"{[layer.media_type for layer in image.layers]}",
                where=where, fix="push the module again with `meshext push` (one module per image)",
            )
        return
    unknown = sorted({layer.media_type for layer in image.layers if layer.media_type not in TAR_LAYER_TYPES})
    if unknown or not image.layers:
        raise MeshextError(
            f"unknown layer media type {', '.join(map(repr, unknown)) or '(no layers)'}; config media type "
            f"{image.config.media_type!r}",
            where=where,
            fix=f"meshext reads Istio Wasm artifacts (layer {WASM_LAYER}) and container images with tar layers; "
                "push the module with `meshext push`",
        )


def _choose_platform(entries: Any, where: str) -> Descriptor:
    """A Wasm module runs on every platform: prefer an entry built for ``wasm``,
    else the first that is a real image rather than an attestation."""
    if not isinstance(entries, list) or not entries:
        raise MeshextError("manifest list is empty", where=where, fix="push an image under this tag")
    descriptors = [Descriptor.from_json(entry, where) for entry in entries]
    for descriptor in descriptors:
        if (descriptor.platform or {}).get("architecture") == "wasm":
            return descriptor
    for descriptor in descriptors:
        if descriptor.annotations.get(_ATTESTATION_ANNOTATION) != "attestation-manifest":
            return descriptor
    raise MeshextError("manifest list holds only attestations", where=where, fix="push an image under this tag")


def _load(raw: bytes, where: str) -> dict[str, Any]:
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise MeshextError("manifest is not a JSON object", where=where, fix="push the image again")
    return document


def _listing(files: dict[str, bytes]) -> str:
    return ", ".join(sorted(files)) or "no files"
