"""What several Python extensions cost one sidecar: the "four extensions"
variant of issue 16, against no filter and the hand-written Wasm floor.

A sidecar runs telemetry, local rate limiting, a 3scale-sized stand-in (the
rate-limit project built again under another name, so its module differs
byte for byte, as a separately published extension's does) and one user
Python filter (the header filter of ``sdk_header_filter.py``):

* as four modules with four ``vm_id``\\ s (what the control plane deployed
  before VM sharing);
* as one module serving four plugins, four ``vm_id``\\ s, and with one shared
  ``vm_id`` (what the control plane now gives byte-identical modules of one
  publisher: control/envoy_config.py ``vm_id_for``).  The rate-limit module
  stands for a module carrying all four extensions (multi-root build, not
  implemented): the stdlib and CPython dominate its code either way.

Each extension alone is measured too, so the four-extension latency can be
compared with the sum of its parts.  Same method as sdk_header_filter.py
(its helpers): one Envoy worker, direct response, wrk, interleaved rounds,
medians; RSS with one worker after memory settles; start -> first answer.

    python benchmarks/sidecar_extensions.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdk_header_filter import HERE, one_round, rss_mb

from meshext.sdk.builder import build_filter, toolchain

REPO = HERE.parent
RATELIMIT = {"mode": "local", "domain": "bench", "response_headers": False, "rules": [{
    "name": "per-client", "descriptor": [{"key": "client", "header": "x-client", "default": "unknown"}],
    "limit": {"requests_per_unit": 1_000_000_000, "unit": "second"}}]}


def plugin(name: str, module: Path, vm_id: str, configuration: object = None) -> dict:
    """One Wasm HTTP filter as the control plane writes it (control/envoy_config.py)."""
    config: dict = {"name": name, "root_id": "", "vm_config": {
        "vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}}
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": json.dumps(configuration)}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


def build_modules(scratch: Path) -> dict[str, Path]:
    standin = scratch / "threescale-standin"
    shutil.copytree(REPO / "extensions" / "ratelimit" / "filter", standin,
                    ignore=shutil.ignore_patterns("build", "tests", "__pycache__"))
    toml = standin / "meshext.toml"
    toml.write_text(toml.read_text().replace('name = "ratelimit"', 'name = "threescale-standin"'))
    sources = {"telemetry": REPO / "extensions" / "telemetry" / "filter",
               "ratelimit": REPO / "extensions" / "ratelimit" / "filter",
               "threescale-standin": standin, "user": HERE / "filters" / "header"}
    modules = {name: build_filter(path, scratch / f"{name}.wasm").output for name, path in sources.items()}
    modules["floor"] = scratch / "floor.wasm"
    subprocess.run([toolchain.wasm_tools(), "parse", str(HERE / "filters" / "header_wat" / "filter.wat"),
                    "-o", str(modules["floor"])], check=True)
    return modules


def variants(m: dict[str, Path]) -> dict[str, list[dict]]:
    configs = {"telemetry": {}, "ratelimit": RATELIMIT, "threescale-standin": RATELIMIT, "user": None}
    four_modules = [plugin(name, m[name], name, configs[name]) for name in configs]
    return {
        "no filter": [],
        "hand-written Wasm (floor)": [plugin("floor", m["floor"], "floor")],
        "user filter alone": [plugin("user", m["user"], "user")],
        "telemetry alone": [plugin("telemetry", m["telemetry"], "telemetry", {})],
        "ratelimit alone": [plugin("ratelimit", m["ratelimit"], "ratelimit", RATELIMIT)],
        "3scale stand-in alone": [plugin("standin", m["threescale-standin"], "standin", RATELIMIT)],
        "four modules, four vm_ids (before)": four_modules,
        "one module x4 plugins, four vm_ids": [plugin(n, m["ratelimit"], n, RATELIMIT) for n in configs],
        "one module x4 plugins, one shared vm_id": [plugin(n, m["ratelimit"], "shared", RATELIMIT)
                                                     for n in configs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as scratch:
        modules = build_modules(Path(scratch))
        chosen = variants(modules)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, filters in chosen.items():
                # Four modules compile for tens of seconds on a busy 2-core machine.
                rounds[name].append(one_round(filters, args.seconds, start_timeout=300))
                rounds[name][-1]["rss_mb"] = rss_mb(filters, 1, start_timeout=300)
                print(json.dumps({name: rounds[name][-1]}), file=sys.stderr, flush=True)  # progress
        results = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for name, runs in rounds.items()}
        sizes = {name: path.stat().st_size / 1e6 for name, path in modules.items()}
    base, floor = results["no filter"], results["hand-written Wasm (floor)"]

    def added(figures: dict[str, float]) -> float:
        return 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"]

    def start(figures: dict[str, float]) -> float:
        return figures["start_to_first_request_s"]

    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"wrk -t1 -c8 -d{args.seconds}s, {args.rounds} interleaved rounds (medians), Envoy 1 worker")
    print("module sizes (MB): " + ", ".join(f"{name} {size:.2f}" for name, size in sizes.items()))
    print("| variant | added µs/request | vs floor | RSS MB | vs no filter | vs floor | start→first answer s "
          "| vs no filter | vs floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, f in results.items():
        print(f"| {name} | {added(f):+.1f} | {added(f) / added(floor):.2f} | {f['rss_mb']:.0f} "
              f"| {f['rss_mb'] / base['rss_mb']:.2f} | {f['rss_mb'] / floor['rss_mb']:.2f} "
              f"| {start(f):.2f} | {start(f) / start(base):.1f} | {start(f) / start(floor):.1f} |")
    parts = sum(added(results[name]) for name in
                ("telemetry alone", "ratelimit alone", "3scale stand-in alone", "user filter alone"))
    print(f"sum of the four alone: {parts:+.1f} µs/request")
    print(json.dumps({name: {"rounds": rounds[name], "medians": results[name]} for name in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
