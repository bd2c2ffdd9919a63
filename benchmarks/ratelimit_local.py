"""The ratelimit filter in local mode vs. the Python header filter and Envoy's native local_ratelimit.

Same method as ``sdk_header_filter.py`` (its helpers): one Envoy worker, a
direct response, ``wrk -t1 -c8`` for a fixed time per variant, variants
interleaved over ``--rounds`` rounds, medians reported, added µs per
request against no filter (from requests/s).  The limits are far above
what the load reaches, so every request takes the admit path: one rule
(fixed descriptor, no conditions), the bucket's shared-data read and
compare-and-swap write on one request in 32 (the others spend the worker's
lease), the counter, and in the ``response_headers`` variants the three
x-ratelimit-* response headers (the filter's default leaves them off).
The target is at most 1.5× the header filter's added µs; the ratio is
printed for each variant, from requests/s and from Envoy's CPU time per
request (utime + stime from /proc): on a machine shared with other loads the
CPU figure is the steadier one, requests/s moves with everyone else's work.
``--alternate BURSTS`` runs every variant's Envoy at once and alternates
one-second bursts between them instead (as ``telemetry_overhead.py``
does), so drift in the machine's other load falls on all variants alike.
``--extra NAME=PROJECT`` adds a variant built from another filter project
(a changed copy of the filter), to compare alternatives in the same run.
Loopback only; every run is bounded.

``--steps`` measures instead, without Envoy, what each variant's Python does
per request: the filter's modules and the SDK's run in this CPython (the
same bytecode the VM runs) against a stand-in for the host module, counting
interpreter steps (bytecode instructions, via ``sys.settrace`` opcode
events; the host's own functions are C in the VM and are not counted) and
host calls, over the same admit path.

``--test-host`` measures the variants in meshext's test host instead
(wasmtime, host functions in Python): CPU µs per request, the minimum over
``--rounds`` interleaved rounds of ``TEST_HOST_REQUESTS`` requests.

    python benchmarks/ratelimit_local.py [--seconds 5] [--rounds 3] [--extra NAME=PROJECT ...]
    python benchmarks/ratelimit_local.py --alternate 30 [--extra NAME=PROJECT ...]
    python benchmarks/ratelimit_local.py --steps [--extra NAME=PROJECT ...]
    python benchmarks/ratelimit_local.py --test-host [--rounds 5] [--extra NAME=PROJECT ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stand_in_host import StandInHost, count_steps, filter_root, overridden

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


def ratelimit_config(algorithm: str, response_headers: bool = False) -> dict:
    """One rule on every request, one descriptor entry, a limit never reached."""
    return {"domain": "bench", "response_headers": response_headers, "rules": [{
        "name": "all", "descriptor": [{"key": "route", "value": "bench"}], "algorithm": algorithm,
        "limit": NEVER_REACHED}]}


STEP_REQUESTS = 2000  # requests per variant for --steps (after 100 not counted: buckets created, leases taken)


def steps_of(project: Path, config: dict | None) -> dict[str, float]:
    """Interpreter steps and host calls per request of the filter project ``project`` (this process)."""
    host = StandInHost()
    host.headers[0] = [(":method", "GET"), (":path", "/some/request/path"), (":authority", "bench")]  # MapType
    host.install()
    root_class = filter_root(project)
    from meshext.sdk import HttpContext

    root = root_class(1)
    assert root.on_configure(json.dumps(config).encode() if config is not None else b"") is not False
    http_class = root.http_context  # the class on_configure chose for this configuration
    callbacks = overridden(http_class, HttpContext, ("on_request_headers", "on_response_headers"))

    def requests(first: int, count: int) -> None:
        for context_id in range(first, first + count):
            context = http_class(root, context_id)
            for name in callbacks:
                getattr(context, name)(False)

    requests(2, 100)
    host.calls.clear()
    steps = count_steps(lambda: requests(200, STEP_REQUESTS), not_counted=(__file__,))
    return {"interpreter steps": steps / STEP_REQUESTS,
            **{name: count / STEP_REQUESTS for name, count in sorted(host.calls.items())}}


def print_steps(projects: dict[str, tuple[Path, dict | None]]) -> None:
    """Run :func:`steps_of` for each project in its own process (each imports its own filter modules)."""
    figures = {}
    for name, (project, config) in projects.items():
        answer = subprocess.run([sys.executable, __file__, "--steps-of", str(project), json.dumps(config)],
                                capture_output=True, text=True, timeout=300, check=True)
        figures[name] = json.loads(answer.stdout)
    columns = sorted({column for row in figures.values() for column in row},
                     key=lambda column: (column != "interpreter steps", column))
    print(f"| variant (per request, admit path) | {' | '.join(columns)} |")
    print("| --- |" + " --- |" * len(columns))
    for name, row in figures.items():
        print(f"| {name} | " + " | ".join(f"{row.get(column, 0):.2f}".rstrip("0").rstrip(".") for column in columns)
              + " |")


TEST_HOST_REQUESTS = 2000


def print_test_host(projects: dict[str, tuple[Path, dict | None]], rounds: int) -> None:
    """CPU µs per request of each project in the test host (min over ``rounds`` interleaved rounds)."""
    import time

    from meshext.sdk.builder import build_filter
    from meshext.testing import Host

    with tempfile.TemporaryDirectory() as scratch:
        plugins = {}
        for number, (name, (project, config)) in enumerate(projects.items()):
            module = build_filter(project, Path(scratch) / f"variant-{number}.wasm").output
            plugins[name] = Host().load(module, config=json.dumps(config) if config is not None else "")
        best = {name: float("inf") for name in plugins}
        for _ in range(rounds):
            for name, plugin in plugins.items():
                for _ in range(100):  # buckets created, leases taken
                    plugin.exchange()
                started = time.process_time()
                for _ in range(TEST_HOST_REQUESTS):
                    plugin.exchange()
                best[name] = min(best[name], (time.process_time() - started) / TEST_HOST_REQUESTS * 1e6)
    print(f"| variant (test host, min of {rounds} rounds) | CPU µs/request |")
    print("| --- | --- |")
    for name, figure in best.items():
        print(f"| {name} | {figure:.1f} |")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--steps-of":  # the child process of --steps
        print(json.dumps(steps_of(Path(sys.argv[2]), json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--alternate", type=int, default=0, metavar="BURSTS",
                        help="run every variant's Envoy at once and alternate BURSTS one-second wrk bursts "
                             "between them instead of interleaved rounds (steadier on a busy machine)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PROJECT",
                        help="also measure the filter project PROJECT (token_bucket), labelled NAME")
    parser.add_argument("--steps", action="store_true",
                        help="count interpreter steps and host calls per request instead (no Envoy)")
    parser.add_argument("--test-host", action="store_true",
                        help="measure CPU time per request in meshext's test host instead (no Envoy)")
    args = parser.parse_args()
    extras = {name: Path(project) for name, _, project in (extra.partition("=") for extra in args.extra)}
    projects = {"meshext python header filter": (HERE / "filters" / "header", None),
                "ratelimit local, token_bucket": (RATELIMIT, ratelimit_config("token_bucket")),
                "ratelimit local, fixed_window": (RATELIMIT, ratelimit_config("fixed_window")),
                **{name: (project, ratelimit_config("token_bucket")) for name, project in extras.items()}}
    if args.steps:
        print_steps(projects)
        return
    if args.test_host:
        print_test_host(projects, args.rounds)
        return
    from sdk_header_filter import alternated, machine, one_round, wasm_filter

    from meshext.sdk.builder import build_filter

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
            "ratelimit local, token_bucket, response_headers": wasm_filter(
                ratelimit, ratelimit_config("token_bucket", response_headers=True)),
            "ratelimit local, fixed_window, response_headers": wasm_filter(
                ratelimit, ratelimit_config("fixed_window", response_headers=True)),
        }
        for name, project in extras.items():
            built = build_filter(project, Path(scratch) / f"extra-{len(chosen)}.wasm").output
            chosen[name] = wasm_filter(built, ratelimit_config("token_bucket"))
        if args.alternate:
            rounds = alternated(chosen, args.alternate)
        else:
            rounds = {name: [] for name in chosen}
            for _ in range(args.rounds):
                for name, filters in chosen.items():
                    rounds[name].append(one_round(filters, args.seconds))
    medians = {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    base = medians["no filter"]
    added = {name: 1e6 / figures["requests_per_s"] - 1e6 / base["requests_per_s"] for name, figures in medians.items()}
    added_cpu = {name: figures["cpu_us_per_request"] - base["cpu_us_per_request"] for name, figures in medians.items()}
    baseline = "meshext python header filter"
    method = (f"{args.alternate} alternating 1 s bursts per variant, all running at once" if args.alternate
              else f"-d{args.seconds}s, {args.rounds} interleaved rounds")
    print(f"# {machine()}, wrk -t1 -c8 {method} (medians), Envoy 1 worker, direct response")
    print("| variant | req/s | added µs/request (from req/s) | × header filter | Envoy CPU µs/request "
          "| added CPU µs/request | × header filter (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, figures in medians.items():
        ratio = f"{added[name] / added[baseline]:.2f}" if name != "no filter" else "—"
        cpu_ratio = f"{added_cpu[name] / added_cpu[baseline]:.2f}" if name != "no filter" else "—"
        print(f"| {name} | {figures['requests_per_s']:.0f} | {added[name]:+.1f} | {ratio} "
              f"| {figures['cpu_us_per_request']:.1f} | {added_cpu[name]:+.1f} | {cpu_ratio} |")
    print(json.dumps({name: {"rounds": rounds[name], "medians": medians[name]} for name in rounds}), file=sys.stderr)


if __name__ == "__main__":
    main()
