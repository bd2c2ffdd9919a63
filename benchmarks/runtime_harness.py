"""Harness speed: request/response round trips per second, and module ready time.

    python benchmarks/runtime_harness.py [MODULE.wasm ...] [--config C] [--root-id R] [--seconds N]

Without arguments it measures the modules the tests build: the WAT trace
module, the AssemblyScript header filter (if tests/assemblyscript is
installed) and the Python header filter `meshext init` scaffolds, built with
`meshext build` (if the SDK build pipeline is importable).
Round trip: one HTTP stream through the filter - request headers, response
headers, then log/done/delete - on one core (this process, one thread).
Ready time: from module bytes with the compiled code in the on-disk cache
(wasmtime Module.deserialize) to a started, configured plugin; and the same
with the compiled module already in memory (a second VM of a loaded module).
Bounded: each measurement stops after --seconds (default 3).
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

from meshext import compiled_modules as module_cache
from meshext.testing import Host

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_pull import cpu_model  # noqa: E402 - the benchmarks' shared machine description

ROOT = Path(__file__).resolve().parent.parent


def default_modules(workdir: Path) -> list[tuple[str, Path, str, str]]:
    modules = []
    wasm_tools = Path(sys.executable).parent / "wasm-tools"
    trace = workdir / "trace.wasm"
    subprocess.run([str(wasm_tools), "parse", str(ROOT / "tests/runtime/modules/trace.wat"), "-o", str(trace)],
                   check=True)
    modules.append(("WAT callback trace (logs every callback)", trace, "r", "c"))
    asc = ROOT / "tests/assemblyscript/node_modules/.bin/asc"
    if asc.exists():
        headers = workdir / "as_headers.wasm"
        subprocess.run([str(asc), "filters/headers.ts", "-b", str(headers), "--use", "abort=abort_proc_exit", "-O3"],
                       cwd=ROOT / "tests/assemblyscript", check=True, capture_output=True)
        modules.append(("AssemblyScript header filter", headers, "as_headers", "bench"))
    try:
        from meshext.sdk.builder import build_filter
    except ImportError:
        print("# meshext.sdk.builder not importable: Python filter not measured", file=sys.stderr)
        return modules
    project = workdir / "scaffold"
    subprocess.run([sys.executable, "-m", "meshext", "init", "scaffold", "-d", str(project)], check=True,
                   capture_output=True)
    python_filter = build_filter(project, workdir / "scaffold.wasm").output
    modules.append(("Python header filter (meshext init scaffold, meshext build)", python_filter, "",
                    '{"header": "x-len"}'))
    return modules


def round_trips_per_second(module: Path, root_id: str, config: str, seconds: float) -> float:
    host = Host()
    plugin = host.load(module, root_id=root_id, config=config, name="bench")
    headers = [("user-agent", "bench"), ("accept", "*/*")]
    response_headers = [("content-type", "text/plain"), ("content-length", "0")]
    for _ in range(200):  # warm up
        plugin.exchange("GET", "/warm", headers=headers, response_headers=response_headers)
    host.logs.clear()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            plugin.exchange("GET", "/bench", headers=headers, response_headers=response_headers)
        count += 100
        host.logs.clear()  # keep memory flat
    return count / (time.perf_counter() - started)


def ready_times_ms(module: Path, root_id: str, config: str, runs: int = 20) -> tuple[float, float]:
    code = module.read_bytes()
    module_cache.compile_module(code)  # make sure the on-disk cache holds it
    from_disk = []
    for _ in range(runs):
        module_cache.forget_compiled_modules()  # deserialize from the disk cache
        started = time.perf_counter()
        Host().load(code, root_id=root_id, config=config)
        from_disk.append((time.perf_counter() - started) * 1000)
    in_memory = []
    for _ in range(runs):
        started = time.perf_counter()
        Host().load(code, root_id=root_id, config=config)
        in_memory.append((time.perf_counter() - started) * 1000)
    return statistics.median(from_disk), statistics.median(in_memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to measure (default: the test modules)")
    parser.add_argument("--config", default="bench", help="plugin configuration for the given modules")
    parser.add_argument("--root-id", default="", help="root id for the given modules")
    parser.add_argument("--seconds", type=float, default=3.0)
    arguments = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    with tempfile.TemporaryDirectory() as workdir:
        if arguments.modules:
            modules = [(Path(path).name, Path(path), arguments.root_id, arguments.config)
                       for path in arguments.modules]
        else:
            modules = default_modules(Path(workdir))
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
              f"{cpu_model()}, Python {platform.python_version()}, wasmtime {module_cache.wasmtime_version()}")
        print("| module | size | round trips/s (1 core) | ready from disk cache (median ms) "
              "| ready, module in memory (ms) |")
        print("| --- | --- | --- | --- | --- |")
        for label, path, root_id, config in modules:
            rate = round_trips_per_second(path, root_id, config, arguments.seconds)
            disk, memory = ready_times_ms(path, root_id, config)
            print(f"| {label} | {path.stat().st_size / 1024:.0f} KiB | {rate:,.0f} | {disk:.1f} | {memory:.1f} |")


if __name__ == "__main__":
    main()
