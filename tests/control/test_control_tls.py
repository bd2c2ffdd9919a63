"""Mutual TLS between sidecars and the control plane: who may fetch what.

The mesh under test (control_harness.MeshUnderTest) runs over mutual TLS with certificates
from its own mesh CA; the probes here are raw gRPC / HTTPS clients with the
right, a wrong, or no certificate, and real Envoy sidecars.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import logging
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from control_harness import call, free_port, sme, wait_until, write_resources
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshext.control.pki import CertificateAuthority, PKIDirectory, TLSFiles, TLSMaterial, workload_path
from meshext.control.proxy import Sidecar, client_ssl_context
from meshext.control.snapshot import CLUSTER
from meshext.errors import MeshextError, UnavailableError

pytestmark = [pytest.mark.envoy]

BACKEND, FRONTEND = "backend-v1.default", "frontend-v1.default"
BACKEND_ID = "spiffe://cluster.local/ns/default/workload/backend-v1"
FRONTEND_ID = "spiffe://cluster.local/ns/default/workload/frontend-v1"


def _channel(address: tuple[str, int], tls: TLSMaterial | None, *, with_certificate: bool = True) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(f"{address[0]}:{address[1]}")
    credentials = grpc.ssl_channel_credentials(
        tls.ca_pem, tls.key_pem if with_certificate else None, tls.cert_pem if with_certificate else None)
    return grpc.secure_channel(f"{address[0]}:{address[1]}", credentials)


def _ads_refusal(channel: grpc.Channel, node_id: str) -> grpc.RpcError:
    """Open an ADS stream claiming ``node_id``; the error it ends with (it must end with one)."""
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER)
    responses = stub.StreamAggregatedResources(iter([request]), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        next(responses)
    return refused.value


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _no_certificate_context(tls: TLSMaterial) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=tls.ca_pem.decode())


def _other_ca(root: Path) -> PKIDirectory:
    """Another mesh CA with the same trust domain and a certificate for the same workload name."""
    other = PKIDirectory(root)
    other.ensure(workloads=[("backend-v1", "default")])
    return other


def test_sidecars_get_their_configuration_over_mutual_tls(mesh_under_test):
    for sidecar in mesh_under_test.sidecars.values():
        stats = sidecar.envoy.admin_get("/stats?filter=^(cluster\\.meshext-xds\\.ssl\\.handshake"
                                        "|control_plane\\.connected_state)$")
        values = dict(line.split(": ") for line in stats.strip().splitlines())
        assert int(values["cluster.meshext-xds.ssl.handshake"]) >= 1, stats
        assert values["control_plane.connected_state"] == "1", stats
    proxies = mesh_under_test.running.state.cache.proxies()
    assert proxies[BACKEND].streams == 1 and proxies[FRONTEND].streams == 1
    assert call(mesh_under_test.mesh, "frontend-v1", "backend").body["app"] == "backend-v1"
    assert call(mesh_under_test.mesh, "backend-v1", "frontend").body["app"] == "frontend-v1"


def test_ads_without_a_client_certificate_is_refused(mesh_under_test):
    plane = mesh_under_test.control_plane
    tls = mesh_under_test.pki.workload("backend-v1", "default").load()
    for channel in (_channel(plane.xds_address, tls, with_certificate=False), _channel(plane.xds_address, None)):
        with channel:
            # The TLS handshake fails (no certificate / no TLS): no stream is ever opened.
            assert _ads_refusal(channel, BACKEND).code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_for_another_workload_is_refused_with_permission_denied(mesh_under_test, caplog):
    plane = mesh_under_test.control_plane
    frontend = mesh_under_test.pki.workload("frontend-v1", "default").load()
    caplog.set_level(logging.WARNING, logger="meshext.control.xds")
    with _channel(plane.xds_address, frontend) as channel:
        refused = _ads_refusal(channel, BACKEND)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"node id '{BACKEND}'" in refused.details() and FRONTEND_ID in refused.details(), refused.details()
    assert any(BACKEND in record.getMessage() and FRONTEND_ID in record.getMessage() for record in caplog.records)
    # The admin certificate is no sidecar either.
    with _channel(plane.xds_address, mesh_under_test.pki.admin().load()) as channel:
        assert _ads_refusal(channel, BACKEND).code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_real_envoy_claiming_another_workload_gets_no_configuration(mesh_under_test, tmp_path):
    """An Envoy with frontend's certificate but backend's node id: TLS works, ADS is refused
    (gRPC status 7, PERMISSION_DENIED), so it never becomes ready, and its log says why."""
    plane = mesh_under_test.control_plane
    frontend = mesh_under_test.pki.workload("frontend-v1", "default").load()
    impostor = Sidecar("backend-v1", "default", plane.xds_address, plane.http_address, tls=frontend,
                       module_dir=tmp_path / "modules")
    try:
        with pytest.raises(UnavailableError) as not_ready:
            impostor.envoy.start(timeout=4)
    finally:
        impostor.cleanup()
    log = str(not_ready.value)
    assert "gRPC config stream to meshext-xds closed: 7, node id 'backend-v1.default' does not match" in log, log
    assert FRONTEND_ID in log
    # The real backend sidecar is still served.
    assert call(mesh_under_test.mesh, "frontend-v1", "backend").status == 200


def test_a_certificate_from_another_ca_is_refused(mesh_under_test, tmp_path, caplog):
    plane = mesh_under_test.control_plane
    foreign = _other_ca(tmp_path / "other-ca").workload("backend-v1", "default")
    # The client trusts our CA (to get past its own check) but presents the other CA's certificate.
    ours = mesh_under_test.pki.workload("backend-v1", "default").load()
    foreign_files = TLSFiles(foreign.ca_file, foreign.cert_file, foreign.key_file).load()
    credentials = grpc.ssl_channel_credentials(ours.ca_pem, foreign_files.key_pem, foreign_files.cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{plane.xds_port}", credentials) as channel:
        assert _ads_refusal(channel, BACKEND).code() == grpc.StatusCode.UNAVAILABLE
    context = _no_certificate_context(ours)
    context.load_cert_chain(foreign.cert_file, foreign.key_file)
    # The server ends the handshake; with TLS 1.3 the client notices at its first read, as the
    # "unknown CA" alert or, if the server closed first, as an EOF.  The server says why.
    with caplog.at_level("WARNING", logger="meshext.control.server"):
        with pytest.raises(OSError, match="(?i)unknown.ca|EOF occurred|reset by peer"):
            _get(f"https://127.0.0.1:{plane.http_port}/modules/wanted?node={BACKEND}&dir=/x&wait=0", context)
        deadline = time.monotonic() + 5  # the server thread logs after closing the connection
        while "certificate verify failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "certificate verify failed" in caplog.text


def test_module_downloads_only_with_the_workloads_own_certificate(mesh_under_test, clean_config, modules, tmp_path):
    plane = mesh_under_test.control_plane
    path, sha = modules["chain"]
    write_resources(clean_config / "backend-only.yaml",
                    sme("backend-only", f"file://{path}", config={"tag": "b"}, labels={"app": "backend"}))
    wait_until(lambda: plane.state.demand.wants(BACKEND, sha), what="the backend needs the module")
    base = f"https://127.0.0.1:{plane.http_port}"
    pki = mesh_under_test.pki
    backend = client_ssl_context(pki.workload("backend-v1", "default").load())
    frontend = client_ssl_context(pki.workload("frontend-v1", "default").load())
    no_certificate = _no_certificate_context(pki.admin().load())

    status, body = _get(f"{base}/modules/sha256/{sha}", no_certificate)
    assert (status, b"need a sidecar's client certificate" in body) == (403, True), body
    status, body = _get(f"{base}/modules/sha256/{sha}", frontend)
    assert status == 403 and FRONTEND.encode() in body and sha.encode() in body, body
    status, body = _get(f"{base}/modules/sha256/{sha}", backend)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha

    # A syncer may only ask for its own node's modules; /status is for the admin; /healthz for probes.
    status, body = _get(f"{base}/modules/wanted?node={BACKEND}&dir=/x&wait=0", frontend)
    assert status == 403 and BACKEND.encode() in body and FRONTEND_ID.encode() in body, body
    assert _get(f"{base}/status", backend)[0] == 403
    assert _get(f"{base}/status", client_ssl_context(pki.admin().load()))[0] == 200
    assert _get(f"{base}/healthz", no_certificate) == (200, b"ok\n")
    # Plain HTTP to the TLS port gets nothing.
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _get(f"http://127.0.0.1:{plane.http_port}/healthz", None)


def test_bad_certificate_files_are_named_with_the_fix(tmp_path):
    pki = PKIDirectory(tmp_path / "pki")
    pki.ensure(workloads=[("backend-v1", "default")])
    good = pki.workload("backend-v1", "default")
    other = _other_ca(tmp_path / "other").workload("backend-v1", "default")
    ca = CertificateAuthority.load(pki.ca_file, pki.ca_key_file)
    expired_cert, expired_key = ca.issue(workload_path("backend-v1", "default"), days=1,
                                         not_before=datetime.datetime.now(datetime.UTC)
                                         - datetime.timedelta(days=3))
    (tmp_path / "expired.pem").write_bytes(expired_cert)
    (tmp_path / "expired-key.pem").write_bytes(expired_key)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")

    cases = [
        (TLSFiles(tmp_path / "missing.pem", good.cert_file, good.key_file), "--ca-file", "does not exist"),
        (TLSFiles(good.ca_file, tmp_path, good.key_file), "--cert-file", "cannot read"),
        (TLSFiles(good.ca_file, tmp_path / "garbage.pem", good.key_file), "--cert-file", "no PEM certificate"),
        (TLSFiles(good.ca_file, other.cert_file, other.key_file), "--cert-file", "is not signed by the CA"),
        (TLSFiles(good.ca_file, tmp_path / "expired.pem", tmp_path / "expired-key.pem"), "--cert-file", "expired"),
        (TLSFiles(good.ca_file, good.cert_file, pki.admin().key_file), "--key-file", "does not belong"),
        (TLSFiles(good.ca_file, good.cert_file, good.cert_file), "--key-file", "no unencrypted PEM private key"),
    ]
    for files, option, words in cases:
        with pytest.raises(MeshextError) as error:
            files.load()
        assert error.value.where == option and words in error.value.message and error.value.fix, str(error.value)
    assert good.key_file.stat().st_mode & 0o777 == 0o600 and pki.ca_key_file.stat().st_mode & 0o777 == 0o600


def _meshext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshext", *args], capture_output=True, text=True, timeout=60)


def test_cli_refuses_bad_certificates_and_plain_text_off_loopback(tmp_path):
    pki = tmp_path / "pki"
    assert _meshext("control", "certs", "-o", str(pki), "--workload", "backend-v1").returncode == 0
    ca = CertificateAuthority.load(pki / "ca.pem", pki / "ca-key.pem")
    cert, key = ca.issue(workload_path("backend-v1", "default"), days=1,
                         not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2))
    (tmp_path / "old.pem").write_bytes(cert)
    (tmp_path / "old-key.pem").write_bytes(key)
    control = f"127.0.0.1:{free_port()}"

    expired = _meshext("proxy", "--workload", "backend-v1", "--pki-dir", str(pki), "--control", control,
                       "--cert-file", str(tmp_path / "old.pem"), "--key-file", str(tmp_path / "old-key.pem"))
    assert expired.returncode == 1 and "--cert-file" in expired.stderr and "expired" in expired.stderr, expired.stderr
    wrong = _meshext("proxy", "--workload", "frontend-v1", "--pki-dir", str(pki), "--control", control,
                     "--cert-file", str(pki / "workloads/default/backend-v1.pem"),
                     "--key-file", str(pki / "workloads/default/backend-v1-key.pem"))
    assert wrong.returncode == 1 and "not workload frontend-v1" in wrong.stderr, wrong.stderr
    plain = _meshext("control", "serve", "--config-dir", str(tmp_path), "--insecure",
                     "--xds-address", "10.1.2.3:15010")
    assert plain.returncode == 1 and "--xds-address" in plain.stderr and "loopback" in plain.stderr, plain.stderr
    not_server = _meshext("control", "serve", "--config-dir", str(tmp_path), "--ca-file", str(pki / "ca.pem"),
                          "--cert-file", str(pki / "admin.pem"), "--key-file", str(pki / "admin-key.pem"),
                          "--xds-address", f"127.0.0.1:{free_port()}")
    assert not_server.returncode == 1 and "not the control plane" in not_server.stderr, not_server.stderr
