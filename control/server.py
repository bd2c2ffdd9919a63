"""The control-plane process: ADS gRPC server + a small HTTP server.

The HTTP server (loopback only) has two jobs:

* module delivery to the sidecars' module syncers (see modules.py):
  ``GET /modules/sha256/<hex>`` serves verified module bytes, and
  ``GET /modules/wanted?node=ID&dir=DIR&present=SHA,...&version=N`` reports
  what a syncer holds and long-polls for what its proxy needs;
* ``GET /status`` returns extensions and proxies as JSON, for `meshext status`.

With ``tls`` (what `meshext control serve` does unless ``--insecure``) both
servers use mutual TLS with the mesh CA (pki.py), and the client
certificate's SPIFFE ID decides what a client may have:

* an ADS stream, or a syncer's ``/modules/wanted`` poll, only for the node id
  of its own workload (else gRPC PERMISSION_DENIED / HTTP 403 naming both);
* a module download only for a module that workload's extensions use, so a
  sidecar cannot read another team's filter;
* ``/status`` only with the admin identity.

The servers read and write the :class:`~meshext.control.state.ControlPlaneState`
they are given, and report to :class:`ControlPlaneCallbacks` (the operator):
both are constructor arguments, so nothing is wired after the servers start.

The HTTP server asks for a client certificate without requiring one at the
handshake, so that Kubernetes probes can reach ``/healthz`` (the only path
served without one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import grpc

from meshext.control.mesh import node_id as node_id_of
from meshext.control.pki import ADMIN_PATH, TLSMaterial, spiffe_id, workload_of
from meshext.control.state import ControlPlaneState
from meshext.control.xds import XdsCallbacks, start_xds_server

log = logging.getLogger(__name__)
_MODULE_PATH = re.compile(r"^/modules/sha256/([0-9a-f]{64})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _HTTPServer(ThreadingHTTPServer):
    # Every sidecar's module syncer holds one long poll open: a deep accept
    # backlog keeps a restart's reconnect burst from waiting on SYN retries.
    request_queue_size = 1024
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None
    HANDSHAKE_SECONDS = 10

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake happens here, on the request's own thread, so a slow
        or silent client never holds up the accept loop."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.HANDSHAKE_SECONDS)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.warning("HTTP: TLS handshake with %s:%s failed: %s", *client_address[:2], error)
            return
        tls.settimeout(None)
        try:
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)


class ControlPlaneCallbacks(XdsCallbacks, Protocol):
    """What the control plane's servers tell the operator and ask of it
    (go-control-plane's server ``Callbacks``).  Calls come from the xDS loop and
    the HTTP threads: hand work over and return at once."""

    def on_modules_reported(self, node_id: str) -> None:
        """``node_id``'s module syncer reported a different set of modules present."""

    def status_report(self) -> dict[str, Any]:
        """The document ``GET /status`` answers (extensions, proxies, mesh)."""


class ClientIdentities:
    """What a client certificate's SPIFFE ID allows (see the module docstring)."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.admin = spiffe_id(trust_domain, ADMIN_PATH)

    def node_refusal(self, node_id: str, identity: str) -> str | None:
        """Why ``identity`` may not have ``node_id``'s configuration, or None."""
        workload = workload_of(identity, self.trust_domain)
        if workload is not None and node_id_of(*workload) == node_id:
            return None
        owner = f"the certificate is for node id {node_id_of(*workload)!r}" if workload else \
            "the certificate names no sidecar of this mesh's trust domain"
        return (f"node id {node_id!r} does not match the client certificate's identity "
                f"{identity or '(no SPIFFE ID)'!r}: {owner}, and a sidecar may only fetch its own workload's "
                f"configuration (issue it a certificate with `meshext control certs --workload NAME "
                f"--namespace NS`)")

    def grpc_refusal(self, node_id: str, context: grpc.aio.ServicerContext) -> str | None:
        """:meth:`node_refusal` for an ADS stream, from the identity gRPC verified."""
        # gRPC has already checked the chain against the mesh CA and the SPIFFE ID's syntax.
        identity = b"".join(context.auth_context().get("peer_spiffe_id", [])).decode()
        return self.node_refusal(node_id, identity)


def _server_ssl_context(tls: TLSMaterial) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.files.cert_file, tls.files.key_file)
    context.load_verify_locations(cadata=tls.ca_pem.decode())
    context.verify_mode = ssl.CERT_OPTIONAL  # required per path (only /healthz goes without)
    return context


class ControlPlane:
    """Runs the xDS server on its own asyncio loop thread and the HTTP server.

    ``state`` is what they serve; ``callbacks`` (the operator) hears of streams,
    replies and syncer reports and answers ``/status``; without callbacks the
    servers only serve ``state`` (protocol tests)."""

    def __init__(self, state: ControlPlaneState, callbacks: ControlPlaneCallbacks | None = None, *,
                 xds_address: tuple[str, int] = ("127.0.0.1", 0), http_address: tuple[str, int] = ("127.0.0.1", 0),
                 tls: TLSMaterial | None = None) -> None:
        self.state = state
        self.callbacks = callbacks
        self._xds_bind = xds_address
        self._http_bind = http_address
        self.tls = tls
        self.identities = ClientIdentities(tls.trust_domain) if tls else None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="xds-loop", daemon=True)
        self._grpc_server: Any = None
        self._http_server: ThreadingHTTPServer | None = None
        self.xds_port = 0
        self.http_port = 0

    @property
    def xds_address(self) -> tuple[str, int]:
        """(host, port) the ADS server listens on (the port is known once started)."""
        return (self._xds_bind[0], self.xds_port)

    @property
    def http_address(self) -> tuple[str, int]:
        """(host, port) the HTTP server listens on (the port is known once started)."""
        return (self._http_bind[0], self.http_port)

    def start(self) -> ControlPlane:
        """Bind and start both servers; raises OSError if an address is taken."""
        self._loop_thread.start()
        host, port = self._xds_bind
        credentials, authorize = None, None
        if self.tls and self.identities:
            credentials = grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)],
                                                      root_certificates=self.tls.ca_pem, require_client_auth=True)
            authorize = self.identities.grpc_refusal
        self._grpc_server, self.xds_port = asyncio.run_coroutine_threadsafe(
            start_xds_server(self.state.cache, f"{host}:{port}", callbacks=self.callbacks, credentials=credentials,
                             authorize=authorize),
            self._loop).result(timeout=30)
        self._http_server = _HTTPServer(self._http_bind, self._handler_class())
        if self.tls:
            self._http_server.ssl_context = _server_ssl_context(self.tls)
        self.http_port = self._http_server.server_address[1]
        threading.Thread(target=self._http_server.serve_forever, name="control-http", daemon=True).start()
        log.info("xDS on %s:%d, HTTP%s on %s:%d (%s)", host, self.xds_port, "S" if self.tls else "",
                 self._http_bind[0], self.http_port,
                 f"mutual TLS, trust domain {self.tls.trust_domain}" if self.tls else "plain text, no authentication")
        return self

    def stop(self) -> None:
        """Stop both servers (the state stays: its owner closes it)."""
        if self._http_server:
            self._http_server.shutdown()
            self._http_server.server_close()
        if self._grpc_server is not None:
            asyncio.run_coroutine_threadsafe(self._grpc_server.stop(grace=None), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        state, callbacks, identities = self.state, self.callbacks, self.identities

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                    return
                identity = self._client_identity()
                match = _MODULE_PATH.match(self.path)
                if match:
                    if not self._may_download(identity, match.group(1)):
                        return
                    data = state.modules.read(match.group(1))
                    if data is None:
                        self._reply(404, b"unknown module\n", "text/plain")
                    else:
                        self._reply(200, data, "application/wasm")
                elif self.path.startswith("/modules/wanted?"):
                    self._wanted(identity)
                elif self.path == "/status":
                    if identities is not None and identity != identities.admin:
                        self._refuse(f"/status needs the admin certificate ({identities.admin}), "
                                     f"not {identity or 'none'}: use `meshext status` with the admin.pem that "
                                     f"`meshext control certs` writes")
                        return
                    report = callbacks.status_report() if callbacks is not None else {}
                    body = json.dumps(report, indent=2, sort_keys=True).encode()
                    self._reply(200, body, "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _client_identity(self) -> str:
                """The SPIFFE ID of the verified client certificate ("" without one or without TLS)."""
                if not isinstance(self.connection, ssl.SSLSocket):
                    return ""
                peer = self.connection.getpeercert() or {}
                # ssl documents subjectAltName as ((kind, value), ...); typeshed's type is looser.
                names = cast("tuple[tuple[str, str], ...]", peer.get("subjectAltName", ()))
                return next((value for kind, value in names if kind == "URI" and value.startswith("spiffe://")), "")

            def _refuse(self, reason: str) -> None:
                log.warning("HTTP %s from %s refused: %s", self.path.split("?")[0], self.client_address[0], reason)
                self._reply(403, reason.encode() + b"\n", "text/plain")

            def _node_allowed(self, identity: str, node_id: str) -> bool:
                refusal = identities.node_refusal(node_id, identity) if identities else None
                if refusal is not None:
                    self._refuse(refusal)
                return refusal is None

            def _may_download(self, identity: str, sha256: str) -> bool:
                if identities is None:
                    return True
                workload = workload_of(identity, identities.trust_domain)
                if workload is None:
                    self._refuse(f"module downloads need a sidecar's client certificate, not "
                                 f"{identity or 'none'}")
                    return False
                if not state.demand.wants(node_id_of(*workload), sha256):
                    self._refuse(f"module {sha256} is not used by any extension of node id "
                                 f"{node_id_of(*workload)!r} ({identity})")
                    return False
                return True

            def _wanted(self, identity: str) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                node_id = query.get("node", [""])[0]
                if not node_id:
                    self._reply(400, b"node= is required\n", "text/plain")
                    return
                if not self._node_allowed(identity, node_id):
                    return
                present = {sha for sha in query.get("present", [""])[0].split(",") if _SHA256.match(sha)}
                module_dir = query.get("dir", [""])[0]
                if not module_dir.startswith("/") or ".." in module_dir.split("/"):
                    self._reply(400, b"dir= must be an absolute path\n", "text/plain")
                    return
                if state.demand.report(node_id, module_dir, present) and callbacks is not None:
                    callbacks.on_modules_reported(node_id)
                known = int(query.get("version", ["0"])[0] or 0)
                wait = min(float(query.get("wait", ["20"])[0]), 60.0)
                version, wanted = state.demand.wait_wanted(node_id, known, wait)
                body = json.dumps({"version": version, "modules": sorted(wanted)}).encode()
                self._reply(200, body, "application/json")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        return Handler
