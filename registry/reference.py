"""Where a module comes from: parse the references users and WasmPlugin `url`s use.

Accepted spellings (what Istio's WasmPlugin and the oras CLI accept):
``registry/ns/name:tag``, ``registry/ns/name@sha256:...``, the same with an
``oci://`` prefix, ``https://host/path/module.wasm`` and ``file:///path.wasm``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import oras.container

from meshext.errors import MeshextError

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageReference:
    """An OCI reference split into the parts the registry API needs."""

    registry: str  # host[:port]
    repository: str  # namespace/name
    tag: str | None
    digest: str | None  # "sha256:<hex>" when pinned

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse ``[oci://]host[:port]/repository[:tag][@sha256:...]``; anything else, a reference
        without a registry host included, is a MeshextError."""
        original = text
        if text.startswith("oci://"):
            text = text[len("oci://") :]
        # oras' parser accepts a reference without a registry host and silently
        # points it at Docker Hub; the mesh must never guess a host.
        first = text.split("/", 1)[0]
        if "/" not in text or not ("." in first or ":" in first or first == "localhost"):
            raise MeshextError(
                f"{original!r} does not name a registry host",
                where=original,
                fix="write the full reference, e.g. 127.0.0.1:5000/filters/my-filter:1.0",
            )
        try:
            container = oras.container.Container(text)
        except ValueError as error:
            raise MeshextError(
                f"{original!r} is not a valid image reference ({error})",
                where=original,
                fix="use REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]",
            ) from None
        digest = container.digest
        if digest is not None and not DIGEST_PATTERN.match(digest):
            raise MeshextError(
                f"digest {digest!r} is not a sha256 digest",
                where=original,
                fix="pin with @sha256: followed by 64 lowercase hex digits",
            )
        repository = container.api_prefix
        # oras fills in "latest" when a digest-only reference has no tag; keep
        # the tag only when the user wrote one.
        wrote_tag = ":" in text.rsplit("/", 1)[-1].split("@", 1)[0]
        return cls(
            registry=container.registry,
            repository=repository,
            tag=container.tag if (wrote_tag or digest is None) else None,
            digest=digest,
        )

    @property
    def pull_target(self) -> str:
        """What the registry API is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """The digest-pinned spelling, e.g. ``127.0.0.1:5000/ns/name@sha256:...``."""
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_loopback_host(registry: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_plain_http_allowed(registry: str, where: str) -> None:
    """Plain HTTP is for a registry on this machine only: refuse it elsewhere."""
    if not is_loopback_host(registry):
        raise MeshextError(
            f"plain HTTP to {registry} refused: credentials and modules would cross the network unencrypted",
            where=where,
            fix="drop --plain-http and use TLS (--registry-ca-file for a private CA); plain HTTP is allowed only "
                "to 127.0.0.1, ::1 or localhost",
        )
