"""Bad references, images, credentials and registries: each gets a message naming
the problem and the fix, and leaves nothing in the cache."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from registry_helpers import Registry, cached_files, make_module

from meshext.errors import EXIT_UNAVAILABLE, MeshextError, UnavailableError
from meshext.registry import Credentials, MaistraManifest, ModuleCache, inspect, pull, push


def expect_error(cache: ModuleCache, reference: str, error_type: type[MeshextError] = MeshextError,
                 **options) -> MeshextError:
    """Pull must fail with ``error_type`` and leave the cache empty."""
    with pytest.raises(error_type) as caught:
        pull(reference, cache=cache, **options)
    assert caught.value.where and caught.value.fix, "every error names where it happened and how to fix it"
    assert cached_files(cache) == [], "a failed pull must cache nothing"
    return caught.value


def test_unknown_layer_media_type(plain_registry: Registry, wasm_module: bytes, cache: ModuleCache) -> None:
    plain_registry.craft().oci_image("bad/unknown-type", "1", "application/vnd.example.config.v1+json",
                                     [(wasm_module, "application/vnd.example.module.v1")])
    error = expect_error(cache, f"{plain_registry.host}/bad/unknown-type:1", plain_http=True)
    assert "unknown layer media type 'application/vnd.example.module.v1'" in error.message
    assert "meshext push" in error.fix


def test_wasm_artifact_with_two_layers(plain_registry: Registry, wasm_module: bytes, cache: ModuleCache) -> None:
    wasm_layer = "application/vnd.module.wasm.content.layer.v1+wasm"
    plain_registry.craft().oci_image("bad/two-modules", "1", "application/vnd.module.wasm.config.v1+json",
                                     [(wasm_module, wasm_layer), (wasm_module + b"x", wasm_layer)])
    error = expect_error(cache, f"{plain_registry.host}/bad/two-modules:1", plain_http=True)
    assert "exactly one" in error.message


@pytest.mark.parametrize("image_format", ["wasm-oci", "docker"])
def test_tampered_blob_is_refused(plain_registry: Registry, tmp_path: Path, cache: ModuleCache,
                                  image_format: str) -> None:
    reference = f"{plain_registry.host}/bad/tampered-{image_format}:1"
    module_file = tmp_path / "tampered.wasm"
    module_file.write_bytes(make_module(f"tampered-{image_format}"))
    push(module_file, reference, format=image_format, plain_http=True)

    layer = inspect(reference, plain_http=True).layers[0]
    blob = plain_registry.blob_file(layer.digest)
    content = bytearray(blob.read_bytes())
    content[-1] ^= 0xFF  # one flipped bit in the registry's storage
    blob.write_bytes(bytes(content))

    error = expect_error(cache, reference, plain_http=True)
    assert "digest mismatch" in error.message and layer.digest in error.message
    assert error.where == reference


def test_missing_tag(plain_registry: Registry, wasm_file: Path, cache: ModuleCache) -> None:
    push(wasm_file, f"{plain_registry.host}/bad/some-repo:exists", plain_http=True)
    error = expect_error(cache, f"{plain_registry.host}/bad/some-repo:nope", plain_http=True)
    assert "tag 'nope' not found" in error.message and "MANIFEST_UNKNOWN" in error.message
    error = expect_error(cache, f"{plain_registry.host}/bad/some-repo@sha256:{'0' * 64}", plain_http=True)
    assert f"digest sha256:{'0' * 64} not found" in error.message


def test_wrong_and_missing_credentials(secure_registry: Registry, wasm_file: Path, cache: ModuleCache) -> None:
    reference = f"{secure_registry.host}/bad/private:1"
    push(wasm_file, reference, **secure_registry.options())
    wrong = Credentials(username=secure_registry.credentials.username, password="not the password")
    error = expect_error(cache, reference, ca_file=secure_registry.ca_file, credentials=wrong)
    assert "refused the credentials" in error.message and "UNAUTHORIZED" in error.message
    error = expect_error(cache, reference, ca_file=secure_registry.ca_file)
    assert "requires credentials" in error.message and "--password-stdin" in error.fix
    with pytest.raises(MeshextError, match="refused the credentials"):
        push(wasm_file, reference, ca_file=secure_registry.ca_file, credentials=wrong)


def test_tls_without_the_ca_is_refused_with_a_hint(secure_registry: Registry, cache: ModuleCache) -> None:
    error = expect_error(cache, f"{secure_registry.host}/bad/private:1", credentials=secure_registry.credentials)
    assert "TLS handshake" in error.message and "--registry-ca-file" in error.fix


def test_registry_down(cache: ModuleCache, wasm_file: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reference = f"127.0.0.1:{port}/filters/gone:1"
    error = expect_error(cache, reference, UnavailableError, plain_http=True)
    assert f"registry 127.0.0.1:{port} did not answer" in error.message

    cli = subprocess.run([sys.executable, "-m", "meshext", "pull", reference, "--plain-http", "-o", str(wasm_file)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == EXIT_UNAVAILABLE
    assert "did not answer" in cli.stderr and "Traceback" not in cli.stderr


@pytest.mark.parametrize(("change", "field", "fix_hint"), [
    ({"module": None}, "module", "module:"),
    ({"phase": "BeforeEverything"}, "phase", "PreAuthN"),
])
def test_bad_maistra_manifest(plain_registry: Registry, wasm_module: bytes, cache: ModuleCache,
                              change: dict, field: str, fix_hint: str) -> None:
    manifest = {"schemaVersion": 1, "name": "f", "description": "", "version": "1", "phase": "PostAuthZ",
                "priority": 1, "module": "f.wasm"} | change
    manifest = {key: value for key, value in manifest.items() if value is not None}
    plain_registry.craft().docker_image(f"bad/maistra-{field}", "1",
                                        [{"manifest.yaml": yaml.safe_dump(manifest).encode(), "f.wasm": wasm_module}])
    error = expect_error(cache, f"{plain_registry.host}/bad/maistra-{field}:1", plain_http=True)
    assert f"field {field!r}" in error.message and error.where.endswith(f"manifest.yaml:{field}")
    assert fix_hint in error.fix


def test_maistra_manifest_naming_an_absent_module(plain_registry: Registry, wasm_module: bytes,
                                                  cache: ModuleCache) -> None:
    manifest = {"schemaVersion": 1, "name": "f", "phase": "PostAuthZ", "module": "other.wasm"}
    plain_registry.craft().docker_image("bad/maistra-absent", "1",
                                        [{"manifest.yaml": yaml.safe_dump(manifest).encode(), "f.wasm": wasm_module}])
    error = expect_error(cache, f"{plain_registry.host}/bad/maistra-absent:1", plain_http=True)
    assert "'other.wasm'" in error.message and "f.wasm" in error.message


def test_image_without_a_module(plain_registry: Registry, cache: ModuleCache) -> None:
    plain_registry.craft().docker_image("bad/no-module", "1", [{"app.py": b"print()"}])
    error = expect_error(cache, f"{plain_registry.host}/bad/no-module:1", plain_http=True)
    assert "neither plugin.wasm nor manifest.yaml" in error.message and "app.py" in error.message


def test_layer_that_is_not_wasm(plain_registry: Registry, cache: ModuleCache) -> None:
    plain_registry.craft().docker_image("bad/not-wasm", "1", [{"plugin.wasm": b"#!/bin/sh\necho hi\n"}])
    error = expect_error(cache, f"{plain_registry.host}/bad/not-wasm:1", plain_http=True)
    assert "not a WebAssembly module" in error.message


def test_expected_sha256_mismatch(plain_registry: Registry, wasm_file: Path, cache: ModuleCache) -> None:
    reference = f"{plain_registry.host}/bad/pinned-sha:1"
    push(wasm_file, reference, plain_http=True)
    error = expect_error(cache, reference, plain_http=True, sha256="ab" * 32)
    assert f"expected {'ab' * 32}" in error.message and error.where.endswith("sha256")
    error = expect_error(cache, f"file://{wasm_file}", sha256="ab" * 32)
    assert "expected" in error.message


def test_plain_http_only_to_loopback(cache: ModuleCache, wasm_file: Path) -> None:
    error = expect_error(cache, "registry.example.com/filters/f:1", plain_http=True)
    assert "plain HTTP to registry.example.com refused" in error.message
    with pytest.raises(MeshextError, match="plain HTTP"):
        push(wasm_file, "10.1.2.3:5000/filters/f:1", plain_http=True)
    error = expect_error(cache, "http://example.com/filter.wasm")
    assert "plain HTTP" in error.message


@pytest.mark.parametrize("reference", ["just-a-name:1", "filters/f:1", "127.0.0.1:5000/f@sha256:1234",
                                       "127.0.0.1:5000/UPPER/x:1"])
def test_malformed_references(cache: ModuleCache, reference: str) -> None:
    expect_error(cache, reference, plain_http=True)


def test_push_refuses_non_wasm_and_incomplete_maistra_manifests(tmp_path: Path, wasm_file: Path) -> None:
    text_file = tmp_path / "notes.wasm"
    text_file.write_text("hello")
    with pytest.raises(MeshextError, match="not a WebAssembly module"):
        push(text_file, "127.0.0.1:1/filters/f:1", plain_http=True)
    with pytest.raises(MeshextError, match="needs the manifest.yaml fields"):
        push(wasm_file, "127.0.0.1:1/filters/f:1", format="maistra", plain_http=True)
    bad_phase = MaistraManifest(name="f", description="", version="1", phase="Whenever", priority=0, module="f.wasm")
    with pytest.raises(MeshextError, match="field 'phase'"):
        push(wasm_file, "127.0.0.1:1/filters/f:1", format="maistra", maistra_manifest=bad_phase, plain_http=True)


def test_credentials_from_docker_config_and_kubernetes_secret(tmp_path: Path) -> None:
    import base64
    import json

    auth = base64.b64encode(b"me:s3cret").decode()
    config = {"auths": {"https://registry.example.com:5000/v1/": {"auth": auth},
                        "tokens.example.com": {"registrytoken": "tok"}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert Credentials.from_docker_config(path, "registry.example.com:5000") == Credentials("me", "s3cret")
    assert Credentials.from_docker_config(config, "tokens.example.com") == Credentials(token="tok")
    assert Credentials.from_docker_config(config, "elsewhere.example.com") is None
    secret_data = base64.b64encode(json.dumps(config).encode()).decode()  # as in a Secret's .data
    assert Credentials.from_dockerconfigjson(secret_data, "registry.example.com:5000") == Credentials("me", "s3cret")
    assert Credentials.from_dockerconfigjson(json.dumps(config), "tokens.example.com") == Credentials(token="tok")
    with pytest.raises(MeshextError, match="neither JSON nor base64"):
        Credentials.from_dockerconfigjson("%%%", "x")
    assert "s3cret" not in repr(Credentials("me", "s3cret"))


def test_interrupted_pull_leaves_nothing_usable(plain_registry: Registry, wasm_file: Path, cache: ModuleCache,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate the process dying mid-transfer: the partial file never becomes a cache entry."""
    from meshext.registry import client as client_module

    reference = f"{plain_registry.host}/bad/interrupted:1"
    push(wasm_file, reference, plain_http=True)
    original = client_module.RegistryClient.stream_blob

    def stream_then_die(self, descriptor, sink, advance):
        sink.write(b"\0asm partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module.RegistryClient, "stream_blob", stream_then_die)
    with pytest.raises(KeyboardInterrupt):
        pull(reference, cache=cache, plain_http=True)
    assert cached_files(cache) == []
    monkeypatch.setattr(client_module.RegistryClient, "stream_blob", original)
    assert pull(reference, cache=cache, plain_http=True).path.read_bytes() == wasm_file.read_bytes()

