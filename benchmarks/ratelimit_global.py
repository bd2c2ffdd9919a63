"""The ratelimit filter in global mode: added latency with the rate limit service and Redis on loopback,
and the service's own decisions per second.

Latency: one Envoy worker, a direct response, ``wrk -t1 --latency`` with
one connection (each request's own cost, no queueing) and with eight,
no filter and the filter in global mode interleaved over ``--rounds``
rounds (``sdk_header_filter.py``'s helpers); p50/p99 added = the filter's
percentile minus no filter's, medians over the rounds.  The service is
``meshext ratelimit serve`` (its own process) on Redis (``redis-server``, no
persistence), both on loopback; the limit is never reached, so every
request costs one RLS call and one Redis pipeline (INCRBY + EXPIRE).

Decisions/s: a bounded gRPC load on the service alone: ``--clients``
threads each sending ShouldRateLimit calls with one descriptor, for
``--seconds``; this client shares the machine's cores with the service and
Redis.  envoyproxy/ratelimit publishes no benchmark to compare with.

    python benchmarks/ratelimit_global.py [--seconds 5] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from sdk_header_filter import machine, one_round, wasm_filter

from meshext.sdk.builder import build_filter

HERE = Path(__file__).resolve().parent
RATELIMIT = HERE.parent / "extensions" / "ratelimit" / "filter"
SERVICE_CONFIG = ("domain: bench\n"
                  "descriptors: [{key: route, rate_limit: {unit: second, requests_per_unit: 1000000000}}]\n")
FILTER_CONFIG = {"mode": "global", "domain": "bench", "service": {"cluster": "ratelimit", "timeout_ms": 1000},
                 "rules": [{"name": "all", "descriptor": [{"key": "route", "value": "bench"}]}]}


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grpc_cluster(port: int) -> dict:
    return {"name": "ratelimit", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "ratelimit", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def ask(stub: rls_pb2_grpc.RateLimitServiceStub) -> int:
    request = rls_pb2.RateLimitRequest(domain="bench")
    request.descriptors.add().entries.add(key="route", value="bench")
    return int(stub.ShouldRateLimit(request, timeout=5).overall_code)


@contextmanager
def service(scratch: Path) -> Iterator[int]:
    """Redis and `meshext ratelimit serve` on loopback; yields the service's gRPC port."""
    redis_port, grpc_port = free_port(), free_port()
    (scratch / "bench.yaml").write_text(SERVICE_CONFIG)
    processes = [subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                                   "--appendonly", "no", "--dir", str(scratch)], stdout=subprocess.DEVNULL)]
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "meshext", "ratelimit", "serve", "--config", str(scratch / "bench.yaml"),
             "--address", f"127.0.0.1:{grpc_port}", "--redis", f"127.0.0.1:{redis_port}"],
            stderr=subprocess.DEVNULL))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if ask(stub) == rls_pb2.RateLimitResponse.OK:
                        break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield grpc_port
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)


def decisions_per_second(port: int, clients: int, seconds: float) -> float:
    """ShouldRateLimit answers per second from ``clients`` threads (one channel each) for ``seconds``."""
    answered = [0] * clients
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            while time.monotonic() < deadline:
                ask(stub)
                answered[number] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    return sum(answered) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per variant and round; gRPC load time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--clients", type=int, default=8, help="gRPC client threads for decisions/s")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        module = build_filter(RATELIMIT, scratch / "ratelimit.wasm").output
        with service(scratch) as port:
            chosen = {"no filter": ([], None), "ratelimit global": (wasm_filter(module, FILTER_CONFIG),
                                                                     [grpc_cluster(port)])}
            rounds: dict[tuple[str, int], list[dict[str, float]]] = {
                (name, connections): [] for name in chosen for connections in (1, 8)}
            for _ in range(args.rounds):
                for (name, connections), runs in rounds.items():
                    filters, clusters = chosen[name]
                    runs.append(one_round(filters, args.seconds, clusters, connections=connections))
            throughput = decisions_per_second(port, args.clients, args.seconds)
    medians = {variant: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for variant, runs in rounds.items()}
    print(f"# {machine()}, wrk -t1 -d{args.seconds}s --latency, {args.rounds} interleaved rounds (medians), "
          "Envoy 1 worker, direct response; service and Redis on loopback")
    print("| connections | variant | req/s | p50 µs | p99 µs | p50 added µs | p99 added µs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, connections), figures in medians.items():
        base = medians[("no filter", connections)]
        print(f"| {connections} | {name} | {figures['requests_per_s']:.0f} | {figures['p50_us']:.0f} "
              f"| {figures['p99_us']:.0f} | {figures['p50_us'] - base['p50_us']:+.0f} "
              f"| {figures['p99_us'] - base['p99_us']:+.0f} |")
    print(f"service decisions/s ({args.clients} gRPC client threads, {args.seconds} s): {throughput:.0f}")
    print(json.dumps({f"{name} c{connections}": runs for (name, connections), runs in rounds.items()}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
