"""`meshext up` to the first successful request through all three services, cold and warm.

Targets (issue 15): cold < 60 s, warm < 15 s.  Run:

    python benchmarks/up_first_request.py [--warm-runs 3]

Cold: a new meshext cache holding only what `scripts/install.sh` leaves there
(``toolchain/`` and the compiled ``shim/``, copied from the current cache) and a
new state directory (empty registry, no certificates), so both example
extensions are built, pushed and pulled.  Warm: `meshext down`, then `meshext up`
again on the same cache and state.  Each run starts `meshext up` as a process
and polls productpage (productpage -> reviews -> ratings) from the moment it
starts; "first request" is the first 200 whose reviews carry their stars, and
"up returned" is when the command exits (the extension is Ready by then and its
header is on every answer).  Ports are free loopback ports.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from meshext.control.local.layout import Ports
from meshext.control.local.up import get_productpage
from meshext.paths import cache_root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports() -> Ports:
    while True:
        base = free_port()
        try:
            for port in range(base, base + 30):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return Ports(productpage=free_port(), registry=free_port(), control=free_port(), control_http=free_port(),
                     prometheus=free_port(), port_base=base)


def meshext(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", *args], capture_output=True, text=True, env=env,
                          timeout=900)


def timed_up(state: Path, ports: Ports, env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first request through all three services, seconds until `meshext up` returned)."""
    first: list[float] = []
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "meshext", "up", "--state-dir", str(state),
                                *ports.as_options().split()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)

    def poll() -> None:
        while process.poll() is None or not first:
            try:
                status, _, body = get_productpage(ports)
                if status == 200 and all(r.get("stars") for r in body.get("reviews", [])):
                    first.append(time.monotonic() - started)
                    return
            except OSError:
                pass
            time.sleep(0.05)
            if time.monotonic() - started > 900:
                return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = process.communicate(timeout=900)
    returned = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"meshext up failed:\n{out}\n{err}")
    poller.join(timeout=30)
    return first[0], returned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    arguments = parser.parse_args()
    installed = cache_root()
    with tempfile.TemporaryDirectory(prefix="meshext-up-bench-") as scratch:
        cache, state = Path(scratch) / "cache", Path(scratch) / "state"
        for part in ("toolchain", "shim"):  # what scripts/install.sh (`meshext toolchain`) leaves in the cache
            shutil.copytree(installed / part, cache / part, symlinks=True)
        env = {**os.environ, "MESHEXT_CACHE_DIR": str(cache)}
        ports = free_ports()
        rows = []
        try:
            rows.append(("cold", *timed_up(state, ports, env)))
            for run in range(arguments.warm_runs):
                meshext("down", "--state-dir", str(state), env=env)
                rows.append((f"warm {run + 1}", *timed_up(state, ports, env)))
        finally:
            meshext("down", "--state-dir", str(state), env=env)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'run':8} {'first request':>14} {'up returned':>12}")
    for name, first, returned in rows:
        print(f"{name:8} {first:13.1f}s {returned:11.1f}s")


if __name__ == "__main__":
    main()
