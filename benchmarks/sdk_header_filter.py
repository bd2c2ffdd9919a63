"""Python header filter vs. no filter, Envoy's native header_mutation, Lua,
a Proxy-Wasm module that does nothing, and the same filter hand-written in
WebAssembly text (the floor any Proxy-Wasm filter doing this work pays in
Envoy).

One Envoy worker, a direct response, the same load generator (wrk, one
thread, 8 connections, fixed duration) for every variant.  Variants run
interleaved, ``--rounds`` times, and the medians are reported: this 2-core
machine is noisy, and side-by-side rounds keep drift out of the ratios.
Reports requests/s, added latency per request against no filter (from
requests/s) and Envoy CPU time per request, Envoy RSS, RSS added by a
second worker, time from Envoy start to the first answered request, and
the module size, each also as a ratio against the hand-written floor.  The
Python filter runs as built and as built with ``--cold-code`` (its profile:
the standard workload; it has no tests).  ``--alternate BURSTS`` takes the
requests/s and CPU from every variant's Envoy running at once, loaded in
alternating one-second bursts (:func:`alternating_bursts`), steadier on a
busy machine; start-up still comes from the rounds.
Every Envoy gets tcmalloc's settings meshext's sidecars use (the bootstrap's
``memory_allocator_manager``, glibc's rseq left to tcmalloc).
Loopback only; every run is bounded in time.

    python benchmarks/sdk_header_filter.py [--seconds 5] [--rounds 3] [--alternate BURSTS]
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
import urllib.request
from pathlib import Path

from registry_pull import cpu_model

from meshext.control.proxy import MEMORY_ALLOCATOR_MANAGER
from meshext.envoy import EnvoyProcess
from meshext.sdk.builder import build_filter, toolchain

HERE = Path(__file__).resolve().parent
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
LUA = """
function envoy_on_request(request_handle)
  local path = request_handle:headers():get(":path") or ""
  request_handle:headers():add("x-path-length", tostring(string.len(path)))
end
"""
SETTLE_SECONDS = 1.5  # a few release intervals before RSS is read


def wasm_filter(module: Path, configuration: dict | None = None) -> list[dict]:
    """Envoy's Wasm HTTP filter running ``module``, with ``configuration`` as JSON plugin configuration."""
    config: dict = {"name": "bench", "root_id": "", "vm_config": {
        "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}}
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": json.dumps(configuration)}
    return [{"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}]


def variants(python_module: Path, empty_module: Path, wat_module: Path, cold_module: Path) -> dict[str, list[dict]]:
    return {
        "no filter": [],
        "native header_mutation": [{
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"append": {"header": {
                    "key": "x-path-length", "value": "%REQ(:PATH)%"}}}]},
            },
        }],
        "lua": [{"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA}}}],
        "Wasm doing nothing": wasm_filter(empty_module),
        "hand-written Wasm (floor)": wasm_filter(wat_module),
        "meshext python": wasm_filter(python_module),
        "meshext python, --cold-code": wasm_filter(cold_module),
    }


def bootstrap(filters: list[dict], clusters: list[dict] | None = None) -> dict:
    """One listener "bench" answering 200 itself after ``filters``; ``clusters`` for filters that call out."""
    listener = {
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "bench",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": [*filters, ROUTER]}}]}],
    }
    return {"memory_allocator_manager": MEMORY_ALLOCATOR_MANAGER,
            "static_resources": {"clusters": clusters or [], "listeners": [listener]}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wrk_latency_us(output: str, percentile: str) -> float:
    """A percentile of ``wrk --latency``'s distribution ("50%", "99%") in µs."""
    value, unit = re.search(rf"^\s*{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wait_answered(url: str, timeout: float = 60) -> None:
    """Return once ``url`` answers (a listener or its upstreams may still be warming)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wrk_load(url: str, seconds: int, pids: list[int], connections: int = 8) -> dict[str, float]:
    """Load ``url`` with wrk (one thread, ``connections``, ``seconds``): requests/s, p50/p99 and the CPU per
    request of the processes ``pids`` together."""
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "cpu_us_per_request": cpu / requests * 1e6,
        "p50_us": wrk_latency_us(output, "50%"),
        "p99_us": wrk_latency_us(output, "99%"),
    }


def alternating_bursts(targets: dict[str, tuple[str, list[int]]], bursts: int) -> dict[str, list[dict[str, float]]]:
    """Load already running variants (name -> (url, pids of their Envoys)) in turn: a 3 s warm-up burst each
    (V8's tier-up included), then ``bursts`` one-second wrk bursts each, the order reversed every other
    burst, so the load of other work drifts over every variant alike.  Each burst's figures, by variant."""
    for url, pids in targets.values():
        wrk_load(url, 3, pids)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for number in range(bursts):
        for name in list(targets)[::1 if number % 2 == 0 else -1]:
            url, pids = targets[name]
            runs[name].append(wrk_load(url, 1, pids))
    return runs


def alternated(chosen: dict[str, list[dict]], bursts: int, clusters: list[dict] | None = None,
               start_timeout: float = 60) -> dict[str, list[dict[str, float]]]:
    """Every variant's Envoy at once (``clusters`` for filters that call out), loaded in
    :func:`alternating_bursts` on ``/some/request/path``: each burst's figures, by variant."""
    envoys: dict[str, EnvoyProcess] = {}
    try:
        targets = {}
        for name, filters in chosen.items():
            envoy = envoys[name] = EnvoyProcess(bootstrap(filters, clusters)).start(timeout=start_timeout)
            host, port = envoy.listener_address("bench")
            wait_answered(f"http://{host}:{port}/x", timeout=start_timeout)
            assert envoy.process is not None
            targets[name] = (f"http://{host}:{port}/some/request/path", [envoy.process.pid])
        return alternating_bursts(targets, bursts)
    finally:
        for envoy in envoys.values():
            envoy.cleanup()


def one_round(filters: list[dict], seconds: int, clusters: list[dict] | None = None,
              connections: int = 8, start_timeout: float = 60) -> dict[str, float]:
    """Start Envoy (timing the first answered request) and load it with wrk (one thread, ``connections``)."""
    started = time.monotonic()
    envoy = EnvoyProcess(bootstrap(filters, clusters))
    try:
        envoy.start(timeout=start_timeout)
        host, port = envoy.listener_address("bench")
        wait_answered(f"http://{host}:{port}/x", timeout=start_timeout)
        first_request = time.monotonic() - started
        assert envoy.process is not None
        figures = wrk_load(f"http://{host}:{port}/some/request/path", seconds, [envoy.process.pid], connections)
        return {"start_to_first_request_s": first_request, **figures}
    finally:
        envoy.cleanup()


def settled_rss_mb(envoy: EnvoyProcess) -> float:
    """A started Envoy's RSS in MB once its workers have served requests and memory has settled."""
    host, port = envoy.listener_address("bench")
    for _ in range(4):  # reach both workers
        urllib.request.urlopen(f"http://{host}:{port}/warm", timeout=5).read()
    time.sleep(SETTLE_SECONDS)
    return envoy.rss_bytes() / 2**20


def rss_mb(filters: list[dict], workers: int, start_timeout: float = 60, clusters: list[dict] | None = None) -> float:
    """Envoy's RSS once every worker has served requests and memory has settled."""
    envoy = EnvoyProcess(bootstrap(filters, clusters), concurrency=workers)
    try:
        envoy.start(timeout=start_timeout)
        return settled_rss_mb(envoy)
    finally:
        envoy.cleanup()


def wat_module(name: str, directory: Path) -> Path:
    """filters/NAME/filter.wat assembled with wasm-tools into DIRECTORY/NAME.wasm."""
    module = directory / f"{name}.wasm"
    subprocess.run([toolchain.wasm_tools(), "parse", str(HERE / "filters" / name / "filter.wat"), "-o", str(module)],
                   check=True)
    return module


def machine() -> str:
    """Date, CPU model, cores (nproc) and memory of this machine, for the figures' heading."""
    memory_kb = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
    return (f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, nproc {len(os.sched_getaffinity(0))}, "
            f"{memory_kb / 2**20:.0f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--alternate", type=int, default=0, metavar="BURSTS",
                        help="requests/s and CPU from every Envoy at once, BURSTS alternating one-second bursts")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as scratch:
        built = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm")
        cold = build_filter(HERE / "filters" / "header", Path(scratch) / "header-cold.wasm", cold_code=True)
        chosen = variants(built.output, wat_module("empty_wat", Path(scratch)), wat_module("header_wat", Path(scratch)),
                          cold.output)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, filters in chosen.items():
                rounds[name].append(one_round(filters, args.seconds))
        results = {
            name: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for name, runs in rounds.items()
        }
        if args.alternate:
            for name, bursts in alternated(chosen, args.alternate).items():
                for key in ("requests_per_s", "cpu_us_per_request"):
                    results[name][key] = statistics.median(burst[key] for burst in bursts)
        for name, filters in chosen.items():
            results[name]["rss_mb_1_worker"] = rss_mb(filters, 1)
            results[name]["rss_mb_2_workers"] = rss_mb(filters, 2)
    base, floor = results["no filter"], results["hand-written Wasm (floor)"]
    load = f"{args.alternate} alternating 1 s bursts" if args.alternate else f"-d{args.seconds}s"
    print(f"# {machine()}, wrk -t1 -c8 {load}, {args.rounds} interleaved rounds (medians), "
          f"Envoy 1 worker, direct response, load average {os.getloadavg()[0]:.1f}")
    print(f"module size: {built.size / 1e6:.2f} MB, with --cold-code {cold.size / 1e6:.2f} MB")
    print("| variant | req/s | added µs/request | vs floor | Envoy CPU µs/request | RSS 1 worker (MB) "
          "| vs no filter | vs floor | +RSS 2nd worker (MB) | start→first request (s) | vs floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def added(figures: dict[str, float]) -> float:
        return 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"]

    for name, figures in results.items():
        rss = figures["rss_mb_1_worker"]
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added(figures):+.1f} "
              f"| {added(figures) / added(floor):.2f} | {figures['cpu_us_per_request']:.1f} "
              f"| {rss:.0f} | {rss / base['rss_mb_1_worker']:.2f} | {rss / floor['rss_mb_1_worker']:.2f} "
              f"| {figures['rss_mb_2_workers'] - rss:+.0f} | {figures['start_to_first_request_s']:.2f} "
              f"| {figures['start_to_first_request_s'] / floor['start_to_first_request_s']:.1f} |")
    print(json.dumps({name: {"rounds": rounds[name], "medians": results[name]} for name in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
