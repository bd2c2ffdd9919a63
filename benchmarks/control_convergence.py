"""From a changed extension resource to every proxy having ACKed it.

Targets (issue 5): < 1 s for 10 real Envoys, < 5 s for 1,000 simulated xDS
clients; also reports the control plane's memory at 1,000 clients.  Run:

    python benchmarks/control_convergence.py [--envoys 10] [--clients 1000] [--rounds 5]

Part 1 (real Envoys): an in-process control plane, N Envoy sidecars (with their
module syncers; half state-of-the-world, half delta).  Each round changes the
config of a mesh-wide ServiceMeshExtension (operator.apply) and times until
every proxy ACKed the new ECDS resource and listeners (the cache's own ACK
bookkeeping).

Part 2 (simulated clients): `meshext control serve` as a separate process, and
N ADS streams opened by this script (grpc.aio; half SotW, half delta), each
answering every response with an ACK as Envoy does.  Each round rewrites the
extension's YAML file in the watched directory (so the directory poll, 0.2 s,
is inside the timing) and times until every client has ACKed an ECDS response
carrying the new config.  The control plane's RSS is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import yaml
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import wrappers_pb2

from meshext.control.mesh import Mesh
from meshext.control.proxy import sidecar_for
from meshext.control.snapshot import EXTENSION_CONFIG, TYPE_URLS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "control"))
# The test module compiler and the control-plane wiring, reused.
from control_harness import free_port, header_module, start_control_plane  # noqa: E402


def mesh_document(workloads: int, bind_ports: bool) -> dict:
    """``workloads`` workloads behind two services."""
    items = []
    for index in range(workloads):
        app = "frontend" if index % 2 == 0 else "backend"
        ports = ({key: {"port": free_port()} for key in ("app", "inbound", "outbound")} if bind_ports else
                 {"app": {"port": 20000 + index}, "inbound": {"port": 30000 + index},
                  "outbound": {"port": 40000 + index}})
        items.append({"name": f"w{index}", "namespace": "default", "labels": {"app": app}, **ports})
    return {"controlPlaneNamespace": "meshext-system",
            "services": [{"name": app, "namespace": "default", "selector": {"app": app}, "ports": [{"port": 8080}]}
                         for app in ("frontend", "backend")],
            "workloads": items}


KEY = "ServiceMeshExtension/meshext-system/bench"


def extension(tag: str, module: Path, generation: int = 1) -> dict:
    return {"apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension",
            "metadata": {"name": "bench", "namespace": "meshext-system", "generation": generation},
            "spec": {"image": f"file://{module}", "config": {"tag": tag}, "phase": "PostAuthN"}}


def real_envoys(count: int, rounds: int, module: Path, workdir: Path) -> list[float]:
    mesh = Mesh.model_validate(mesh_document(count, bind_ports=True))
    running = start_control_plane(mesh, workdir / "cache")
    control_plane, operator = running.server, running.operator
    sidecars = []
    try:
        for index, workload in enumerate(mesh.workloads):
            sidecars.append(sidecar_for(workload, control_plane.xds_address, control_plane.http_address,
                                        "sotw" if index % 2 else "delta").start())
        nodes = sorted(w.node_id for w in mesh.workloads)

        def running_everywhere(generation: int, timeout: float) -> None:
            # The resource's status: this generation Ready, ACKed by every proxy.
            deadline = time.monotonic() + timeout
            while True:
                status = operator.status_report()["extensions"].get(KEY, {}).get("status", {})
                if (status.get("observedGeneration") == generation and status.get("phase") == "Ready"
                        and status.get("workloads") == nodes):
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"generation {generation} not running everywhere within {timeout} s: {status}")
                time.sleep(0.001)

        operator.apply(extension("warm-up", module, generation=1))
        running_everywhere(1, 60)
        times = []
        for round_number in range(rounds):
            generation = round_number + 2
            started = time.monotonic()
            operator.apply(extension(f"round-{round_number}", module, generation))
            running_everywhere(generation, 30)
            times.append(time.monotonic() - started)
        return times
    finally:
        for sidecar in sidecars:
            sidecar.cleanup()
        running.stop()


class SimulatedProxy:
    """One ADS stream answering like Envoy: ACK every response, subscribe what listeners reference."""

    def __init__(self, node_id: str, delta: bool) -> None:
        self.node_id = node_id
        self.delta = delta
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.acked_tag: dict[str, float] = {}  # config tag -> when its ECDS response was ACKed

    def _tags(self, packed_resources) -> list[str]:
        tags = []
        for packed in packed_resources:
            typed = extension_pb2.TypedExtensionConfig()
            packed.Unpack(typed)
            wasm = wasm_pb2.Wasm()
            typed.typed_config.Unpack(wasm)
            value = wrappers_pb2.StringValue()
            wasm.config.configuration.Unpack(value)
            tags.append(yaml.safe_load(value.value)["tag"])
        return tags

    async def _requests(self):
        while True:
            yield await self.outbox.get()

    async def run(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        node = base_pb2.Node(id=self.node_id)
        if self.delta:
            for index, type_url in enumerate(TYPE_URLS):
                self.outbox.put_nowait(discovery_pb2.DeltaDiscoveryRequest(
                    node=node if index == 0 else None, type_url=type_url,
                    resource_names_subscribe=["meshext.servicemeshextension.meshext-system.bench"]
                    if type_url == EXTENSION_CONFIG else []))
            async for response in stub.DeltaAggregatedResources(self._requests()):
                if response.type_url == EXTENSION_CONFIG:
                    tags = self._tags([r.resource for r in response.resources])
                self.outbox.put_nowait(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=response.type_url, response_nonce=response.nonce))
                if response.type_url == EXTENSION_CONFIG:
                    for tag in tags:
                        self.acked_tag[tag] = time.monotonic()
        else:
            names = {EXTENSION_CONFIG: ["meshext.servicemeshextension.meshext-system.bench"],
                     "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": ["inbound", "outbound"]}
            for index, type_url in enumerate(TYPE_URLS):
                self.outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                    node=node if index == 0 else None, type_url=type_url, resource_names=names.get(type_url, [])))
            async for response in stub.StreamAggregatedResources(self._requests()):
                self.outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce,
                    resource_names=names.get(response.type_url, [])))
                if response.type_url == EXTENSION_CONFIG:
                    for tag in self._tags(response.resources):
                        self.acked_tag[tag] = time.monotonic()


async def hold_long_poll(host: str, port: int, node_id: str, module_sha256: str, version: int) -> None:
    """A module syncer: long polls (up to 60 s each) for its wanted modules to change, again and again."""
    while True:
        reader, writer = await asyncio.open_connection(host, port)
        query = f"node={node_id}&dir=/modules&present={module_sha256}&version={version}&wait=60"
        writer.write(f"GET /modules/wanted?{query} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        version = json.loads(answer.partition(b"\r\n\r\n")[2])["version"]


def thread_count(pid: int) -> int:
    """The control plane's threads: a few fixed ones plus one per open long poll."""
    return int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("Threads:")))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def simulated_clients(count: int, rounds: int, module: Path, module_sha256: str, workdir: Path):
    mesh_file = workdir / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump(mesh_document(count, bind_ports=False)))
    config_dir = workdir / "extensions"
    config_dir.mkdir()
    resource = config_dir / "bench.yaml"
    resource.write_text(yaml.safe_dump(extension("warm-up", module)))
    xds, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = open(workdir / "control.log", "wb")  # noqa: SIM115 - the server writes to it until the finally
    server = subprocess.Popen([sys.executable, "-m", "meshext", "control", "serve", "--config-dir", str(config_dir),
                               "--mesh", str(mesh_file), "--xds-address", xds, "--http-address", http,
                               "--cache-dir", str(workdir / "cache"),
                               # The simulated clients measure xDS fan-out, not TLS: plain text on loopback.
                               "--insecure"], stdout=log, stderr=subprocess.STDOUT)
    tasks = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{http}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("control plane did not start; see control.log") from None
                await asyncio.sleep(0.1)
        idle_rss = rss_mb(server.pid)
        # What each sidecar's module syncer does: report the module present, then
        # hold a long poll open (one server thread each) for the whole measurement.
        wanted_versions = []
        for index in range(count):
            with urllib.request.urlopen(f"http://{http}/modules/wanted?node=w{index}.default&dir=/modules"
                                        f"&present={module_sha256}&wait=0", timeout=10) as response:
                wanted_versions.append(json.load(response)["version"])
        host, port = http.split(":")
        polls = [asyncio.create_task(hold_long_poll(host, int(port), f"w{index}.default", module_sha256, version))
                 for index, version in enumerate(wanted_versions)]
        tasks.extend(polls)
        channel = grpc.aio.insecure_channel(xds, options=[("grpc.max_concurrent_streams", 100000)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        proxies = [SimulatedProxy(f"w{index}.default", delta=index % 2 == 0) for index in range(count)]
        tasks = [asyncio.create_task(proxy.run(stub)) for proxy in proxies]
        deadline = time.monotonic() + 120
        while not all("warm-up" in proxy.acked_tag for proxy in proxies):
            if time.monotonic() > deadline:
                missing = sum("warm-up" not in p.acked_tag for p in proxies)
                raise SystemExit(f"{missing} simulated clients never got the first version")
            await asyncio.sleep(0.05)
        times = []
        for round_number in range(rounds):
            tag = f"round-{round_number}"
            started = time.monotonic()
            resource.write_text(yaml.safe_dump(extension(tag, module)))
            while not all(tag in proxy.acked_tag for proxy in proxies):
                if time.monotonic() - started > 60:
                    raise SystemExit(f"round {round_number}: not all clients ACKed within 60 s")
                await asyncio.sleep(0.01)
            times.append(max(proxy.acked_tag[tag] for proxy in proxies) - started)
            await asyncio.sleep(0.5)
        threads = thread_count(server.pid)
        return times, idle_rss, rss_mb(server.pid), threads
    finally:
        for task in tasks:
            task.cancel()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def describe(times: list[float]) -> str:
    return (f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
            f"over {len(times)} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoys", type=int, default=10)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]  # wasm-tools
    with tempfile.TemporaryDirectory(prefix="meshext-bench-") as directory:
        workdir = Path(directory)
        module, module_sha256 = header_module(workdir)
        print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        if arguments.envoys:
            (workdir / "envoys").mkdir()
            times = real_envoys(arguments.envoys, arguments.rounds, module, workdir / "envoys")
            print(f"{arguments.envoys} real Envoys, config change -> all ACKed: {describe(times)} (target < 1 s)")
        if arguments.clients:
            (workdir / "clients").mkdir()
            times, idle, loaded, threads = asyncio.run(simulated_clients(
                arguments.clients, arguments.rounds, module, module_sha256, workdir / "clients"))
            print(f"{arguments.clients} simulated xDS clients, file change -> all ACKed: {describe(times)} "
                  f"(target < 5 s)")
            print(f"control plane RSS: {idle:.0f} MB idle, {loaded:.0f} MB with {arguments.clients} ADS streams "
                  f"and a long poll from each simulated syncer open ({threads} threads)")


if __name__ == "__main__":
    main()
