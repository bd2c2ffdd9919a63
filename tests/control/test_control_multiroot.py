"""Extensions from one multi-root module (`meshext build A B`) in one sidecar's chain:
one vm_id, each its own root_id."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2 as plugin_pb2

from meshext.control.envoy_config import SnapshotBuilder, root_id_for, vm_id_for
from meshext.control.mesh import Telemetry, load_mesh
from meshext.control.placement import PlacedExtension
from meshext.control.snapshot import EXTENSION_CONFIG, Snapshot
from meshext.control.telemetry import TELEMETRY_KEY, telemetry_extension

SHA = "ef" * 32
PUBLISHER = "example.com/team-a/bundle"


def _placed(kind: str, name: str, root_id: str = "", **extra: object) -> PlacedExtension:
    return PlacedExtension(key=f"{kind}/default/{name}", filter_name=f"meshext.{name}", phase="PostAuthZ",
                           priority=0, module_sha256=SHA, root_id=root_id, configuration=f'{{"who":"{name}"}}',
                           fail_open=False, publisher=PUBLISHER, module_roots=("greeter", "guard"), **extra)


def _plugin_configs(snapshot: Snapshot) -> dict[str, plugin_pb2.PluginConfig]:
    """ECDS name -> the HTTP Wasm plugin config of each extension in ``snapshot``."""
    plugins = {}
    for name, resource in snapshot.of_type(EXTENSION_CONFIG).items():
        typed = extension_pb2.TypedExtensionConfig()
        resource.packed.Unpack(typed)
        wasm = wasm_pb2.Wasm()
        typed.typed_config.Unpack(wasm)
        plugins[name] = wasm.config
    return plugins


def test_extensions_of_one_multi_root_module_share_a_vm_and_each_runs_its_root() -> None:
    guard = _placed("ServiceMeshExtension", "guard")  # no root_id field: the root named like the resource
    greeter = _placed("WasmPlugin", "hello", root_id="greeter")  # pluginName names the root
    mesh = load_mesh()
    plugins = _plugin_configs(SnapshotBuilder(mesh).snapshot(mesh.workloads[0], [guard, greeter], "/modules"))
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


def test_telemetry_from_the_extensions_bundle_shares_its_vms_with_the_bundles_extensions_of_its_publisher() -> None:
    """The control plane's telemetry run from the bundle (meshext.extensions.bundle), published as the mesh's
    telemetry.publisher: the rate limit and 3scale extensions pulled from there with the same module run in
    its VMs, each its own root; a user's extension from another repository, even with the same module, gets
    its own."""
    roots = ("telemetry", "ratelimit", "threescale-auth")
    bundle = "127.0.0.1:15050/meshext/extensions"
    mesh = load_mesh().model_copy(update={"telemetry": Telemetry(publisher=f"oci://{bundle}:latest")})
    assert mesh.telemetry.publisher == bundle  # any reference to it names the repository

    def pulled(kind: str, name: str, publisher: str, root_id: str = "") -> PlacedExtension:
        return replace(_placed(kind, name, root_id), module_roots=roots, publisher=publisher)

    telemetry = telemetry_extension(SHA, mesh, "cluster.local", module_roots=roots)
    ratelimit = pulled("WasmPlugin", "ratelimit", bundle, root_id="ratelimit")  # pluginName
    threescale = pulled("ServiceMeshExtension", "threescale-auth", bundle)  # the resource's name
    users = pulled("WasmPlugin", "copied", "127.0.0.1:15050/someone/extensions", root_id="ratelimit")
    plugins = _plugin_configs(SnapshotBuilder(mesh, "cluster.local").snapshot(
        mesh.workloads[0], [telemetry, ratelimit, threescale, users], "/modules"))
    assert {name: plugin.root_id for name, plugin in plugins.items()} == {
        "meshext.telemetry": "telemetry", "meshext.telemetry.outbound": "telemetry",
        "meshext.ratelimit": "ratelimit", "meshext.threescale-auth": "threescale-auth", "meshext.copied": "ratelimit"}
    shared = {plugins[name].vm_config.vm_id for name in
              ("meshext.telemetry", "meshext.telemetry.outbound", "meshext.ratelimit", "meshext.threescale-auth")}
    assert len(shared) == 1
    assert plugins["meshext.copied"].vm_config.vm_id not in shared


def test_telemetry_alone_or_without_a_publisher_keeps_vms_of_its_own() -> None:
    mesh = load_mesh()
    alone = telemetry_extension(SHA, mesh, None)
    assert (alone.root_id, alone.module_roots, vm_id_for(alone)) == ("", (), TELEMETRY_KEY)
    assert root_id_for(alone, network=True) == "tcp"
    unpublished = telemetry_extension(SHA, mesh, None, module_roots=("telemetry", "ratelimit"))
    assert vm_id_for(unpublished) == TELEMETRY_KEY and root_id_for(unpublished, network=True) == "telemetry/tcp"
