"""`meshext build A B -o m.wasm`: several projects in one module, one root per
project, selected by the plugin's root_id; in the test host and in Envoy (two
roots of one module in one chain, sharing a vm_id)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sdk_helpers import HCM, EchoServer, cluster, wasm_config

from meshext import wasm_binary
from meshext.envoy import EnvoyProcess
from meshext.errors import MeshextError
from meshext.sdk.builder import BuildResult, build_filter, build_filters
from meshext.sdk.builder.metadata import read_project_metadata
from meshext.testing import Host

PROJECTS = Path(__file__).parent / "filters" / "multiroot"


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    output = tmp_path_factory.mktemp("multiroot") / "two-roots.wasm"
    return build_filters([PROJECTS / "greeter", PROJECTS / "guard"], output)


def test_each_root_id_runs_its_own_project_with_its_own_config(two_roots: BuildResult) -> None:
    host = Host()
    greeter = host.load(two_roots.output, root_id="greeter", config={"name": "ann"})
    guard = host.load(two_roots.output, root_id="guard", config={"deny": "/private"})
    greeted = greeter.exchange(path="/private")
    # Both projects have a `config` module: each sees its own (HEADER vs STATUS), and
    # `wording`, imported inside the callback, is found at run time.
    assert greeted.request.header("x-greeting") == "hello ann"
    assert greeted.local_response is None and greeted.response.header("x-guarded") is None
    denied = guard.exchange(path="/private/x")
    assert denied.local_response is not None and denied.local_response.status == 403
    assert denied.request.header("x-greeting") is None
    assert guard.exchange(path="/public").response.header("x-guarded") == "2"


def test_a_root_named_with_a_suffix_is_that_project(two_roots: BuildResult) -> None:
    plugin = Host().load(two_roots.output, root_id="greeter/second", config={"name": "bo"})
    assert plugin.exchange().request.header("x-greeting") == "hello bo"


@pytest.mark.parametrize("root_id", ["", "nobody"])
def test_a_root_id_the_module_lacks_is_refused_naming_its_roots(two_roots: BuildResult, root_id: str) -> None:
    host = Host()
    with pytest.raises(MeshextError, match="proxy_on_vm_start returned false"):
        host.load(two_roots.output, root_id=root_id)
    logged = "\n".join(record.message for record in host.logs)
    assert f"this module has no root {root_id!r}" in logged
    assert "set root_id to one of 'greeter', 'guard'" in logged


@pytest.mark.parametrize("root_id", ["", "greeter", "anything"])
def test_a_module_of_one_project_serves_any_root_id(tmp_path_factory: pytest.TempPathFactory, root_id: str) -> None:
    module = build_filter(PROJECTS / "greeter", tmp_path_factory.getbasetemp() / "greeter-alone.wasm").output
    plugin = Host().load(module, root_id=root_id, config={"name": "di"})
    assert plugin.exchange().request.header("x-greeting") == "hello di"
    metadata = read_project_metadata(module.read_bytes(), str(module))
    assert metadata is not None and metadata.roots == () and metadata.publisher == "tests.meshext.io"


def test_each_root_keeps_its_fail_policy_and_names_its_files(two_roots: BuildResult) -> None:
    guard = Host().load(two_roots.output, root_id="guard")
    stream = guard.exchange(path="/boom")
    assert stream.local_response is not None and stream.local_response.status == 500  # guard: fail closed
    assert b"filter 'guard' failed" in stream.local_response.body
    logged = "\n".join(guard.log_messages())
    assert 'File "guard/filter.py", line' in logged and "RuntimeError: guard exploded" in logged


def test_the_module_exports_the_callbacks_of_all_its_roots_and_lists_them(two_roots: BuildResult) -> None:
    module = two_roots.output.read_bytes()
    exports = {item.name for item in wasm_binary.read_exports(wasm_binary.parse_sections(module))}
    assert {"proxy_on_request_headers", "proxy_on_response_headers"} <= exports  # greeter's, guard's
    assert "proxy_on_request_body" not in exports  # neither overrides it
    metadata = read_project_metadata(module, str(two_roots.output))
    assert metadata is not None and metadata.publisher == "tests.meshext.io"
    assert [(root.root_id, root.phase, root.priority) for root in metadata.roots] == [
        ("greeter", "PostAuthZ", 10), ("guard", "PreAuthZ", 20)]


def _copy(project: str, tmp_path: Path, **changes: str) -> Path:
    target = tmp_path / project
    shutil.copytree(PROJECTS / project, target)
    toml = target / "meshext.toml"
    text = toml.read_text()
    for key, value in changes.items():
        text = "\n".join(f'{key} = "{value}"' if line.startswith(f"{key} =") else line for line in text.splitlines())
    toml.write_text(text + "\n")
    return target


def test_projects_of_different_publishers_are_refused(tmp_path: Path) -> None:
    other = _copy("guard", tmp_path, publisher="someone.else")
    with pytest.raises(MeshextError, match="publisher") as refused:
        build_filters([PROJECTS / "greeter", other], tmp_path / "m.wasm")
    assert refused.value.where == str(other / "meshext.toml") and "separate modules" in (refused.value.fix or "")


def test_two_projects_of_one_name_are_refused(tmp_path: Path) -> None:
    twin = _copy("guard", tmp_path, name="greeter")
    with pytest.raises(MeshextError, match="root_id") as refused:
        build_filters([PROJECTS / "greeter", twin], tmp_path / "m.wasm")
    assert refused.value.where == str(twin / "meshext.toml")


def test_the_command_takes_several_projects_and_wants_an_output(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "meshext", "build", str(PROJECTS / "greeter"), str(PROJECTS / "guard")]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode != 0 and "--output" in refused.stderr and "-o bundle.wasm" in refused.stderr
    built = subprocess.run([*command, "-o", str(tmp_path / "m.wasm")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "m.wasm").is_file()


# ---- Envoy: two roots of one module in one filter chain, one vm_id ----

def _wasm_filter(name: str, module: Path, root_id: str, configuration: dict[str, str]) -> dict[str, object]:
    config = wasm_config(name, module, json.dumps(configuration))
    config["root_id"] = root_id
    config["vm_config"]["vm_id"] = "bundle"  # type: ignore[index]
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


@pytest.fixture(scope="module")
def envoy(two_roots: BuildResult, echo_server: EchoServer) -> Iterator[EnvoyProcess]:
    module = two_roots.output
    listener = {
        "name": "chain",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM, "stat_prefix": "chain",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                "http_filters": [
                    _wasm_filter("guard", module, "guard", {"deny": "/private"}),
                    _wasm_filter("greeter", module, "greeter", {"name": "envoy"}),
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }
    bootstrap = {"static_resources": {"listeners": [listener], "clusters": [cluster("upstream", echo_server.port)]}}
    process = EnvoyProcess(bootstrap, concurrency=1, log_level="info").start(timeout=180)
    yield process
    process.cleanup()


@pytest.mark.envoy
def test_two_roots_of_one_module_in_one_chain_each_do_their_own_thing(envoy: EnvoyProcess) -> None:
    host, port = envoy.listener_address("chain")
    passed = requests.get(f"http://{host}:{port}/hello", timeout=10)
    assert passed.status_code == 200
    assert passed.json()["headers"]["x-greeting"] == "hello envoy"  # greeter, with its config
    assert passed.headers["x-guarded"] == "1"  # guard's response callback, its own counter
    assert passed.json()["headers"]["x-greeter-seen"] == "1"
    denied = requests.get(f"http://{host}:{port}/private/x", timeout=10)
    assert denied.status_code == 403 and denied.text == "denied by guard\n"
    failed = requests.get(f"http://{host}:{port}/boom", timeout=10)
    assert failed.status_code == 500 and "filter 'guard' failed" in failed.text
    # One VM per thread for both plugins: Envoy counts the VMs it made.
    stats = envoy.admin_get("/stats")
    active = next(line for line in stats.splitlines() if line.startswith("wasm.envoy.wasm.runtime.v8.active"))
    assert active.split(": ")[1] == "3"  # base, main thread, one worker: not twice that
