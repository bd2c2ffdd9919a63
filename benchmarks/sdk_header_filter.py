"""Python header filter vs. no filter, Envoy's native header_mutation and Lua.

One Envoy worker, a direct response, the same load generator (wrk, one
thread, 8 connections, fixed duration) for every variant, run side by side.
Reports requests/s, added latency per request against no filter, Envoy RSS,
RSS added by a second worker, time from Envoy start to the first answered
request, and the module size.  Loopback only; every run is bounded in time.

    python benchmarks/sdk_header_filter.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from meshext.runtime.envoy import EnvoyProcess
from meshext.sdk.build import build_filter

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


def variants(module: Path) -> dict[str, list[dict]]:
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
        "meshext python": [{"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "bench", "root_id": "", "vm_config": {
                "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}}}}],
    }


def bootstrap(filters: list[dict]) -> dict:
    return {"static_resources": {"listeners": [{
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "bench",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": [*filters, ROUTER]}}]}],
    }]}}


def first_request_seconds(filters: list[dict]) -> float:
    """Envoy start to the first answered request (polling every 10 ms)."""
    started = time.monotonic()
    envoy = EnvoyProcess(bootstrap(filters))
    try:
        envoy.start(timeout=60)
        host, port = envoy.listener_address("bench")
        while True:
            try:
                urllib.request.urlopen(f"http://{host}:{port}/x", timeout=5).read()
                return time.monotonic() - started
            except OSError:
                time.sleep(0.01)
    finally:
        envoy.cleanup()


def measure(filters: list[dict], seconds: int) -> dict:
    result = {"start_to_first_request_s": first_request_seconds(filters)}
    for concurrency in (1, 2):
        envoy = EnvoyProcess(bootstrap(filters), concurrency=concurrency)
        try:
            envoy.start(timeout=60)
            host, port = envoy.listener_address("bench")
            urllib.request.urlopen(f"http://{host}:{port}/warm", timeout=5).read()
            if concurrency == 1:
                output = subprocess.run(
                    ["wrk", "-t1", "-c8", f"-d{seconds}s", f"http://{host}:{port}/some/request/path"],
                    capture_output=True, text=True, timeout=seconds + 30,
                ).stdout
                result["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
            result[f"rss_mb_{concurrency}_worker"] = envoy.rss_bytes() / 2**20
        finally:
            envoy.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per variant")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as scratch:
        built = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm")
        results = {name: measure(filters, args.seconds) for name, filters in variants(built.output).items()}
    base = results["no filter"]
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"wrk -t1 -c8 -d{args.seconds}s, Envoy 1 worker, direct response")
    print(f"module size: {built.size / 1e6:.2f} MB")
    print("| variant | req/s | added µs/request | RSS 1 worker (MB) | RSS ratio | +RSS 2nd worker (MB) | start→first request (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, figures in results.items():
        added = 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"]
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added:+.1f} | {figures['rss_mb_1_worker']:.0f} | "
              f"{figures['rss_mb_1_worker'] / base['rss_mb_1_worker']:.2f} | "
              f"{figures['rss_mb_2_worker'] - figures['rss_mb_1_worker']:+.0f} | {figures['start_to_first_request_s']:.2f} |")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
