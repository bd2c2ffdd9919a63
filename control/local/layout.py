"""Where the local mesh lives: its state directory, its ports, and the files generated from them.

The state directory is ``$MESHEXT_STATE_DIR``, else ``$XDG_STATE_HOME/meshext/mesh``
(``~/.local/state/meshext/mesh``), not the cache root: the cache holds what can be
rebuilt and deleted at any time, while this holds what the running mesh *is* (PID
files, logs, the resources users applied, the registry's images, the mesh CA).
Deleting it under a running mesh would orphan processes; the XDG base-directory
spec names ``$XDG_STATE_HOME`` for exactly such data (logs, state that outlives a
restart but is not a user document).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from meshext.control.local import images
from meshext.errors import MeshextError

STATE_ENV = "MESHEXT_STATE_DIR"
NAMESPACE = "default"
# The demo services, in start order (callees first), with the protocol their app speaks:
# (service, protocol of its port, the service it calls or None).
APPS: tuple[tuple[str, str, str | None], ...] = (
    ("ratings", "HTTP2", None),
    ("reviews", "HTTP", "ratings"),
    ("productpage", "HTTP", "reviews"),
)
# The services the mesh starts when a resource first needs them (see backing.py), each behind its
# own sidecar like the apps, so the filters reach them through a mesh cluster over mutual TLS:
# (service, protocol of its port).  The rate limit service speaks gRPC (RLS v3), the 3scale
# backend simulator HTTP/1.1.
BACKING_SERVICES: tuple[tuple[str, str], ...] = (
    ("ratelimit", "HTTP2"),
    ("threescale", "HTTP"),
)
SERVICE_PORT = 9080  # every service's port in the mesh (Host: reviews:9080), as in Istio's Bookinfo
PORTS_PER_APP = 10  # from --port-base: app, sidecar outbound, sidecar admin, sidecar inbound, its own store
PORT_RANGE = (len(APPS) + len(BACKING_SERVICES)) * PORTS_PER_APP  # the ports from --port-base on: 50
REDIS_OFFSET = 4  # in the rate limit service's block: the Redis it counts in


def default_state_dir() -> Path:
    """``$MESHEXT_STATE_DIR``, else ``$XDG_STATE_HOME/meshext/mesh`` (see the module docstring)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "meshext" / "mesh"


@dataclass(frozen=True)
class Ports:
    """The loopback ports of the local mesh; each field is the `meshext up` option of its name."""

    productpage: int = 9080  # productpage's sidecar inbound listener: the URL to try
    registry: int = 15050  # not Debian's 5000, where its docker-registry service may run
    control: int = 15010  # xDS (Istio's istiod port)
    control_http: int = 15014  # module downloads, /status
    prometheus: int = 15090  # not Debian's 9090
    port_base: int = 15100  # the apps', backing services' and sidecars' listeners: port_base .. port_base + 49

    @staticmethod
    def option(name: str) -> str:
        """The `meshext up` option that sets the port field ``name``."""
        return "--" + name.replace("_", "-") + ("" if name == "port_base" else "-port")

    def as_options(self) -> str:
        """The `meshext up` options that give these ports."""
        return " ".join(f"{self.option(field.name)} {getattr(self, field.name)}" for field in fields(self))

    def app_port(self, app: str, offset: int) -> int:
        """One of the listeners of ``app`` (a demo app or a backing service): 0 the app, 1 its
        sidecar's outbound, 2 admin, 3 inbound; a backing service's own store next (REDIS_OFFSET)."""
        index = [name for name, _ in workload_apps()].index(app)
        return self.port_base + PORTS_PER_APP * index + offset

    def inbound(self, app: str) -> int:
        """Where ``app``'s sidecar accepts traffic (its endpoint in the mesh)."""
        return self.productpage if app == "productpage" else self.app_port(app, 3)

    def uses(self) -> list[tuple[int, str, str]]:
        """Every port the mesh binds: (port, what binds it, the option that moves it)."""
        used = [(self.registry, "the OCI registry", self.option("registry")),
                (self.control, "the control plane's xDS server", self.option("control")),
                (self.control_http, "the control plane's HTTP server", self.option("control_http")),
                (self.prometheus, "Prometheus", self.option("prometheus"))]
        return used + [use for app, _ in workload_apps() for use in self.uses_of(app)]

    def uses_of(self, app: str) -> list[tuple[int, str, str]]:
        """The ports of one demo app or backing service, its sidecar's and its store's, as in :meth:`uses`."""
        kind = "app" if app in (name for name, _, _ in APPS) else "service"
        used = [(self.app_port(app, 0), f"the {app} {kind}", self.option("port_base")),
                (self.app_port(app, 1), f"{app}'s sidecar (outbound)", self.option("port_base")),
                (self.app_port(app, 2), f"{app}'s sidecar (Envoy admin)", self.option("port_base")),
                (self.inbound(app), f"{app}'s sidecar (inbound)",
                 self.option("productpage" if app == "productpage" else "port_base"))]
        if app == "ratelimit":
            used.append((self.app_port(app, REDIS_OFFSET), "the rate limit service's Redis", self.option("port_base")))
        return used

    def check(self) -> None:
        """Refuse ports outside 1-65535 and two parts on one port, naming the options."""
        seen: dict[int, str] = {}
        for port, what, option in self.uses():
            if not 1 <= port <= 65535:
                raise MeshextError(f"port {port} ({what}) is not a port number", where=option,
                                   fix="use a number from 1 to 65535")
            if port in seen:
                raise MeshextError(f"port {port} would serve both {seen[port]} and {what}", where=option,
                                   fix=f"choose {option} so that the ports do not overlap")
            seen[port] = what


@dataclass(frozen=True)
class StateDir:
    """The files of one local mesh (see the module docstring for where it lives)."""

    root: Path

    @property
    def settings_file(self) -> Path:
        """The ports the running mesh was started with: what `down`, `apply`, `get` read."""
        return self.root / "settings.json"

    @property
    def run_dir(self) -> Path:
        """PID files, one per part."""
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        """Logs, one per part (what `meshext logs` shows)."""
        return self.root / "logs"

    @property
    def resources_dir(self) -> Path:
        """The control plane's ``--config-dir``: one file per applied resource, with its status beside it."""
        return self.root / "resources"

    @property
    def pki_dir(self) -> Path:
        """The mesh CA and certificates (`meshext control serve` creates what is missing)."""
        return self.root / "pki"

    @property
    def mesh_file(self) -> Path:
        """The mesh file generated from the ports."""
        return self.root / "mesh.yaml"

    def save_ports(self, ports: Ports) -> None:
        """Record ``ports`` as the running mesh's."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.settings_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"ports": asdict(ports)}, indent=2) + "\n")
        partial.replace(self.settings_file)

    def saved_ports(self) -> Ports | None:
        """The ports a previous `meshext up` recorded, or None when there was none."""
        try:
            saved = json.loads(self.settings_file.read_text())["ports"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        known = {field.name for field in fields(Ports)}
        return Ports(**{name: int(value) for name, value in saved.items() if name in known})


def workload_apps() -> list[tuple[str, str]]:
    """Every workload's app and the protocol it speaks: the demo apps, then the backing services."""
    return [(app, protocol) for app, protocol, _ in APPS] + list(BACKING_SERVICES)


def service_cluster(service: str) -> str:
    """The Envoy cluster every sidecar has for ``service``'s port: what a filter's configuration names to
    call it (``outbound|<port>||<service host>``, as envoy_config names the clusters of mesh services)."""
    return f"outbound|{SERVICE_PORT}||{service}.{NAMESPACE}.svc.cluster.local"


def mesh_document(ports: Ports) -> dict[str, Any]:
    """The mesh file: the three demo services and the backing services, one workload each, every
    listener on loopback, telemetry on.

    The backing services are declared from the start, although their processes start only when a
    resource needs them: the control plane reads the mesh file once, so every sidecar has their
    clusters (and the mesh CA their certificates) before anything calls them."""
    services, workloads = [], []
    for app, protocol in workload_apps():
        services.append({"name": app, "namespace": NAMESPACE, "selector": {"app": app},
                         "ports": [{"name": "grpc" if protocol == "HTTP2" else "http", "port": SERVICE_PORT,
                                    "protocol": protocol}]})
        workloads.append({"name": f"{app}-v1", "namespace": NAMESPACE, "labels": {"app": app, "version": "v1"},
                          "app": {"port": ports.app_port(app, 0)}, "outbound": {"port": ports.app_port(app, 1)},
                          "admin": {"port": ports.app_port(app, 2)}, "inbound": {"port": ports.inbound(app)}})
    # Telemetry stated, not left to the default: every sidecar reports Istio's metrics (Prometheus, graph).
    # Its module is the extensions bundle `up` pushes to the local registry: the rate limit and 3scale
    # resources that pull it from there share telemetry's VMs.
    publisher = images.BUNDLE.repository(f"127.0.0.1:{ports.registry}")
    return {"controlPlaneNamespace": "meshext-system", "telemetry": {"enabled": True, "publisher": publisher},
            "services": services, "workloads": workloads}
