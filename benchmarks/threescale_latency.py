"""The 3scale filter's cost per request: a cached key against the Python header filter, and uncached p50/p99.

1. **Cached key** (``backend.cache`` on, one hot application, the backend
   simulator on loopback): added µs per request against no filter, next to
   the Python header filter (``benchmarks/filters/header``), in the same
   interleaved rounds, with ``benchmarks/sdk_header_filter.py``'s load
   (``one_round``: wrk, one thread, 8 connections, a direct response, one
   Envoy worker).  The target: at most 2x the header filter's.  Measured
   twice: the ``threescale-auth`` project built alone, and its root in the
   extensions bundle (``meshext.extensions.bundle``, root
   ``threescale-auth``), the module ``meshext up`` ships.  That load sends
   no credentials, so the key is read from ``:path`` (the application's
   ``user_key`` is the request path) -- the same source, ops and cache work
   as a ``user_key`` header.
2. **Uncached** (one authrep callout per request, as the 3scale module):
   p50/p99 latency with ``wrk --latency`` against the simulator on loopback
   (``http.server``, so the simulator is part of what is measured); every
   authrep must have been authorized (the simulator's recorded hits equal
   the authreps it answered), or the run stops.

    python benchmarks/threescale_latency.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import sdk_header_filter  # benchmarks/: the header filter benchmark's helpers, reused

from meshext.extensions.bundle import bundle_module
from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig
from meshext.sdk.builder import build_filter

HERE = Path(__file__).resolve().parent
FILTER = HERE.parent / "extensions" / "3scale" / "filter"
PATH = "/some/request/path"  # what sdk_header_filter.one_round loads; it waits for "/x" to answer first
BACKEND_CLUSTER = "threescale-backend"
BUNDLE_ROOT = "threescale-auth"  # the project's [filter] name: its root_id in the bundle
SERVICE = {"id": "1", "token": "bench-token", "plans": [{"name": "Unlimited"}],
           "applications": [{"user_key": PATH, "plan": "Unlimited"}, {"user_key": "/x", "plan": "Unlimited"}]}


def plugin_config(cached: bool) -> dict[str, Any]:
    """The filter's configuration: the key from the query or ``:path``, one rule counting hits."""
    backend: dict[str, Any] = {"upstream": {"name": BACKEND_CLUSTER, "url": "http://backend.local/", "timeout": 5000}}
    if cached:
        backend["cache"] = {"flush_period": 1000}
    return {"api": "v1", "backend": backend, "services": [{
        "id": "1", "token": "bench-token",
        "credentials": {"user_key": [{"query_string": {"keys": ["user_key"]}}, {"header": {"keys": [":path"]}}]},
        "mapping_rules": [{"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]}]}]}


def backend_cluster(port: int) -> dict[str, Any]:
    """The 3scale backend simulator's cluster, ``BACKEND_CLUSTER`` on loopback ``port``."""
    return {"name": BACKEND_CLUSTER, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": BACKEND_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def threescale_filter(module: Path, cached: bool, root_id: str = "") -> list[dict[str, Any]]:
    """The Wasm filter running ``module`` (its root ``root_id``) with :func:`plugin_config`."""
    filters = sdk_header_filter.wasm_filter(module, plugin_config(cached))
    filters[0]["typed_config"]["config"]["root_id"] = root_id
    return filters


def authorized_hits(backend: Backend) -> tuple[int, int]:
    """(authrep calls answered, hits recorded) so far: equal while every authrep was authorized."""
    authreps = sum(path.startswith("/transactions/authrep.xml") for _, path in backend.requests)
    hits = sum(usage.get("hits", 0) for usage in backend.totals().get(SERVICE["id"], {}).values())
    return authreps, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections for the uncached run")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    backend = Backend(SimulatorConfig.model_validate({"services": [SERVICE]}))
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as scratch, BackendServer(backend) as simulator:
        clusters = [backend_cluster(simulator.port)]
        header = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm").output
        threescale = build_filter(FILTER, Path(scratch) / "threescale.wasm").output
        bundle, _ = bundle_module()
        chosen = {"no filter": [], "python header filter": sdk_header_filter.wasm_filter(header),
                  "3scale, cached key": threescale_filter(threescale, cached=True),
                  "3scale in the bundle, cached key": threescale_filter(bundle, cached=True, root_id=BUNDLE_ROOT)}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, filters in chosen.items():
                rounds[name].append(sdk_header_filter.one_round(filters, args.seconds, clusters))
                loads.append(os.getloadavg()[0])
        medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for name, runs in rounds.items()}
        reports = len(backend.reports)
        before = authorized_hits(backend)
        uncached = sdk_header_filter.one_round(threescale_filter(threescale, cached=False), args.seconds, clusters,
                                               connections=args.connections)
        after = authorized_hits(backend)
        loads.append(os.getloadavg()[0])
    authreps, hits = after[0] - before[0], after[1] - before[1]
    if authreps == 0 or hits != authreps:
        sys.exit(f"uncached run: {authreps} authreps but {hits} hits recorded: requests were refused")
    base = 1e6 / medians["no filter"]["requests_per_s"]
    added = {name: 1e6 / figures["requests_per_s"] - base for name, figures in medians.items()}
    print(f"# {sdk_header_filter.machine()}, load average {min(loads):.1f}-{max(loads):.1f}; wrk -t1 -c8 "
          f"-d{args.seconds}s, {args.rounds} interleaved rounds (medians), Envoy 1 worker, direct response")
    print("| variant | req/s | added µs/request | Envoy CPU µs/request |")
    print("| --- | --- | --- | --- |")
    for name, figures in medians.items():
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added[name]:+.1f} "
              f"| {figures['cpu_us_per_request']:.1f} |")
    for name in ("3scale, cached key", "3scale in the bundle, cached key"):
        print(f"{name} / header filter added latency: {added[name] / added['python header filter']:.2f}x "
              "(target <= 2x)")
    print(f"{reports} batched reports")
    print(f"uncached (authrep per request, simulator on loopback, wrk -c{args.connections}): "
          f"p50 {uncached['p50_us'] / 1000:.2f} ms, p99 {uncached['p99_us'] / 1000:.2f} ms, "
          f"{uncached['requests_per_s']:.0f} req/s, {authreps} authreps all authorized")
    print(json.dumps({"rounds": rounds, "medians": medians, "uncached": uncached}), file=sys.stderr)


if __name__ == "__main__":
    main()
