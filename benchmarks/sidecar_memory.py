"""What tcmalloc's settings do to a sidecar's memory (issue 16): Envoy's RSS and
start -> first answer with no filter, the hand-written Wasm floor, the header
filter built with ``--cold-code`` and the four extensions' multi-root module
built with ``--cold-code`` (one shared ``vm_id``), under four settings:

* ``release only``: the bootstrap's background release alone (meshext's
  sidecars before);
* ``+ soft limit``: and tcmalloc's soft memory limit
  (``soft_memory_limit_bytes``);
* ``+ per-CPU caches``: the background release, glibc's rseq left to tcmalloc
  (``GLIBC_TUNABLES=glibc.pthread.rseq=0``) so that it keeps per-CPU instead of
  per-thread caches;
* ``both (meshext's)``: what meshext's sidecars run (control/proxy.py's
  ``MEMORY_ALLOCATOR_MANAGER``, meshext.envoy's ``envoy_environment``).

One Envoy worker, RSS after 4 requests and memory settled (as
sdk_header_filter.py), interleaved rounds, medians.  ``--soft-limits``
measures meshext's settings with other soft limits instead (how meshext's
was chosen).  Loopback only.

    python benchmarks/sidecar_memory.py [--rounds 3] [--soft-limits 16,32,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

from sdk_header_filter import HERE, bootstrap, machine, settled_rss_mb, wait_answered, wasm_filter, wat_module
from sidecar_extensions import CONFIGS, PROJECTS, THREESCALE_SERVICE, backend_cluster, plugin

from meshext.control.proxy import MEMORY_ALLOCATOR_MANAGER
from meshext.envoy import EnvoyProcess
from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig
from meshext.sdk.builder import build_filter, build_filters

RELEASE_ONLY = {key: MEMORY_ALLOCATOR_MANAGER[key] for key in ("bytes_to_release", "memory_release_interval")}
GLIBC_KEEPS_RSEQ = "glibc.pthread.rseq=1"  # envoy_environment leaves a given rseq tunable alone
# setting -> (memory_allocator_manager, GLIBC_TUNABLES for Envoy)
SETTINGS = {
    "release only": (RELEASE_ONLY, GLIBC_KEEPS_RSEQ),
    "+ soft limit": (MEMORY_ALLOCATOR_MANAGER, GLIBC_KEEPS_RSEQ),
    "+ per-CPU caches": (RELEASE_ONLY, ""),
    "both (meshext's)": (MEMORY_ALLOCATOR_MANAGER, ""),
}


def modules(scratch: Path) -> dict[str, list[dict]]:
    """The filter chains measured: none, the floor, the header filter and the four extensions with cold code."""
    floor = wat_module("header_wat", scratch)
    header = build_filter(HERE / "filters" / "header", scratch / "header.wasm", cold_code=True).output
    bundle = build_filters([path for path, _ in PROJECTS.values()], scratch / "multi-root.wasm", cold_code=True).output
    return {
        "no filter": [],
        "hand-written Wasm (floor)": wasm_filter(floor),
        "header filter, --cold-code": wasm_filter(header),
        "four extensions, one module, --cold-code": [
            plugin(name, bundle, "shared", CONFIGS[name], root_id=root_id) for name, (_, root_id) in PROJECTS.items()],
    }


def measure(filters: list[dict], clusters: list[dict], memory: dict, tunables: str) -> tuple[float, float]:
    """(RSS in MB after 4 requests and settling, seconds from start to the first answer)."""
    config = bootstrap(filters, clusters)
    config["memory_allocator_manager"] = memory
    with patch.dict(os.environ, {"GLIBC_TUNABLES": tunables}):  # envoy_environment starts from it
        started = time.monotonic()
        envoy = EnvoyProcess(config)
        try:
            envoy.start(timeout=300)
            host, port = envoy.listener_address("bench")
            wait_answered(f"http://{host}:{port}/x", timeout=300)
            first_answer = time.monotonic() - started
            return settled_rss_mb(envoy), first_answer
        finally:
            envoy.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--soft-limits", metavar="MIB,MIB,...",
                        help="instead of the four settings, meshext's with each of these soft limits")
    args = parser.parse_args()
    settings = SETTINGS if not args.soft_limits else {
        f"meshext's, soft limit {mib} MiB": (
            {**MEMORY_ALLOCATOR_MANAGER, "soft_memory_limit_bytes": str(int(mib) << 20)}, "")
        for mib in args.soft_limits.split(",")}
    backend = Backend(SimulatorConfig.model_validate({"services": [THREESCALE_SERVICE]}))
    with tempfile.TemporaryDirectory() as scratch, BackendServer(backend) as simulator:
        clusters = [backend_cluster(simulator.port)]
        chains = modules(Path(scratch))
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for chain, filters in chains.items():
                for setting, (memory, tunables) in settings.items():
                    runs.setdefault((chain, setting), []).append(measure(filters, clusters, memory, tunables))
    rss = {key: statistics.median(r for r, _ in values) for key, values in runs.items()}
    start = {key: statistics.median(s for _, s in values) for key, values in runs.items()}
    print(f"# {machine()}, {args.rounds} interleaved rounds (medians), Envoy 1 worker, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| filter chain | tcmalloc setting | RSS MB | vs no filter | vs floor | start→first answer s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for chain, setting in runs:
        base, floor = rss[("no filter", setting)], rss[("hand-written Wasm (floor)", setting)]
        figure = rss[(chain, setting)]
        print(f"| {chain} | {setting} | {figure:.1f} | {figure / base:.2f} | {figure / floor:.2f} "
              f"| {start[(chain, setting)]:.2f} |")


if __name__ == "__main__":
    main()
