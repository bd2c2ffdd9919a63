"""Registry credentials: explicit, from a Docker config.json, or from a Kubernetes
``kubernetes.io/dockerconfigjson`` secret payload (WasmPlugin ``imagePullSecret``)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshext.errors import MeshextError


@dataclass(frozen=True)
class Credentials:
    """A username/password pair (HTTP basic, or exchanged for a bearer token),
    or a bearer token the registry already issued (Docker's ``registrytoken``)."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token is None and (not self.username or self.password is None):
            raise MeshextError(
                "credentials need a username and a password, or a token",
                where="credentials",
                fix="pass --username with --password-stdin, or log in with `docker login`",
            )

    def __repr__(self) -> str:  # never print secrets into logs
        kind = "token" if self.token else f"username={self.username!r}"
        return f"Credentials({kind}, secret=***)"

    @classmethod
    def from_docker_config(cls, config: str | Path | dict[str, Any], registry: str) -> Credentials | None:
        """The entry for ``registry`` (host[:port]) in a Docker config.json, or None.

        ``config`` is a path to the file or its parsed content."""
        where = "docker config"
        if isinstance(config, dict):
            document = config
        else:
            where = str(config)
            try:
                document = json.loads(Path(config).read_text())
            except FileNotFoundError:
                raise MeshextError("registry config file not found", where=where,
                                   fix="pass the path of an existing Docker config.json") from None
            except (OSError, ValueError) as error:
                raise MeshextError(f"cannot read registry config: {error}", where=where,
                                   fix="the file must be a Docker config.json ({\"auths\": {...}})") from None
        auths = document.get("auths") if isinstance(document, dict) else None
        if not isinstance(auths, dict):
            raise MeshextError("no \"auths\" object", where=where,
                               fix='a Docker config.json looks like {"auths": {"HOST:PORT": '
                                   '{"auth": "base64(user:pass)"}}}')
        for key, entry in auths.items():
            if _registry_host(key) == registry and isinstance(entry, dict):
                return cls._from_auth_entry(entry, f"{where}: auths.{key}")
        return None

    @classmethod
    def from_dockerconfigjson(cls, payload: str | bytes, registry: str) -> Credentials | None:
        """From a ``kubernetes.io/dockerconfigjson`` secret's ``.dockerconfigjson``
        value, as stored in ``data`` (base64) or ``stringData`` (plain JSON)."""
        text = payload.decode() if isinstance(payload, bytes) else payload
        if not text.lstrip().startswith("{"):
            try:
                text = base64.b64decode(text, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise MeshextError("secret payload is neither JSON nor base64 JSON", where=".dockerconfigjson",
                                   fix="use a secret of type kubernetes.io/dockerconfigjson "
                                       "(kubectl create secret docker-registry)") from None
        try:
            config = json.loads(text)
        except ValueError as error:
            raise MeshextError(f"secret payload is not JSON: {error}", where=".dockerconfigjson",
                               fix="use a secret of type kubernetes.io/dockerconfigjson") from None
        return cls.from_docker_config(config, registry)

    @classmethod
    def from_default_docker_config(cls, registry: str) -> Credentials | None:
        """What ``docker login`` stored: $DOCKER_CONFIG/config.json or ~/.docker/config.json."""
        directory = os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker"
        path = Path(directory) / "config.json"
        return cls.from_docker_config(path, registry) if path.is_file() else None

    @classmethod
    def _from_auth_entry(cls, entry: dict[str, Any], where: str) -> Credentials | None:
        if entry.get("registrytoken"):
            return cls(token=entry["registrytoken"])
        if entry.get("username") and entry.get("password") is not None:
            return cls(username=entry["username"], password=entry["password"])
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise MeshextError("\"auth\" is not base64 of USER:PASSWORD", where=where,
                                   fix="log in again with `docker login` or fix the entry") from None
            return cls(username=username, password=password)
        return None  # e.g. an entry served by a credential helper, which we do not run


def _registry_host(key: str) -> str:
    """Docker config keys come as "host:port", "https://host:port" or "https://host/v1/"."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
    return key.split("/", 1)[0]
