"""Push, pull and inspect against real registries, in all three formats."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from registry_helpers import Registry, docker_config_for, make_module

from meshext.errors import MeshextError
from meshext.registry import Credentials, MaistraManifest, ModuleCache, inspect, pull, push

MAISTRA = MaistraManifest(name="header-filter", description="adds a header", version="1.2.0", phase="PostAuthZ",
                          priority=10, module="header-filter.wasm")


@pytest.mark.parametrize("image_format", ["wasm-oci", "docker", "maistra"])
def test_round_trip_by_tag_and_by_digest(any_registry: Registry, wasm_file: Path, wasm_module: bytes,
                                         tmp_path: Path, image_format: str) -> None:
    repository = f"{any_registry.host}/filters/{image_format}-roundtrip"
    digest = push(wasm_file, f"{repository}:1.0", format=image_format,
                  maistra_manifest=MAISTRA if image_format == "maistra" else None, **any_registry.options())
    assert digest.startswith("sha256:") and len(digest) == 71

    by_tag = pull(f"{repository}:1.0", cache=ModuleCache(tmp_path / "a"), **any_registry.options())
    by_digest = pull(f"oci://{repository}@{digest}", cache=ModuleCache(tmp_path / "b"), **any_registry.options())
    for pulled in (by_tag, by_digest):
        assert pulled.path.read_bytes() == wasm_module
        assert pulled.module_sha256 == hashlib.sha256(wasm_module).hexdigest()
        assert pulled.manifest_digest == digest
        assert pulled.reference == f"{repository}@{digest}"
        assert pulled.format == image_format
        assert pulled.maistra == (MAISTRA if image_format == "maistra" else None)

    info = inspect(f"{repository}:1.0", **any_registry.options())
    assert (info.format, info.manifest_digest, info.size) == (image_format, digest, len(wasm_module))
    assert info.module_sha256 == hashlib.sha256(wasm_module).hexdigest()
    assert info.maistra == (MAISTRA if image_format == "maistra" else None)


def test_wasm_oci_artifact_has_istio_media_types(plain_registry: Registry, wasm_file: Path) -> None:
    reference = f"{plain_registry.host}/filters/istio-layout:1"
    push(wasm_file, reference, plain_http=True)
    info = inspect(reference, plain_http=True)
    assert info.config_media_type == "application/vnd.module.wasm.config.v1+json"
    assert [layer.media_type for layer in info.layers] == ["application/vnd.module.wasm.content.layer.v1+wasm"]


def test_same_module_pushed_twice_gives_the_same_digest(plain_registry: Registry, wasm_file: Path) -> None:
    for image_format in ("wasm-oci", "docker", "maistra"):
        options = {"format": image_format, "maistra_manifest": MAISTRA, "plain_http": True}
        first = push(wasm_file, f"{plain_registry.host}/filters/repro-{image_format}:a", **options)
        second = push(wasm_file, f"{plain_registry.host}/filters/repro-{image_format}:b", **options)
        assert first == second


def test_reads_images_built_by_docker(any_registry: Registry, wasm_module: bytes, cache: ModuleCache) -> None:
    """Docker v2 media types, ./-prefixed tar entries, the Maistra manifest and module in separate layers
    (one per Dockerfile ADD), and unrelated files around them."""
    craft = any_registry.craft()
    craft.docker_image("filters/docker-built", "v1", [{"plugin.wasm": wasm_module, "README": b"hello"}])
    manifest_yaml = yaml.safe_dump({"schemaVersion": 1, "name": "rl", "description": "rate limit", "version": "0.3",
                                    "phase": "PreAuthZ", "priority": 5, "module": "ratelimit.wasm"}).encode()
    craft.docker_image("filters/maistra-built", "v1",
                       [{"manifest.yaml": manifest_yaml}, {"ratelimit.wasm": wasm_module}])

    docker = pull(f"{any_registry.host}/filters/docker-built:v1", cache=cache, **any_registry.options())
    maistra = pull(f"{any_registry.host}/filters/maistra-built:v1", cache=cache, **any_registry.options())
    assert docker.format == "docker" and docker.path.read_bytes() == wasm_module
    assert maistra.format == "maistra" and maistra.path.read_bytes() == wasm_module
    assert maistra.maistra == MaistraManifest(name="rl", description="rate limit", version="0.3", phase="PreAuthZ",
                                              priority=5, module="ratelimit.wasm")


def test_manifest_list_resolves_to_the_wasm_entry_and_pins_the_list(plain_registry: Registry, wasm_file: Path,
                                                                    wasm_module: bytes, cache: ModuleCache) -> None:
    host = plain_registry.host
    craft = plain_registry.craft()
    image_digest = push(wasm_file, f"{host}/filters/multi:image", plain_http=True)
    other_digest = craft.docker_image("filters/multi", "other", [{"README": b"not a filter"}])
    image_size = len(craft.session.get(f"{craft.base_url}/v2/filters/multi/manifests/{image_digest}",
                                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content)
    docker_manifest = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    other_size = len(craft.session.get(f"{craft.base_url}/v2/filters/multi/manifests/{other_digest}",
                                       headers=docker_manifest).content)
    index_digest = craft.manifest("filters/multi", "1.0", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": other_digest,
             "size": other_size, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image_digest, "size": image_size,
             "platform": {"architecture": "wasm", "os": "wasip1"}},
        ],
    })
    pulled = pull(f"{host}/filters/multi:1.0", cache=cache, plain_http=True)
    assert pulled.path.read_bytes() == wasm_module
    assert pulled.reference == f"{host}/filters/multi@{index_digest}"
    info = inspect(f"{host}/filters/multi:1.0", plain_http=True)
    assert (info.manifest_digest, info.image_digest, info.format) == (index_digest, image_digest, "wasm-oci")


def test_if_not_present_keeps_the_cached_module_and_always_follows_the_tag(
        plain_registry: Registry, tmp_path: Path, wasm_module: bytes, cache: ModuleCache) -> None:
    reference = f"{plain_registry.host}/filters/moving:stable"
    first_file = tmp_path / "first.wasm"
    first_file.write_bytes(wasm_module)
    second_module = make_module("moving-tag-second")
    second_file = tmp_path / "second.wasm"
    second_file.write_bytes(second_module)

    first_digest = push(first_file, reference, plain_http=True)
    assert pull(reference, cache=cache, plain_http=True).manifest_digest == first_digest
    second_digest = push(second_file, reference, plain_http=True)

    kept = pull(reference, cache=cache, plain_http=True, policy="IfNotPresent")
    assert (kept.manifest_digest, kept.path.read_bytes()) == (first_digest, wasm_module)
    followed = pull(reference, cache=cache, plain_http=True, policy="Always")
    assert (followed.manifest_digest, followed.path.read_bytes()) == (second_digest, second_module)
    # Istio's unspecified policy means Always for :latest only.
    assert pull(reference, cache=cache, plain_http=True, policy="UNSPECIFIED_POLICY").manifest_digest == second_digest


def test_digest_pinned_pull_is_served_from_cache_when_the_registry_is_gone(
        wasm_file: Path, wasm_module: bytes, cache: ModuleCache, tmp_path: Path) -> None:
    from meshext.registry.local_registry import LocalRegistry

    with LocalRegistry(tmp_path / "short-lived") as server:
        digest = push(wasm_file, f"{server.host}/filters/offline:1", plain_http=True)
        pull(f"{server.host}/filters/offline@{digest}", cache=cache, plain_http=True)
    again = pull(f"{server.host}/filters/offline@{digest}", cache=cache, plain_http=True)
    assert again.path.read_bytes() == wasm_module


def test_corrupted_cache_entry_is_detected_and_fetched_again(plain_registry: Registry, wasm_file: Path,
                                                            wasm_module: bytes, cache: ModuleCache) -> None:
    reference = f"{plain_registry.host}/filters/corrupt:1"
    push(wasm_file, reference, plain_http=True)
    pulled = pull(reference, cache=cache, plain_http=True)
    pulled.path.write_bytes(b"\0asm garbage")
    again = pull(reference, cache=cache, plain_http=True)
    assert again.path.read_bytes() == wasm_module


def test_file_and_loopback_http_urls(tmp_path: Path, wasm_file: Path, wasm_module: bytes, cache: ModuleCache) -> None:
    import functools
    import http.server
    import threading

    expected = hashlib.sha256(wasm_module).hexdigest()
    from_file = pull(f"file://{wasm_file}", cache=cache, sha256=expected)
    assert (from_file.format, from_file.path.read_bytes()) == ("file", wasm_module)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wasm_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{wasm_file.name}"
        from_http = pull(url, cache=ModuleCache(tmp_path / "http-cache"), sha256=f"sha256:{expected}")
        assert (from_http.format, from_http.path.read_bytes(), from_http.reference) == ("https", wasm_module, url)
    finally:
        server.shutdown()
        server.server_close()


def run_cli(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshext", *arguments], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_cli_push_pull_inspect_with_login_and_tls(secure_registry: Registry, wasm_file: Path, wasm_module: bytes,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHEXT_CACHE_DIR", str(tmp_path / "cli-cache"))
    reference = f"{secure_registry.host}/filters/cli:2.0"
    login = secure_registry.cli_options()

    pushed = run_cli("push", str(wasm_file), reference, "--format", "maistra", "--phase", "PreStats", "--priority", "7",
                     *login, stdin=secure_registry.credentials.password + "\n")
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.strip()
    assert digest.startswith("sha256:")

    output = tmp_path / "out" / "pulled.wasm"
    pulled = run_cli("pull", reference, "-o", str(output), *login, stdin=secure_registry.credentials.password + "\n")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == f"{secure_registry.host}/filters/cli@{digest}"
    assert output.read_bytes() == wasm_module
    assert any((tmp_path / "cli-cache" / "modules" / "sha256").iterdir())

    # Credentials from a Docker config.json instead of the command line.
    config = docker_config_for(secure_registry, tmp_path / "config.json")
    inspected = run_cli("inspect", reference, "--json", "--registry-ca-file", secure_registry.ca_file,
                        "--registry-config", str(config))
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert (info["format"], info["manifest_digest"], info["size"]) == ("maistra", digest, len(wasm_module))
    assert info["maistra"] == {"name": "filter", "description": "", "version": "2.0", "phase": "PreStats",
                               "priority": 7, "module": "filter.wasm"}

    human = run_cli("inspect", reference, "--registry-ca-file", secure_registry.ca_file,
                    "--registry-config", str(config))
    assert "maistra" in human.stdout and "PreStats" in human.stdout and digest in human.stdout


def test_bearer_token_auth(token_registry: Registry, wasm_file: Path, wasm_module: bytes, cache: ModuleCache) -> None:
    reference = f"{token_registry.host}/filters/token-auth:1"
    issued_before = token_registry.token_server.tokens_issued
    digest = push(wasm_file, reference, **token_registry.options())
    pulled = pull(reference, cache=cache, **token_registry.options())
    assert (pulled.manifest_digest, pulled.path.read_bytes()) == (digest, wasm_module)
    assert token_registry.token_server.tokens_issued > issued_before

    # A token the registry issued can be handed over as is (Docker's "registrytoken").
    token = token_registry.token_server.issue(token_registry.credentials.username, "repository:filters/token-auth:pull")
    info = inspect(reference, ca_file=token_registry.ca_file, credentials=Credentials(token=token))
    assert info.manifest_digest == digest

    wrong = Credentials(username=token_registry.credentials.username, password="wrong")
    with pytest.raises(MeshextError, match="refused the credentials"):
        pull(f"{reference}", cache=ModuleCache(cache.root.parent / "other"), ca_file=token_registry.ca_file,
             credentials=wrong)


def test_module_bigger_than_an_upload_chunk(secure_registry: Registry, tmp_path: Path, cache: ModuleCache) -> None:
    from meshext.registry.client import UPLOAD_CHUNK

    module = make_module("large", kilobytes=UPLOAD_CHUNK * 2 // 1024 + 100)
    assert len(module) > 2 * UPLOAD_CHUNK
    module_file = tmp_path / "large.wasm"
    module_file.write_bytes(module)
    reference = f"{secure_registry.host}/filters/large:1"
    digest = push(module_file, reference, **secure_registry.options())
    pulled = pull(reference, cache=cache, **secure_registry.options())
    assert (pulled.manifest_digest, pulled.path.read_bytes()) == (digest, module)


def test_tiny_module_round_trips(plain_registry: Registry, tmp_path: Path) -> None:
    # An empty module is 8 bytes: the pull's header check must see what was written, not a buffer.
    module = tmp_path / "tiny.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")
    reference = f"{plain_registry.host}/filters/tiny:1"
    push(module, reference, plain_http=True)
    pulled = pull(reference, cache=ModuleCache(tmp_path / "cache"), plain_http=True)
    assert pulled.path.read_bytes() == module.read_bytes()
