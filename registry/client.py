"""One registry repository, spoken to through oras-py's Registry.

oras-py supplies reference parsing, the blob-upload protocol, manifest schema
validation and the bearer-token exchange.  ``do_request`` is replaced because
oras-py's own version (a) retries every failure with sleeps that add up to
minutes, so "registry down" would hang instead of failing, and (b) answers an
HTTP Basic challenge by treating its realm as a token-server URL; and because
the mesh needs every failure turned into a MeshextError naming the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import oras.auth.utils
import oras.provider
import requests

from meshext.errors import MeshextError, UnavailableError
from meshext.registry.credentials import Credentials
from meshext.registry.formats import ACCEPTED_MANIFEST_TYPES
from meshext.registry.progress import Advance
from meshext.registry.reference import ImageReference, require_plain_http_allowed

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 60
STREAM_CHUNK = 1 << 20
UPLOAD_CHUNK = 4 << 20


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    platform: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, entry: Any, where: str) -> Descriptor:
        """A descriptor from its JSON form in a manifest; a MeshextError naming ``where`` if it is malformed."""
        try:
            return cls(entry["mediaType"], entry["digest"], int(entry["size"]),
                       entry.get("annotations") or {}, entry.get("platform"))
        except (TypeError, KeyError, ValueError):
            raise MeshextError(f"malformed descriptor in manifest: {entry!r}", where=where,
                               fix="the image was pushed by a broken tool; push it again") from None

    def to_json(self) -> dict[str, Any]:
        """The descriptor's JSON form, for a manifest."""
        entry: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry


class RegistryClient(oras.provider.Registry):
    """Talks to the repository of one reference, with its credentials and TLS settings."""

    def __init__(self, reference: ImageReference, *, credentials: Credentials | None, plain_http: bool,
                 ca_file: str | None, where: str) -> None:
        if plain_http:
            require_plain_http_allowed(reference.registry, where)
        if ca_file is not None and not os.path.isfile(ca_file):
            raise MeshextError(f"CA file {ca_file} not found", where=where,
                               fix="pass --registry-ca-file the PEM file of the CA that signed the registry "
                                   "certificate")
        super().__init__(hostname=reference.registry, insecure=plain_http, tls_verify=ca_file or True,
                         auth_backend="token")
        # Credentials are resolved by meshext (explicit, then Docker config); stop
        # oras-py from reading ~/.docker/config.json behind our back.
        self.auth._auth_config = {"auths": {}}
        self.reference = reference
        self.where = where
        self.credentials = (credentials if credentials is not None
                            else Credentials.from_default_docker_config(reference.registry))
        if self.credentials is not None and self.credentials.username:
            self.auth.set_basic_auth(self.credentials.username, self.credentials.password)
        self._authorization: dict[str, str] = (
            {"Authorization": f"Bearer {self.credentials.token}"} if self.credentials and self.credentials.token else {}
        )
        self._on_chunk_sent: Advance | None = None  # set while push_blob uploads in chunks
        self.container = self.get_container(f"{reference.registry}/{reference.repository}:{reference.tag or 'latest'}")

    # -- transport -----------------------------------------------------------------

    def do_request(self, url: str, method: str = "GET", data: dict | bytes | None = None, headers: dict | None = None,
                   json: dict | None = None, stream: bool = False) -> requests.Response:
        """One request with meshext's auth, timeouts and errors (replaces oras-py's retrying version)."""
        headers = {**(headers or {}), **self._authorization}
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code == 401 and self._answer_challenge(response):
            headers.update(self._authorization)
            response.close()
            response = self._send(method, url, data, headers, json, stream)
        if response.status_code in (401, 403):
            self._raise_denied(response)
        if method == "PATCH" and self._on_chunk_sent is not None and isinstance(data, bytes):
            self._on_chunk_sent(len(data))
        return response

    def _send(self, method: str, url: str, data: Any, headers: dict, json_body: Any, stream: bool) -> requests.Response:
        registry = self.reference.registry
        try:
            return self.session.request(method, url, data=data, json=json_body, headers=headers, stream=stream,
                                        verify=self._tls_verify,
                                        timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
        except requests.exceptions.SSLError as error:
            raise MeshextError(
                f"TLS handshake with {registry} failed: {_reason(error)}", where=self.where,
                fix="pass --registry-ca-file with the CA that signed the registry certificate; "
                    "for a registry on this machine that speaks plain HTTP, pass --plain-http",
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise UnavailableError(
                f"registry {registry} did not answer: {_reason(error)}", where=self.where,
                fix="check that the registry is running and the host:port in the reference is right",
            ) from None

    def _answer_challenge(self, response: requests.Response) -> bool:
        """Set ``self._authorization`` for a 401's WWW-Authenticate; False if we have nothing to offer."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.credentials is None or not self.credentials.username:
                return False
            basic = oras.auth.utils.get_basic_auth(self.credentials.username, self.credentials.password)
            self._authorization = {"Authorization": f"Basic {basic}"}
            return True
        if scheme == "bearer":
            if self.credentials is not None and self.credentials.token and self._authorization:
                return False  # the registry refused the token we were given; asking again won't help
            parsed = oras.auth.utils.parse_auth_header(challenge)
            try:
                token = (self.auth.request_token(parsed) if self.credentials is not None and self.credentials.username
                         else self.auth.request_anonymous_token(parsed))
            except requests.exceptions.RequestException as error:
                raise UnavailableError(f"token service {parsed.realm} did not answer: {_reason(error)}",
                                       where=self.where,
                                       fix="check that the registry's token service is reachable from here") from None
            if not token:
                return False
            self._authorization = {"Authorization": f"Bearer {token}"}
            return True
        return False

    def _raise_denied(self, response: requests.Response) -> None:
        registry = self.reference.registry
        detail = _registry_error_text(response)
        if self.credentials is None:
            raise MeshextError(
                f"registry {registry} requires credentials ({detail})", where=self.where,
                fix="pass --username with --password-stdin, run `docker login`, or name a config with "
                    "--registry-config",
            )
        raise MeshextError(
            f"registry {registry} refused the credentials ({detail})", where=self.where,
            fix="check the username and password (or token) and that the account may access this repository",
        )

    # -- manifests -----------------------------------------------------------------

    def fetch_manifest(self, target: str) -> tuple[str, bytes, str]:
        """GET a manifest by tag or digest: (media type, raw bytes, digest of those bytes).
        A digest target is verified against the bytes received."""
        url = f"{self.prefix}://{self.container.manifest_url(target)}"
        response = self.do_request(url, "GET", headers={"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)})
        if response.status_code == 404:
            what = f"digest {target}" if target.startswith("sha256:") else f"tag {target!r}"
            raise MeshextError(
                f"{what} not found in {self.reference.registry}/{self.reference.repository} "
                f"({_registry_error_text(response)})",
                where=self.where,
                fix="check the repository and tag spelling, or push the module first with `meshext push`",
            )
        self._require_success(response, "manifest")
        raw = response.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if target.startswith("sha256:") and digest != target:
            raise MeshextError(f"registry returned a manifest whose digest is {digest}, not the pinned {target}",
                               where=self.where, fix="the registry content is corrupt or tampered with; do not use it")
        try:
            document = json.loads(raw)
        except ValueError:
            raise MeshextError("manifest is not JSON", where=self.where, fix="push the image again") from None
        media_type = document.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
        return media_type, raw, digest

    def put_manifest(self, raw: bytes, media_type: str, target: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        url = f"{self.prefix}://{self.container.manifest_url(target)}"
        response = self.do_request(url, "PUT", data=raw, headers={"Content-Type": media_type})
        self._require_success(response, "manifest upload")
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    # -- blobs ---------------------------------------------------------------------

    def stream_blob(self, descriptor: Descriptor, sink: IO[bytes], advance: Advance) -> None:
        """Copy a blob into ``sink``, verifying its size and sha256 against ``descriptor``."""
        if not descriptor.digest.startswith("sha256:"):
            raise MeshextError(f"unsupported digest algorithm in {descriptor.digest}", where=self.where,
                               fix="push the image with sha256 digests")
        with self.get_blob(self.container, descriptor.digest, stream=True) as response:
            if response.status_code == 404:
                raise MeshextError(f"blob {descriptor.digest} is missing from the registry", where=self.where,
                                   fix="push the image again")
            self._require_success(response, "blob")
            hasher = hashlib.sha256()
            received = 0
            try:
                for chunk in response.iter_content(chunk_size=STREAM_CHUNK):
                    hasher.update(chunk)
                    sink.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            except requests.exceptions.RequestException as error:
                raise UnavailableError(f"transfer of {descriptor.digest} broke off: {_reason(error)}", where=self.where,
                                       fix="retry; nothing was cached") from None
        actual = "sha256:" + hasher.hexdigest()
        if actual != descriptor.digest or received != descriptor.size:
            raise MeshextError(
                f"blob digest mismatch: manifest says {descriptor.digest} ({descriptor.size} bytes), "
                f"registry sent {actual} ({received} bytes)",
                where=self.where,
                fix="the blob was altered in the registry or in transit; nothing was cached - push the image again",
            )

    def push_blob(self, content: bytes, media_type: str, advance: Advance,
                  annotations: dict[str, str] | None = None) -> Descriptor:
        """Upload ``content`` as a blob (in chunks when large, moving ``advance``); returns its descriptor."""
        descriptor = Descriptor(media_type, "sha256:" + hashlib.sha256(content).hexdigest(), len(content),
                                annotations or {})
        # oras-py uploads from a path; stage the blob in a temporary file.  Big
        # blobs go up in chunks (one PATCH each) so the progress bar can move.
        chunked = len(content) > UPLOAD_CHUNK
        self._on_chunk_sent = advance if chunked else None
        try:
            with tempfile.NamedTemporaryFile(suffix=".blob") as staged:
                staged.write(content)
                staged.flush()
                response = self.upload_blob(staged.name, self.container, descriptor.to_json(), do_chunked=chunked,
                                            chunk_size=UPLOAD_CHUNK)
        finally:
            self._on_chunk_sent = None
        self._require_success(response, "blob upload")
        if not chunked:
            advance(len(content))
        return descriptor

    def _require_success(self, response: requests.Response, what: str) -> None:
        if response.status_code not in (200, 201, 202):
            raise MeshextError(
                f"registry answered {response.status_code} to the {what} request ({_registry_error_text(response)})",
                where=self.where, fix="check the reference; the registry's own message is quoted above",
            )


def _registry_error_text(response: requests.Response) -> str:
    """The registry's error codes and messages (OCI distribution error format)."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors if isinstance(error, dict))
    except (ValueError, AttributeError):
        text = ""
    return text or f"HTTP {response.status_code}"


def _reason(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the long wrapper text."""
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return str(error)
