"""The CLI end to end: `meshext control certs`, `meshext control serve`, `meshext proxy`,
`meshext status` (all over mutual TLS with the certificates `certs` wrote), and a
control-plane restart under load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from control_harness import (
    Load,
    call,
    free_port,
    read_status,
    sme,
    start_app,
    two_service_mesh,
    wait_until,
    write_resources,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def _meshext(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meshext", *args], **kwargs)


def _status(http: str, pki: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "meshext", "status", "--control-http", http, "--json",
                             "--pki-dir", str(pki)],
                            capture_output=True, text=True, timeout=30)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_control_plane_restart_under_load(tmp_path: Path, modules):
    path, sha = modules["chain"]
    mesh_data = two_service_mesh()
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump(mesh_data))
    from meshext.control.mesh import load_mesh

    mesh = load_mesh(mesh_file)
    apps = [start_app(w.name, w.app.port) for w in mesh.workloads]
    config_dir = tmp_path / "extensions"
    config_dir.mkdir()
    resource = config_dir / "mesh-wide.yaml"
    write_resources(resource, sme("everywhere", f"file://{path}", config={"tag": "all"},
                                  namespace="meshext-system"))
    pki = tmp_path / "pki"
    certs = subprocess.run([sys.executable, "-m", "meshext", "control", "certs", "-o", str(pki),
                            "--mesh", str(mesh_file)], capture_output=True, text=True, timeout=60)
    assert certs.returncode == 0, certs.stderr
    assert str(pki / "workloads" / "default" / "backend-v1-key.pem") in certs.stdout.split()
    assert (pki / "workloads" / "default" / "backend-v1-key.pem").stat().st_mode & 0o777 == 0o600
    xds, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    serve_args = ["control", "serve", "--config-dir", str(config_dir), "--mesh", str(mesh_file),
                  "--xds-address", xds, "--http-address", http, "--pki-dir", str(pki)]
    log = open(tmp_path / "control.log", "ab")  # noqa: SIM115 - the processes write to it until the finally
    control = _meshext(*serve_args, stdout=log, stderr=subprocess.STDOUT)
    proxies = [
        _meshext("proxy", "--workload", w.name, "--namespace", w.namespace, "--control", xds, "--control-http", http,
                 "--pki-dir", str(pki), "--protocol", "sotw" if w.name.startswith("frontend") else "delta",
                 stdout=log, stderr=subprocess.STDOUT)
        for w in mesh.workloads
    ]
    try:
        for source, service in (("frontend-v1", "backend"), ("backend-v1", "frontend")):
            wait_until(lambda source=source, service=service: call(mesh, source, service).chain() == [
                '{"tag":"all"}'], timeout=30, what=f"{source} -> {service} through the filter")
        before = wait_until(lambda: (lambda s: s if s and all(p["inSync"] for p in s["proxies"].values())
                                     and len(s["proxies"]) == 2 else None)(_status(http, pki)), what="proxies in sync")
        table = subprocess.run([sys.executable, "-m", "meshext", "status", "--control-http", http,
                                "--pki-dir", str(pki)],
                               capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "300"})
        assert table.returncode == 0
        assert "ServiceMeshExtension/meshext-system/everywhere" in table.stdout and "Ready" in table.stdout

        with Load(lambda: call(mesh, "frontend-v1", "backend"), count=4000, seconds=60) as load:
            wait_until(lambda: load.sent > 20, what="load started")
            _stop(control)
            assert control.returncode == 0
            sent_while_down = load.sent
            wait_until(lambda: load.sent > sent_while_down + 50, what="traffic while the control plane is down")
            control = _meshext(*serve_args, stdout=log, stderr=subprocess.STDOUT)

            def converged_again():
                status = _status(http, pki)
                proxies_now = status.get("proxies", {})
                if len(proxies_now) == 2 and all(p["connected"] and p["inSync"] for p in proxies_now.values()):
                    return status
                return None

            after = wait_until(converged_again, timeout=30, what="proxies reconnected and in sync")
            sent_after = load.sent
            wait_until(lambda: load.sent > sent_after + 50, what="traffic after the restart")
        assert load.failures == [], f"{len(load.failures)} of {load.sent} failed: {load.failures[:5]}"
        # Same content, same versions: nothing had to be pushed again.
        for node in before["proxies"]:
            acked_before = {t: s["acked"] for t, s in before["proxies"][node]["types"].items()}
            acked_after = {t: s["acked"] for t, s in after["proxies"][node]["types"].items()}
            assert acked_after == acked_before, node
        status = read_status(resource)["ServiceMeshExtension/meshext-system/everywhere"]
        assert status["phase"] == "Ready" and status["moduleSha256"] == sha
        assert status["workloads"] == ["backend-v1.default", "frontend-v1.default"]
        assert call(mesh, "frontend-v1", "backend").chain() == ['{"tag":"all"}']
    finally:
        for process in [*proxies, control]:
            _stop(process)
        log.close()
        for app in apps:
            app.shutdown()
            app.server_close()


def _envoys_of(node_id: str) -> list[int]:
    """Pids of running Envoys whose bootstrap names ``node_id`` (exited ones not yet reaped excluded)."""
    pids = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            arguments = (process / "cmdline").read_bytes().split(b"\0")
            if not arguments[0].endswith(b"envoy") or "State:\tZ" in (process / "status").read_text():
                continue
            bootstrap = json.loads(Path(arguments[arguments.index(b"-c") + 1].decode()).read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not an Envoy started with -c
        if bootstrap.get("node", {}).get("id") == node_id:
            pids.append(int(process.name))
    return pids


def test_a_signal_during_sidecar_start_up_leaves_no_envoy_behind(tmp_path: Path) -> None:
    # No control plane answers, so Envoy never becomes ready and the sidecar is still starting up.
    workload = f"signal-probe-{os.getpid()}"
    proxy = _meshext("proxy", "--workload", workload, "--control", f"127.0.0.1:{free_port()}",
                     "--control-http", f"127.0.0.1:{free_port()}", "--insecure", "--module-dir", str(tmp_path),
                     stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _envoys_of(f"{workload}.default"), what="the sidecar's Envoy started")
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(timeout=15) == 0
        assert _envoys_of(f"{workload}.default") == []
    finally:
        _stop(proxy)
