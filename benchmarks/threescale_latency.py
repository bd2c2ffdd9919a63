"""The 3scale filter's cost per request: a cached key against the Python header filter, and uncached p50/p99.

1. **Cached key** (``backend.cache`` on, one hot application, the backend
   simulator on loopback): added µs per request against no filter, next to
   the Python header filter (``benchmarks/filters/header``), in the same
   interleaved rounds, with ``benchmarks/sdk_header_filter.py``'s load
   (``one_round``: wrk, one thread, 8 connections, a direct response, one
   Envoy worker).  The target: at most 2x the header filter's.  That load
   sends no credentials, so the key is read from ``:path`` (the application's
   ``user_key`` is the request path) -- the same source, ops and cache work as
   a ``user_key`` header.
2. **Uncached** (one authrep callout per request, as the 3scale module):
   p50/p99 latency with ``wrk --latency`` against the simulator on loopback
   (``http.server``, so the simulator is part of what is measured).

    python benchmarks/threescale_latency.py [--seconds 5] [--rounds 3] [--alternate BURSTS]

``--alternate BURSTS`` runs the cached comparison's Envoys at once and
alternates one-second bursts between them (``sdk_header_filter.alternating_bursts``,
steadier on a busy machine).  ``--steps`` counts instead, without Envoy, the
interpreter steps and host calls of a cached hit (``stand_in_host``): what
the filter's Python does per request, deterministic on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sdk_header_filter  # benchmarks/: the header filter benchmark's helpers, reused
from stand_in_host import StandInHost, count_steps, filter_root

from meshext.envoy import EnvoyProcess
from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig
from meshext.sdk.builder import build_filter

HERE = Path(__file__).resolve().parent
FILTER = HERE.parent / "extensions" / "3scale" / "filter"
PATH = "/some/request/path"  # what sdk_header_filter.one_round loads; it waits for "/x" to answer first
BACKEND_CLUSTER = "threescale-backend"
SERVICE = {"id": "1", "token": "bench-token", "plans": [{"name": "Unlimited"}],
           "applications": [{"user_key": PATH, "plan": "Unlimited"}, {"user_key": "/x", "plan": "Unlimited"}]}


def plugin_config(cached: bool) -> dict[str, Any]:
    backend: dict[str, Any] = {"upstream": {"name": BACKEND_CLUSTER, "url": "http://backend.local/", "timeout": 5000}}
    if cached:
        backend["cache"] = {"flush_period": 1000}
    return {"api": "v1", "backend": backend, "services": [{
        "id": "1", "token": "bench-token",
        "credentials": {"user_key": [{"query_string": {"keys": ["user_key"]}}, {"header": {"keys": [":path"]}}]},
        "mapping_rules": [{"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]}]}]}


def threescale_filter(module: Path, cached: bool) -> list[dict[str, Any]]:
    filters = sdk_header_filter.wasm_filter(module)
    filters[0]["typed_config"]["config"]["configuration"] = {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(plugin_config(cached))}
    return filters


def backend_clusters(port: int) -> list[dict[str, Any]]:
    """The simulator's cluster, for ``sdk_header_filter``'s bootstrap."""
    return [{
        "name": BACKEND_CLUSTER, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": BACKEND_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}]


STEP_REQUESTS = 2000  # cached hits counted by --steps, after 100 not counted


def print_steps() -> None:
    """Interpreter steps and host calls per cached hit (one hot application), in this process."""
    host = StandInHost()
    host.headers[0] = [(":authority", "127.0.0.1:10000"), (":path", PATH), (":method", "GET"), (":scheme", "http"),
                       ("user-agent", "wrk"), ("x-forwarded-proto", "http"), ("x-request-id", "2b7e1516")]
    host.install()
    root = filter_root(FILTER)(1)
    assert root.on_configure(json.dumps(plugin_config(cached=True)).encode()) is not False
    key = root.cache.key_for(root.configuration.services[0], ("user_key", PATH, None))
    # the backend's authorization as the cache stores it: authorized, one limit far from reached
    host.shared[key] = (json.dumps([True, None, [["hits", 10**12, 0, None]], {}, 1e12]).encode(), 1)

    from meshext.sdk.contexts import response_headers_to_add  # the stand-in's SDK, imported after install()

    response_headers = sys.modules["_meshext_host"].HeaderMap(2)  # MapType.HTTP_RESPONSE_HEADERS
    fixed = response_headers_to_add(root.http_context)

    def requests(first: int, count: int) -> None:
        for context_id in range(first, first + count):
            context = root.http_context(root, context_id)
            assert context.on_request_headers(False) == 0  # Action.CONTINUE: admitted from the cache
            for name, value in fixed:  # what the shim's C does on the response, no Python step in the VM
                response_headers.set(name, value)

    requests(2, 100)
    host.calls.clear()
    steps = count_steps(lambda: requests(200, STEP_REQUESTS), not_counted=(__file__,))
    print(f"cached hit: {steps / STEP_REQUESTS:.0f} interpreter steps; host calls "
          + ", ".join(f"{name} {count / STEP_REQUESTS:g}" for name, count in sorted(host.calls.items())))


def uncached_latency(filters: list[dict[str, Any]], clusters: list[dict[str, Any]], seconds: int,
                     connections: int) -> dict[str, float]:
    """wrk --latency percentiles through Envoy with one authrep callout per request."""
    envoy = EnvoyProcess(sdk_header_filter.bootstrap(filters, clusters))
    try:
        envoy.start(timeout=60)
        host, port = envoy.listener_address("bench")
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://{host}:{port}{PATH}"],
            capture_output=True, text=True, timeout=seconds + 30).stdout
        if "Non-2xx" in output:
            raise SystemExit(f"requests were refused:\n{output}")

        def percentile(name: str) -> float:
            value, unit = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)$", output, re.M).groups()  # type: ignore[union-attr]
            return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

        return {"p50_ms": percentile("50"), "p99_ms": percentile("99"),
                "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    finally:
        envoy.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections for the uncached run")
    parser.add_argument("--alternate", type=int, default=0, metavar="BURSTS",
                        help="cached comparison: every Envoy at once, BURSTS alternating one-second bursts")
    parser.add_argument("--steps", action="store_true", help="count a cached hit's steps and host calls (no Envoy)")
    args = parser.parse_args()
    if args.steps:
        print_steps()
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    backend = Backend(SimulatorConfig.model_validate({"services": [SERVICE]}))
    with tempfile.TemporaryDirectory() as scratch, BackendServer(backend) as simulator:
        clusters = backend_clusters(simulator.port)
        header = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm").output
        threescale = build_filter(FILTER, Path(scratch) / "threescale.wasm").output
        chosen = {"no filter": [], "python header filter": sdk_header_filter.wasm_filter(header),
                  "3scale, cached key": threescale_filter(threescale, cached=True)}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        if args.alternate:
            rounds = sdk_header_filter.alternated(chosen, args.alternate, clusters)
        else:
            for _ in range(args.rounds):
                for name, filters in chosen.items():
                    rounds[name].append(sdk_header_filter.one_round(filters, args.seconds, clusters))
        medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for name, runs in rounds.items()}
        uncached = uncached_latency(threescale_filter(threescale, cached=False), clusters, args.seconds,
                                    args.connections)
        reports = len(backend.reports)
    base = 1e6 / medians["no filter"]["requests_per_s"]
    added = {name: 1e6 / figures["requests_per_s"] - base for name, figures in medians.items()}
    method = (f"{args.alternate} alternating 1 s bursts" if args.alternate
              else f"-d{args.seconds}s, {args.rounds} interleaved rounds")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, wrk -t1 -c8 {method} (medians), Envoy 1 worker, "
          f"direct response, load average {os.getloadavg()[0]:.1f}")
    print("| variant | req/s | added µs/request | Envoy CPU µs/request |")
    print("| --- | --- | --- | --- |")
    for name, figures in medians.items():
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added[name]:+.1f} "
              f"| {figures['cpu_us_per_request']:.1f} |")
    ratio = added["3scale, cached key"] / added["python header filter"]
    print(f"cached 3scale / header filter added latency: {ratio:.2f}x (target <= 2x); {reports} batched reports")
    print(f"uncached (authrep per request, simulator on loopback, wrk -c{args.connections}): "
          f"p50 {uncached['p50_ms']:.2f} ms, p99 {uncached['p99_ms']:.2f} ms, {uncached['requests_per_s']:.0f} req/s")
    print(json.dumps({"rounds": rounds, "medians": medians, "uncached": uncached}), file=sys.stderr)


if __name__ == "__main__":
    main()
