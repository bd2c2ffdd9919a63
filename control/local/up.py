"""`meshext up` and `meshext down`: the local mesh's processes, started in order and stopped.

Start order, each part waiting only for what it needs: the registry, the control
plane, the three apps and Prometheus together (the images build
meanwhile; the extensions bundle is the one the control plane's telemetry
builds, so one of the two builds it and the other waits); the sidecars once the control plane
serves, with the backing services the applied resources need (backing.py); then
the images are pushed, the ServiceMeshExtension is applied and `meshext up`
waits until it runs and one request has gone through all three services.  If
anything fails, or Ctrl-C interrupts it, everything it started is stopped again
and the error names the part and its log.

A backing service no applied resource needs yet is started by `meshext apply`
(:func:`start_needed_services`) before it writes the resource that needs it, and
runs until `meshext down`.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from meshext.control.cli import fetch_status
from meshext.control.local import backing, images
from meshext.control.local.layout import APPS, NAMESPACE, Ports, StateDir, mesh_document
from meshext.control.local.processes import Part
from meshext.control.local.resources import Document, applied_documents, apply, read_documents, resources_of
from meshext.control.mesh import load_mesh
from meshext.control.pki import PKIDirectory
from meshext.control.prometheus import scrape_config
from meshext.errors import InternalError, MeshextError, UnavailableError
from meshext.registry.local_registry import registry_binary, registry_config

REGISTRY, CONTROL_PLANE, PROMETHEUS = "registry", "control-plane", "prometheus"
APPLIED_RESOURCE = images.CHECKOUT / "deploy" / "local" / "header-policy.yaml"  # up applies it, image pinned
APPLIED_EXTENSION = images.HEADER_POLICY  # which that file deploys
# An image `meshext up` pinned: the local registry's meshext/header-policy at <version>-<content key>.
PINNED_IMAGE = re.compile(rf"127\.0\.0\.1:\d+/meshext/{APPLIED_EXTENSION.name}:[^:@]+-[0-9a-f]{{12}}")
POLICY_HEADER = "x-meshext-policy"  # the response header its configuration sets on productpage
# The first request carries the example 3scale account's key (deploy/local/3scale.yaml), so that it
# passes when that resource was applied before `down` too; without it, the app ignores the header.
FIRST_REQUEST_HEADERS = {"user_key": "demo-user-key"}
START_TIMEOUT_SECONDS = 180.0  # per step; the machine may be loaded (Envoy compiles the Python filter)
BUILD_TIMEOUT_SECONDS = 600.0


def sidecar(app: str) -> str:
    """The part name of ``app``'s sidecar."""
    return f"{app}-sidecar"


def core_part_names() -> list[str]:
    """The processes every running local mesh has, in start order."""
    apps = [app for app, _, _ in APPS]
    return [REGISTRY, CONTROL_PLANE, *apps, *(sidecar(app) for app in apps), PROMETHEUS]


def part_names() -> list[str]:
    """Every process of the local mesh, in start order (`meshext down` stops them in reverse): the core
    parts, then the backing services' (started when a resource needs them) and their sidecars."""
    return core_part_names() + backing.part_names() + [sidecar(name) for name in backing.SERVICES]


class LocalMesh:
    """The local mesh in a state directory: its parts, its ports, its control plane's status."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.parts = {name: Part(name, state.run_dir, state.log_dir) for name in part_names()}

    def part(self, name: str) -> Part:
        """The part ``name``; a MeshextError listing the parts when there is none."""
        if name not in self.parts:
            raise MeshextError(f"no part {name!r}", where="PART", fix=f"use one of {', '.join(self.parts)}")
        return self.parts[name]

    def running(self) -> dict[str, int | None]:
        """name -> PID of each part (None: not running)."""
        return {name: part.pid() for name, part in self.parts.items()}

    def serving(self, service: backing.BackingService) -> bool:
        """Whether every part of the backing service runs (its processes and its sidecar)."""
        return all(self.parts[name].pid() is not None for name in (*service.processes, sidecar(service.name)))

    def ports(self) -> Ports:
        """The running mesh's ports; an UnavailableError when no `meshext up` ran here."""
        ports = self.state.saved_ports()
        if ports is None or self.parts[CONTROL_PLANE].pid() is None:
            raise UnavailableError(f"no local mesh is running (state directory {self.state.root})",
                                   where="--state-dir", fix="start one with `meshext up`")
        return ports

    def status(self) -> dict[str, Any]:
        """The control plane's status document, read with the mesh's admin certificate."""
        ports = self.ports()
        return fetch_status(("127.0.0.1", ports.control_http), PKIDirectory(self.state.pki_dir).admin().load())

    def extension_status(self, key: str) -> dict[str, Any] | None:
        """The status of the resource ``Kind/namespace/name`` (None while the control plane has none)."""
        extension = resources_of(self.status()).get(key)
        return None if extension is None else dict(extension["status"])

    def stop(self, echo: Callable[[str], None]) -> list[int]:
        """Stop every part, last started first; returns the PIDs that were running."""
        stopped = []
        for name in reversed(part_names()):
            pids = self.parts[name].stop()
            if pids:
                echo(f"stopped {name} (pid {', '.join(map(str, pids))})")
            stopped += pids
        return stopped


class Board:
    """The live progress table `meshext up` shows: part, where it runs, its state."""

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = {name: [where, "waiting"] for name, where in rows}
        self.started = time.monotonic()
        self.live: Live | None = None
        self._lock = threading.Lock()

    def set(self, name: str, state: str) -> None:
        """Show ``state`` for ``name`` (with the seconds since `meshext up` started when it is done)."""
        with self._lock:
            done = state in ("serving", "cached", "built", "pushed", "Ready")
            self.rows[name][1] = f"{state} ({time.monotonic() - self.started:.1f} s)" if done else state
            if self.live is not None:
                self.live.update(self.render(), refresh=True)

    def render(self) -> Table:
        """The table as it stands."""
        table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
        for column in ("part", "where", "state"):
            table.add_column(column, overflow="fold")
        for name, (where, state) in self.rows.items():
            style = "green" if "(" in state else ("red" if state.startswith("failed") else "yellow")
            table.add_row(name, where, f"[{style}]{state}[/{style}]")
        return table


@dataclass(frozen=True)
class UpResult:
    """What `meshext up` reports: the ports, and whether the mesh was already running."""

    ports: Ports
    already_running: bool
    seconds: float


def check_ports_free(uses: list[tuple[int, str, str]], *, mesh_running: bool = False) -> None:
    """A MeshextError naming the first port of ``uses`` (``Ports.uses``) someone else listens on, and the
    option that moves it (``mesh_running``: a `meshext up` option, so the fix restarts the mesh)."""
    for port, what, option in uses:
        with socket.socket() as probe:
            # SO_REUSEADDR: only a socket bound to the port counts, not connections in TIME_WAIT.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                move = (f"`meshext down`, then `meshext up {option} PORT` with a free range" if mesh_running
                        else f"pass {option} with a free port")
                raise MeshextError(f"port {port} is already in use; the local mesh needs it for {what}",
                                   where=option, fix=f"stop what listens on 127.0.0.1:{port}, or {move}") from None


def up(state: StateDir, ports: Ports, console: Console) -> UpResult:
    """Bring the local mesh up (see the module docstring); returns once everything serves."""
    ports.check()
    mesh = LocalMesh(state)
    started = time.monotonic()
    running = mesh.running()
    if all(running[name] for name in core_part_names()):
        saved = state.saved_ports()
        if saved != ports:
            raise MeshextError(f"the local mesh already runs, on other ports: {saved.as_options() if saved else '?'}",
                               where="meshext up", fix="run `meshext down` first to change its ports")
        return UpResult(ports, True, time.monotonic() - started)
    leftovers = [name for name, part in mesh.parts.items() if part.processes()]
    if leftovers:
        console.print(f"a previous run did not finish or was stopped in part: stopping {', '.join(leftovers)}")
        mesh.stop(console.print)
    registry_binary(), _prometheus_binary()  # not installed: say so before starting anything
    check_ports_free(ports.uses())
    state.save_ports(ports)
    try:
        _start(mesh, ports, console)
    except BaseException:
        mesh.stop(lambda line: None)
        raise
    return UpResult(ports, False, time.monotonic() - started)


def _start(mesh: LocalMesh, ports: Ports, console: Console) -> None:
    state = mesh.state
    # What was applied before `down` is applied still: the backing services it needs start with the mesh.
    services = backing.needed_services(applied_documents(state.resources_dir))
    rows = [(REGISTRY, f"127.0.0.1:{ports.registry}"),
            (CONTROL_PLANE, f"xDS 127.0.0.1:{ports.control}, HTTP 127.0.0.1:{ports.control_http}")]
    rows += [(app, f"127.0.0.1:{ports.app_port(app, 0)}") for app, _, _ in APPS]
    rows += [(sidecar(app), f"in :{ports.inbound(app)} out :{ports.app_port(app, 1)} admin :{ports.app_port(app, 2)}")
             for app, _, _ in APPS]
    rows += [(PROMETHEUS, f"http://127.0.0.1:{ports.prometheus}")]
    rows += [row for service in services for row in _service_rows(service, ports)]
    rows += [(f"build-{extension.name}", "image meshext/" + extension.name) for extension in images.EXTENSIONS]
    rows += [("extension", f"ServiceMeshExtension {APPLIED_EXTENSION.name} on productpage"),
             ("first request", f"http://127.0.0.1:{ports.productpage}/productpage")]
    board = Board(rows)
    registry_ready = threading.Event()
    with ThreadPoolExecutor(max_workers=len(images.EXTENSIONS)) as pool, \
            Live(board.render(), console=console, auto_refresh=False, transient=False) as live:
        board.live = live
        pushed = {extension.name: pool.submit(_build_and_push, extension, state, ports, board, registry_ready)
                  for extension in images.EXTENSIONS}
        try:
            _start_processes(mesh, ports, board, registry_ready, services)
            image = _result(pushed[APPLIED_EXTENSION.name], board)
            for extension in images.EXTENSIONS:
                _result(pushed[extension.name], board)
            _apply_extension(mesh, image, board)
            _first_request(ports, board)
        except BaseException:
            registry_ready.set()  # builds waiting to push give up (the registry is going away)
            for future in pushed.values():
                future.cancel()
            raise


def _build_and_push(extension: images.Extension, state: StateDir, ports: Ports, board: Board,
                    registry_ready: threading.Event) -> str:
    name = f"build-{extension.name}"
    log = state.log_dir / f"{name}.log"
    board.set(name, "building (meshext build)")
    # The control plane waits for the bundle (its telemetry's module) before it serves; header-policy is
    # applied once the sidecars are in sync: on a busy machine the bundle (and then the sidecars) get the
    # cores first.
    module, cached = images.build(extension, log, background=extension != images.BUNDLE)
    board.set(name, "cached" if cached else "built")
    if not registry_ready.wait(BUILD_TIMEOUT_SECONDS):
        raise UnavailableError("the registry never became ready", where=REGISTRY, fix=f"see {log}")
    board.set(name, "pushing")
    image = images.push(extension, module, f"127.0.0.1:{ports.registry}", log)
    board.set(name, "pushed")
    return image


def _result(future: Future[str], board: Board) -> str:
    try:
        return future.result(timeout=BUILD_TIMEOUT_SECONDS)
    except MeshextError:
        raise
    except TimeoutError:
        raise UnavailableError(f"building the extension images took over {BUILD_TIMEOUT_SECONDS:.0f} s",
                               where="meshext build", fix="see `meshext logs build-header-policy`") from None


def _start_processes(mesh: LocalMesh, ports: Ports, board: Board, registry_ready: threading.Event,
                     services: list[backing.BackingService]) -> None:
    state = mesh.state
    state.mesh_file.write_text(yaml.safe_dump(mesh_document(ports), sort_keys=False))
    python = [sys.executable, "-m", "meshext"]

    registry_dir = state.root / "registry"
    registry_dir.mkdir(parents=True, exist_ok=True)
    (registry_dir / "config.yml").write_text(yaml.safe_dump(registry_config(ports.registry,
                                                                            registry_dir / "storage")))
    mesh.parts[REGISTRY].start([registry_binary(), "serve", str(registry_dir / "config.yml")])
    mesh.parts[CONTROL_PLANE].start(python + [
        "control", "serve", "--config-dir", str(state.resources_dir), "--mesh", str(state.mesh_file),
        "--xds-address", f"127.0.0.1:{ports.control}", "--http-address", f"127.0.0.1:{ports.control_http}",
        "--plain-http", f"127.0.0.1:{ports.registry}", "--pki-dir", str(state.pki_dir)])
    for app, _, calls in APPS:
        command = [sys.executable, "-m", "meshext.control.local.demo", app,
                   "--listen", f"127.0.0.1:{ports.app_port(app, 0)}"]
        if calls is not None:
            command += ["--upstream", f"127.0.0.1:{ports.app_port(app, 1)}"]
        mesh.parts[app].start(command)

    prometheus_dir = state.root / "prometheus"
    prometheus_dir.mkdir(parents=True, exist_ok=True)
    config, _ = scrape_config(load_mesh(state.mesh_file), scrape_interval="5s")
    (prometheus_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    mesh.parts[PROMETHEUS].start([_prometheus_binary(), f"--config.file={prometheus_dir / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={prometheus_dir / 'data'}", "--storage.tsdb.retention.time=1d",
                                  f"--web.listen-address=127.0.0.1:{ports.prometheus}"])

    # The sidecars' certificates there already (an earlier run's): the sidecars start now, beside the
    # control plane (their Envoys retry xDS until it serves), rather than once it serves.
    pki = PKIDirectory(state.pki_dir)
    early = pki.ca_file.exists() and all(pki.workload(f"{app}-v1", NAMESPACE).cert_file.exists()
                                         for app, _, _ in APPS)
    for app, _, _ in APPS if early else ():
        _start_sidecar(mesh, ports, app)
    _wait(mesh, REGISTRY, board, lambda: _http_ok(f"http://127.0.0.1:{ports.registry}/v2/"))
    registry_ready.set()
    _wait(mesh, CONTROL_PLANE, board, lambda: _control_plane_healthy(state, ports))
    for app, _, _ in () if early else APPS:
        _start_sidecar(mesh, ports, app)
    for service in services:
        _launch(mesh, ports, service, board)
    for app, _, _ in APPS:
        _wait(mesh, app, board, lambda app=app: _listening(ports.app_port(app, 0)))  # type: ignore[misc]
    for app in [app for app, _, _ in APPS] + [service.name for service in services]:
        _wait(mesh, sidecar(app), board, lambda app=app: _in_sync(mesh, f"{app}-v1.{NAMESPACE}"))  # type: ignore[misc]
    _wait(mesh, PROMETHEUS, board, lambda: _http_ok(f"http://127.0.0.1:{ports.prometheus}/-/ready"))


def _start_sidecar(mesh: LocalMesh, ports: Ports, app: str) -> None:
    """Start the sidecar of ``app`` (a demo app or a backing service); it syncs with the control plane."""
    state = mesh.state
    mesh.parts[sidecar(app)].start([
        sys.executable, "-m", "meshext", "proxy", "--workload", f"{app}-v1", "--namespace", NAMESPACE,
        "--control", f"127.0.0.1:{ports.control}", "--control-http", f"127.0.0.1:{ports.control_http}",
        "--pki-dir", str(state.pki_dir), "--admin-address", f"127.0.0.1:{ports.app_port(app, 2)}",
        "--module-dir", str(state.root / "modules" / f"{app}-v1"),
        # Envoy's own log in the part's log (`meshext logs <app>-sidecar`), its work files in the
        # state directory: nothing is left in the temporary directory when a proxy is killed.
        "--work-dir", str(state.root / "envoy" / f"{app}-v1"),
        "--envoy-log", str(mesh.parts[sidecar(app)].log_file)])


def _service_rows(service: backing.BackingService, ports: Ports) -> list[tuple[str, str]]:
    """The progress rows of a backing service's parts: part, where it listens."""
    rows = [(part, f"127.0.0.1:{port}") for part, port in _process_ports(service, ports)]
    name = service.name
    return rows + [(sidecar(name), f"in :{ports.inbound(name)} out :{ports.app_port(name, 1)} "
                                   f"admin :{ports.app_port(name, 2)}")]


def _process_ports(service: backing.BackingService, ports: Ports) -> list[tuple[str, int]]:
    """Each of the service's own processes and the port it serves on."""
    return [(part, ports.app_port(service.name, backing.REDIS_OFFSET if part == backing.REDIS else 0))
            for part in service.processes]


def _launch(mesh: LocalMesh, ports: Ports, service: backing.BackingService, board: Board) -> None:
    """Start the service's processes, each once the one before serves (the RLS needs its Redis), then its
    sidecar (waited for by the caller, with the others)."""
    for part, port in _process_ports(service, ports):
        mesh.parts[part].start(backing.command(part, ports, mesh.state))
        _wait(mesh, part, board, functools.partial(_process_serves, part, port))
    _start_sidecar(mesh, ports, service.name)


def _process_serves(part: str, port: int) -> bool:
    """Whether a backing service's process serves: Redis answers PING, the 3scale simulator its /status,
    the rate limit service accepts connections (its gRPC port)."""
    if part == backing.REDIS:
        return _redis_ping(port)
    if part == "threescale":
        return _http_ok(f"http://127.0.0.1:{port}/status")
    return _listening(port)


def start_needed_services(mesh: LocalMesh, documents: list[Document], console: Console) -> None:
    """Start the backing services ``documents`` need that are not running, and wait until they serve.

    What `meshext apply` runs before it writes the resources: a resource that calls its service
    never reaches a mesh where it is missing.  The ports are checked first (a clear message
    naming the port and the option); a part that fails stops the service's other parts again."""
    needed = [service for service in backing.needed_services(documents) if not mesh.serving(service)]
    if not needed:
        return
    ports = mesh.ports()
    declared = {workload.name for workload in load_mesh(mesh.state.mesh_file).workloads}
    for service in needed:
        if f"{service.name}-v1" not in declared:  # a mesh file from before the backing services
            raise MeshextError(f"the running mesh's file does not declare the service {service.name}",
                               where=str(mesh.state.mesh_file), fix="restart the mesh: `meshext down && meshext up`")
    board = Board([row for service in needed for row in _service_rows(service, ports)])
    with Live(board.render(), console=console, auto_refresh=False, transient=False) as live:
        board.live = live
        for service in needed:
            parts = [mesh.parts[name] for name in (*service.processes, sidecar(service.name))]
            for part in parts:  # what is left of it (one part died): started afresh
                part.stop()
            check_ports_free(ports.uses_of(service.name), mesh_running=True)
            try:
                _launch(mesh, ports, service, board)
                _wait(mesh, sidecar(service.name), board,
                      lambda service=service: _in_sync(mesh, f"{service.name}-v1.{NAMESPACE}"))  # type: ignore[misc]
            except BaseException:
                for part in parts:
                    part.stop()
                raise


def _apply_extension(mesh: LocalMesh, image: str, board: Board) -> None:
    """Apply the shipped header-policy resource with its image pinned to what was just pushed.

    When the resource is there already (an earlier `meshext up`, perhaps changed with `meshext
    apply`), it is kept as it is, except that an image an earlier `meshext up` pinned is pinned
    again to this build: what a user applied outlives `down` and `up`."""
    documents = read_documents(str(APPLIED_RESOURCE), APPLIED_RESOURCE.read_text())
    if len(documents) != 1:
        raise InternalError(f"{APPLIED_RESOURCE} must hold exactly one resource")
    document = documents[0]
    existing = document.file_in(mesh.state.resources_dir)
    if existing.exists():
        applied = read_documents(str(existing), existing.read_text())[0]
        if PINNED_IMAGE.fullmatch(str(applied.obj["spec"].get("image", ""))):
            applied.obj["spec"]["image"] = image
        document = applied
    else:
        document.obj["spec"]["image"] = image
    documents = [document]
    board.set("extension", "applying")
    apply(mesh.state.resources_dir, documents)
    workload = f"productpage-v1.{NAMESPACE}"
    wanted = str(document.obj["spec"]["image"]).rsplit(":", 1)[0]  # its repository: resolved, it is digest-pinned

    def running() -> bool:
        status = mesh.extension_status(document.key) or {}
        if status.get("phase") == "Error":
            raise MeshextError(f"{document.key} did not start: {json.dumps(status.get('conditions'))}",
                               where=str(APPLIED_RESOURCE), fix="see `meshext logs control-plane`")
        return status.get("phase") == "Ready" and workload in status.get("workloads", []) \
            and status.get("resolvedImage", "").startswith(wanted)

    _wait(mesh, CONTROL_PLANE, board, running, row="extension", done="Ready")


def _first_request(ports: Ports, board: Board) -> None:
    """One request through productpage -> reviews -> ratings, the extension's header on the answer."""
    def served() -> bool:
        status, headers, body = get_productpage(ports, headers=FIRST_REQUEST_HEADERS)
        return status == 200 and POLICY_HEADER in headers and all(
            review.get("stars") is not None for review in body.get("reviews", []))

    _wait(None, "productpage", board, served, row="first request", done="serving")


def get_productpage(ports: Ports, path: str = "/productpage", headers: dict[str, str] | None = None,
                    ) -> tuple[int, dict[str, str], dict[str, Any]]:
    """GET ``path`` from productpage's sidecar: (status, lower-cased headers, JSON body or {})."""
    connection = http.client.HTTPConnection("127.0.0.1", ports.productpage, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return response.status, headers, body if isinstance(body, dict) else {}
    finally:
        connection.close()


def _wait(mesh: LocalMesh | None, part: str, board: Board, ready: Callable[[], bool], *, row: str | None = None,
          done: str = "serving") -> None:
    """Poll ``ready`` until true; fail naming ``part``'s log when its process ends or time runs out."""
    row = row or part
    board.set(row, "starting")
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    last: object = None
    while time.monotonic() < deadline:
        try:
            if ready():
                board.set(row, done)
                return
        except (OSError, http.client.HTTPException, ssl.SSLError, UnavailableError) as error:
            last = error  # not serving yet
        if mesh is not None and mesh.parts[part].pid() is None:
            board.set(row, "failed: exited")
            raise MeshextError(f"{part} exited while starting:\n{mesh.parts[part].log_tail()}",
                               where=str(mesh.parts[part].log_file), fix=f"read `meshext logs {part}`")
        time.sleep(0.1)
    board.set(row, "failed: timed out")
    raise UnavailableError(f"{row} was not ready after {START_TIMEOUT_SECONDS:.0f} s (last: {last})",
                           where=part, fix=f"read `meshext logs {part}`")


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def _listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def _redis_ping(port: int) -> bool:
    """Whether the Redis on ``port`` answers PING (it accepts connections before it has loaded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(64).startswith(b"+PONG")


def _control_plane_healthy(state: StateDir, ports: Ports) -> bool:
    ca = state.pki_dir / "ca.pem"
    if not (state.pki_dir / "admin.pem").exists() or not ca.exists():
        return False
    return _http_ok(f"https://127.0.0.1:{ports.control_http}/healthz", ssl.create_default_context(cafile=str(ca)))


def _in_sync(mesh: LocalMesh, node_id: str) -> bool:
    proxy = mesh.status()["proxies"].get(node_id)
    return bool(proxy and proxy["connected"] and proxy["inSync"])


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise MeshextError("prometheus is not installed", where="meshext up",
                           fix="run scripts/install.sh (apt-get install prometheus)")
    return binary


def down(state: StateDir, echo: Callable[[str], None]) -> list[int]:
    """Stop every part of the local mesh (also what a killed run left); returns the PIDs stopped."""
    return LocalMesh(state).stop(echo)


def log_path(state: StateDir, name: str) -> Path:
    """The log of a part or of a build (``build-<extension>``)."""
    builds = {f"build-{extension.name}" for extension in images.EXTENSIONS}
    if name in builds:
        return state.log_dir / f"{name}.log"
    return LocalMesh(state).part(name).log_file
