"""Helpers for the registry tests: a handle on a running test registry, and an
image crafter that writes images through the raw distribution API."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
import uuid
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
    token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        return self.server.host

    def options(self) -> dict:
        """Keyword arguments for push/pull/inspect."""
        return {"plain_http": self.plain_http, "ca_file": self.ca_file, "credentials": self.credentials}

    def cli_options(self) -> list[str]:
        options = ["--plain-http"] if self.plain_http else ["--registry-ca-file", self.ca_file]
        if self.credentials:
            options += ["--username", self.credentials.username, "--password-stdin"]
        return options

    def blob_file(self, digest: str) -> Path:
        """Where docker-registry's filesystem driver keeps a blob (to tamper with it)."""
        hex_digest = digest.removeprefix("sha256:")
        return self.server.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"

    def craft(self) -> ImageCrafter:
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
        config_json = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
        config = self.blob(repository, json.dumps(config_json).encode(),
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
    """A valid Wasm module, unique per ``label``, bigger than one transfer chunk:
    a tiny module plus a custom section of filler.  (The registry stores blobs
    once for all repositories, so a test that tampers with a blob must use a
    module no other test pushes.)"""
    core = wasmtime.wat2wasm('(module (func (export "proxy_abi_version_0_2_1")))')
    name = b"meshext-test-filler"
    filler = hashlib.sha256(label.encode()).digest() * (kilobytes * 1024 // 32)
    body = _leb128(len(name)) + name + filler
    return core + b"\x00" + _leb128(len(body)) + body


def _leb128(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


class TokenServer:
    """A Docker registry token service (the protocol distribution's ``auth: token``
    speaks): checks HTTP basic credentials, answers a JWT signed RS256 with a key
    the registry trusts.  No packaged token server exists for Debian, so the test
    runs this minimal one on loopback; signing uses the openssl command."""

    SERVICE = "meshext-test-registry"
    ISSUER = "meshext-test-issuer"

    def __init__(self, workdir: Path, username: str, password: str, tls: tuple[Path, Path]) -> None:
        self.workdir = workdir
        self.username, self.password = username, password
        self.signing_key = workdir / "token-signing.key"
        self.signing_cert = workdir / "token-signing.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.signing_key),
                        "-out", str(self.signing_cert), "-days", "2", "-subj", "/CN=meshext token signer"],
                       check=True, capture_output=True)
        public_der = subprocess.run(["openssl", "pkey", "-in", str(self.signing_key), "-pubout", "-outform", "DER"],
                                    check=True, capture_output=True).stdout
        # libtrust key ID: base32 of the first 240 bits of sha256(SubjectPublicKeyInfo), in groups of 4.
        encoded = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
        self.key_id = ":".join(encoded[index:index + 4] for index in range(0, len(encoded), 4))
        self.tokens_issued = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_auth(self) -> dict:
        """The ``auth:`` section for the registry's config."""
        return {"token": {"realm": self.realm, "service": self.SERVICE, "issuer": self.ISSUER,
                          "rootcertbundle": str(self.signing_cert)}}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, subject: str, scope: str | None) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        claims = {"iss": self.ISSUER, "sub": subject, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": str(uuid.uuid4()), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.signing_key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        self.tokens_issued += 1
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        token_server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                login = f"{token_server.username}:{token_server.password}"
                expected = "Basic " + base64.b64encode(login.encode()).decode()
                if self.headers.get("Authorization") != expected or query.get("service") != [TokenServer.SERVICE]:
                    self.send_response(401)
                    self.end_headers()
                    return
                token = token_server.issue(token_server.username, (query.get("scope") or [None])[0])
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
