"""`meshext up` to the first successful request through all three services, cold and warm.

Targets (issue 15): cold < 60 s, warm < 15 s.  Run:

    python benchmarks/up_first_request.py [--warm-runs 3]

Cold: a new meshext cache holding only what `scripts/install.sh` leaves there
(``toolchain/`` and the compiled ``shim/``, copied from the current cache) and a
new state directory (empty registry, no certificates), so header-policy and the
extensions bundle (telemetry, ratelimit, 3scale: the control plane's telemetry
build, which `up`'s image step waits for) are built, pushed and pulled.  Warm: `meshext down`, then `meshext up`
again on the same cache and state.  Each run starts `meshext up` as a process
and polls productpage (productpage -> reviews -> ratings) from the moment it
starts; "first request" is the first 200 whose reviews carry their stars, and
"up returned" is when the command exits (the extension is Ready by then and its
header is on every answer).  Ports are free loopback ports.

Each run also prints its timeline (when each part was ready, from `meshext
up`'s progress table) and the CPU seconds each part used until `up` returned
(a sidecar's include its Envoy; the control plane's its telemetry build;
"up + builds" is `meshext up` with its `meshext build`/`push` children), with
the load average: on a shared machine the wall times mean little without them.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from meshext.control.local.layout import PORT_RANGE, Ports, StateDir
from meshext.control.local.up import LocalMesh, get_productpage
from meshext.paths import cache_root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports() -> Ports:
    while True:
        base = free_port()
        try:
            for port in range(base, base + PORT_RANGE):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return Ports(productpage=free_port(), registry=free_port(), control=free_port(), control_http=free_port(),
                     prometheus=free_port(), port_base=base)


def meshext(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", *args], capture_output=True, text=True, env=env,
                          timeout=900)


READY_ROW = re.compile(r"^\s*(\S+)\s.*\((\d+\.\d) s\)\s*$")  # a progress row: part ... state (12.3 s)


class Run:
    """One `meshext up`: its two times, its timeline, CPU seconds per part and the load average."""

    def __init__(self, name: str, first: float, returned: float, timeline: dict[str, float],
                 cpu: dict[str, float], load: float) -> None:
        self.name, self.first, self.returned, self.timeline, self.cpu, self.load = \
            name, first, returned, timeline, cpu, load


def timed_up(name: str, state: Path, ports: Ports, env: dict[str, str]) -> Run:
    """`meshext up` measured: first request through all three services, return, timeline and CPU."""
    first: list[float] = []
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {part.name: part.cpu_seconds() for part in LocalMesh(StateDir(state)).parts.values()}
    cpu["up + builds"] = (children.ru_utime + children.ru_stime
                          - children_before.ru_utime - children_before.ru_stime)
    timeline = {match[1]: float(match[2]) for line in err.splitlines() if (match := READY_ROW.match(line))}
    return Run(name, first[0], returned, timeline, cpu, os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    arguments = parser.parse_args()
    installed = cache_root()
    with tempfile.TemporaryDirectory(prefix="meshext-up-bench-") as scratch:
        cache, state = Path(scratch) / "cache", Path(scratch) / "state"
        for part in ("toolchain", "shim"):  # what scripts/install.sh (`meshext toolchain`) leaves in the cache
            shutil.copytree(installed / part, cache / part, symlinks=True)
        env = {**os.environ, "MESHEXT_CACHE_DIR": str(cache), "COLUMNS": "200"}  # progress rows unwrapped
        ports = free_ports()
        runs = []
        try:
            runs.append(timed_up("cold", state, ports, env))
            for number in range(arguments.warm_runs):
                meshext("down", "--state-dir", str(state), env=env)
                runs.append(timed_up(f"warm {number + 1}", state, ports, env))
        finally:
            meshext("down", "--state-dir", str(state), env=env)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'run':8} {'first request':>14} {'up returned':>12} {'load avg':>9}")
    for run in runs:
        print(f"{run.name:8} {run.first:13.1f}s {run.returned:11.1f}s {run.load:9.1f}")
    for run in runs:
        print(f"\n{run.name}: ready at (s)   " + ", ".join(f"{part} {at:.1f}" for part, at in run.timeline.items()))
        print(f"{run.name}: CPU seconds    " + ", ".join(f"{part} {cpu:.1f}" for part, cpu in run.cpu.items()))


if __name__ == "__main__":
    main()
