"""Host calls and interpreter steps per request of the telemetry filter, per reporter (no Envoy).

What ``telemetry_overhead.py`` times, counted instead, so a change can be
judged on a shared machine: the same request as there (frontend-v1's
outbound sidecar calling backend-v1's inbound one, peer metadata both ways,
the control plane's cluster and endpoint metadata), with mutual TLS
principals as a mesh has them, over ``CONNECTIONS`` kept-alive connections.

- **Host calls**, counted in meshext's test host (wasmtime, the built
  module): every host function the module calls during a request, by name,
  the VM's own WASI calls included.  Deterministic.
- **Interpreter steps**: the filter's and the SDK's Python run in this
  CPython (the same bytecode the VM runs) against a stand-in for the host
  module, counting bytecode instructions of the filter and the SDK
  (``sys.settrace`` opcode events; the host's functions are C in the VM,
  this driver is the shim's C), as ``ratelimit_local.py --steps`` does.

Each reporter is measured over ``REQUESTS`` requests after ``WARM_UP`` not
counted (metric children defined, caches filled).  ``--project`` measures
another filter project (a changed copy, or the filter of another commit).

    python benchmarks/telemetry_host_calls.py [--project PATH ...]
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format
from stand_in_host import StandInHost, count_steps, filter_root, overridden
from telemetry_overhead import telemetry_configuration

from meshext.control.mesh import Service, ServicePort, Workload, node_id
from meshext.control.telemetry import node_metadata, services_metadata, workload_metadata
from meshext.extensions.telemetry.filter.istio_metrics import PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER
from meshext.extensions.telemetry.filter.struct_codec import encode_struct
from meshext.runtime._properties import encode_property

HERE = Path(__file__).resolve().parent
TELEMETRY = HERE.parent / "extensions" / "telemetry" / "filter"
BACKEND = Service(name="backend", selector={"app": "backend"}, ports=[ServicePort(port=8080)])
FRONTEND_WORKLOAD = Workload(name="frontend-v1", labels={"app": "frontend", "version": "v1"}, app={"port": 1},
                             inbound={"port": 1}, outbound={"port": 1})
BACKEND_WORKLOAD = Workload(name="backend-v1", labels={"app": "backend", "version": "v1"}, app={"port": 1},
                            inbound={"port": 1}, outbound={"port": 1})
FRONTEND_SAN = "spiffe://cluster.local/ns/default/sa/frontend"
BACKEND_SAN = "spiffe://cluster.local/ns/default/sa/backend"
CONNECTIONS = 8  # wrk -c8 in telemetry_overhead.py
WARM_UP = 100
REQUESTS = 1000
INBOUND, OUTBOUND = 1, 2  # xds.listener_direction
REPORTERS = ("source", "destination")


def _node(workload: Workload) -> bytes:
    node = base_pb2.Node(id=node_id(workload.name, workload.namespace))
    node.metadata.update(node_metadata(workload.name, workload.namespace, workload.labels))
    return node.SerializeToString()


def _metadata(fields: dict) -> bytes:
    return json_format.ParseDict(fields, base_pb2.Metadata()).SerializeToString()


def _peer_headers(workload: Workload) -> list[tuple[str, str]]:
    metadata = node_metadata(workload.name, workload.namespace, workload.labels)
    return [(PEER_METADATA_HEADER, base64.b64encode(encode_struct(metadata)).decode()),
            (PEER_METADATA_ID_HEADER, node_id(workload.name, workload.namespace))]


@dataclasses.dataclass
class Scenario:
    """One reporter's request: the sidecar's node, the request and response headers, the attributes."""

    node: Workload
    request_headers: list[tuple[str, str]]
    response_headers: list[tuple[str, str]]
    properties: dict[str, Any]


def scenarios() -> dict[str, Scenario]:
    """The request of telemetry_overhead.py as each sidecar sees it, by reporter."""
    common = {"response.code": 200, "response.flags": 0, "request.duration": 1_500_000,
              "request.total_size": 180, "response.total_size": 120}
    wrk_headers = [(":authority", "127.0.0.1:10000"), (":path", "/some/request/path"), (":method", "GET"),
                   (":scheme", "http"), ("x-forwarded-proto", "http"),
                   ("x-request-id", "0e1f5a4c-6d1e-4f1a-9b1e-2f6f0d3c4b5a")]
    app_response = [(":status", "200"), ("content-length", "2"), ("content-type", "text/plain")]
    return {
        "source": Scenario(FRONTEND_WORKLOAD, wrk_headers, app_response + _peer_headers(BACKEND_WORKLOAD), {
            **common, "xds.listener_direction": OUTBOUND, "xds.cluster_name": f"outbound|8080||{BACKEND.host}",
            "xds.cluster_metadata": _metadata(services_metadata([BACKEND])),
            "xds.upstream_host_metadata.filter_metadata.istio.workload":
                workload_metadata(BACKEND_WORKLOAD)["filter_metadata"]["istio"]["workload"],
            "upstream.uri_san_local_certificate": FRONTEND_SAN, "upstream.uri_san_peer_certificate": BACKEND_SAN}),
        "destination": Scenario(BACKEND_WORKLOAD, wrk_headers + _peer_headers(FRONTEND_WORKLOAD), app_response, {
            **common, "xds.listener_direction": INBOUND, "xds.cluster_name": "inbound|8080||",
            "connection.uri_san_peer_certificate": FRONTEND_SAN,
            "connection.uri_san_local_certificate": BACKEND_SAN, "connection.mtls": True}),
    }


def _configuration(reporter: str) -> str:
    """The plugin configuration of the reporter's listener, as the control plane writes it."""
    return json.dumps(telemetry_configuration("outbound" if reporter == "source" else "inbound"))


def _requests(scenario: Scenario, count: int, first: int) -> Iterator[dict[str, Any]]:
    """Each request's attributes: the scenario's, on one of CONNECTIONS connections in turn."""
    for number in range(first, first + count):
        yield {**scenario.properties, "connection.id": 1 + number % CONNECTIONS}


def host_calls(module: Path) -> dict[str, dict[str, float]]:
    """Host calls per request of the built ``module`` in the test host, by reporter and host function."""
    from meshext.runtime._hostcalls import registry
    from meshext.testing import Host

    calls: collections.Counter[str] = collections.Counter()

    def counting(function: registry.HostFunction) -> registry.HostFunction:
        implementation = function.implementation

        def counted(*args: Any) -> int | None:
            calls[function.name] += 1
            return implementation(*args)
        return dataclasses.replace(function, implementation=counted)

    for key, function in list(registry.HOST_FUNCTIONS.items()):
        registry.HOST_FUNCTIONS[key] = counting(function)
    figures = {}
    for reporter, scenario in scenarios().items():
        plugin = Host().load(str(module), config=_configuration(reporter), properties={
            "xds.node": _node(scenario.node), "xds.node.id": node_id(scenario.node.name, scenario.node.namespace)})
        _test_host_requests(plugin, scenario, WARM_UP, 0)
        calls.clear()
        _test_host_requests(plugin, scenario, REQUESTS, WARM_UP)
        figures[reporter] = {name: count / REQUESTS for name, count in sorted(calls.items())}
    return figures


def _test_host_requests(plugin: Any, scenario: Scenario, count: int, first: int) -> None:
    """``count`` exchanges of ``scenario`` through the test host's ``plugin``."""
    request = dict(scenario.request_headers)
    headers = [pair for pair in scenario.request_headers if not pair[0].startswith(":")]
    response = [pair for pair in scenario.response_headers if not pair[0].startswith(":")]
    for properties in _requests(scenario, count, first):
        plugin.exchange(request[":method"], request[":path"], authority=request[":authority"], headers=headers,
                        response_status=int(dict(scenario.response_headers)[":status"]),
                        response_headers=response, properties=properties)


def _encoded_properties(properties: dict[str, Any]) -> dict[bytes, bytes]:
    """Attribute paths and values as the module asks for and receives them (``a.b`` -> ``a\\0b``)."""
    return {"\0".join(path.split(".")).encode(): encode_property(value) for path, value in properties.items()}


def steps_of(project: Path) -> dict[str, dict[str, float]]:
    """Interpreter steps and stand-in host calls per request of the filter project ``project``, by reporter."""
    host = StandInHost()
    host.install()  # the scenario's helpers imported the SDK against no host: the filter imports it afresh
    root_class = filter_root(project)
    from meshext.sdk import HttpContext

    figures = {}
    for reporter, scenario in scenarios().items():
        host.properties = _encoded_properties({
            "xds.node": _node(scenario.node), "xds.node.id": node_id(scenario.node.name, scenario.node.namespace)})
        root = root_class(1)
        assert root.on_configure(_configuration(reporter).encode()) is not False
        callbacks = overridden(root.http_context, HttpContext, ("on_request_headers", "on_response_headers", "on_log"))
        host.headers = {0: scenario.request_headers, 2: scenario.response_headers}  # MapType
        _stand_in_requests(root, callbacks, host, [_encoded_properties(properties) for properties
                                                  in _requests(scenario, WARM_UP, 0)], 0)
        # Encoded before counting: the attributes are the host's work.
        requests = [_encoded_properties(properties) for properties in _requests(scenario, REQUESTS, WARM_UP)]
        host.calls.clear()
        steps = count_steps(functools.partial(_stand_in_requests, root, callbacks, host, requests, WARM_UP),
                            not_counted=(__file__,))
        figures[reporter] = {"interpreter steps": steps / REQUESTS,
                             **{name: count / REQUESTS for name, count in sorted(host.calls.items())}}
    return figures


def _stand_in_requests(root: Any, callbacks: list[str], host: StandInHost,
                       requests: list[dict[bytes, bytes]], first: int) -> None:
    """One request per attribute set of ``requests``: a new HTTP context of ``root``, its ``callbacks`` called
    as the shim calls them."""
    for number, properties in enumerate(requests, start=first):
        host.properties = properties
        context = root.http_context(root, number + 2)
        for name in callbacks:
            method = getattr(context, name)
            if name == "on_log":
                method()
            else:
                method(False)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--steps-of", "--calls-of"):  # a child: its own imports
        measure = steps_of if sys.argv[1] == "--steps-of" else host_calls
        print(json.dumps(measure(Path(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", action="append", type=Path, default=[],
                        help="a telemetry filter project to measure (default: extensions/telemetry/filter)")
    args = parser.parse_args()
    from meshext.sdk.builder import build_filter

    projects = args.project or [TELEMETRY]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, project in enumerate(projects):
            module = build_filter(project, Path(scratch) / f"telemetry-{number}.wasm").output
            # Each in its own process: the filter's modules import by their own names.
            calls, steps = (json.loads(subprocess.run([sys.executable, __file__, flag, str(path)], capture_output=True,
                                                      text=True, timeout=600, check=True).stdout)
                            for flag, path in (("--calls-of", module), ("--steps-of", project)))
            for reporter in REPORTERS:
                rows.append((str(project), reporter, steps[reporter]["interpreter steps"], calls[reporter]))
    names = sorted({name for *_, row in rows for name in row})
    short = [name.removeprefix("proxy_").removesuffix("_value").replace("_header_map", " header") for name in names]
    print(f"per request, {REQUESTS} requests over {CONNECTIONS} connections after {WARM_UP}; host calls in the "
          "test host, steps against the stand-in")
    print(f"| project | reporter | interpreter steps | host calls | {' | '.join(short)} |")
    print("| --- | --- | --- | --- |" + " --- |" * len(names))
    for project, reporter, steps_per_request, row in rows:
        print(f"| {project} | {reporter} | {steps_per_request:.0f} | {sum(row.values()):g} | "
              + " | ".join(f"{row.get(name, 0):g}" for name in names) + " |")

if __name__ == "__main__":
    main()
