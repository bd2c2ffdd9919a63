"""Pull a module into the verified cache, and inspect an image without caching it."""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from meshext.errors import MeshextError, UnavailableError
from meshext.registry.cache import ModuleCache, check_expected_sha256
from meshext.registry.client import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    STREAM_CHUNK,
    Descriptor,
    RegistryClient,
)
from meshext.registry.credentials import Credentials
from meshext.registry.formats import MaistraManifest
from meshext.registry.image import ResolvedImage, check_wasm, module_from_tar_layers, resolve
from meshext.registry.progress import transfer_progress
from meshext.registry.reference import ImageReference, require_plain_http_allowed

POLICIES = ("IfNotPresent", "Always")
# Istio's WasmPlugin default: Always for ":latest", IfNotPresent otherwise.
UNSPECIFIED_POLICIES = ("", "UNSPECIFIED_POLICY")


@dataclass(frozen=True)
class PulledModule:
    """A module in the cache, verified, and where it came from.

    For ``file://`` and ``https://`` sources, which have no manifest, ``format`` is
    "file" / "https", ``manifest_digest`` is the module's own digest and
    ``reference`` is the URL."""

    path: Path
    manifest_digest: str
    module_sha256: str
    format: str  # "wasm-oci" | "docker" | "maistra" (| "file" | "https")
    reference: str  # digest-pinned: registry/repository@sha256:...
    maistra: MaistraManifest | None = None


@dataclass(frozen=True)
class ImageInfo:
    """What `meshext inspect` reports about an image."""

    reference: str  # digest-pinned
    manifest_digest: str  # what the tag resolved to (a manifest list's digest when there is one)
    image_digest: str  # the image manifest's digest
    media_type: str
    format: str
    size: int  # module size in bytes
    module_sha256: str
    config_media_type: str
    layers: list[Descriptor]
    annotations: dict[str, str]
    maistra: MaistraManifest | None


def pull(reference: str, *, policy: str = "IfNotPresent", cache: ModuleCache | None = None,
         credentials: Credentials | None = None, plain_http: bool = False, ca_file: str | None = None,
         sha256: str | None = None, progress: bool = False) -> PulledModule:
    """Fetch the module ``reference`` names into the cache and return it, verified.

    ``reference``: ``registry/repo:tag``, ``registry/repo@sha256:...`` (either with
    an ``oci://`` prefix), ``https://...`` or ``file://...``.  ``policy``:
    IfNotPresent (use the cached module when this reference was pulled before) or
    Always (ask the registry what the tag points at now; blobs already cached are
    not downloaded again).  ``sha256``: the module's expected sha256 (WasmPlugin
    ``sha256``), checked before anything is cached.
    """
    cache = cache if cache is not None else ModuleCache()
    policy = _normalize_policy(policy, reference)
    if sha256 is not None:
        sha256 = sha256.removeprefix("sha256:").lower()
    if reference.startswith("file://"):
        return _pull_file(reference, cache, sha256)
    if reference.startswith(("https://", "http://")):
        return _pull_url(reference, cache, policy, sha256, plain_http, ca_file, progress)

    image_reference = ImageReference.parse(reference)
    where = reference
    tag_key = str(image_reference) if image_reference.digest is None else None
    if policy == "IfNotPresent":
        known_digest = image_reference.digest
        if tag_key is not None:
            known_digest = (cache.reference_record(tag_key) or {}).get("manifest_digest")
        cached = known_digest and _from_cache(cache, known_digest, image_reference, sha256)
        if cached:
            return cached

    client = RegistryClient(image_reference, credentials=credentials, plain_http=plain_http, ca_file=ca_file,
                            where=where)
    image = resolve(client, image_reference.pull_target, where)
    module = _from_cache(cache, image.digest, image_reference, sha256)  # Always, but the tag has not moved
    if module is None:
        module = _download(client, image, image_reference, cache, sha256, progress, where)
    cache.record(image.digest, [tag_key] if tag_key else [], _record_fields(module))
    return module


def inspect(reference: str, *, credentials: Credentials | None = None, plain_http: bool = False,
            ca_file: str | None = None, progress: bool = False) -> ImageInfo:
    """Describe an image (format, digests, module size and sha256, Maistra fields).
    Container-image layers are downloaded to find the module; nothing is cached."""
    image_reference = ImageReference.parse(reference)
    client = RegistryClient(image_reference, credentials=credentials, plain_http=plain_http, ca_file=ca_file,
                            where=reference)
    image = resolve(client, image_reference.pull_target, reference)
    maistra = None
    if image.is_wasm_artifact:
        image_format, layer = "wasm-oci", image.layers[0]
        size, module_sha256 = layer.size, layer.digest.removeprefix("sha256:")
    else:
        with transfer_progress(progress) as bars:
            image_format, maistra, module = module_from_tar_layers(client, image, bars, reference)
        size, module_sha256 = len(module), _sha256(module)
    return ImageInfo(
        reference=image_reference.pinned(image.digest), manifest_digest=image.digest, image_digest=image.image_digest,
        media_type=image.media_type, format=image_format, size=size, module_sha256=module_sha256,
        config_media_type=image.config.media_type, layers=image.layers, annotations=image.annotations, maistra=maistra,
    )


def _download(client: RegistryClient, image: ResolvedImage, image_reference: ImageReference, cache: ModuleCache,
              expected_sha256: str | None, progress: bool, where: str) -> PulledModule:
    maistra = None
    with transfer_progress(progress) as bars:
        if image.is_wasm_artifact:
            image_format, layer = "wasm-oci", image.layers[0]
            with cache.module_writer() as file:
                client.stream_blob(layer, file, bars.bar(f"{image_reference.repository}", layer.size))
                file.flush()  # the check below reads the file by name
                with open(file.name, "rb") as written:
                    check_wasm(written.read(4), where)
                path, module_sha256 = cache.commit_module(file, expected_sha256, where)
        else:
            image_format, maistra, module = module_from_tar_layers(client, image, bars, where)
            check_expected_sha256(_sha256(module), expected_sha256, where)
            path, module_sha256 = cache.store_module(module, where)
    return PulledModule(path=path, manifest_digest=image.digest, module_sha256=module_sha256, format=image_format,
                        reference=image_reference.pinned(image.digest), maistra=maistra)


def _from_cache(cache: ModuleCache, manifest_digest: str, image_reference: ImageReference | None,
                expected_sha256: str | None) -> PulledModule | None:
    record = cache.manifest_record(manifest_digest)
    if record is None or (expected_sha256 is not None and record["module_sha256"] != expected_sha256):
        return None
    path = cache.verified_module(record["module_sha256"])
    if path is None:
        return None
    return PulledModule(
        path=path, manifest_digest=manifest_digest, module_sha256=record["module_sha256"], format=record["format"],
        reference=image_reference.pinned(manifest_digest) if image_reference else record["reference"],
        maistra=MaistraManifest(**record["maistra"]) if record["maistra"] else None,
    )


def _record_fields(module: PulledModule) -> dict[str, Any]:
    return {"module_sha256": module.module_sha256, "format": module.format, "reference": module.reference,
            "maistra": asdict(module.maistra) if module.maistra else None}


def _pull_file(url: str, cache: ModuleCache, expected_sha256: str | None) -> PulledModule:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    try:
        content = path.read_bytes()
    except OSError as error:
        raise MeshextError(f"cannot read {path}: {error.strerror}", where=url,
                           fix="file:// URLs name an absolute path on this machine, "
                               "e.g. file:///opt/filters/f.wasm") from None
    check_wasm(content, url)
    check_expected_sha256(_sha256(content), expected_sha256, url)
    module_path, module_sha256 = cache.store_module(content, url)
    return PulledModule(path=module_path, manifest_digest=f"sha256:{module_sha256}", module_sha256=module_sha256,
                        format="file", reference=url)


def _pull_url(url: str, cache: ModuleCache, policy: str, expected_sha256: str | None, plain_http: bool,
              ca_file: str | None, progress: bool) -> PulledModule:
    host = urllib.parse.urlparse(url).netloc
    if url.startswith("http://"):
        require_plain_http_allowed(host, url)
    if policy == "IfNotPresent":
        known_digest = (f"sha256:{expected_sha256}" if expected_sha256
                        else (cache.reference_record(url) or {}).get("manifest_digest"))
        cached = known_digest and _from_cache(cache, known_digest, None, expected_sha256)
        if cached:
            return cached
    try:
        response = requests.get(url, stream=True, verify=ca_file or True,
                                timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
    except requests.exceptions.SSLError as error:
        raise MeshextError(f"TLS handshake with {host} failed: {error}", where=url,
                           fix="pass the CA that signed the server certificate (--registry-ca-file)") from None
    except requests.exceptions.RequestException as error:
        raise UnavailableError(f"{host} did not answer: {error}", where=url,
                               fix="check the URL and that the server runs") from None
    with response, transfer_progress(progress) as bars:
        if response.status_code != 200:
            raise MeshextError(f"server answered HTTP {response.status_code}", where=url, fix="check the URL")
        advance = bars.bar(url.rsplit("/", 1)[-1], int(response.headers.get("Content-Length") or 0))
        with cache.module_writer() as file:
            try:
                for chunk in response.iter_content(chunk_size=STREAM_CHUNK):
                    file.write(chunk)
                    advance(len(chunk))
            except requests.exceptions.RequestException as error:
                raise UnavailableError(f"transfer broke off: {error}", where=url,
                                       fix="retry; nothing was cached") from None
            file.flush()  # the check below reads the file by name
            with open(file.name, "rb") as written:
                check_wasm(written.read(4), url)
            path, module_sha256 = cache.commit_module(file, expected_sha256, url)
    module = PulledModule(path=path, manifest_digest=f"sha256:{module_sha256}", module_sha256=module_sha256,
                          format="https", reference=url)
    cache.record(module.manifest_digest, [url], _record_fields(module))
    return module


def _normalize_policy(policy: str, reference: str) -> str:
    if policy in POLICIES:
        return policy
    if policy in UNSPECIFIED_POLICIES:
        pinned = "@sha256:" in reference
        untagged = ":" not in reference.rsplit("/", 1)[-1]
        return "Always" if not pinned and (reference.endswith(":latest") or untagged) else "IfNotPresent"
    raise MeshextError(f"unknown pull policy {policy!r}", where="imagePullPolicy",
                       fix=f"use one of {', '.join(POLICIES)}")


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
