"""The ratelimit filter in local mode vs. the Python header filter and Envoy's native local_ratelimit.

Same method as ``sdk_header_filter.py`` (its helpers): one Envoy worker, a
direct response, ``wrk -t1 -c8`` for a fixed time per variant, variants
interleaved over ``--rounds`` rounds, medians reported, added µs per
request against no filter (from requests/s).  The limits are far above
what the load reaches, so every request takes the admit path: one rule
match, one shared-data read and one compare-and-swap write, the counter,
and (unless the variant says otherwise) the x-ratelimit-* response headers.
The target is at most 1.5× the header filter's added µs; the ratio is
printed for each variant, from requests/s and from Envoy's CPU time per
request (utime + stime from /proc): on a machine shared with other loads the
CPU figure is the steadier one, requests/s moves with everyone else's work.
``--extra NAME=PROJECT`` adds a variant built from another filter project
(a changed copy of the filter), to compare alternatives in the same run.
Loopback only; every run is bounded.

    python benchmarks/ratelimit_local.py [--seconds 5] [--rounds 3] [--extra NAME=PROJECT ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from sdk_header_filter import machine, one_round, wasm_filter

from meshext.sdk.builder import build_filter

HERE = Path(__file__).resolve().parent
RATELIMIT = HERE.parent / "extensions" / "ratelimit" / "filter"
NEVER_REACHED = {"requests_per_unit": 1_000_000_000, "unit": "second"}
NATIVE_LOCAL_RATELIMIT = [{"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "bench",
    "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"},
    "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}}]


def ratelimit_config(algorithm: str, response_headers: bool = True) -> dict:
    """One rule on every request, one descriptor entry, a limit never reached."""
    return {"domain": "bench", "response_headers": response_headers, "rules": [{
        "name": "all", "descriptor": [{"key": "route", "value": "bench"}], "algorithm": algorithm,
        "limit": NEVER_REACHED}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PROJECT",
                        help="also measure the filter project PROJECT (token_bucket), labelled NAME")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as scratch:
        header = build_filter(HERE / "filters" / "header", Path(scratch) / "header.wasm").output
        ratelimit = build_filter(RATELIMIT, Path(scratch) / "ratelimit.wasm").output
        chosen = {
            "no filter": [],
            "native local_ratelimit": NATIVE_LOCAL_RATELIMIT,
            "meshext python header filter": wasm_filter(header),
            "ratelimit local, token_bucket": wasm_filter(ratelimit, ratelimit_config("token_bucket")),
            "ratelimit local, fixed_window": wasm_filter(ratelimit, ratelimit_config("fixed_window")),
            "ratelimit local, token_bucket, no response headers": wasm_filter(
                ratelimit, ratelimit_config("token_bucket", response_headers=False)),
        }
        for extra in args.extra:
            name, _, project = extra.partition("=")
            built = build_filter(Path(project), Path(scratch) / f"extra-{len(chosen)}.wasm").output
            chosen[name] = wasm_filter(built, ratelimit_config("token_bucket"))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, filters in chosen.items():
                rounds[name].append(one_round(filters, args.seconds))
    medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    base = medians["no filter"]
    added = {name: 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"] for name, figures in medians.items()}
    added_cpu = {name: figures["cpu_us_per_request"] - base["cpu_us_per_request"] for name, figures in medians.items()}
    header = "meshext python header filter"
    print(f"# {machine()}, wrk -t1 -c8 -d{args.seconds}s, {args.rounds} interleaved rounds (medians), "
          "Envoy 1 worker, direct response")
    print("| variant | req/s | added µs/request (from req/s) | × header filter | Envoy CPU µs/request "
          "| added CPU µs/request | × header filter (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, figures in medians.items():
        ratio = f"{added[name] / added[header]:.2f}" if name != "no filter" else "—"
        cpu_ratio = f"{added_cpu[name] / added_cpu[header]:.2f}" if name != "no filter" else "—"
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added[name]:+.1f} | {ratio} "
              f"| {figures['cpu_us_per_request']:.1f} | {added_cpu[name]:+.1f} | {cpu_ratio} |")
    print(json.dumps({name: {"rounds": rounds[name], "medians": medians[name]} for name in rounds}), file=sys.stderr)


if __name__ == "__main__":
    main()
