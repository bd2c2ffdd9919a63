"""Mutual TLS between sidecars with the mesh CA's SPIFFE workload certificates.

A mesh of real Envoy sidecars on loopback (frontend and backend over HTTP,
db over TCP), once with ``mtls.mode: PERMISSIVE`` and once with ``STRICT``:
peers see each other's SPIFFE IDs, plain-text clients are accepted or
refused by the mode, and a client refuses a server with the wrong identity.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from control_harness import SidecarMesh, call, sidecar_mesh
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import Message

from meshext.control.envoy_config import SnapshotBuilder
from meshext.control.mesh import Mesh, load_mesh
from meshext.control.snapshot import CLUSTER, LISTENER, Snapshot
from meshext.errors import MeshextError

pytestmark = [pytest.mark.envoy]

TD = "spiffe://cluster.local/ns/default/workload"
FRONTEND_ID, BACKEND_ID, DB_ID = f"{TD}/frontend-v1", f"{TD}/backend-v1", f"{TD}/db-v1"
XFCC = "x-forwarded-client-cert"


@pytest.fixture(scope="module", params=["PERMISSIVE", "STRICT"])
def mtls(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarMesh]:
    running = SidecarMesh(tmp_path_factory.mktemp(f"mtls-{request.param.lower()}"), request.param)
    yield running
    running.close()


def _plain_get(port: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Connection": "close", **headers})
        response = connection.getresponse()
        return response.status, yaml.safe_load(response.read())
    finally:
        connection.close()


def _line_exchange(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    with sock.makefile("rb") as reader:
        return reader.readline()


def test_sidecars_call_each_other_over_mutual_tls_and_the_app_sees_the_callers_spiffe_id(mtls):
    before = mtls.inbound_handshakes("backend-v1")
    response = call(mtls.mesh, "frontend-v1", "backend")
    assert response.status == 200 and response.body["app"] == "backend-v1"
    # The server sidecar tells the app who called, from the client's certificate.
    (forwarded,) = response.header_values(XFCC)
    assert forwarded.startswith(f"By={BACKEND_ID};") and forwarded.endswith(f";URI={FRONTEND_ID}"), forwarded
    assert mtls.inbound_handshakes("backend-v1") > before
    assert mtls.stat("frontend-v1", "cluster.outbound|8080||backend.default.svc.cluster.local.ssl.handshake") >= 1
    # And the other way round.
    (forwarded,) = call(mtls.mesh, "backend-v1", "frontend").header_values(XFCC)
    assert forwarded.endswith(f";URI={BACKEND_ID}"), forwarded


def test_a_plain_http_client_is_accepted_only_under_permissive(mtls):
    """A client without a sidecar, straight to backend's endpoint, forging the caller header."""
    port = mtls.workload("backend-v1").inbound.port
    forged = {XFCC: f"By={BACKEND_ID};URI={FRONTEND_ID}"}
    if mtls.mesh.mtls.mode == "PERMISSIVE":
        status, body = _plain_get(port, forged)
        assert status == 200 and body["app"] == "backend-v1"
        assert XFCC not in body["headers"], body  # no certificate, so no caller identity: the forgery is removed
    else:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            _plain_get(port, forged)
        assert call(mtls.mesh, "frontend-v1", "backend").status == 200  # sidecars still get through


def test_tcp_between_sidecars_is_mutual_tls(mtls):
    before = mtls.inbound_handshakes("db-v1")
    (listener,) = mtls.workload("frontend-v1").tcpOutbound
    with socket.create_connection((listener.listen.address, listener.listen.port), timeout=10) as sock:
        assert _line_exchange(sock, b"hello\n") == b"db-v1:hello\n"
    assert mtls.inbound_handshakes("db-v1") == before + 1
    assert mtls.stat("frontend-v1", "cluster.outbound|5432||db.default.svc.cluster.local.ssl.handshake") >= 1


def test_a_plain_tcp_client_is_accepted_only_under_permissive(mtls):
    inbound = mtls.workload("db-v1").inbound
    with socket.create_connection((inbound.address, inbound.port), timeout=10) as sock:
        if mtls.mesh.mtls.mode == "PERMISSIVE":
            assert _line_exchange(sock, b"plain\n") == b"db-v1:plain\n"
        else:
            try:
                answer = _line_exchange(sock, b"plain\n")
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed: no filter chain takes plain text


def test_a_tcp_peer_is_identified_by_its_mesh_certificate(mtls):
    """The server side presents db's SPIFFE ID and takes only certificates from the mesh CA."""
    inbound = mtls.workload("db-v1").inbound
    frontend = mtls.pki.workload("frontend-v1", "default")
    context = ssl.create_default_context(cafile=frontend.ca_file)
    context.check_hostname = False  # SPIFFE: the identity is the URI SAN, checked below
    context.load_cert_chain(frontend.cert_file, frontend.key_file)
    with context.wrap_socket(socket.create_connection((inbound.address, inbound.port), timeout=10)) as sock:
        peer = sock.getpeercert()
        assert ("URI", DB_ID) in peer["subjectAltName"], peer
        assert _line_exchange(sock, b"signed\n") == b"db-v1:signed\n"
    anonymous = ssl.create_default_context(cafile=frontend.ca_file)
    anonymous.check_hostname = False
    plain = socket.create_connection((inbound.address, inbound.port), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError)), anonymous.wrap_socket(plain) as sock:
        _line_exchange(sock, b"anonymous\n")  # TLS 1.3: the refusal arrives at the first read


def test_a_client_sidecar_refuses_a_server_with_another_identity(mtls):
    """At rogue's endpoint listens a TLS server holding frontend's (valid, mesh-signed) certificate."""
    frontend = mtls.pki.workload("frontend-v1", "default")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(frontend.cert_file, frontend.key_file)
    context.set_alpn_protocols(["h2"])
    impostor = socket.create_server(("127.0.0.1", mtls.workload("rogue-v1").inbound.port))
    impostor.settimeout(10)

    def serve_one() -> None:
        try:
            connection, _ = impostor.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass  # the client hangs up during the handshake

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        response = call(mtls.mesh, "frontend-v1", "rogue")
    finally:
        thread.join(10)
        impostor.close()
    assert response.status == 503, response
    assert mtls.stat("frontend-v1", "cluster.outbound|8080||rogue.default.svc.cluster.local.ssl.fail_verify_san") >= 1


# -- translation and mesh-file checks (no Envoy) ------------------------------------
def _mesh(tmp_path: Path, data: dict[str, Any]) -> Mesh:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_mesh(path)


@pytest.mark.parametrize(("mtls_setting", "field"), [
    ({"mode": "LOOSE"}, "mtls.mode"),
    ({"mode": "STRICT", "minVersion": "1.3"}, "mtls.minVersion"),
    ("STRICT", "mtls"),
])
def test_a_bad_mtls_setting_is_refused_naming_the_field(tmp_path, mtls_setting, field):
    with pytest.raises(MeshextError) as refused:
        _mesh(tmp_path, {**sidecar_mesh("STRICT"), "mtls": mtls_setting})
    assert f"invalid mesh file: {field}: " in refused.value.message, refused.value.message
    assert refused.value.where == str(tmp_path / "mesh.yaml") and refused.value.fix


def test_a_tcp_outbound_entry_must_name_a_tcp_service_port(tmp_path):
    data = sidecar_mesh("PERMISSIVE")
    data["workloads"][0]["tcpOutbound"][0]["service"] = "backend"  # an HTTP service
    with pytest.raises(MeshextError) as refused:
        _mesh(tmp_path, data)
    assert "tcpOutbound[0]: no service backend with TCP port 5432" in refused.value.message, refused.value.message


def test_the_default_is_permissive_and_plain_text_without_a_trust_domain(tmp_path):
    data = sidecar_mesh("PERMISSIVE")
    del data["mtls"]
    mesh = _mesh(tmp_path, data)
    assert mesh.mtls.mode == "PERMISSIVE"
    frontend = mesh.workload("frontend-v1", "default")
    with_tls = SnapshotBuilder(mesh, "cluster.local").snapshot(frontend, [])
    plain = SnapshotBuilder(mesh).snapshot(frontend, [])
    cluster = _unpack(with_tls, CLUSTER, "outbound|8080||backend.default.svc.cluster.local", cluster_pb2.Cluster())
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    inbound = _unpack(with_tls, LISTENER, "inbound", listener_pb2.Listener())
    assert [chain.filter_chain_match.transport_protocol for chain in inbound.filter_chains] == ["tls", "raw_buffer"]
    assert not any(_unpack(plain, CLUSTER, name, cluster_pb2.Cluster()).HasField("transport_socket")
                   for name in plain.of_type(CLUSTER))
    assert [len(_unpack(plain, LISTENER, name, listener_pb2.Listener()).filter_chains)
            for name in plain.of_type(LISTENER)] == [1, 1, 1]


def _unpack(snapshot: Snapshot, type_url: str, name: str, message: Message) -> Any:
    snapshot.of_type(type_url)[name].packed.Unpack(message)
    return message
