"""Pull of an 8 MB module from a loopback docker-registry: cold vs from cache.

Targets (issue 4): cold < 1 s, cached < 50 ms.  Run:

    python benchmarks/registry_pull.py [--size-mb 8] [--cold-runs 5] [--cached-runs 20]

Each cold run uses an empty cache directory (the registry connection, manifest
GET, blob stream, sha256 check and atomic write into the cache are all inside
the timing); each cached run is an IfNotPresent pull by tag that re-hashes the
cached module before returning it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshext.registry import ModuleCache, pull, push
from meshext.registry.local_registry import LocalRegistry


def wasm_module(size: int) -> bytes:
    """A valid Wasm module of ``size`` bytes: the header plus one custom section of
    random (incompressible) bytes."""
    name = b"bench"
    header = b"\0asm\x01\0\0\0"
    payload_size = size - len(header) - 1 - 5 - 1 - len(name)
    section_size = 1 + len(name) + payload_size
    # Always 5 bytes (padded LEB128), so the module is exactly ``size`` bytes.
    leb = bytes([(section_size >> shift) & 0x7F | (0x80 if index < 4 else 0)
                 for index, shift in enumerate(range(0, 35, 7))])
    return header + b"\0" + leb + bytes([len(name)]) + name + os.urandom(payload_size)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def measure(function, runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return timings


def summary(label: str, timings: list[float]) -> str:
    milliseconds = [value * 1000 for value in timings]
    return (f"{label:<9} median {statistics.median(milliseconds):8.1f} ms   min {min(milliseconds):8.1f} ms   "
            f"max {max(milliseconds):8.1f} ms   ({len(milliseconds)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=8)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--cached-runs", type=int, default=20)
    parser.add_argument("--format", default="wasm-oci", choices=["wasm-oci", "docker"])
    arguments = parser.parse_args()

    with (tempfile.TemporaryDirectory(prefix="meshext-bench-") as workdir,
          LocalRegistry(Path(workdir) / "registry") as server):
        module_file = Path(workdir) / "module.wasm"
        module_file.write_bytes(wasm_module(int(arguments.size_mb * 1024 * 1024)))
        reference = f"{server.host}/bench/module:1"
        push(module_file, reference, format=arguments.format, plain_http=True)

        cold_caches = iter(ModuleCache(Path(workdir) / f"cold-{run}") for run in range(arguments.cold_runs))
        cold = measure(lambda: pull(reference, cache=next(cold_caches), plain_http=True), arguments.cold_runs)

        warm_cache = ModuleCache(Path(workdir) / "warm")
        pull(reference, cache=warm_cache, plain_http=True)
        cached = measure(lambda: pull(reference, cache=warm_cache, plain_http=True), arguments.cached_runs)

        # The whole command a user types, interpreter start-up included, into an empty cache.
        cli_caches = iter(Path(workdir) / f"cli-{run}" for run in range(arguments.cold_runs))
        cli = measure(lambda: subprocess.run(
            [sys.executable, "-m", "meshext", "pull", reference, "--plain-http", "-o", str(Path(workdir) / "out.wasm")],
            check=True, capture_output=True, env={**os.environ, "MESHEXT_CACHE_DIR": str(next(cli_caches))},
        ), arguments.cold_runs)

    print(f"meshext registry pull benchmark - {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
          f"{platform.release()}, Python {sys.version.split()[0]}")
    print(f"module: {arguments.size_mb:g} MB, format {arguments.format}, "
          "registry: docker-registry on 127.0.0.1 (plain HTTP)")
    print(summary("cold", cold) + "   target < 1000 ms")
    print(summary("cached", cached) + "   target < 50 ms")
    print(summary("cli cold", cli) + "   (`meshext pull`, process start-up included)")


if __name__ == "__main__":
    main()
