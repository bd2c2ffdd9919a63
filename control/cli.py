"""`meshext control serve`, `meshext control certs`, `meshext proxy` and `meshext status`."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meshext.errors import MeshextError, UnavailableError

if TYPE_CHECKING:
    from meshext.control.pki import PKIDirectory, TLSFiles, TLSMaterial

DEFAULT_XDS = "127.0.0.1:15010"
DEFAULT_HTTP = "127.0.0.1:15014"


def _exit_on_signal() -> None:
    """From now on SIGINT or SIGTERM unwinds the main thread through its ``finally`` blocks
    and exits 0, even in the middle of start-up (a sidecar waits up to 30 s for Envoy), so
    what was started, a sidecar's Envoy included, is always stopped.  Further signals are
    ignored, so they cannot cut that clean-up short."""
    def unwind(*_: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, unwind)


def _run_until_signal() -> None:
    """Block until :func:`_exit_on_signal`'s handler ends the process."""
    threading.Event().wait()


def _tls_options(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--pki-dir, --ca-file, --cert-file, --key-file and --insecure, for ``role``'s certificate."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([
            click.option("--pki-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Directory of mesh certificates as `meshext control certs` writes it "
                              "(default: $MESHEXT_PKI_DIR or ~/.local/share/meshext/pki)."),
            click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
                         help="The mesh CA certificate (default: <pki-dir>/ca.pem)."),
            click.option("--cert-file", type=click.Path(dir_okay=False, path_type=Path),
                         help=f"{role}'s certificate (default: from <pki-dir>)."),
            click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
                         help=f"{role}'s private key (default: from <pki-dir>)."),
            click.option("--insecure", is_flag=True,
                         help="Plain text, no authentication: loopback addresses only, for local experiments."),
        ]):
            command = option(command)
        return command
    return decorate


def _tls_files(pki_dir: Path | None, ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
               defaults: Callable[[PKIDirectory], TLSFiles]) -> TLSFiles:
    from meshext.control.pki import PKIDirectory, TLSFiles, default_pki_directory

    default = defaults(PKIDirectory(pki_dir or default_pki_directory()))
    return TLSFiles(ca_file or default.ca_file, cert_file or default.cert_file, key_file or default.key_file)


def _client_tls(insecure: bool, host: str, where: str, pki_dir: Path | None, ca_file: Path | None,
                cert_file: Path | None, key_file: Path | None,
                defaults: Callable[[PKIDirectory], TLSFiles]) -> TLSMaterial | None:
    from meshext.control.proxy import require_loopback_for_plain_text

    if insecure:
        require_loopback_for_plain_text(host, where=where)
        return None
    return _tls_files(pki_dir, ca_file, cert_file, key_file, defaults).load()


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
@click.option("--plain-http", "plain_http_hosts", multiple=True, metavar="HOST:PORT",
              help="Talk HTTP instead of HTTPS to the registry HOST:PORT (repeatable). Allowed only to a "
                   "registry on this machine (127.0.0.1, ::1, localhost).")
@click.option("--registry-ca-file", type=click.Path(dir_okay=False, exists=True),
              help="PEM file of the CA that signed the registries' TLS certificates.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Verified module cache (default: the meshext user cache).")
@_tls_options("The control plane")
@click.option("-v", "--verbose", is_flag=True, help="Log every push, ACK and NACK.")
def serve_command(config_dir: Path | None, kubernetes: bool, mesh_file: Path | None, control_plane_namespace: str,
                  xds_address: str, http_address: str, plain_http_hosts: tuple[str, ...], registry_ca_file: str | None,
                  cache_dir: Path | None, pki_dir: Path | None, ca_file: Path | None, cert_file: Path | None,
                  key_file: Path | None, insecure: bool, verbose: bool) -> None:
    """Serve xDS to the sidecars and reconcile extension resources.

    Sidecars connect over mutual TLS and may only fetch their own workload's
    configuration (their certificate names it).  Without --cert-file, the
    certificates live in --pki-dir and whatever is missing there is created:
    the mesh CA, the control plane's certificate (for loopback and the
    addresses given), the admin certificate for `meshext status`, and one
    certificate per workload of the mesh file for `meshext proxy`.

    \b
    Examples:
      meshext control serve --config-dir ./extensions
      meshext control serve --kubernetes --xds-address 0.0.0.0:15010 \\
          --ca-file ca.pem --cert-file control-plane.pem --key-file control-plane-key.pem   (in a pod)
    """
    from meshext.control.images import RegistrySettings
    from meshext.control.mesh import Mesh, load_mesh
    from meshext.control.operator import Operator
    from meshext.control.proxy import parse_address
    from meshext.control.server import ControlPlane
    from meshext.control.sources import DirectorySource, KubernetesSource
    from meshext.control.state import ControlPlaneState
    from meshext.registry import ModuleCache
    from meshext.registry.reference import require_plain_http_allowed

    if (config_dir is not None) == kubernetes:
        raise click.UsageError("give exactly one of --config-dir DIR or --kubernetes")
    for host in plain_http_hosts:  # refused now rather than at each pull
        require_plain_http_allowed(host, where="--plain-http")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    discover = kubernetes and mesh_file is None
    mesh = Mesh(controlPlaneNamespace=control_plane_namespace) if discover else load_mesh(mesh_file)
    xds_bind = parse_address(xds_address, where="--xds-address")
    http_bind = parse_address(http_address, where="--http-address")
    tls = _serving_tls(insecure, [(xds_bind[0], "--xds-address"), (http_bind[0], "--http-address")], pki_dir,
                       ca_file, cert_file, key_file, [(w.name, w.namespace) for w in mesh.workloads])
    registry = RegistrySettings(cache=ModuleCache(cache_dir), plain_http_hosts=frozenset(plain_http_hosts),
                                ca_file=registry_ca_file)
    api_client = None
    source: KubernetesSource | DirectorySource
    if config_dir is None:
        from meshext.control.sources import kubernetes_api_client

        api_client = kubernetes_api_client()
        source = KubernetesSource(api_client=api_client)
    else:
        source = DirectorySource(config_dir)
    telemetry_module = None
    if mesh.telemetry.enabled:
        from meshext.extensions.bundle import bundle_module

        # The bundle, not the telemetry filter alone: the rate limit and 3scale extensions of its
        # publisher (mesh telemetry.publisher) then run in telemetry's VMs.
        click.echo("telemetry extension: building the extensions bundle (telemetry, ratelimit, 3scale; cached)",
                   err=True)
        telemetry_module = bundle_module()
    # Wired before anything starts: the servers report to the operator, the operator to the source.
    state = ControlPlaneState()
    operator = Operator(mesh, state, resources=source, registry=registry,
                        trust_domain=tls.trust_domain if tls else None, telemetry_module=telemetry_module)
    control_plane = ControlPlane(state, operator, xds_address=xds_bind, http_address=http_bind, tls=tls)
    _exit_on_signal()
    with contextlib.ExitStack() as started:  # stops, in reverse order, what did start
        started.callback(state.close)
        try:
            control_plane.start()
        except OSError as error:
            raise UnavailableError(f"cannot bind: {error}", where="--xds-address/--http-address",
                                   fix="choose free ports") from None
        started.callback(control_plane.stop)
        started.callback(operator.start().stop)
        started.callback(source.start(operator).stop)
        if discover:
            from meshext.control.discovery import KubernetesMeshDiscovery

            started.callback(KubernetesMeshDiscovery(operator, control_plane_namespace=control_plane_namespace,
                                                     api_client=api_client).start().stop)
        security = f"mutual TLS, trust domain {tls.trust_domain}" if tls else "plain text, NO authentication"
        click.echo(f"meshext control plane: xDS {control_plane.xds_address[0]}:{control_plane.xds_port}, "
                   f"HTTP {control_plane.http_address[0]}:{control_plane.http_port}, "
                   + ("mesh discovered from Kubernetes" if discover else f"{len(mesh.workloads)} workloads")
                   + f", {security}", err=True)
        _run_until_signal()


def _serving_tls(insecure: bool, binds: list[tuple[str, str]], pki_dir: Path | None, ca_file: Path | None,
                 cert_file: Path | None, key_file: Path | None,
                 workloads: list[tuple[str, str]]) -> TLSMaterial | None:
    """The control plane's TLS material: given files, or --pki-dir completed with what is missing."""
    from meshext.control.pki import PKIDirectory, TLSFiles, default_pki_directory
    from meshext.control.proxy import require_loopback_for_plain_text

    if insecure:
        for host, where in binds:
            require_loopback_for_plain_text(host, where=where)
        return None
    given = [name for name, value in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file))
             if value is not None]
    if given and len(given) < 3:
        raise click.UsageError("give all of --ca-file, --cert-file and --key-file, or none (then --pki-dir is used)")
    if given:
        tls = TLSFiles(ca_file, cert_file, key_file).load()  # type: ignore[arg-type]
    else:
        directory = PKIDirectory(pki_dir or default_pki_directory())
        hosts = [host for host, _ in binds if host not in ("0.0.0.0", "::")]
        written = directory.ensure(hosts=hosts, workloads=workloads)
        if written:
            click.echo(f"certificates written to {directory.root}: "
                       f"{', '.join(str(p.relative_to(directory.root)) for p in written)}", err=True)
        tls = directory.control_plane().load()
    if tls.identity != tls.control_plane_identity:
        raise MeshextError(f"the certificate {tls.files.cert_file} is for {tls.identity}, not the control plane "
                           f"({tls.control_plane_identity}); sidecars would refuse it", where="--cert-file",
                           fix="use the control-plane.pem that `meshext control certs` writes")
    return tls


@control_group.command("certs")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write to (default: $MESHEXT_PKI_DIR or ~/.local/share/meshext/pki, "
                   "where serve/proxy/status look).")
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP",
              help="An address sidecars use to reach the control plane, added to its certificate "
                   "(repeatable; loopback names are always in).")
@click.option("--workload", "workloads", multiple=True, metavar="NAME",
              help="Issue a sidecar certificate (repeatable).")
@click.option("--namespace", default="default", show_default=True, help="Namespace of the --workload names.")
@click.option("--mesh", "mesh_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Also issue one for every workload of this mesh file.")
@click.option("--trust-domain", help="Trust domain of a new CA (default cluster.local); must match an existing one.")
@click.option("--days", default=90, show_default=True, help="Lifetime of sidecar and admin certificates.")
def certs_command(out_dir: Path | None, hosts: tuple[str, ...], workloads: tuple[str, ...], namespace: str,
                  mesh_file: Path | None, trust_domain: str | None, days: int) -> None:
    """Create the mesh CA and the certificates of the control plane, `meshext status` (admin)
    and sidecars.  Files that exist and are still good are kept; run it again to add workloads
    or re-issue expiring certificates.

    \b
    Layout (keys are written 0600):
      ca.pem, ca-key.pem                           the mesh CA (10 years)
      control-plane.pem, control-plane-key.pem     the control plane (1 year)
      admin.pem, admin-key.pem                     `meshext status` (--days)
      workloads/<namespace>/<name>.pem, ...-key.pem  `meshext proxy` (--days)
    Identities (URI SAN): spiffe://<trust-domain>/ns/<namespace>/workload/<name>,
    .../meshext/control-plane and .../meshext/admin.

    \b
    Example:
      meshext control certs -o ./pki --host meshext-control.meshext-system.svc \\
          --workload backend-v1 --namespace default
    """
    from meshext.control.mesh import load_mesh
    from meshext.control.pki import PKIDirectory, default_pki_directory

    if days < 1:
        raise click.BadParameter("must be at least 1", param_hint="--days")
    wanted = [(name, namespace) for name in workloads]
    if mesh_file is not None:
        wanted += [(w.name, w.namespace) for w in load_mesh(mesh_file).workloads]
    directory = PKIDirectory(out_dir or default_pki_directory())
    written = directory.ensure(hosts=hosts, workloads=wanted, trust_domain=trust_domain, client_days=days)
    for path in written:
        click.echo(str(path))
    if not written:
        click.echo(f"{directory.root}: every certificate asked for exists and is valid", err=True)


@control_group.command("prometheus-config")
@click.option("--mesh", "mesh_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The mesh file (default: the embedded one).")
@click.option("--scrape-interval", default="15s", show_default=True, help="Prometheus duration, e.g. 5s.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write here instead of standard output.")
def prometheus_config_command(mesh_file: Path | None, scrape_interval: str, output: Path | None) -> None:
    """Print a Prometheus configuration scraping every sidecar's /stats/prometheus.

    One target per workload with an `admin` address in the mesh file (its
    sidecar's Envoy admin; `meshext proxy --admin-address`), labelled
    namespace and workload.  Workloads without one are named on stderr.

    \b
    Example:
      meshext control prometheus-config --mesh mesh.yaml -o prometheus.yml
      prometheus --config.file prometheus.yml
    """
    import yaml

    from meshext.control.mesh import load_mesh
    from meshext.control.prometheus import scrape_config

    config, left_out = scrape_config(load_mesh(mesh_file), scrape_interval=scrape_interval)
    if left_out:
        click.echo(f"left out (no admin address in the mesh file): {', '.join(left_out)}", err=True)
    text = yaml.safe_dump(config, sort_keys=False)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


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
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Envoy's bootstrap and admin address file, kept (default: a temporary directory, removed at exit).")
@click.option("--envoy-log", type=click.Path(dir_okay=False, path_type=Path),
              help="File Envoy's own log is appended to (default: envoy.log in the work directory).")
@click.option("--admin-address", metavar="HOST:PORT",
              help="Envoy's admin listener, the workload's `admin` in the mesh file, where Prometheus scrapes "
                   "/stats/prometheus (default: a free loopback port).")
@click.option("--stats-label", "stats_labels", multiple=True, metavar="NAME",
              help="A label name of your own extensions' meshext.sdk metrics (repeatable): Envoy's stats tags "
                   "make it a Prometheus label (those of meshext's extensions are there already).")
@_tls_options("The workload")
def proxy_command(workload: str, namespace: str, control_address: str, control_http: str, module_dir: Path | None,
                  protocol: str, concurrency: int, log_level: str, work_dir: Path | None, envoy_log: Path | None,
                  admin_address: str | None, stats_labels: tuple[str, ...], pki_dir: Path | None,
                  ca_file: Path | None, cert_file: Path | None, key_file: Path | None, insecure: bool) -> None:
    """Run the sidecar of WORKLOAD: Envoy configured by the control plane over ADS.

    Beside Envoy runs a module syncer that fetches its Wasm modules (sha256 verified).

    Both reach the control plane over mutual TLS with the workload's certificate
    (default: <pki-dir>/workloads/NAMESPACE/WORKLOAD.pem, which `meshext control
    serve` or `meshext control certs` create).

    \b
    Example:
      meshext proxy --workload backend-v1 --namespace default --control 127.0.0.1:15010
    """
    from meshext.control.pki import workload_of
    from meshext.control.proxy import Sidecar, parse_address, require_loopback_for_plain_text

    xds = parse_address(control_address, where="--control")
    http = parse_address(control_http, where="--control-http")
    if insecure:
        require_loopback_for_plain_text(http[0], where="--control-http")
    tls = _client_tls(insecure, xds[0], "--control", pki_dir, ca_file, cert_file, key_file,
                      lambda directory: directory.workload(workload, namespace))
    if tls is not None and workload_of(tls.identity, tls.trust_domain) != (workload, namespace):
        raise MeshextError(f"the certificate {tls.files.cert_file} is for {tls.identity}, not workload "
                           f"{workload} in namespace {namespace}; the control plane would refuse it",
                           where="--cert-file", fix=f"issue one with `meshext control certs --workload {workload} "
                                                    f"--namespace {namespace}`")
    admin = parse_address(admin_address, where="--admin-address") if admin_address else None
    sidecar = Sidecar(workload, namespace, xds, http, protocol=protocol,  # type: ignore[arg-type]
                      module_dir=module_dir, concurrency=concurrency, log_level=log_level, tls=tls, admin=admin,
                      stats_labels=stats_labels, work_dir=work_dir, envoy_log=envoy_log)
    _exit_on_signal()
    try:
        sidecar.start()
        envoy = sidecar.envoy
        click.echo(f"sidecar for {workload}.{namespace} running (Envoy admin {envoy.admin_url}, "
                   f"log {envoy.log_path})", err=True)
        _run_until_signal()
    finally:
        sidecar.cleanup()


def fetch_status(address: tuple[str, int], tls: TLSMaterial | None) -> dict[str, Any]:
    """The control plane's status document (GET /status, with the admin certificate ``tls``)."""
    from meshext.control.proxy import client_ssl_context, http_base

    where = f"{address[0]}:{address[1]}"
    try:
        with urllib.request.urlopen(f"{http_base(address, tls)}/status", timeout=10,
                                    context=client_ssl_context(tls) if tls else None) as response:
            report: dict[str, Any] = json.load(response)
            return report
    except urllib.error.HTTPError as error:
        raise MeshextError(f"the control plane at {where} refused: HTTP {error.code} "
                           f"{error.read().decode(errors='replace').strip()}", where="--cert-file",
                           fix="use the admin certificate (admin.pem) of this mesh") from None
    except (urllib.error.URLError, OSError) as error:
        raise UnavailableError(f"no control plane answered at {where}: {error}", where="--control-http",
                               fix="start one with `meshext control serve`, or pass its --http-address") from None


@click.command("status")
@click.option("--control-http", default=DEFAULT_HTTP, show_default=True,
              help="The control plane's HTTP address (`meshext control serve --http-address`).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status document.")
@_tls_options("The admin")
def status_command(control_http: str, as_json: bool, pki_dir: Path | None, ca_file: Path | None,
                   cert_file: Path | None, key_file: Path | None, insecure: bool) -> None:
    """List extensions, their state and the workloads running them, then JWT policies and proxies.

    Reading the status takes the admin certificate (default: <pki-dir>/admin.pem)."""
    from rich.console import Console
    from rich.table import Table

    from meshext.control.proxy import parse_address

    address = parse_address(control_http, where="--control-http")
    tls = _client_tls(insecure, address[0], "--control-http", pki_dir, ca_file, cert_file, key_file,
                      lambda directory: directory.admin())
    report = fetch_status(address, tls)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    console = Console()
    table = Table(title="extensions")
    for column in ("extension", "state", "phase", "priority", "image", "running on", "reason"):
        table.add_column(column, overflow="fold")
    for key, extension in sorted(report["extensions"].items()):
        status = extension["status"]
        table.add_row(key, status.get("phase", "?"), str(status.get("effectivePhase", "")),
                      str(status.get("effectivePriority", "")), str(extension.get("image", "")),
                      ", ".join(status.get("workloads", [])) or "-", _ready_reason(status))
    console.print(table)
    if report.get("policies"):
        policies = Table(title="request authentication")
        for column in ("policy", "state", "enforced on", "reason"):
            policies.add_column(column, overflow="fold")
        for key, policy in sorted(report["policies"].items()):
            status = policy["status"]
            policies.add_row(key, status.get("phase", "?"), ", ".join(status.get("workloads", [])) or "-",
                             _ready_reason(status))
        console.print(policies)
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


def _ready_reason(status: dict[str, Any]) -> str:
    """A resource status's Ready condition as "reason: message" ("" when it has none)."""
    ready: dict[str, Any] = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return f"{ready.get('reason', '')}: {ready.get('message', '')}".strip(": ")


@click.command("graph")
@click.option("--prometheus", "prometheus_url", metavar="URL",
              help="Ask this Prometheus (Kiali's queries); without it the sidecars are scraped directly.")
@click.option("--mesh", "mesh_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Mesh file naming the sidecars' admin addresses (without --prometheus; default: the embedded one).")
@click.option("--window", default="1m", show_default=True, help="Rate window of the Prometheus queries.")
@click.option("--namespace", help="Only traffic into this namespace (default: all).")
@click.option("--interval", default=2.0, show_default=True,
              help="Seconds between the two scrapes rates come from (without --prometheus).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the graph as a self-contained HTML page.")
@click.option("--svg", "svg_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the graph as an SVG image.")
@click.option("--watch", type=float, metavar="SECONDS", help="Redraw (and rewrite the files) every SECONDS.")
def graph_command(prometheus_url: str | None, mesh_file: Path | None, window: str, namespace: str | None,
                  interval: float, html_file: Path | None, svg_file: Path | None, watch: float | None) -> None:
    """Draw the live service graph from Istio's metrics: rates, errors, p95 and mTLS per edge.

    \b
    Examples:
      meshext graph --prometheus http://127.0.0.1:9090 --html graph.html
      meshext graph --mesh mesh.yaml --watch 5
    """
    import time

    from rich.console import Console
    from rich.live import Live

    from meshext.control.graph import Graph, Scrape, graph_from_prometheus, graph_from_scrapes, scrape_sidecars
    from meshext.control.graph_render import page, svg, table
    from meshext.control.mesh import load_mesh

    mesh = None if prometheus_url else load_mesh(mesh_file)
    previous: tuple[Scrape, float] | None = None

    def current() -> Graph:
        nonlocal previous
        if prometheus_url:
            return graph_from_prometheus(prometheus_url, window, namespace)
        assert mesh is not None
        if previous is None:
            previous = (scrape_sidecars(mesh), time.monotonic())
            time.sleep(interval)
        second = (scrape_sidecars(mesh), time.monotonic())
        graph = graph_from_scrapes(previous[0], second[0], second[1] - previous[1],
                                   origin=f"{len(mesh.workloads)} sidecars' /stats/prometheus")
        previous = second
        return graph

    def draw(graph: Graph) -> None:
        if html_file is not None:
            html_file.write_text(page(graph, refresh_seconds=watch))
        if svg_file is not None:
            svg_file.write_text(svg(graph))

    console = Console()
    if watch is None:
        graph = current()
        draw(graph)
        console.print(table(graph))
        return
    _exit_on_signal()
    with Live(table(graph := current()), console=console, auto_refresh=False) as live:
        while True:
            draw(graph)
            live.update(table(graph), refresh=True)
            time.sleep(max(0.0, watch - (0 if prometheus_url else interval)))
            graph = current()
