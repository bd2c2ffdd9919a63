"""`meshext control serve`, `meshext proxy` and `meshext status`."""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import click

from meshext.errors import UnavailableError

DEFAULT_XDS = "127.0.0.1:15010"
DEFAULT_HTTP = "127.0.0.1:15014"


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@click.group("control")
def control_group() -> None:
    """Run the meshext control plane (xDS server + extension operator)."""


@control_group.command("serve")
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory of ServiceMeshExtension / WasmPlugin YAML files to watch; "
                   "each resource's status is written to <file>.status.yaml next to it.")
@click.option("--kubernetes", is_flag=True,
              help="Watch the CRDs in Kubernetes instead (in-cluster or KUBECONFIG), and discover the mesh "
                   "from its Services, EndpointSlices and Pods (unless --mesh is given).")
@click.option("--mesh", "mesh_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Mesh file (services and workloads); default: discovered with --kubernetes, "
                   "else the embedded two-service mesh.")
@click.option("--control-plane-namespace", envvar="POD_NAMESPACE", default="meshext-system", show_default=True,
              help="For a discovered mesh: extension resources in this namespace apply mesh-wide "
                   "(a mesh file says it itself).  Read from $POD_NAMESPACE when set.")
@click.option("--xds-address", default=DEFAULT_XDS, show_default=True, help="Where sidecars reach the ADS server.")
@click.option("--http-address", default=DEFAULT_HTTP, show_default=True,
              help="Module downloads for sidecars, and /status for `meshext status`.")
@click.option("--insecure-registry", "plain_http_hosts", multiple=True, metavar="HOST:PORT",
              help="A registry to reach over plain HTTP (repeatable; loopback test registries).")
@click.option("--registry-ca-file", type=click.Path(dir_okay=False, exists=True),
              help="CA bundle for registries with a private CA.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Verified module cache (default: the meshext user cache).")
@click.option("-v", "--verbose", is_flag=True, help="Log every push, ACK and NACK.")
def serve_command(config_dir: Path | None, kubernetes: bool, mesh_file: Path | None, control_plane_namespace: str,
                  xds_address: str, http_address: str, plain_http_hosts: tuple[str, ...], registry_ca_file: str | None,
                  cache_dir: Path | None, verbose: bool) -> None:
    """Serve xDS to the sidecars and reconcile extension resources.

    \b
    Examples:
      meshext control serve --config-dir ./extensions
      meshext control serve --kubernetes --xds-address 0.0.0.0:15010   (in a pod)
    """
    from meshext.control.images import RegistrySettings
    from meshext.control.mesh import Mesh, load_mesh
    from meshext.control.operator import Operator
    from meshext.control.proxy import parse_address
    from meshext.control.server import ControlPlane
    from meshext.control.sources import DirectorySource, KubernetesSource

    if bool(config_dir) == kubernetes:
        raise click.UsageError("give exactly one of --config-dir DIR or --kubernetes")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    discover = kubernetes and mesh_file is None
    mesh = Mesh(controlPlaneNamespace=control_plane_namespace) if discover else load_mesh(mesh_file)
    control_plane = ControlPlane(xds_address=parse_address(xds_address, where="--xds-address"),
                                 http_address=parse_address(http_address, where="--http-address"))
    try:
        control_plane.start()
    except OSError as error:
        raise UnavailableError(f"cannot bind: {error}", where="--xds-address/--http-address",
                               fix="choose free ports") from None
    from meshext.registry import ModuleCache

    registry = RegistrySettings(cache=ModuleCache(cache_dir), plain_http_hosts=frozenset(plain_http_hosts),
                                ca_file=registry_ca_file)
    operator = Operator(mesh, control_plane, registry=registry).start()
    discovery = None
    if kubernetes:
        from meshext.control.discovery import KubernetesMeshDiscovery
        from meshext.control.sources import kubernetes_api_client

        api_client = kubernetes_api_client()
        source: KubernetesSource | DirectorySource = KubernetesSource(operator, api_client=api_client).start()
        if discover:
            discovery = KubernetesMeshDiscovery(operator, control_plane_namespace=control_plane_namespace,
                                                api_client=api_client).start()
    else:
        source = DirectorySource(config_dir, operator).start()
    click.echo(f"meshext control plane: xDS {control_plane.xds_address[0]}:{control_plane.xds_port}, "
               f"HTTP {control_plane.http_address[0]}:{control_plane.http_port}, "
               + ("mesh discovered from Kubernetes" if discover else f"{len(mesh.workloads)} workloads"), err=True)
    try:
        _wait_for_signal()
    finally:
        if discovery is not None:
            discovery.stop()
        source.stop()
        operator.stop()
        control_plane.stop()


@click.command("proxy")
@click.option("--workload", required=True, help="Workload name, as in the mesh file.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--control", "control_address", default=DEFAULT_XDS, show_default=True,
              help="The control plane's xDS address (HOST:PORT).")
@click.option("--control-http", default=DEFAULT_HTTP, show_default=True,
              help="The control plane's HTTP address, where the module syncer fetches Wasm modules.")
@click.option("--module-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where verified modules are kept for Envoy (default: a temporary directory).")
@click.option("--protocol", type=click.Choice(["delta", "sotw"]), default="delta", show_default=True,
              help="Incremental (delta) or state-of-the-world ADS.")
@click.option("--concurrency", default=1, show_default=True, help="Envoy worker threads.")
@click.option("--log-level", default="warning", show_default=True)
def proxy_command(workload: str, namespace: str, control_address: str, control_http: str, module_dir: Path | None,
                  protocol: str, concurrency: int, log_level: str) -> None:
    """Run the sidecar of WORKLOAD: Envoy, configured entirely by the control plane
    over ADS, and a module syncer that fetches its Wasm modules (sha256 verified).

    \b
    Example:
      meshext proxy --workload backend-v1 --namespace default --control 127.0.0.1:15010
    """
    from meshext.control.proxy import Sidecar, parse_address

    sidecar = Sidecar(workload, namespace, parse_address(control_address, where="--control"),
                      parse_address(control_http, where="--control-http"), protocol=protocol,  # type: ignore[arg-type]
                      module_dir=module_dir, concurrency=concurrency, log_level=log_level)
    sidecar.start()
    envoy = sidecar.envoy
    click.echo(f"sidecar for {workload}.{namespace} running (Envoy admin {envoy.admin_url}, log {envoy.log_path})",
               err=True)
    try:
        _wait_for_signal()
    finally:
        sidecar.cleanup()


@click.command("status")
@click.option("--control-http", default=DEFAULT_HTTP, show_default=True,
              help="The control plane's HTTP address (`meshext control serve --http-address`).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status document.")
def status_command(control_http: str, as_json: bool) -> None:
    """List extensions, their state and the workloads running them, then the proxies."""
    from rich.console import Console
    from rich.table import Table

    try:
        with urllib.request.urlopen(f"http://{control_http}/status", timeout=10) as response:
            report = json.load(response)
    except (urllib.error.URLError, OSError) as error:
        raise UnavailableError(f"no control plane answered at {control_http}: {error}", where="--control-http",
                               fix="start one with `meshext control serve`, or pass its --http-address") from None
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    console = Console()
    table = Table(title="extensions")
    for column in ("extension", "state", "phase", "priority", "image", "running on", "reason"):
        table.add_column(column, overflow="fold")
    for key, extension in sorted(report["extensions"].items()):
        status = extension["status"]
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        table.add_row(key, status.get("phase", "?"), str(status.get("effectivePhase", "")),
                      str(status.get("effectivePriority", "")), str(extension.get("image", "")),
                      ", ".join(status.get("workloads", [])) or "-",
                      f"{ready.get('reason', '')}: {ready.get('message', '')}".strip(": "))
    console.print(table)
    proxies = Table(title="proxies")
    for column in ("proxy", "connected", "in sync", "errors"):
        proxies.add_column(column, overflow="fold")
    for node_id, proxy in sorted(report["proxies"].items()):
        errors = "; ".join(f"{t}: {s['error']}" for t, s in proxy["types"].items() if s["error"])
        if not proxy["inMesh"]:
            errors = "not a workload of the mesh: check --workload/--namespace"
        proxies.add_row(node_id, str(proxy["connected"]), str(proxy["inSync"]), errors or "-")
    console.print(proxies)
    for problem in report.get("mesh", {}).get("problems", []):
        console.print(f"mesh: {problem}", style="yellow", markup=False, highlight=False, soft_wrap=True)
