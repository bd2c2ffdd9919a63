"""`meshext graph`: the live service graph from Istio's standard metrics.

An observability client (nothing imports it): it reads metrics, never the
control plane's state.  Two sources give the same model:

* a Prometheus URL, asked with the PromQL Kiali uses for its graph
  (``reporter="destination"``, grouped by the labels Kiali groups by: every
  Istio label but the reporter, principals, ``*_app``, ``*_version`` and
  ``connection_security_policy``), the mTLS share as Kiali asks for it
  (``connection_security_policy="mutual_tls"``) and the p95 latency with
  ``histogram_quantile`` over ``istio_request_duration_milliseconds_bucket``;
* no Prometheus: every sidecar's ``/stats/prometheus`` (the mesh file's
  ``admin`` addresses), scraped twice; rates are the counters' increase over
  the time between the scrapes, aggregated by the same labels, and the p95
  is interpolated from the bucket increases as ``histogram_quantile`` does.

Nodes are workloads (``namespace/name``; callers without a sidecar report
as ``unknown``); an edge is the traffic from one workload to another through
one service.  Errors follow Kiali: HTTP 4xx/5xx, a gRPC status other than 0,
and (our choice) response code 0, a request that got no response.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from meshext.control.mesh import Mesh
from meshext.control.prometheus import METRICS_PATH
from meshext.errors import UnavailableError

REQUESTS = "istio_requests_total"
DURATION_BUCKETS = "istio_request_duration_milliseconds_bucket"
TCP_BYTES = ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")
# Kiali's group-by for HTTP/gRPC edges (K:graph/telemetry/istio/istio.go), and its TCP one.
HTTP_GROUP = ("source_cluster", "source_workload_namespace", "source_workload", "source_canonical_service",
              "source_canonical_revision", "destination_cluster", "destination_service_namespace",
              "destination_service", "destination_service_name", "destination_workload_namespace",
              "destination_workload", "destination_canonical_service", "destination_canonical_revision",
              "request_protocol", "response_code", "grpc_response_status", "response_flags")
TCP_GROUP = tuple(label for label in HTTP_GROUP if label not in ("response_code", "grpc_response_status"))
LATENCY_GROUP = tuple(label for label in HTTP_GROUP if label not in ("response_code", "response_flags"))
UNKNOWN = "unknown"

Labels = dict[str, str]
Sample = tuple[Labels, float]  # (labels, value): a rate per second, or a p95 in ms
Series = list[Sample]


@dataclass(frozen=True)
class Node:
    """A workload (or ``unknown``: callers without a sidecar)."""

    id: str
    namespace: str
    name: str
    app: str = ""
    version: str = ""


@dataclass
class Edge:
    """Traffic from one workload to another through one service, per second."""

    source: str
    destination: str
    service: str
    protocol: str
    request_rate: float = 0.0
    error_rate: float = 0.0
    mtls_rate: float = 0.0
    tcp_bytes_rate: float = 0.0
    p95_ms: float | None = None

    @property
    def error_fraction(self) -> float:
        """Errors per request (0 without requests)."""
        return self.error_rate / self.request_rate if self.request_rate else 0.0

    @property
    def mtls_fraction(self) -> float:
        """The share of traffic (requests, or TCP bytes) that was mutual TLS."""
        total = self.request_rate or self.tcp_bytes_rate
        return min(1.0, self.mtls_rate / total) if total else 0.0


@dataclass
class Graph:
    """Nodes by id and edges, as of ``taken_at`` (epoch seconds), from ``origin``."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    origin: str = ""
    taken_at: float = 0.0


def _node(labels: Labels, side: str) -> Node:
    name = labels.get(f"{side}_workload", "") or UNKNOWN
    namespace = labels.get(f"{side}_workload_namespace", "") or UNKNOWN
    if name == UNKNOWN:
        return Node(UNKNOWN, UNKNOWN, UNKNOWN)
    return Node(f"{namespace}/{name}", namespace, name, labels.get(f"{side}_canonical_service", ""),
                labels.get(f"{side}_canonical_revision", ""))


def is_error(labels: Labels) -> bool:
    """Kiali's rule: HTTP 4xx/5xx; for gRPC otherwise a status other than 0; and no response (code 0)."""
    code = labels.get("response_code", "")
    if code[:1] in ("4", "5") or code == "0":
        return True
    return labels.get("request_protocol") == "grpc" and labels.get("grpc_response_status", "0") not in ("", "0")


def build_graph(requests: Iterable[Sample], *, mtls: Iterable[Sample] = (), p95: Iterable[Sample] = (),
                tcp: Iterable[Sample] = (), tcp_mtls: Iterable[Sample] = (), origin: str = "") -> Graph:
    """The graph from destination-reported series: request rates (by Kiali's HTTP group), the
    mutual-TLS part of them, p95 latencies (ms, by the latency group), TCP byte rates and their mTLS part."""
    graph = Graph(origin=origin, taken_at=time.time())
    edges: dict[tuple[str, str, str], Edge] = {}

    def edge(labels: Labels, protocol: str) -> Edge:
        source, destination = _node(labels, "source"), _node(labels, "destination")
        graph.nodes.setdefault(source.id, source)
        graph.nodes.setdefault(destination.id, destination)
        service = labels.get("destination_service_name") or labels.get("destination_service", UNKNOWN).split(".")[0]
        key = (source.id, destination.id, service)
        if key not in edges:
            edges[key] = Edge(source.id, destination.id, service, protocol)
        return edges[key]

    for labels, rate in requests:
        found = edge(labels, labels.get("request_protocol", "http"))
        found.request_rate += rate
        found.error_rate += rate if is_error(labels) else 0.0
    for labels, rate in mtls:
        edge(labels, labels.get("request_protocol", "http")).mtls_rate += rate
    for labels, rate in tcp:
        edge(labels, "tcp").tcp_bytes_rate += rate
    for labels, rate in tcp_mtls:
        edge(labels, "tcp").mtls_rate += rate
    for labels, milliseconds in p95:
        if not math.isnan(milliseconds):
            found = edge(labels, labels.get("request_protocol", "http"))
            found.p95_ms = max(found.p95_ms or 0.0, milliseconds)
    graph.edges = sorted(edges.values(), key=lambda e: (e.source, e.destination, e.service))
    return graph


# -- from Prometheus -----------------------------------------------------------------
def kiali_queries(window: str, namespace: str | None = None) -> dict[str, str]:
    """The PromQL of each series :func:`build_graph` takes, as Kiali writes it."""
    where = 'reporter="destination"' + (f',destination_workload_namespace="{namespace}"' if namespace else "")
    mtls = where + ',connection_security_policy="mutual_tls"'
    http, tcp, latency = ",".join(HTTP_GROUP), ",".join(TCP_GROUP), ",".join(LATENCY_GROUP)

    queries = {
        "requests": f"sum(rate({REQUESTS}{{{where}}}[{window}])) by ({http}) > 0",
        "mtls": f"sum(rate({REQUESTS}{{{mtls}}}[{window}])) by ({http}) > 0",
        "p95": f"histogram_quantile(0.95, sum(rate({DURATION_BUCKETS}{{{where}}}[{window}])) by (le,{latency}))",
    }
    for name in TCP_BYTES:  # asked one by one, as Kiali does: a sum of two vectors drops one-sided series
        queries[f"tcp {name}"] = f"sum(rate({name}{{{where}}}[{window}])) by ({tcp}) > 0"
        queries[f"tcp_mtls {name}"] = f"sum(rate({name}{{{mtls}}}[{window}])) by ({tcp}) > 0"
    return queries


def query_prometheus(url: str, query: str) -> Series:
    """An instant query's vector as (labels, value) pairs."""
    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(address, timeout=15) as response:
            answer = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise UnavailableError(f"cannot query Prometheus at {url}: {error}", where="--prometheus",
                               fix="pass the URL of a running Prometheus (e.g. http://127.0.0.1:9090)") from None
    return [(sample["metric"], float(sample["value"][1])) for sample in answer["data"]["result"]]


def graph_from_prometheus(url: str, window: str = "1m", namespace: str | None = None) -> Graph:
    """The graph as Kiali would draw it from this Prometheus."""
    series = {name: query_prometheus(url, query) for name, query in kiali_queries(window, namespace).items()}

    def tcp(kind: str) -> Series:
        return [sample for name in TCP_BYTES for sample in series[f"{kind} {name}"]]

    return build_graph(series["requests"], mtls=series["mtls"], p95=series["p95"], tcp=tcp("tcp"),
                       tcp_mtls=tcp("tcp_mtls"), origin=f"Prometheus {url}, window {window}")


# -- straight from the sidecars -------------------------------------------------------
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value


def parse_scrape(text: str) -> Scrape:
    """The Istio samples (and histogram buckets) of one /stats/prometheus text."""
    samples: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("istio_"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_sidecars(mesh: Mesh) -> Scrape:
    """One scrape of every sidecar whose ``admin`` address the mesh names, merged."""
    merged: Scrape = {}
    targets = [w for w in mesh.workloads if w.admin is not None]
    if not targets:
        raise UnavailableError("no workload of the mesh names its sidecar's admin address", where="--mesh",
                               fix="add admin: {address, port} to the workloads, or pass --prometheus URL")
    for workload in targets:
        assert workload.admin is not None
        host = f"[{workload.admin.address}]" if ":" in workload.admin.address else workload.admin.address
        try:
            with urllib.request.urlopen(f"http://{host}:{workload.admin.port}{METRICS_PATH}", timeout=10) as answer:
                merged.update(parse_scrape(answer.read().decode()))
        except (urllib.error.URLError, OSError):
            continue  # a sidecar that is down contributes nothing, as in Prometheus
    return merged


def _grouped(rates: dict[tuple[str, tuple[tuple[str, str], ...]], float], names: Iterable[str],
             group: tuple[str, ...], where: Labels) -> dict[tuple[tuple[str, str], ...], float]:
    """sum(rate(names{where})) by (group)."""
    wanted = set(names)
    summed: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    for (name, labels), rate in rates.items():
        found = dict(labels)
        if name in wanted and all(found.get(key) == value for key, value in where.items()):
            summed[tuple((key, found.get(key, "")) for key in group)] += rate
    return summed


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (upper bound, cumulative rate) buckets; None without data."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = quantile * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # the +Inf bucket: the highest finite bound, as Prometheus answers
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = upper, count
    return lower


def graph_from_scrapes(first: Scrape, second: Scrape, seconds: float, origin: str = "the sidecars") -> Graph:
    """The graph from two scrapes ``seconds`` apart (counter increases per second)."""
    rates = {key: max(0.0, value - first.get(key, 0.0)) / seconds for key, value in second.items()}
    destination = {"reporter": "destination"}

    def series(names: Iterable[str], group: tuple[str, ...], where: Labels) -> Series:
        return [(dict(labels), rate) for labels, rate in _grouped(rates, names, group, where).items() if rate > 0]

    latency: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
    for labels, rate in _grouped(rates, [DURATION_BUCKETS], (*LATENCY_GROUP, "le"), destination).items():
        latency[labels[:-1]].append((float(labels[-1][1]), rate))
    p95 = [(dict(labels), value) for labels, buckets in latency.items()
           if (value := histogram_quantile(0.95, buckets)) is not None]
    mtls = {**destination, "connection_security_policy": "mutual_tls"}
    return build_graph(series([REQUESTS], HTTP_GROUP, destination), mtls=series([REQUESTS], HTTP_GROUP, mtls),
                       p95=p95, tcp=series(TCP_BYTES, TCP_GROUP, destination),
                       tcp_mtls=series(TCP_BYTES, TCP_GROUP, mtls), origin=origin)
