"""Shared pieces of the control-plane tests: apps, meshes, modules, load.

Everything binds to loopback.  Ports for the mesh are picked free by the OS
and then written into the mesh file, because a workload's endpoint must be
known to its peers before its sidecar starts.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from meshext.control.images import RegistrySettings
from meshext.control.mesh import Mesh, load_mesh
from meshext.control.operator import Operator
from meshext.control.pki import PKIDirectory, TLSMaterial
from meshext.control.proxy import Sidecar, sidecar_for
from meshext.control.server import ControlPlane
from meshext.control.sources import DirectorySource, KubernetesSource
from meshext.control.state import ControlPlaneState
from meshext.registry import ModuleCache

WAT_DIR = Path(__file__).parent / "wasm"
CHAIN_HEADER = "x-meshext-chain"
# Account of the test registry that wants basic auth (conftest's auth_registry).
PULL_USER, PULL_PASSWORD = "puller", "pull-secret-password"


_issued_ports: set[int] = set()
SIDECAR_MESH_WORKLOADS = ("frontend-v1", "backend-v1", "db-v1")  # the sidecar mesh's workloads with a sidecar


def free_port() -> int:
    """A loopback port nobody listens on, never the same one twice in a run
    (the OS may hand a just-closed ephemeral port out again at once)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port


def compile_wat(source: str, target: Path) -> tuple[Path, str]:
    """Compile WAT text with the `wasm-tools` binary; returns (path, sha256)."""
    wat = target.with_suffix(".wat")
    wat.write_text(source)
    subprocess.run(["wasm-tools", "parse", str(wat), "-o", str(target)], check=True)
    return target, hashlib.sha256(target.read_bytes()).hexdigest()


def header_module(directory: Path, header: str = CHAIN_HEADER) -> tuple[Path, str]:
    """The test filter, appending ``header`` (15 characters) with its config as value."""
    assert len(header) == len(CHAIN_HEADER)
    source = (WAT_DIR / "append_header.wat").read_text().replace(f'"{CHAIN_HEADER}"', f'"{header}"')
    # Padding to 64 KiB: meshext.registry's pull (as merged) checks the wasm magic
    # before flushing what it wrote, so modules under its 8 KiB buffer fail to pull.
    padded = source.rstrip().removesuffix(")") + f'  (@custom "meshext-test-padding" "{"0" * 65536}")\n)\n'
    return compile_wat(padded, directory / f"{header}.wasm")


@dataclass
class RunningControlPlane:
    """A control plane wired as `meshext control serve` wires it: state, operator, servers, source."""

    state: ControlPlaneState
    operator: Operator
    server: ControlPlane
    source: DirectorySource | KubernetesSource | None

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        self.operator.stop()
        self.server.stop()
        self.state.close()


def start_control_plane(mesh: Mesh, cache_dir: Path, *, source: DirectorySource | KubernetesSource | None = None,
                        tls: TLSMaterial | None = None,
                        plain_http_hosts: frozenset[str] = frozenset(),
                        telemetry_module: tuple[Path, str] | None = None) -> RunningControlPlane:
    """Build everything first, then start it: servers, operator, and the source feeding the operator.

    ``telemetry_module``: the built telemetry extension to place in every sidecar (as `meshext
    control serve` does); None leaves it out."""
    state = ControlPlaneState()
    registry = RegistrySettings(cache=ModuleCache(cache_dir), plain_http_hosts=plain_http_hosts)
    operator = Operator(mesh, state, resources=source, registry=registry,
                        trust_domain=tls.trust_domain if tls else None, telemetry_module=telemetry_module)
    server = ControlPlane(state, operator, tls=tls).start()
    operator.start()
    if source is not None:
        source.start(operator)
    return RunningControlPlane(state, operator, server, source)


class _EchoHandler(BaseHTTPRequestHandler):
    """The app: answers with its name and the chain headers it received."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({
            "app": self.server.app_name,  # type: ignore[attr-defined]
            "headers": {name.lower(): self.headers.get_all(name) for name in set(self.headers.keys())},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def start_app(name: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _EchoHandler)
    server.daemon_threads = True
    server.app_name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _TcpEchoHandler(socketserver.StreamRequestHandler):
    """The TCP app: answers each line with ``<app name>:<line>``."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{self.server.app_name}:".encode() + line)  # type: ignore[attr-defined]


def start_tcp_app(name: str, port: int) -> socketserver.ThreadingTCPServer:
    """A line-echoing TCP app on loopback (stop it with shutdown() and server_close())."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _TcpEchoHandler)
    server.daemon_threads = True
    server.app_name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def two_service_mesh(apps: tuple[str, str] = ("frontend", "backend")) -> dict[str, Any]:
    """Two services (frontend and backend unless ``apps`` names others), one workload each, on free loopback
    ports."""
    workloads = []
    for app in apps:
        workloads.append({
            "name": f"{app}-v1", "namespace": "default", "labels": {"app": app, "version": "v1"},
            "app": {"port": free_port()}, "inbound": {"port": free_port()}, "outbound": {"port": free_port()},
        })
    return {
        "controlPlaneNamespace": "meshext-system",
        "services": [{"name": app, "namespace": "default", "selector": {"app": app}, "ports": [{"port": 8080}]}
                     for app in apps],
        "workloads": workloads,
    }


def sidecar_mesh(mode: str = "PERMISSIVE") -> dict[str, Any]:
    """frontend, backend (HTTP), db (TCP, reached from frontend's tcpOutbound listener) and rogue
    (HTTP, no sidecar: the tests put an impostor at its endpoint), on free loopback ports."""
    def workload(app: str, **extra: Any) -> dict[str, Any]:
        return {"name": f"{app}-v1", "labels": {"app": app, "version": "v1"}, "app": {"port": free_port()},
                "inbound": {"port": free_port()}, "outbound": {"port": free_port()}, **extra}

    def service(app: str, port: int, protocol: str) -> dict[str, Any]:
        return {"name": app, "selector": {"app": app}, "ports": [{"port": port, "protocol": protocol}]}

    return {
        "mtls": {"mode": mode},
        "services": [service("frontend", 8080, "HTTP"), service("backend", 8080, "HTTP"),
                     service("db", 5432, "TCP"), service("rogue", 8080, "HTTP")],
        "workloads": [workload("frontend", admin={"port": free_port()},
                               tcpOutbound=[{"service": "db", "port": 5432, "listen": {"port": free_port()}}]),
                      workload("backend", admin={"port": free_port()}), workload("db", admin={"port": free_port()}),
                      workload("rogue")],
    }


class SidecarMesh:
    """The mesh above with a control plane and sidecars over mutual TLS (certificates from ``pki``);
    frontend, backend and db have a sidecar and an app (db's a line-echoing TCP app); ``telemetry_module``
    (``telemetry_module()`` of meshext.extensions.telemetry.module) places telemetry in every sidecar."""

    def __init__(self, root: Path, mode: str = "PERMISSIVE", telemetry_module: tuple[Path, str] | None = None) -> None:
        self.mesh_file = root / "mesh.yaml"
        self.mesh_file.write_text(yaml.safe_dump(sidecar_mesh(mode)))
        self.mesh: Mesh = load_mesh(self.mesh_file)
        self.pki = PKIDirectory(root / "pki")
        self.pki.ensure(workloads=[(w.name, w.namespace) for w in self.mesh.workloads])
        self.running = start_control_plane(self.mesh, root / "cache", tls=self.pki.control_plane().load(),
                                           telemetry_module=telemetry_module)
        self.apps: list[Any] = [start_app("frontend-v1", self.workload("frontend-v1").app.port),
                                start_app("backend-v1", self.workload("backend-v1").app.port),
                                start_tcp_app("db-v1", self.workload("db-v1").app.port)]
        server = self.running.server
        self.sidecars: dict[str, Sidecar] = {
            name: sidecar_for(self.workload(name), server.xds_address, server.http_address,
                              tls=self.pki.workload(name, "default").load()).start()
            for name in SIDECAR_MESH_WORKLOADS}
        assert self.running.state.cache.wait_converged([f"{name}.default" for name in SIDECAR_MESH_WORKLOADS], 30)

    def workload(self, name: str) -> Any:
        return self.mesh.workload(name, "default")

    def stat(self, sidecar: str, name: str) -> int:
        """One counter of a sidecar's Envoy (0 when it does not exist yet)."""
        text = self.sidecars[sidecar].envoy.admin_get(f"/stats?filter=^{name.replace('|', '[|]')}$")
        return int(text.split(": ")[1]) if text.strip() else 0

    def inbound_handshakes(self, sidecar: str) -> int:
        inbound = self.workload(sidecar).inbound
        return self.stat(sidecar, f"listener.{inbound.address}_{inbound.port}.ssl.handshake")

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.cleanup()
        self.running.stop()
        for app in self.apps:
            app.shutdown()
            app.server_close()


class PrometheusServer:
    """Debian's `prometheus` on a free loopback port, temporary storage, stopped on exit."""

    def __init__(self, config_file: Path, workdir: Path) -> None:
        self.config_file, self.workdir = config_file, workdir
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus not found: bash scripts/install.sh --test (Debian's prometheus)")
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: self._get("/-/ready").startswith("Prometheus"), 30, "Prometheus ready")
        return self

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode()

    def api(self, path: str, **query: str) -> Any:
        """The ``data`` of one HTTP API call, e.g. ``api("query", query="up")``."""
        answer = json.loads(self._get(f"/api/v1/{path}?{urllib.parse.urlencode(query)}"))
        assert answer["status"] == "success", answer
        return answer["data"]

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: dict[str, Any]

    def chain(self) -> list[str]:
        """Chain header values the app received (request order)."""
        return self.body.get("headers", {}).get(CHAIN_HEADER, [])

    def response_chain(self) -> list[str]:
        return [value for name, value in self.headers if name.lower() == CHAIN_HEADER]

    def header_values(self, name: str) -> list[str]:
        return self.body.get("headers", {}).get(name, [])


def call(mesh: Mesh, source: str, service: str, path: str = "/", headers: dict[str, str] | None = None) -> Response:
    """Send one request (with extra ``headers``) from workload ``source``'s app through its sidecar to ``service``."""
    workload = next(w for w in mesh.workloads if w.name == source)
    connection = http.client.HTTPConnection(workload.outbound.address, workload.outbound.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": service, "Connection": "close", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        return Response(response.status, response.getheaders(), body)
    finally:
        connection.close()


@dataclass
class Load:
    """A bounded background load: at most ``count`` requests within ``seconds``."""

    send: Callable[[], Response]
    count: int = 2000
    seconds: float = 60.0
    pause: float = 0.005
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while self.sent < self.count and time.monotonic() < deadline and not self._stop.is_set():
            try:
                response = self.send()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}: {response.body}")
            except OSError as error:
                self.failures.append(repr(error))
            self.sent += 1
            time.sleep(self.pause)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as error:  # not listening yet
            last = error
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def write_resources(path: Path, *documents: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(yaml.safe_dump_all(documents))
    partial.replace(path)


def read_status(path: Path) -> dict[str, Any]:
    status_path = path.with_name(path.name + ".status.yaml")
    try:
        return yaml.safe_load(status_path.read_text()) or {}
    except FileNotFoundError:
        return {}


def sme(name: str, image: str, *, namespace: str = "default", config: Any = None, phase: str | None = None,
        priority: Any = None, labels: dict[str, str] | None = None, api_version: str = "maistra.io/v1") -> dict:
    spec: dict[str, Any] = {"image": image}
    if config is not None:
        spec["config"] = config
    if phase is not None:
        spec["phase"] = phase
    if priority is not None:
        spec["priority"] = priority
    if labels is not None:
        spec["workloadSelector"] = {"labels": labels}
    return {"apiVersion": api_version, "kind": "ServiceMeshExtension",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def wasmplugin(name: str, url: str, *, namespace: str = "default", **spec: Any) -> dict:
    return {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"url": url, **spec}}


class MeshUnderTest:
    """Two apps with Envoy sidecars (the first, frontend: SotW ADS, the other: delta ADS), one control plane,
    talking mutual TLS with certificates from a mesh CA made for the test (``pki``); resources are read from
    the watched directory ``config_dir``.  ``description`` is the mesh file's content (default:
    :func:`two_service_mesh`); ``registry_hosts`` are registries reached over plain HTTP."""

    def __init__(self, root: Path, registry_hosts: set[str], description: dict[str, Any] | None = None) -> None:
        self.root = root
        self.mesh_file = root / "mesh.yaml"
        self.mesh_file.write_text(yaml.safe_dump(description or two_service_mesh()))
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
        first = self.mesh.workloads[0].name
        self.sidecars = {
            w.name: sidecar_for(w, self.control_plane.xds_address, self.control_plane.http_address,
                                "sotw" if w.name == first else "delta",
                                tls=self.pki.workload(w.name, w.namespace).load()).start()
            for w in self.mesh.workloads
        }
        assert self.running.state.cache.wait_converged([w.node_id for w in self.mesh.workloads], 30)

    def remove_resources(self) -> None:
        """Empty the watched directory and wait until the proxies run without the extensions."""
        for path in self.config_dir.iterdir():
            # missing_ok: the source's polling thread deletes a status file once its resource file is gone
            path.unlink(missing_ok=True)
        self.source.scan()
        self.operator.wait_idle()
        nodes = [w.node_id for w in self.mesh.workloads]
        assert self.running.state.cache.wait_converged(nodes, 30)

    def close(self) -> None:
        """Stop the sidecars (printing their logs with MESHEXT_SHOW_ENVOY_LOGS set), the control plane, the apps."""
        for sidecar in self.sidecars.values():
            if os.environ.get("MESHEXT_SHOW_ENVOY_LOGS"):
                print(f"--- {sidecar.envoy.workdir}\n{sidecar.envoy.log_tail(60)}")
            sidecar.cleanup()
        self.running.stop()
        for app in self.apps:
            app.shutdown()
            app.server_close()
