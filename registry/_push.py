"""Publish a .wasm module as an image in one of the three formats."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import jsonschema
import oras.schemas

from meshext.errors import InternalError, MeshextError
from meshext.registry.client import RegistryClient
from meshext.registry.credentials import Credentials
from meshext.registry.formats import (
    DOCKER_MODULE_FILE,
    FORMATS,
    MAISTRA_MANIFEST_FILE,
    OCI_IMAGE_CONFIG,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    WASM_CONFIG,
    WASM_LAYER,
    MaistraManifest,
    build_root_layer,
)
from meshext.registry.image import check_wasm
from meshext.registry.progress import transfer_progress
from meshext.registry.reference import ImageReference

TITLE_ANNOTATION = "org.opencontainers.image.title"


def push(path: str | Path, reference: str, *, format: str = "wasm-oci",
         maistra_manifest: MaistraManifest | None = None, credentials: Credentials | None = None,
         plain_http: bool = False, ca_file: str | None = None, progress: bool = False) -> str:
    """Push the module at ``path`` to ``reference`` (a tag) and return the manifest digest.

    ``format``: "wasm-oci" (Istio's Wasm OCI artifact, the default), "docker"
    (an OCI image with /plugin.wasm) or "maistra" (an image with manifest.yaml
    and the module at its root; needs ``maistra_manifest``)."""
    path = Path(path)
    if format not in FORMATS:
        raise MeshextError(f"unknown image format {format!r}", where="--format",
                           fix=f"use one of {', '.join(FORMATS)}")
    try:
        module = path.read_bytes()
    except OSError as error:
        raise MeshextError(f"cannot read the module: {error.strerror}", where=str(path),
                           fix="pass the .wasm file `meshext build` wrote") from None
    check_wasm(module, str(path))
    image_reference = ImageReference.parse(reference)
    if image_reference.digest is not None:
        raise MeshextError("a push needs a tag, not a digest", where=reference,
                           fix="push to REGISTRY/REPOSITORY:TAG; the digest is printed afterwards")
    # The files at the image root, for the container-image formats.
    files: dict[str, bytes] = {DOCKER_MODULE_FILE: module} if format == "docker" else {}
    if format == "maistra":
        if maistra_manifest is None:
            raise MeshextError("the maistra format needs the manifest.yaml fields", where="maistra_manifest",
                               fix="pass maistra_manifest=MaistraManifest(...) (`meshext push` builds it from "
                                   "its options and the module's project)")
        # Validate through the same schema the reader applies, so we never publish what we would refuse.
        maistra_manifest = MaistraManifest.parse(maistra_manifest.to_yaml(), "maistra manifest")
        files = {MAISTRA_MANIFEST_FILE: maistra_manifest.to_yaml().encode(), maistra_manifest.module: module}

    client = RegistryClient(image_reference, credentials=credentials, plain_http=plain_http, ca_file=ca_file,
                            where=reference)
    with transfer_progress(progress) as bars:
        advance = bars.bar(f"push {path.name}", len(module))
        if format == "wasm-oci":
            layers = [client.push_blob(module, WASM_LAYER, advance, {TITLE_ANNOTATION: path.name})]
            config = client.push_blob(b"{}", WASM_CONFIG, advance)
        else:
            layer_blob = build_root_layer(files)
            layers = [client.push_blob(layer_blob, OCI_LAYER_TAR_GZIP, advance)]
            config = client.push_blob(_image_config(layer_blob), OCI_IMAGE_CONFIG, advance)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    try:
        jsonschema.validate(manifest, schema=oras.schemas.manifest)
    except jsonschema.ValidationError as error:
        raise InternalError(f"the image manifest meshext built is invalid: {error.message}") from error
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    return client.put_manifest(raw, OCI_MANIFEST, image_reference.tag or "latest")


def _image_config(layer_blob: bytes) -> bytes:
    """A minimal OCI image config: a Wasm module runs on any platform."""
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer_blob)).hexdigest()
    config = {"architecture": "wasm", "os": "wasip1", "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": {}}
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()

