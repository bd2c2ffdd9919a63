"""Real registries for the registry tests: Debian's docker-registry on loopback,
once plain HTTP, once behind TLS (a test CA made with openssl) with htpasswd
basic auth (entries made with apache2-utils' htpasswd)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from registry_helpers import Registry, TokenServer, make_module

from meshext.registry import Credentials, ModuleCache
from meshext.registry.local_registry import LocalRegistry

USERNAME = "filter-author"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def wasm_module() -> bytes:
    return make_module("meshext")


@pytest.fixture
def wasm_file(tmp_path: Path, wasm_module: bytes) -> Path:
    path = tmp_path / "filter.wasm"
    path.write_bytes(wasm_module)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> ModuleCache:
    return ModuleCache(tmp_path / "cache")


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    directory = tmp_path_factory.mktemp("tls")
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", *ec_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=meshext test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return {name: directory / f"{name}.pem" for name in ("ca", "server")} | {"server_key": directory / "server.key"}


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    with LocalRegistry(tmp_path_factory.mktemp("plain-registry")) as server:
        yield Registry(server, plain_http=True, ca_file=None, credentials=None)


@pytest.fixture(scope="session")
def secure_registry(tmp_path_factory: pytest.TempPathFactory, test_ca: dict[str, Path]) -> Registry:
    directory = tmp_path_factory.mktemp("secure-registry")
    htpasswd = directory / "htpasswd"
    entry = subprocess.run(["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True, text=True).stdout
    htpasswd.write_text(entry.strip() + "\n")
    auth = {"htpasswd": {"realm": "meshext-test", "path": str(htpasswd)}}
    with LocalRegistry(directory, auth=auth, tls=(test_ca["server"], test_ca["server_key"])) as server:
        yield Registry(server, plain_http=False, ca_file=str(test_ca["ca"]),
                       credentials=Credentials(username=USERNAME, password=PASSWORD))


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, test_ca: dict[str, Path]) -> Registry:
    """A registry that wants bearer tokens from a token service (as Docker Hub, Quay and Harbor do)."""
    directory = tmp_path_factory.mktemp("token-registry")
    tls = (test_ca["server"], test_ca["server_key"])
    tokens = TokenServer(directory, USERNAME, PASSWORD, tls)
    try:
        with LocalRegistry(directory, auth=tokens.registry_auth(), tls=tls) as server:
            yield Registry(server, plain_http=False, ca_file=str(test_ca["ca"]),
                           credentials=Credentials(username=USERNAME, password=PASSWORD), token_server=tokens)
    finally:
        tokens.stop()


@pytest.fixture(params=["plain", "tls+htpasswd"])
def any_registry(request: pytest.FixtureRequest) -> Registry:
    return request.getfixturevalue("plain_registry" if request.param == "plain" else "secure_registry")
