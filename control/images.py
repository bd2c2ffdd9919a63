"""Resolve an extension's image to a verified module file, through meshext.registry.

``oci://`` / bare registry references, ``https://`` and ``file://`` URLs are
all pulled by :func:`meshext.registry.pull` into the verified module cache;
this module adds what the operator needs on top: which registries speak plain
HTTP or use a private CA (control-plane settings, like a container runtime's
"insecure registries"), the expected sha256 of a WasmPlugin, and a reason
code for the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshext.errors import MeshextError, UnavailableError
from meshext.registry import Credentials, ModuleCache, pull
from meshext.registry.reference import ImageReference
from meshext.sdk.builder.metadata import ProjectMetadata, read_project_metadata


@dataclass(frozen=True)
class MaistraDefaults:
    """Phase and priority from a Maistra image's manifest.yaml (what a resource that names none gets)."""

    phase: str | None
    priority: int | None


@dataclass(frozen=True)
class ResolvedModule:
    """An extension's module, verified and in the cache, and where it came from."""

    path: Path
    module_sha256: str
    digest: str  # the manifest digest (registry) or the module's own sha256 (file, https)
    reference: str  # digest-pinned where the source has digests
    maistra: MaistraDefaults | None
    # Built by `meshext build` (its meshext.project section): its SDK gives every
    # plugin its own root context and configuration, so plugins may share its VMs.
    meshext_built: bool = False
    # The root ids of a module built from several projects (empty: any root_id is its one project).
    roots: tuple[str, ...] = ()


class ImageResolveError(MeshextError):
    """An image that cannot be used; ``reason`` goes into the resource status."""

    def __init__(self, error: MeshextError, reason: str) -> None:
        super().__init__(error.message, where=error.where, fix=error.fix)
        self.reason = reason


@dataclass
class RegistrySettings:
    """How the control plane reaches registries: its module cache, plain-HTTP registries, a private CA."""

    cache: ModuleCache = field(default_factory=ModuleCache)
    plain_http_hosts: frozenset[str] = frozenset()  # host:port of registries without TLS (loopback tests)
    ca_file: str | None = None

    def registry_host(self, image: str) -> str | None:
        """The ``host[:port]`` of an image reference; None for ``file://`` and ``https://`` URLs."""
        if image.startswith(("file://", "https://", "http://")):
            return None
        return image.removeprefix("oci://").split("/", 1)[0]


def resolve_image(image: str, *, policy: str, expected_sha256: str | None, settings: RegistrySettings,
                  credentials: Credentials | None = None, where: str, image_field: str) -> ResolvedModule:
    """Pull (or find in the cache) the module an extension names, sha256 verified.

    ``where`` names the resource, ``image_field`` the spec field holding the image."""
    host = settings.registry_host(image)
    try:
        pulled = pull(image, policy=policy, cache=settings.cache, credentials=credentials,
                      plain_http=host in settings.plain_http_hosts, ca_file=settings.ca_file,
                      sha256=expected_sha256)
    except UnavailableError as error:
        raise ImageResolveError(_located(error, f"{where}: {image_field}"), "ImagePullFailed") from None
    except MeshextError as error:
        if expected_sha256 and "sha256" in error.message:
            raise ImageResolveError(_located(error, f"{where}: spec.sha256"), "DigestMismatch") from None
        raise ImageResolveError(_located(error, f"{where}: {image_field}"), "ImagePullFailed") from None
    maistra = pulled.maistra
    metadata = _metadata(Path(pulled.path), where)
    return ResolvedModule(
        path=Path(pulled.path),
        module_sha256=pulled.module_sha256,
        digest=pulled.manifest_digest,
        reference=pulled.reference,
        maistra=MaistraDefaults(maistra.phase, maistra.priority) if maistra else None,
        meshext_built=metadata is not None,
        roots=_roots(metadata),
    )


def module_roots(module: Path) -> tuple[str, ...]:
    """The root ids of a module built from several projects (ResolvedModule.roots): empty for one
    project's module, or one meshext did not build."""
    return _roots(_metadata(module, str(module)))


def _roots(metadata: ProjectMetadata | None) -> tuple[str, ...]:
    return tuple(root.root_id for root in metadata.roots) if metadata else ()


def _metadata(module: Path, where: str) -> ProjectMetadata | None:
    try:
        return read_project_metadata(module.read_bytes(), where)
    except MeshextError:  # an unreadable section: not a module meshext vouches for
        return None


def publisher_of(image: str) -> str:
    """Who an image's module comes from, for VM sharing (envoy_config.vm_id_for): the
    registry and repository of an OCI reference (any tag or digest), the URL itself
    for ``https://`` and ``file://`` images."""
    if image.startswith(("file://", "https://", "http://")):
        return image
    reference = ImageReference.parse(image)
    return f"{reference.registry}/{reference.repository}"


def _located(error: MeshextError, where: str) -> MeshextError:
    """The registry's error, prefixed with the resource field that named the image."""
    return MeshextError(error.message, where=f"{where} ({error.where})" if error.where else where, fix=error.fix)


def credentials_from_secret(payload: dict[str, Any], image: str, settings: RegistrySettings,
                            where: str) -> Credentials | None:
    """The credentials for ``image``'s registry in a pull secret's ``.dockerconfigjson`` payload."""
    host = settings.registry_host(image)
    if host is None:
        return None
    credentials = Credentials.from_docker_config(payload, host)
    if credentials is None:
        raise MeshextError(f"the pull secret has no entry for registry {host}", where=where,
                           fix=f"add {host} to the secret's .dockerconfigjson auths")
    return credentials
