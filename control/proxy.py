"""The sidecar: Envoy bootstrapped to the control plane, plus its module syncer.

The bootstrap only says who the proxy is (node id and metadata) and where
the control plane is; every listener, route, cluster and filter comes over
ADS.  The module syncer puts the Wasm modules the proxy needs into a local
directory, sha256 verified (modules.py says why modules travel that way).

With ``tls`` both talk to the control plane over mutual TLS: Envoy's xDS
cluster carries an UpstreamTlsContext (the mesh CA, the control plane's
SPIFFE ID to expect, the workload's certificate and key), and the syncer uses
the same certificate over HTTPS.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Literal

from meshext.control.mesh import Workload, node_id
from meshext.control.pki import TLSMaterial
from meshext.control.telemetry import node_metadata
from meshext.control.workload_tls import bootstrap_secrets
from meshext.envoy import EnvoyProcess
from meshext.errors import MeshextError
from meshext.extensions.telemetry.stats_config import stats_config

log = logging.getLogger(__name__)

# tcmalloc's settings for every sidecar (the bootstrap's memory_allocator_manager).
# V8 compiles a Wasm module with scratch memory that tcmalloc keeps once freed:
# the background release (the first two settings) does not break up the huge
# pages that scratch memory shared with live objects, and waits one to five
# minutes (tcmalloc's skip-subrelease intervals) before it hands them back.
# Above the soft limit tcmalloc releases free pages at once, huge pages broken
# up; it never refuses an allocation.  32 MiB is under a sidecar's heap while
# it compiles a Python extension, so what the compiler freed goes back at
# once.  It was 64 MiB until the snapshot was packed (issue 16): the header
# filter's heap then stayed under 64 MiB and kept its free pages, 124.1 MB
# against 110.4 MB at 32 MiB (16 MiB gives the same); the four extensions in
# one module 132.2 against 127.1 MB, whose start 32 MiB slows by about 0.1 s
# (pages released while V8 still compiles, then touched again)
# (benchmarks/sidecar_memory.py --soft-limits, README "The deferred snapshot
# packed").
MEMORY_ALLOCATOR_MANAGER = {
    "bytes_to_release": str(64 << 20),
    "memory_release_interval": "0.5s",
    "soft_memory_limit_bytes": str(32 << 20),
}

# How long Envoy drains connections of a replaced filter chain (Envoy's default is 600 s).
SIDECAR_DRAIN_SECONDS = 5
# Envoy is LIVE only once its first listeners are in, and V8 compiles their Wasm modules
# (the telemetry extension's in every sidecar) first: ~5 CPU-s each, minutes on a loaded machine.
SIDECAR_START_TIMEOUT_SECONDS = 300.0

XDS_CLUSTER = "meshext-xds"


def parse_address(text: str, *, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets or not) as (host, port); ``where`` names the option in errors."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise MeshextError(f"{text!r} is not HOST:PORT", where=where, fix="e.g. 127.0.0.1:15010")
    return host.strip("[]"), int(port)


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def require_loopback_for_plain_text(host: str, *, where: str) -> None:
    """Plain text carries configuration (and module bytes) unauthenticated: loopback only."""
    if host == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback):
        return
    raise MeshextError(f"{host} is not a loopback address, and --insecure turns TLS off", where=where,
                       fix="drop --insecure (mutual TLS is the default), or use 127.0.0.1 / ::1")


def bootstrap(
    workload: str,
    namespace: str,
    control: tuple[str, int],
    *,
    labels: dict[str, str] | None = None,
    protocol: Literal["sotw", "delta"] = "delta",
    tls: TLSMaterial | None = None,
    admin: tuple[str, int] | None = None,
    stats_labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Envoy bootstrap whose ADS stream points at the control plane (over mutual TLS with ``tls``);
    the admin listener on ``admin`` (default: a free loopback port).

    The node metadata carries the workload's identity as Istio's telemetry reads it, and
    ``stats_config`` turns the labels of meshext's extensions' metrics and of ``stats_labels``
    (label names of other extensions' meshext.sdk metrics) into Prometheus labels."""
    config: dict[str, Any] = {
        "memory_allocator_manager": MEMORY_ALLOCATOR_MANAGER,
        "node": {
            "id": node_id(workload, namespace),
            "cluster": f"{workload}.{namespace}",
            "metadata": {**node_metadata(workload, namespace, labels),
                         # Extensions reach this proxy through its module syncer.
                         "MESHEXT_MODULE_SYNC": True},
        },
        "stats_config": stats_config(stats_labels),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if protocol == "delta" else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    # Reconnect to a restarted control plane within a second.
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
                }}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        # Keepalive pings notice a dead control plane quickly.
                        "connection_keepalive": {"interval": "5s", "timeout": "5s"}}},
                },
            },
            "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": control[0], "port_value": control[1]}}}}]}]},
        }]},
    }
    if tls is not None:
        config["static_resources"]["clusters"][0]["transport_socket"] = _xds_tls_socket(control[0], tls)
        config["static_resources"]["secrets"] = bootstrap_secrets(tls)  # for mTLS with peers
    if admin is not None:
        config["admin"] = {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}}
    return config


def _xds_tls_socket(host: str, tls: TLSMaterial) -> dict[str, Any]:
    """Envoy verifies the control plane by CA and SPIFFE ID (whatever address it was given),
    and presents the workload's certificate."""
    context: dict[str, Any] = {
        "common_tls_context": {
            "alpn_protocols": ["h2"],  # gRPC servers expect ALPN h2 on TLS
            "tls_certificates": [{"certificate_chain": {"filename": str(Path(tls.files.cert_file).resolve())},
                                  "private_key": {"filename": str(Path(tls.files.key_file).resolve())}}],
            "validation_context": {
                "trusted_ca": {"filename": str(Path(tls.files.ca_file).resolve())},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": tls.control_plane_identity}}],
            },
        },
    }
    if not is_ip(host):
        context["sni"] = host  # SNI carries host names only (RFC 6066)
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **context}}


def client_ssl_context(tls: TLSMaterial) -> ssl.SSLContext:
    """HTTPS to the control plane: verify it against the mesh CA (host name included), present our certificate."""
    context = ssl.create_default_context(cadata=tls.ca_pem.decode())
    context.load_cert_chain(tls.files.cert_file, tls.files.key_file)
    return context


def http_base(address: tuple[str, int], tls: TLSMaterial | None) -> str:
    """The base URL of the control plane's HTTP server: https with ``tls``, else http."""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{'https' if tls else 'http'}://{host}:{address[1]}"


def sidecar_for(workload: Workload, control: tuple[str, int], control_http: tuple[str, int],
                protocol: Literal["sotw", "delta"] = "delta", tls: TLSMaterial | None = None,
                **envoy_options: Any) -> Sidecar:
    """The sidecar of ``workload`` of a mesh model (its labels become node metadata)."""
    admin = (workload.admin.address, workload.admin.port) if workload.admin is not None else None
    return Sidecar(workload.name, workload.namespace, control, control_http, labels=dict(workload.labels),
                   protocol=protocol, tls=tls, admin=admin, **envoy_options)


class ModuleSyncer:
    """Keeps ``directory`` holding the modules the control plane says this proxy needs.

    Long-polls ``/modules/wanted`` (each poll also reports what is present),
    downloads what is missing, verifies its sha256 and renames it into place,
    so Envoy never sees a partial or unverified file.  Survives control-plane
    restarts by polling again.
    """

    POLL_SECONDS = 20  # how long one long poll may wait for a change

    def __init__(self, node_id: str, control_http: tuple[str, int], directory: Path,
                 tls: TLSMaterial | None = None) -> None:
        self.node_id = node_id
        self.base = http_base(control_http, tls)
        self._ssl_context = client_ssl_context(tls) if tls else None
        self.directory = directory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"module-sync-{node_id}", daemon=True)

    def start(self) -> ModuleSyncer:
        """Start syncing in a background thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop syncing."""
        # A long poll in flight is not interrupted: the (daemon) thread ends when it returns.
        self._stop.set()

    def present(self) -> set[str]:
        """The sha256 of each module in the directory."""
        return {path.stem for path in self.directory.glob("*.wasm")}

    def _run(self) -> None:
        version = 0
        while not self._stop.is_set():
            query = urllib.parse.urlencode({
                "node": self.node_id, "dir": str(self.directory), "version": version,
                "present": ",".join(sorted(self.present())), "wait": self.POLL_SECONDS})
            try:
                with urllib.request.urlopen(f"{self.base}/modules/wanted?{query}", timeout=self.POLL_SECONDS + 10,
                                            context=self._ssl_context) as response:
                    answer = json.load(response)
                version = answer["version"]
                missing = [sha for sha in answer["modules"] if sha not in self.present()]
                for sha256 in missing:
                    self._download(sha256)
                if missing:
                    version = 0  # report the new modules at once
            except urllib.error.HTTPError as error:
                # A refusal (403: wrong certificate for this node) does not fix itself quickly.
                log.error("module sync for %s: HTTP %d %s; retrying", self.node_id, error.code,
                          error.read().decode(errors="replace").strip())
                self._stop.wait(5)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
                log.debug("module sync for %s: %s; retrying", self.node_id, error)
                self._stop.wait(0.2)

    def _download(self, sha256: str) -> None:
        with urllib.request.urlopen(f"{self.base}/modules/sha256/{sha256}", timeout=60,
                                    context=self._ssl_context) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            log.error("module %s: downloaded bytes do not match; not installed", sha256)
            return
        partial = self.directory / f".{sha256}.partial"
        partial.write_bytes(data)
        partial.replace(self.directory / f"{sha256}.wasm")


class Sidecar:
    """Envoy for one workload plus its module syncer (what `meshext proxy` runs)."""

    def __init__(self, workload: str, namespace: str, control: tuple[str, int], control_http: tuple[str, int], *,
                 labels: dict[str, str] | None = None, protocol: Literal["sotw", "delta"] = "delta",
                 module_dir: Path | None = None, tls: TLSMaterial | None = None,
                 admin: tuple[str, int] | None = None, stats_labels: tuple[str, ...] = (),
                 work_dir: Path | None = None, envoy_log: Path | None = None, **envoy_options: Any) -> None:
        self._own_dir = module_dir is None
        self.module_dir = module_dir or Path(tempfile.mkdtemp(prefix="meshext-sidecar-modules-"))
        self.syncer = ModuleSyncer(node_id(workload, namespace), control_http, self.module_dir, tls)
        # Immediate drain: connections on a replaced filter chain close after their
        # next request instead of lingering, so filter changes show quickly.
        extra_args = [*envoy_options.pop("extra_args", []), "--drain-time-s", str(SIDECAR_DRAIN_SECONDS),
                      "--drain-strategy", "immediate"]
        self.envoy = EnvoyProcess(bootstrap(workload, namespace, control, labels=labels, protocol=protocol, tls=tls,
                                            admin=admin, stats_labels=stats_labels),
                                  extra_args=extra_args, workdir=work_dir, log_path=envoy_log, **envoy_options)

    def start(self, timeout: float = SIDECAR_START_TIMEOUT_SECONDS) -> Sidecar:
        """Start the module syncer, then Envoy (ready within ``timeout`` seconds: its first
        Wasm filters are compiled before it reports ready)."""
        self.syncer.start()
        self.envoy.start(timeout)
        return self

    def stop(self) -> None:
        """Stop Envoy and the module syncer."""
        self.envoy.stop()
        self.syncer.stop()

    def cleanup(self) -> None:
        """Stop, and delete Envoy's work directory and a module directory if the sidecar made them itself."""
        self.stop()
        self.envoy.cleanup()
        if self._own_dir and not os.environ.get("MESHEXT_KEEP_ENVOY_LOGS"):
            shutil.rmtree(self.module_dir, ignore_errors=True)
