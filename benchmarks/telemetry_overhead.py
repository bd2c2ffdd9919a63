"""What the telemetry extension costs a request crossing two sidecars, and
what a scrape of 1,000 label combinations costs.

Two sidecars in a row, each its own Envoy (one worker), configured as the
control plane configures them (control/envoy_config.py: node metadata,
``istio.services`` cluster metadata, ``istio.workload`` endpoint metadata,
listener directions, HTTP/2 between the sidecars, the sidecar bootstrap's
``stats_config``; written statically here, no xDS, no mutual TLS):

    wrk -> sidecar A (frontend-v1, outbound) -> sidecar B (backend-v1, inbound) -> app

The app is a third Envoy answering itself.  Variants, the same filters in
both sidecars: no filter; the Python header filter of sdk_header_filter.py;
telemetry (with the grpc_stats filter the control plane puts beside it).
Interleaved rounds, medians; added µs per request from requests/s against no
filter (for both sidecars together, and per sidecar), Envoy CPU µs per
request (both sidecars), RSS of each sidecar after the load.  The target:
telemetry adds at most 2x what the header filter adds, in the same run.

Then the scrape: sidecar B with telemetry gets requests straight from a
client that sends Istio's peer metadata header, with ``--workloads`` source
workloads x ``--codes`` response codes (the app answers ``/code/NNN`` with
NNN), i.e. 1,000 label combinations by default; ``/stats/prometheus`` is
timed (median of ``--scrapes``) and sized, beside a scrape of the same
sidecar with one combination.  Loopback only, every run bounded.

``--alternate BURSTS`` compares variants on a busy machine instead: every
variant's chain runs at once, and one-second wrk bursts alternate between
them (order reversed every other burst), BURSTS each, medians reported, so
the load of other work drifts over all variants alike; no scrape.  Counts
that do not move with the load: ``telemetry_host_calls.py``.

    python benchmarks/telemetry_overhead.py [--seconds 5] [--rounds 3] [--workloads 100] [--codes 10]
    python benchmarks/telemetry_overhead.py --alternate 30 [--alternative NAME=MODULE ...]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from sdk_header_filter import (
    HERE,
    ROUTER,
    SETTLE_SECONDS,
    alternating_bursts,
    machine,
    wait_answered,
    wasm_filter,
    wrk_load,
)

from meshext.control.mesh import Mesh, Service, ServicePort, Workload
from meshext.control.proxy import MEMORY_ALLOCATOR_MANAGER
from meshext.control.telemetry import (
    for_direction,
    node_metadata,
    peer_metadata_headers,
    services_metadata,
    telemetry_extension,
    with_inbound_exchange,
    with_outbound_exchange,
    workload_metadata,
)
from meshext.envoy import EnvoyProcess
from meshext.extensions.telemetry.filter.istio_metrics import PEER_METADATA_HEADER, REQUESTS_TOTAL
from meshext.extensions.telemetry.filter.struct_codec import encode_struct
from meshext.extensions.telemetry.module import telemetry_module
from meshext.extensions.telemetry.stats_config import stats_config
from meshext.sdk.builder import build_filter

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
GRPC_STATS = {"name": "envoy.filters.http.grpc_stats", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "emit_filter_state": True, "stats_for_all_methods": False}}
BACKEND = Service(name="backend", selector={"app": "backend"}, ports=[ServicePort(port=8080)])
Direction = Literal["inbound", "outbound"]
START_TIMEOUT = 300  # V8 compiles the telemetry module (CPython inside) for tens of seconds on a busy machine


def _workload(app: str) -> Workload:
    # Addresses are placeholders: the benchmark's listeners bind port 0.
    return Workload(name=f"{app}-v1", labels={"app": app, "version": "v1"}, app={"port": 1},
                    inbound={"port": 1}, outbound={"port": 1})


def _cluster(name: str, port: int, http2: bool, metadata: dict | None = None,
             endpoint_metadata: dict | None = None) -> dict:
    endpoint: dict = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if endpoint_metadata:
        endpoint["metadata"] = endpoint_metadata
    cluster: dict = {
        "name": name, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": PROTOCOL_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}}},
    }
    if metadata:
        cluster["metadata"] = metadata
    return cluster


def telemetry_configuration(direction: Direction) -> dict:
    """The telemetry plugin configuration of a ``direction`` listener, as the control plane writes it
    (no mutual TLS, so no peers)."""
    extension = for_direction(telemetry_extension("0" * 64, Mesh(), None), direction)
    return json.loads(extension.configuration)


@dataclass
class Variant:
    """What a variant's sidecars run: the same HTTP ``filters`` in both, or the ``telemetry`` module as the
    control plane places it (its configuration per listener direction, with the grpc_stats filter beside
    it, and the routes doing the constant part of the peer metadata exchange)."""

    filters: list[dict] = field(default_factory=list)
    telemetry: Path | None = None

    def http_filters(self, direction: Direction) -> list[dict]:
        """The HTTP filters of the ``direction`` sidecar, ahead of the router."""
        if self.telemetry is None:
            return self.filters
        return [GRPC_STATS, *wasm_filter(self.telemetry, telemetry_configuration(direction))]


def sidecar_bootstrap(workload: Workload, direction: Direction, variant: Variant, cluster: dict) -> dict:
    """One sidecar's Envoy: ``workload``'s node metadata, one listener (``inbound``/``outbound``) with
    ``variant``'s filters routing everything to ``cluster``."""
    metadata = node_metadata(workload.name, workload.namespace, workload.labels)
    routes: dict = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
        "match": {"prefix": "/"}, "route": {"cluster": cluster["name"]}}]}]}
    if variant.telemetry is not None:
        exchange = peer_metadata_headers(workload.node_id, metadata)
        routes = (with_inbound_exchange if direction == "inbound" else with_outbound_exchange)(routes, exchange)
    return {
        "memory_allocator_manager": MEMORY_ALLOCATOR_MANAGER,
        "node": {"id": workload.node_id, "cluster": f"{workload.name}.{workload.namespace}", "metadata": metadata},
        "stats_config": stats_config(),
        "static_resources": {"clusters": [cluster], "listeners": [{
            "name": direction, "traffic_direction": direction.upper(),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": direction, "codec_type": "AUTO", "route_config": routes,
                "http_filters": [*variant.http_filters(direction), ROUTER]}}]}],
        }]},
    }


def app_bootstrap(codes: list[int]) -> dict:
    """The app: an Envoy answering ``/code/NNN`` with status NNN and everything else with 200."""
    routes = [{"match": {"path": f"/code/{code}"}, "direct_response": {"status": code}} for code in codes]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    return {"static_resources": {"listeners": [{
        "name": "app", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "app",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": [ROUTER]}}]}],
    }]}}


class Chain:
    """Sidecar B (backend-v1, inbound -> app) and, unless ``inbound_only``, sidecar A (frontend-v1,
    outbound -> B), both running ``variant``."""

    def __init__(self, app_port: int, variant: Variant, *, inbound_only: bool = False) -> None:
        backend = _workload("backend")
        self.inbound = EnvoyProcess(sidecar_bootstrap(
            backend, "inbound", variant, _cluster("inbound|8080||", app_port, http2=False)))
        self.sidecars = [self.inbound]
        self.inbound.start(timeout=START_TIMEOUT)
        self.inbound_address = self.inbound.listener_address("inbound")
        self.outbound: EnvoyProcess | None = None
        if not inbound_only:
            self.outbound = EnvoyProcess(sidecar_bootstrap(
                _workload("frontend"), "outbound", variant,
                _cluster(f"outbound|8080||{BACKEND.host}", self.inbound_address[1], http2=True,
                         metadata=services_metadata([BACKEND]), endpoint_metadata=workload_metadata(backend))))
            self.sidecars.insert(0, self.outbound)
            self.outbound.start(timeout=START_TIMEOUT)

    @property
    def entry(self) -> str:
        """The URL a client calls: A's outbound listener (B's inbound one when there is no A)."""
        envoy = self.outbound or self.inbound
        host, port = envoy.listener_address("outbound" if self.outbound else "inbound")
        return f"http://{host}:{port}"

    def pids(self) -> list[int]:
        """The sidecars' Envoy process ids."""
        return [envoy.process.pid for envoy in self.sidecars if envoy.process is not None]

    def close(self) -> None:
        """Stop both Envoys and remove their work directories."""
        for envoy in self.sidecars:
            envoy.cleanup()


def one_round(app_port: int, variant: Variant, seconds: int) -> dict[str, float]:
    """Start a chain, load it through A with wrk, then read both sidecars' RSS once memory settles."""
    chain = Chain(app_port, variant)
    try:
        wait_answered(chain.entry + "/warm", timeout=START_TIMEOUT)
        figures = wrk_load(chain.entry + "/some/request/path", seconds, chain.pids())
        time.sleep(SETTLE_SECONDS)
        assert chain.outbound is not None
        return {**figures, "rss_mb_a": chain.outbound.rss_bytes() / 2**20,
                "rss_mb_b": chain.inbound.rss_bytes() / 2**20}
    finally:
        chain.close()


def chains_in_turn(app_port: int, chosen: dict[str, Variant], bursts: int) -> dict[str, list[dict[str, float]]]:
    """Every variant's chain started together, then loaded in alternating bursts (sdk_header_filter's
    ``alternating_bursts``): each burst's figures, by variant."""
    chains: dict[str, Chain] = {}
    try:
        for name, variant in chosen.items():
            chains[name] = Chain(app_port, variant)
            wait_answered(chains[name].entry + "/warm", timeout=START_TIMEOUT)
        return alternating_bursts({name: (chain.entry + "/some/request/path", chain.pids())
                                   for name, chain in chains.items()}, bursts)
    finally:
        for chain in chains.values():
            chain.close()


def peer_header(workload: str) -> str:
    """The ``x-envoy-peer-metadata`` value a sidecar of ``workload`` (namespace ``load``) sends."""
    metadata = node_metadata(workload, "load", {"app": workload, "version": "v1"})
    return base64.b64encode(encode_struct(metadata)).decode()


def timed_scrapes(envoy: EnvoyProcess, count: int) -> tuple[float, int, int]:
    """(median seconds, bytes, istio_requests_total series) of ``count`` scrapes of ``/stats/prometheus``."""
    times, text = [], ""
    for _ in range(count):
        started = time.perf_counter()
        text = envoy.admin_get("/stats/prometheus")
        times.append(time.perf_counter() - started)
    series = sum(len(family.samples) for family in text_string_to_metric_families(text)
                 if family.name == REQUESTS_TOTAL.removesuffix("_total"))
    return statistics.median(times), len(text.encode()), series


def scrape_figures(app_port: int, telemetry: Variant, workloads: int, codes: list[int],
                   scrapes: int) -> dict[str, float]:
    """Scrape sidecar B with one label combination, then after ``workloads`` x ``codes`` combinations."""
    chain = Chain(app_port, telemetry, inbound_only=True)
    try:
        host, port = chain.inbound_address
        connection = http.client.HTTPConnection(host, port, timeout=30)

        def get(path: str, workload: str) -> None:
            connection.request("GET", path, headers={PEER_METADATA_HEADER: peer_header(workload)})
            connection.getresponse().read()

        wait_answered(chain.entry + "/warm", timeout=START_TIMEOUT)  # no header: source "unknown"
        one = timed_scrapes(chain.inbound, scrapes)
        for index in range(workloads):
            for code in codes:
                get(f"/code/{code}", f"load-{index}")
        connection.close()
        many = timed_scrapes(chain.inbound, scrapes)
    finally:
        chain.close()
    return {"scrape_s_1": one[0], "bytes_1": one[1], "series_1": one[2],
            "scrape_s_many": many[0], "bytes_many": many[1], "series_many": many[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--workloads", type=int, default=100, help="source workloads for the scrape")
    parser.add_argument("--codes", type=int, default=10, help="response codes for the scrape (200, 201, ...)")
    parser.add_argument("--scrapes", type=int, default=5, help="scrapes timed; the median is reported")
    parser.add_argument("--telemetry-module", type=Path, help="a built telemetry module (default: build filter/)")
    parser.add_argument("--alternative", action="append", default=[], metavar="NAME=MODULE",
                        help="another telemetry module measured beside it (a change being tried)")
    parser.add_argument("--alternate", type=int, default=0, metavar="BURSTS",
                        help="all variants at once, BURSTS alternating 1 s bursts each (a busy machine)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    load_before = os.getloadavg()[0]
    codes = [200 + index for index in range(args.codes)]
    telemetry_path = args.telemetry_module or telemetry_module()[0]
    with tempfile.TemporaryDirectory() as scratch:
        header = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm").output
        chosen = {
            "no filter": Variant([]),
            "header filter": Variant(wasm_filter(header)),
            "telemetry": Variant(telemetry=telemetry_path),
        }
        for alternative in args.alternative:
            name, _, module = alternative.partition("=")
            chosen[f"telemetry: {name}"] = Variant(telemetry=Path(module))
        app = EnvoyProcess(app_bootstrap(codes))
        try:
            app.start()
            app_port = app.listener_address("app")[1]
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
            scrape = None
            if args.alternate:
                rounds = chains_in_turn(app_port, chosen, args.alternate)
            else:
                for _ in range(args.rounds):
                    for name, variant in chosen.items():
                        rounds[name].append(one_round(app_port, variant, args.seconds))
                        print(json.dumps({name: rounds[name][-1]}), file=sys.stderr, flush=True)  # progress
                scrape = scrape_figures(app_port, chosen["telemetry"], args.workloads, codes, args.scrapes)
        finally:
            app.cleanup()
    load_after = os.getloadavg()[0]
    results = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    base = results["no filter"]

    def added(figures: dict[str, float]) -> float:
        return 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"]

    method = (f"{args.alternate} alternating 1 s bursts per variant, all running at once" if args.alternate
              else f"-d{args.seconds}s, {args.rounds} interleaved rounds")
    print(f"# {machine()}, load average {load_before:.1f} -> {load_after:.1f}, wrk -t1 -c8 {method} (medians), "
          "two sidecars (1 worker each) in a row")
    print("| variant | req/s | added µs/request (2 sidecars) | per sidecar | × header filter | p50 µs "
          "| Envoy CPU µs/request (both) | added CPU µs | RSS A / B (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    header_added = added(results["header filter"])
    header_cpu = results["header filter"]["cpu_us_per_request"] - base["cpu_us_per_request"]
    for name, figures in results.items():
        ratio = f"{added(figures) / header_added:.2f}" if name != "no filter" else "—"
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added(figures):+.1f} | {added(figures) / 2:+.1f} "
              f"| {ratio} | {figures['p50_us']:.0f} | {figures['cpu_us_per_request']:.1f} "
              f"| {figures['cpu_us_per_request'] - base['cpu_us_per_request']:+.1f} "
              + (f"| {figures['rss_mb_a']:.0f} / {figures['rss_mb_b']:.0f} |" if "rss_mb_a" in figures else "| — |"))
    for name in (name for name in results if name.startswith("telemetry")):
        telemetry_cpu = results[name]["cpu_us_per_request"] - base["cpu_us_per_request"]
        print(f"{name} / header filter: {added(results[name]) / header_added:.2f}x added latency "
              f"(target <= 2), {telemetry_cpu / header_cpu:.2f}x added CPU")
    if scrape is not None:
        print(f"/stats/prometheus of sidecar B (median of {args.scrapes}): "
              f"{scrape['series_1']:.0f} istio_requests_total series {scrape['scrape_s_1'] * 1e3:.1f} ms "
              f"{scrape['bytes_1'] / 1e3:.0f} kB; {scrape['series_many']:.0f} series "
              f"({args.workloads} workloads x {args.codes} codes) {scrape['scrape_s_many'] * 1e3:.1f} ms "
              f"{scrape['bytes_many'] / 1e6:.2f} MB")
    print(json.dumps({"rounds": rounds, "medians": results, "scrape": scrape}), file=sys.stderr)


if __name__ == "__main__":
    main()
