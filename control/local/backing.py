"""The backing services the local mesh starts when a resource first needs them.

Two extensions call a service beside the mesh: the rate-limit filter in global mode asks an
RLS v3 service (`meshext ratelimit serve`, counting in Debian's ``redis-server``), the 3scale
filter asks a 3scale backend (`meshext 3scale-backend serve`, the simulator).  Each runs as
parts of the local mesh, behind its own sidecar, as a service the mesh file declares
(``layout.BACKING_SERVICES``), configured from the files shipped in ``deploy/local/services/``.

**When a resource needs one**: when its plugin configuration (ServiceMeshExtension
``spec.config``, WasmPlugin ``spec.pluginConfig``) names the service's cluster
(``outbound|9080||ratelimit.default.svc.cluster.local``) as a string anywhere in it: the
rate-limit filter's ``service.cluster``, the 3scale filter's ``backend.upstream.name`` or
``system.upstream.name``.  That is exactly what makes Envoy call the service, whatever the
image is called or the filter's field is named: a user's own build of either filter is
served, and a global-mode rate limit pointed at a user's own RLS starts nothing.  Neither the
image nor ``mode: global`` alone decides it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshext.control.local.images import CHECKOUT
from meshext.control.local.layout import BACKING_SERVICES, REDIS_OFFSET, Ports, StateDir, service_cluster
from meshext.control.local.resources import Document
from meshext.errors import InternalError, MeshextError

SERVICE_CONFIGS = CHECKOUT / "deploy" / "local" / "services"
REDIS = "redis"  # the part name of the rate limit service's Redis


@dataclass(frozen=True)
class BackingService:
    """One backing service: its mesh service name, what it is, the file it is configured from, and the
    parts it runs besides its sidecar, in start order (the service itself is the part of its name)."""

    name: str
    description: str
    config: Path
    processes: tuple[str, ...]

    @property
    def cluster(self) -> str:
        """The cluster a filter's configuration names to call it."""
        return service_cluster(self.name)


SERVICES = {service.name: service for service in (
    BackingService("ratelimit", "the rate limit service (meshext ratelimit serve, on Redis)",
                   SERVICE_CONFIGS / "ratelimit.yaml", (REDIS, "ratelimit")),
    BackingService("threescale", "the 3scale backend simulator (meshext 3scale-backend serve)",
                   SERVICE_CONFIGS / "3scale-backend.yaml", ("threescale",)),
)}
if set(SERVICES) != {name for name, _ in BACKING_SERVICES}:
    raise InternalError("backing.SERVICES and layout.BACKING_SERVICES name different services")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def plugin_config(document: Document) -> Any:
    """The configuration the resource hands its filter (``config`` or ``pluginConfig``), None without one."""
    spec = document.obj.get("spec") or {}
    return spec.get("pluginConfig" if document.key.startswith("WasmPlugin/") else "config")


def needed_services(documents: Iterable[Document]) -> list[BackingService]:
    """The backing services the resources call (see the module docstring), in the table's order."""
    named = {text for document in documents for text in _strings(plugin_config(document))}
    return [service for service in SERVICES.values() if service.cluster in named]


def command(part: str, ports: Ports, state: StateDir) -> list[str]:
    """The command of one of a backing service's processes (a name of some ``processes``)."""
    python = [sys.executable, "-m", "meshext"]
    redis_port = ports.app_port("ratelimit", REDIS_OFFSET)
    if part == REDIS:
        if shutil.which("redis-server") is None:
            raise MeshextError("redis-server is not installed; the rate limit service counts in it",
                               where="meshext apply",
                               fix="run scripts/install.sh again (it installs Debian's redis-server)")
        redis_dir = state.root / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        # No persistence: the counters are rate windows, worthless after a restart.
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                "--dir", str(redis_dir)]
    if part == "ratelimit":
        return python + ["ratelimit", "serve", "--config", str(SERVICES[part].config),
                         "--address", f"127.0.0.1:{ports.app_port(part, 0)}", "--redis", f"127.0.0.1:{redis_port}"]
    if part == "threescale":
        return python + ["3scale-backend", "serve", "--config", str(SERVICES[part].config),
                         "--port", str(ports.app_port(part, 0))]
    raise InternalError(f"no command for the backing service part {part!r}")


def part_names() -> list[str]:
    """Every backing service's own processes, in start order (their sidecars not included)."""
    return [part for service in SERVICES.values() for part in service.processes]
