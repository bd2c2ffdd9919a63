"""`meshext build --cold-code`: what the profile did not see run is carried as data and interpreted.

The behaviour of cold-code modules on random requests is compared with the
plain build in ``test_sdk_equivalence.py``; the whole SDK and examples
suites run again with every module fully interpreted (``scripts/test.sh``,
``MESHEXT_INTERPRET_ALL``).  Here: what a build with cold code writes, real
Envoy running such a module, and a profile that cannot be taken.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests
from sdk_helpers import EchoServer, cluster, code_size, http_listener

from meshext import function_profile
from meshext import wasm_binary as wb
from meshext.envoy import EnvoyProcess
from meshext.errors import MeshextError
from meshext.sdk.builder import build_filter, coldcode, profile, toolchain

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "header-policy"
POLICY = {
    "required_headers": ["x-request-id"],
    "request": {"set": {"x-policy": "checked"}},
    "response": {"set": {"x-content-type-options": "nosniff"}},
    "rules": [{"name": "admin", "prefix": "/admin/", "allowed_methods": ["GET"],
               "required_headers": ["x-admin-token"]}],
}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """header-policy built plainly and with cold code (also in the self-test, which interprets everything)."""
    folder = tmp_path_factory.mktemp("cold-code")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(coldcode.INTERPRET_ALL_ENV, raising=False)
        results = {layout: build_filter(EXAMPLE, folder / f"{layout}.wasm", cold_code=layout == "cold")
                   for layout in ("plain", "cold")}
    # What `meshext build` prints: only a cold-code build moved anything.
    assert results["plain"].cold_code == ""
    assert re.fullmatch(r"[\d,]+ functions \(\d+\.\d\d MB\) carried as data for the interpreter, [\d,]+ of them "
                        r"with no stub left; code \d\.\d\d -> 0\.\d\d MB", results["cold"].cold_code), \
        results["cold"].cold_code
    return {layout: result.output for layout, result in results.items()}



def _exports(module: Path) -> list[str]:
    return sorted(export.name for export in wb.read_exports(wb.parse_sections(module.read_bytes())))


def test_cold_code_leaves_a_fraction_of_the_code_for_v8_to_compile(builds: dict[str, Path]) -> None:
    plain, cold = builds["plain"], builds["cold"]
    subprocess.run([toolchain.wasm_tools(), "validate", str(cold)], check=True)
    # The profile (the example's tests, a standard workload) runs a few hundred of CPython's functions.
    assert code_size(cold) < code_size(plain) / 4, (code_size(cold), code_size(plain))
    # V8 compiles every function the module defines: the cold ones native code never enters are gone, stub
    # and all (thousands of CPython's), the rest keep a stub.
    defined = {layout: len(wb.defined_function_type_indices(wb.parse_sections(builds[layout].read_bytes())))
               for layout in ("plain", "cold")}
    assert defined["cold"] < defined["plain"] - 1000, defined
    # Envoy sees the same module interface: the interpreter's entry points are not exports.
    assert _exports(cold) == _exports(plain)
    assert not any(name.startswith("meshext_interp") for name in _exports(cold))


def test_envoy_runs_a_cold_code_module_as_it_runs_the_plain_one(builds: dict[str, Path],
                                                               echo_server: EchoServer) -> None:
    bootstrap = {"static_resources": {
        "listeners": [http_listener(layout, module, json.dumps(POLICY)) for layout, module in builds.items()],
        "clusters": [cluster("upstream", echo_server.port)],
    }}
    envoy = EnvoyProcess(bootstrap, concurrency=2).start(timeout=120)
    try:
        seen = {}
        for layout in builds:
            host, port = envoy.listener_address(layout)
            answers = []
            # (Envoy gives every request an x-request-id before the filters run.)
            for method, path, headers in (("GET", "/orders?page=2", {}),
                                          ("POST", "/admin/users", {"x-admin-token": "t"}),
                                          ("GET", "/admin/users", {}),
                                          ("GET", "/admin/users", {"x-admin-token": "t"})):
                answer = requests.request(method, f"http://{host}:{port}{path}", headers=headers, timeout=10)
                echoed = answer.json().get("headers", {}) if answer.status_code == 200 else None
                answers.append((answer.status_code, answer.headers.get("x-content-type-options"),
                                answer.text if answer.status_code != 200 else None,
                                None if echoed is None else echoed.get("x-policy")))
            seen[layout] = answers
    finally:
        envoy.cleanup()
    assert seen["cold"] == seen["plain"]
    statuses = [status for status, *_ in seen["cold"]]
    assert statuses == [200, 403, 403, 200], seen["cold"]
    assert seen["cold"][0][1:] == ("nosniff", None, "checked")


def test_a_project_whose_tests_fail_is_not_profiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(coldcode.INTERPRET_ALL_ENV, raising=False)  # the self-test's builds take no profile
    project = tmp_path / "failing"
    (project / "tests").mkdir(parents=True)
    (project / "meshext.toml").write_text('[filter]\nname = "failing"\nentry = "filter:Root"\n')
    (project / "filter.py").write_text(
        "from meshext.sdk import HttpContext, RootContext\n\n\n"
        "class Root(RootContext):\n    http_context = HttpContext\n")
    (project / "tests" / "test_failing.py").write_text(
        "def test_the_header_is_added(filter_module):\n"
        "    with filter_module() as plugin:\n"
        "        stream = plugin.http_stream()\n"
        "        stream.send_request_headers({':path': '/', ':method': 'GET', ':authority': 'a'})\n"
        "        assert stream.request.header('x-added') == 'yes'\n")
    with pytest.raises(MeshextError) as refused:
        build_filter(project, cold_code=True)
    assert "profiling failing for --cold-code: its tests failed" in str(refused.value)
    assert "test_the_header_is_added" in str(refused.value)
    assert refused.value.where == str(project / "meshext.toml")
    assert refused.value.fix is not None and f"meshext test {project}" in refused.value.fix
    assert not (project / "build" / "failing.wasm").exists()


def test_the_hot_set_is_the_workload_and_what_one_test_vm_in_ten_served_with() -> None:
    starting, serving = function_profile.STARTING, function_profile.SERVING
    workload = [{1: starting, 2: serving}]
    # One project's 20 test VMs: function 3 served in two of them (SERVED_SHARE), 4 in one, 5 only started them
    # all; another project's single VM served with 6.
    first_tests = [{3: serving} for _ in range(2)] + [{4: serving | starting}] + [{5: starting}] * 17
    assert profile.choose_hot(workload, [first_tests, [{6: serving}], []]) == {1, 2, 3, 6}
