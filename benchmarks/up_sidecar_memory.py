"""What productpage's sidecar costs in `meshext up`'s mesh with the project's extensions placed.

`meshext up` (a new state directory, the current cache), then, once the mesh
serves and again after `meshext apply -f` of the shipped
``deploy/local/ratelimit.yaml`` and ``3scale.yaml``: productpage's sidecar
Envoy's resident memory (``VmRSS`` of ``/proc/PID/status``), Envoy's live and
created V8 Wasm VMs (``wasm.envoy.wasm.runtime.v8.active`` / ``created``) and
the distinct ``vm_id``s of its Wasm plugins (config dump), with reviews'
sidecar (telemetry only) beside it and the load average.  Each reading waits
20 s for memory to settle and sends 20 requests first.  Run:

    python benchmarks/up_sidecar_memory.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from up_first_request import free_ports

from meshext.control.local import images
from meshext.control.local.layout import Ports, StateDir
from meshext.control.local.up import FIRST_REQUEST_HEADERS, LocalMesh, get_productpage, sidecar

SETTLE_SECONDS = 20
APPLIED = ("ratelimit", "3scale")  # deploy/local/NAME.yaml


def meshext(state: Path, *args: str) -> str:
    """`meshext ARGS --state-dir STATE`; its output, or SystemExit with it when it fails."""
    finished = subprocess.run([sys.executable, "-m", "meshext", *args, "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=900)
    if finished.returncode != 0:
        raise SystemExit(f"meshext {' '.join(args)} failed:\n{finished.stdout}\n{finished.stderr}")
    return finished.stdout


def envoy_rss_mb(mesh: LocalMesh, app: str) -> int:
    """VmRSS in MB of the Envoy process of ``app``'s sidecar."""
    for pid in mesh.parts[sidecar(app)].processes():
        if "envoy" in Path(f"/proc/{pid}/comm").read_text():
            return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) // 1024
    raise SystemExit(f"no Envoy in {sidecar(app)}")


def admin(ports: Ports, app: str, path: str) -> str:
    """GET ``path`` from ``app``'s sidecar admin listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.app_port(app, 2)}{path}", timeout=10) as answer:
        return str(answer.read().decode())


def reading(label: str, mesh: LocalMesh, ports: Ports) -> str:
    """One line: memory, VMs and vm_ids of productpage's sidecar, reviews' memory, the load average."""
    time.sleep(SETTLE_SECONDS)
    for _ in range(20):
        get_productpage(ports, headers=FIRST_REQUEST_HEADERS)
    stats = dict(line.split(": ", 1) for line in admin(ports, "productpage", "/stats?filter=runtime.v8").splitlines())
    dump = json.loads(admin(ports, "productpage", "/config_dump?resource=ecds_filters"))
    vm_ids = {entry["ecds_filter"]["typed_config"]["config"]["vm_config"]["vm_id"] for entry in dump["configs"]
              if "vm_config" in entry["ecds_filter"]["typed_config"].get("config", {})}
    return (f"{label:46} productpage Envoy {envoy_rss_mb(mesh, 'productpage'):4} MB, "
            f"V8 VMs active {stats['wasm.envoy.wasm.runtime.v8.active']:>2} "
            f"(created {stats['wasm.envoy.wasm.runtime.v8.created']:>2}), vm_ids {len(vm_ids)}; "
            f"reviews Envoy {envoy_rss_mb(mesh, 'reviews'):4} MB; load {os.getloadavg()[0]:.1f}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshext-memory-bench-") as scratch:
        state, ports = Path(scratch) / "state", free_ports()
        mesh = LocalMesh(StateDir(state))
        try:
            meshext(state, "up", *ports.as_options().split())
            lines = [reading("telemetry + header-policy", mesh, ports)]
            files = []
            for name in APPLIED:  # the shipped files, with this mesh's registry
                path = Path(scratch) / f"{name}.yaml"
                shipped = (images.CHECKOUT / "deploy" / "local" / f"{name}.yaml").read_text()
                path.write_text(shipped.replace("127.0.0.1:15050", f"127.0.0.1:{ports.registry}"))
                files += ["-f", str(path)]
            meshext(state, "apply", *files, "--wait")
            lines.append(reading("telemetry + header-policy + " + " + ".join(APPLIED), mesh, ports))
        finally:
            subprocess.run([sys.executable, "-m", "meshext", "down", "--state-dir", str(state)],
                           capture_output=True, timeout=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
