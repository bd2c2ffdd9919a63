"""Extensions from one multi-root module (`meshext build A B`) in one sidecar's chain:
one vm_id, each its own root_id."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2

from meshext.control.envoy_config import SnapshotBuilder, root_id_for, vm_id_for
from meshext.control.mesh import load_mesh
from meshext.control.placement import PlacedExtension
from meshext.control.snapshot import EXTENSION_CONFIG

SHA = "ef" * 32
PUBLISHER = "example.com/team-a/bundle"


def _placed(kind: str, name: str, root_id: str = "", **extra: object) -> PlacedExtension:
    return PlacedExtension(key=f"{kind}/default/{name}", filter_name=f"meshext.{name}", phase="PostAuthZ",
                           priority=0, module_sha256=SHA, root_id=root_id, configuration=f'{{"who":"{name}"}}',
                           fail_open=False, publisher=PUBLISHER, module_roots=("greeter", "guard"), **extra)


def test_extensions_of_one_multi_root_module_share_a_vm_and_each_runs_its_root() -> None:
    guard = _placed("ServiceMeshExtension", "guard")  # no root_id field: the root named like the resource
    greeter = _placed("WasmPlugin", "hello", root_id="greeter")  # pluginName names the root
    mesh = load_mesh()
    snapshot = SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [guard, greeter], "/modules")
    plugins = {}
    for name, resource in snapshot.of_type(EXTENSION_CONFIG).items():
        typed = extension_pb2.TypedExtensionConfig()
        resource.packed.Unpack(typed)
        wasm = wasm_pb2.Wasm()
        typed.typed_config.Unpack(wasm)
        plugins[name] = wasm.config
    assert {name: plugin.root_id for name, plugin in plugins.items()} == {
        "meshext.guard": "guard", "meshext.hello": "greeter"}
    assert len({plugin.vm_config.vm_id for plugin in plugins.values()}) == 1
    assert plugins["meshext.guard"].vm_config.vm_id == vm_id_for(guard) != guard.key


def test_a_single_project_module_keeps_the_resources_root_id() -> None:
    single = replace(_placed("ServiceMeshExtension", "guard"), module_roots=())
    assert root_id_for(single) == "" and root_id_for(single, network=True) == "tcp"
    assert root_id_for(replace(single, root_id="mine")) == "mine"
    # A multi-root module's network plugin runs its project's root under its own id.
    assert root_id_for(_placed("WasmPlugin", "x", root_id="greeter"), network=True) == "greeter/tcp"
