"""What several Python extensions cost one sidecar: the "four extensions"
variant of issue 16, against no filter and the hand-written Wasm floor.

A sidecar runs telemetry, local rate limiting, 3scale (cached key, its
backend simulator on loopback) and one user Python filter (the header filter
of ``sdk_header_filter.py``):

* as four modules, one ``vm_id`` each (four CPythons per thread: each
  module's VMs are its own whatever the ``vm_id``);
* as one multi-root module (``meshext build`` of the four projects), four
  plugins naming its four roots with one shared ``vm_id`` (one CPython per
  thread: control/envoy_config.py gives them that).

Each extension alone is measured too, so the four-extension latency can be
compared with the sum of its parts.  Same method as sdk_header_filter.py
(its helpers): one Envoy worker, direct response, wrk, interleaved rounds,
medians; RSS with one worker after memory settles; start -> first answer.

With ``--cold-code`` each extension alone and the multi-root module run
built with ``meshext build --cold-code`` too, as variants of their own.

``--alternate BURSTS`` takes the latency from every variant's Envoy running
at once, loaded in alternating one-second bursts (as ``telemetry_overhead.py
--alternate``): the machine's drift then falls on every variant alike.

    python benchmarks/sidecar_extensions.py [--seconds 3] [--rounds 3] [--optimize] [--cold-code] [--alternate N]
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

from sdk_header_filter import HERE, alternated, machine, one_round, rss_mb, wat_module
from threescale_latency import BACKEND_CLUSTER, SERVICE, plugin_config

from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig
from meshext.sdk.builder import build_filter, build_filters

REPO = HERE.parent
RATELIMIT = {"mode": "local", "domain": "bench", "response_headers": False, "rules": [{
    "name": "per-client", "descriptor": [{"key": "client", "header": "x-client", "default": "unknown"}],
    "limit": {"requests_per_unit": 1_000_000_000, "unit": "second"}}]}
# Project folder and root_id (its meshext.toml name) of each extension.
PROJECTS = {"telemetry": (REPO / "extensions" / "telemetry" / "filter", "telemetry"),
            "ratelimit": (REPO / "extensions" / "ratelimit" / "filter", "ratelimit"),
            "3scale": (REPO / "extensions" / "3scale" / "filter", "threescale-auth"),
            "user": (HERE / "filters" / "header", "bench-header")}
CONFIGS = {"telemetry": {}, "ratelimit": RATELIMIT, "3scale": plugin_config(cached=True), "user": None}
# The 3scale filter reads the key from :path: every path the benchmark sends is an application.
THREESCALE_SERVICE = {**SERVICE, "applications": [*SERVICE["applications"], {"user_key": "/warm", "plan": "Unlimited"}]}


def backend_cluster(port: int) -> dict:
    """The 3scale backend simulator's cluster."""
    return {"name": BACKEND_CLUSTER, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": BACKEND_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def plugin(name: str, module: Path, vm_id: str, configuration: object = None, root_id: str = "") -> dict:
    """One Wasm HTTP filter as the control plane writes it (control/envoy_config.py)."""
    config: dict = {"name": name, "root_id": root_id, "vm_config": {
        "vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}}
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": json.dumps(configuration)}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


COLD = ", --cold-code"  # the suffix of a module's (and its variant's) name built with --cold-code


def build_modules(scratch: Path, optimize: bool, cold_code: bool) -> dict[str, Path]:
    """Each project's module, the multi-root module of all four (``optimize``: with `meshext build --optimize`;
    ``cold_code``: each also with `--cold-code`) and the hand-written floor."""
    modules = {}
    for suffix in ("", COLD) if cold_code else ("",):
        for name, (path, _) in PROJECTS.items():
            modules[name + suffix] = build_filter(path, scratch / f"{name}{suffix}.wasm", optimize_code=optimize,
                                                  cold_code=bool(suffix)).output
        modules["multi-root" + suffix] = build_filters(
            [path for path, _ in PROJECTS.values()], scratch / f"multi-root{suffix}.wasm", optimize_code=optimize,
            cold_code=bool(suffix)).output
    modules["floor"] = wat_module("header_wat", scratch)
    return modules


def variants(m: dict[str, Path]) -> dict[str, list[dict]]:
    chosen: dict[str, list[dict]] = {"no filter": [],
                                     "hand-written Wasm (floor)": [plugin("floor", m["floor"], "floor")]}
    for suffix in ("", COLD) if f"multi-root{COLD}" in m else ("",):
        chosen |= {f"{name} alone{suffix}": [plugin(name, m[name + suffix], name, CONFIGS[name])] for name in PROJECTS}
        if not suffix:
            chosen["four modules"] = [plugin(name, m[name], name, CONFIGS[name]) for name in PROJECTS]
        chosen[f"one multi-root module, shared vm_id{suffix}"] = [
            plugin(name, m["multi-root" + suffix], "shared", CONFIGS[name], root_id=root_id)
            for name, (_, root_id) in PROJECTS.items()]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--optimize", action="store_true",
                        help="build the Python modules with `meshext build --optimize` (wasm-opt)")
    parser.add_argument("--alternate", type=int, default=0, metavar="BURSTS",
                        help="measure latency with every variant's Envoy running at once, BURSTS alternating "
                             "one-second bursts each (start and RSS still come from the rounds)")
    parser.add_argument("--cold-code", action="store_true",
                        help="also each Python module built with `meshext build --cold-code` (profiled on each "
                             "project's tests and the standard workload), as variants of their own")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    backend = Backend(SimulatorConfig.model_validate({"services": [THREESCALE_SERVICE]}))
    with tempfile.TemporaryDirectory() as scratch, BackendServer(backend) as simulator:
        clusters = [backend_cluster(simulator.port)]
        modules = build_modules(Path(scratch), args.optimize, args.cold_code)
        chosen = variants(modules)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        loads: list[float] = []
        for _ in range(args.rounds):
            for name, filters in chosen.items():
                # Four modules compile for tens of seconds on a busy 2-core machine.
                rounds[name].append(one_round(filters, args.seconds, clusters, start_timeout=300))
                rounds[name][-1]["rss_mb"] = rss_mb(filters, 1, start_timeout=300, clusters=clusters)
                loads.append(os.getloadavg()[0])
                print(json.dumps({name: rounds[name][-1]}), file=sys.stderr, flush=True)  # progress
        results = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for name, runs in rounds.items()}
        if args.alternate:
            for name, bursts in alternated(chosen, args.alternate, clusters, start_timeout=300).items():
                figures = {key: statistics.median(burst[key] for burst in bursts)
                           for key in ("requests_per_s", "cpu_us_per_request")}
                results[name] |= figures
        sizes = {name: path.stat().st_size / 1e6 for name, path in modules.items()}
    base, floor = results["no filter"], results["hand-written Wasm (floor)"]

    def added(figures: dict[str, float]) -> float:
        return 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"]

    def start(figures: dict[str, float]) -> float:
        return figures["start_to_first_request_s"]

    print(f"# {machine()}, wrk -t1 -c8 -d{args.seconds}s, {args.rounds} interleaved round(s) (medians), "
          f"Envoy 1 worker, load average {min(loads):.1f}-{max(loads):.1f} (1 min)"
          + (f", latency from {args.alternate} alternating 1 s bursts" if args.alternate else "")
          + (", modules built with --optimize" if args.optimize else ""))
    print("module sizes (MB): " + ", ".join(f"{name} {size:.2f}" for name, size in sizes.items()))
    print("| variant | added µs/request | vs floor | RSS MB | vs no filter | vs floor | start→first answer s "
          "| vs no filter | vs floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, f in results.items():
        print(f"| {name} | {added(f):+.1f} | {added(f) / added(floor):.2f} | {f['rss_mb']:.0f} "
              f"| {f['rss_mb'] / base['rss_mb']:.2f} | {f['rss_mb'] / floor['rss_mb']:.2f} "
              f"| {start(f):.2f} | {start(f) / start(base):.1f} | {start(f) / start(floor):.1f} |")
    for suffix in ("", COLD) if args.cold_code else ("",):
        parts = sum(added(results[f"{name} alone{suffix}"]) for name in PROJECTS)
        print(f"sum of the four alone{suffix}: {parts:+.1f} µs/request")
    four, multi = results["four modules"], results["one multi-root module, shared vm_id"]
    print(f"multi-root vs four modules: RSS {multi['rss_mb'] / four['rss_mb']:.2f}x, "
          f"start {start(multi) / start(four):.2f}x, added latency {added(multi) / added(four):.2f}x")
    print(json.dumps({name: {"rounds": rounds[name], "medians": results[name]} for name in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
