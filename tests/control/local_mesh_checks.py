"""Checks on a running local mesh (`meshext up`) shared by the tests that bring one up.

Imported by ``test_control_up.py`` and ``test_control_readme.py``; conftest.py registers this module for
pytest's assertion rewriting, so a failed check shows its values as in a test module.
"""

from __future__ import annotations

import json
import random
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from meshext.control.local.layout import PORT_RANGE, Ports
from meshext.control.local.up import LocalMesh


def free_port_base(count: int = PORT_RANGE) -> int:
    """The first of ``count`` consecutive loopback ports, free now and below Linux's ephemeral range.

    The backing services' ports are bound only when a test applies their resource, minutes later: a
    range among the ephemeral ports (where the kernel picks the source port of every outgoing
    connection and every port-0 bind) can be taken by then, as one CI run saw.  `meshext up`'s own
    default, 15100, is below that range for the same reason."""
    low, _ = (int(bound) for bound in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    bases = list(range(10000, low - count, count))
    random.shuffle(bases)  # test modules running side by side do not all try the same range first
    for base in bases:
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports between 10000 and {low}")


def free_mesh_ports() -> Ports:
    """Ports for a test's local mesh, every one below Linux's ephemeral range (see free_port_base): the
    five single ports follow the backing services' range."""
    base = free_port_base(PORT_RANGE + 5)
    productpage, registry, control, control_http, prometheus = range(base + PORT_RANGE, base + PORT_RANGE + 5)
    return Ports(productpage=productpage, registry=registry, control=control, control_http=control_http,
                 prometheus=prometheus, port_base=base)


def all_pids(mesh: LocalMesh) -> set[int]:
    """Every live process of every part's session (sidecars' Envoys included)."""
    return {pid for part in mesh.parts.values() for pid in part.processes()}


# One row of `meshext graph`'s table: from, to, via, rate, err, p95, mTLS.
GRAPH_ROW = re.compile(r"│\s*(?P<source>\S+)\s*│\s*(?P<destination>\S+)\s*│\s*(?P<via>\S+ \(\w+\))\s*"
                       r"│\s*(?P<rate>[\d.]+) req/s\s*│\s*(?P<errors>\d+)%\s*│[^│]*│\s*(?P<mtls>\d+)%\s*│")
DEMO_EDGES = {("productpage-v1", "reviews-v1", "reviews (http)"), ("reviews-v1", "ratings-v1", "ratings (grpc)")}
ENTRY_EDGE = ("unknown", "productpage-v1", "productpage (http)")


def graph_edges(output: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """The edges `meshext graph` printed: (from, to, via) -> rate (req/s), error and mTLS percentages."""
    edges = {}
    for line in output.splitlines():
        if row := GRAPH_ROW.search(line):
            edges[(row["source"], row["destination"], row["via"])] = {
                "rate": float(row["rate"]), "errors": float(row["errors"]), "mtls": float(row["mtls"])}
    return edges


def assert_demo_edges(output: str) -> None:
    """productpage -> reviews -> ratings drawn with traffic, no errors, all over mutual TLS; and the
    test's own requests into productpage, from a caller without a sidecar: each sidecar reports."""
    edges = graph_edges(output)
    assert DEMO_EDGES | {ENTRY_EDGE} <= set(edges), output
    for key in DEMO_EDGES:
        assert edges[key]["rate"] > 0 and edges[key]["errors"] == 0 and edges[key]["mtls"] == 100, output
    assert edges[ENTRY_EDGE]["rate"] > 0 and edges[ENTRY_EDGE]["mtls"] == 0, output


def prometheus_query(prometheus: str, promql: str) -> list[dict]:
    """The result vector of an instant query to the Prometheus at ``prometheus``."""
    url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(json.load(response)["data"]["result"])


def prometheus_edges(prometheus: str) -> set[tuple[str, str]]:
    """(source, destination) workloads with requests in the last minute, as the destination's sidecar reported."""
    return {(series["metric"]["source_workload"], series["metric"]["destination_workload"]) for series in
            prometheus_query(prometheus, 'rate(istio_requests_total{reporter="destination"}[1m]) > 0')}
