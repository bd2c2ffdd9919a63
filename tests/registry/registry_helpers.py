"""Helpers for the registry tests: a handle on a running test registry, and an
image crafter that writes images through the raw distribution API."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import requests
import wasmtime

from meshext.registry import Credentials, ModuleCache
from meshext.registry.local_registry import LocalRegistry


@dataclass
class Registry:
    """A running test registry and how to talk to it."""

    server: LocalRegistry
    plain_http: bool
    ca_file: str | None
    credentials: Credentials | None

    @property
    def host(self) -> str:
        return self.server.host

    def options(self) -> dict:
        """Keyword arguments for push/pull/inspect."""
        return {"plain_http": self.plain_http, "ca_file": self.ca_file, "credentials": self.credentials}

    def cli_options(self) -> list[str]:
        options = ["--plain-http"] if self.plain_http else ["--ca-file", self.ca_file]
        if self.credentials:
            options += ["--username", self.credentials.username, "--password-stdin"]
        return options

    def blob_file(self, digest: str) -> Path:
        """Where docker-registry's filesystem driver keeps a blob (to tamper with it)."""
        hex_digest = digest.removeprefix("sha256:")
        return self.server.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"

    def craft(self) -> "ImageCrafter":
        session = requests.Session()
        session.trust_env = False  # else $REQUESTS_CA_BUNDLE overrides session.verify
        session.verify = self.ca_file or True
        if self.credentials:
            session.auth = (self.credentials.username, self.credentials.password)
        scheme = "http" if self.plain_http else "https"
        return ImageCrafter(f"{scheme}://{self.host}", session)


class ImageCrafter:
    """Writes images straight through the distribution HTTP API, laid out the way
    other tools (docker build, buildx) lay them out, or deliberately broken."""

    def __init__(self, base_url: str, session: requests.Session) -> None:
        self.base_url = base_url
        self.session = session

    def blob(self, repository: str, content: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        start = self.session.post(f"{self.base_url}/v2/{repository}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base_url + location
        separator = "&" if "?" in location else "?"
        done = self.session.put(f"{location}{separator}digest={digest}", data=content,
                                headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return {"mediaType": media_type, "digest": digest, "size": len(content)}

    def manifest(self, repository: str, tag: str, document: dict) -> str:
        raw = json.dumps(document, indent=3).encode()  # deliberately not our own serialisation
        response = self.session.put(f"{self.base_url}/v2/{repository}/manifests/{tag}", data=raw,
                                    headers={"Content-Type": document["mediaType"]})
        assert response.status_code == 201, response.text
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def docker_image(self, repository: str, tag: str, layers: list[dict[str, bytes]]) -> str:
        """A Docker v2 schema 2 image (what `docker build` pushes): one gzip tar layer per dict."""
        layer_descriptors = [self.blob(repository, tar_gz(files), "application/vnd.docker.image.rootfs.diff.tar.gzip")
                             for files in layers]
        config = self.blob(repository, json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode(),
                           "application/vnd.docker.container.image.v1+json")
        return self.manifest(repository, tag, {
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config, "layers": layer_descriptors,
        })

    def oci_image(self, repository: str, tag: str, config_media_type: str, layers: list[tuple[bytes, str]]) -> str:
        config = self.blob(repository, b"{}", config_media_type)
        return self.manifest(repository, tag, {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config,
            "layers": [self.blob(repository, content, media_type) for content, media_type in layers],
        })


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A layer as docker build writes it: entries named ./NAME."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def cached_files(cache: ModuleCache) -> list[str]:
    """Everything a cache holds, temporary files included."""
    if not cache.root.exists():
        return []
    return sorted(str(path.relative_to(cache.root)) for path in cache.root.rglob("*") if path.is_file())


def docker_config_for(registry: Registry, path: Path) -> Path:
    """A Docker config.json as `docker login` writes it."""
    token = base64.b64encode(f"{registry.credentials.username}:{registry.credentials.password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    return path


def make_module(label: str, kilobytes: int = 1250) -> bytes:
    """A valid Wasm module, unique per ``label``, bigger than one transfer chunk.
    (The registry stores blobs once for all repositories, so a test that tampers
    with a blob must use a module no other test pushes.)"""
    block = hashlib.sha256(label.encode()).digest()
    payload = "".join(f"\\{byte:02x}" for byte in block * (kilobytes * 1024 // len(block)))
    return wasmtime.wat2wasm(f'(module (memory 32) (data (i32.const 0) "{payload}") '
                             '(func (export "proxy_abi_version_0_2_1")))')
