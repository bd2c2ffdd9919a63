"""request-metrics: request metrics, per-path counts shared by all workers, batched request records.

Envoy runs one VM of the filter per worker thread; this filter shows the
three ways they share what they see:

- **metrics** (Envoy adds up every VM's): ``request_metrics_requests_total``,
  ``request_metrics_responses_5xx_total``, and the histogram
  ``request_metrics_duration_ms`` (from the request headers to the end of
  the stream);
- **shared data**: one JSON document ``{path: count}`` that every VM updates
  with compare-and-swap (read, change, write back only if no other VM wrote
  in between, else read again).  ``GET <stats_path>`` answers it, whichever
  worker takes the request;
- **a shared queue**: each finished request becomes one JSON record on the
  queue; a timer (``flush_period_ms``) takes everything queued and sends it
  as one batch, POSTed as JSON lines to ``collector_cluster`` or, without
  one, written to Envoy's log.  Whichever VM's timer fires first flushes
  the records of all of them.
"""

import json
import time
from dataclasses import dataclass

from meshext.sdk import (
    Action,
    CalloutError,
    CasMismatch,
    ConfigError,
    Counter,
    Histogram,
    HttpCallResponse,
    HttpContext,
    RootContext,
    SharedData,
    SharedQueue,
    log,
)

REQUESTS = Counter("request_metrics_requests_total")
SERVER_ERRORS = Counter("request_metrics_responses_5xx_total")
DURATION_MS = Histogram("request_metrics_duration_ms")
FLUSHED = Counter("request_metrics_flushed_records_total")

PATH_COUNTS_KEY = "request-metrics.path-counts"
RECORDS_QUEUE = "request-metrics.records"
OTHER_PATHS = "(other)"  # where paths beyond max_tracked_paths are counted
CAS_ATTEMPTS = 32  # a write loses to another VM's only if both changed the document at the same moment


@dataclass
class Config:
    """The plugin configuration (JSON); every field is optional."""

    stats_path: str = "/request-metrics"  # GET answered by the filter with the per-path counts
    max_tracked_paths: int = 100  # distinct paths counted; the rest count under "(other)"
    flush_period_ms: int = 10_000  # how often queued request records are sent
    collector_cluster: str = ""  # where batches are POSTed; empty: Envoy's log
    collector_path: str = "/v1/requests"


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    if not config.stats_path.startswith("/"):
        return f"config.stats_path: {config.stats_path!r} does not start with '/'; fix: write it as a path"
    if config.max_tracked_paths <= 0:
        return f"config.max_tracked_paths: {config.max_tracked_paths} is not positive; fix: give a count, e.g. 100"
    if config.flush_period_ms <= 0:
        return f"config.flush_period_ms: {config.flush_period_ms} is not positive; fix: give milliseconds, e.g. 10000"
    if not config.collector_path.startswith("/"):
        return f"config.collector_path: {config.collector_path!r} does not start with '/'; fix: write it as a path"
    return None


def path_counts() -> tuple[dict[str, int], int]:
    """The shared per-path counts and their CAS token (0 when absent)."""
    stored = SharedData.get(PATH_COUNTS_KEY)
    return (json.loads(stored[0]), stored[1]) if stored else ({}, 0)


def count_path(path: str, max_tracked_paths: int) -> None:
    """Add one request to ``path``'s shared count, retrying when another VM wrote first."""
    for _ in range(CAS_ATTEMPTS):
        counts, cas = path_counts()
        tracked = len(counts) - (OTHER_PATHS in counts)
        key = path if path in counts or tracked < max_tracked_paths else OTHER_PATHS
        counts[key] = counts.get(key, 0) + 1
        try:
            SharedData.set(PATH_COUNTS_KEY, json.dumps(counts), cas)
            return
        except CasMismatch:
            continue  # another VM changed the counts since we read them: read again
    log.warn(f"request-metrics: {path} not counted: the path counts kept changing under {CAS_ATTEMPTS} attempts")


class Measure(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream: bool) -> Action:
        self.started_ns = time.monotonic_ns()
        headers = self.request.headers
        path = (headers.get(":path") or "/").partition("?")[0]
        self.is_stats_request = path == self.root.config.stats_path and headers.get(":method") == "GET"
        if self.is_stats_request:
            counts, _ = path_counts()
            return self.send_local_response(200, json.dumps(counts, sort_keys=True) + "\n",
                                            [("content-type", "application/json")], details="request_metrics_stats")
        REQUESTS.increment()
        count_path(path, self.root.config.max_tracked_paths)
        return Action.CONTINUE

    def on_log(self) -> None:
        # The request and response headers are readable again here, at the stream's end.
        if self.is_stats_request:
            return
        duration_ms = (time.monotonic_ns() - self.started_ns) // 1_000_000
        DURATION_MS.record(duration_ms)
        status = int(self.response.headers.get(":status") or 0)  # 0: the stream ended without a response
        if status >= 500:
            SERVER_ERRORS.increment()
        record = {
            "method": self.request.headers.get(":method"),
            "path": self.request.headers.get(":path"),
            "status": status,
            "duration_ms": duration_ms,
        }
        self.root.records.enqueue(json.dumps(record, separators=(",", ":")))


class Root(RootContext):
    http_context = Measure
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)

    def on_configure(self, config: bytes) -> bool:
        if not super().on_configure(config):  # JSON, field types against Config, then check_config
            return False
        # Every VM registers the queue: they all get the same one, and any of them can flush it.
        self.records = SharedQueue.register(RECORDS_QUEUE)
        # A write with CAS 0 is unconditional, so creating the document cannot be made safe
        # against another VM doing the same; creating it at start-up, before traffic, can.
        if SharedData.get(PATH_COUNTS_KEY) is None:
            SharedData.set(PATH_COUNTS_KEY, "{}")
        self.set_tick_period(self.config.flush_period_ms)
        return True

    def on_tick(self) -> None:
        batch = []
        while (record := self.records.dequeue()) is not None:
            batch.append(record)
        if not batch:
            return
        if not self.config.collector_cluster:
            for record in batch:
                log.info(f"request-metrics: {record.decode()}")
            FLUSHED.increment(len(batch))
            return
        headers = [(":method", "POST"), (":path", self.config.collector_path),
                   (":authority", self.config.collector_cluster), ("content-type", "application/x-ndjson")]
        body = b"\n".join(batch) + b"\n"
        try:
            self.http_call(self.config.collector_cluster, headers, body,
                           callback=lambda answer: self.on_collector_answer(answer, len(batch)))
        except CalloutError as error:
            log.error(f"request-metrics: {len(batch)} records dropped: {error}")

    def on_collector_answer(self, answer: HttpCallResponse, records: int) -> None:
        if answer.status is not None and 200 <= answer.status < 300:
            FLUSHED.increment(records)
        else:
            outcome = "no answer" if answer.failed else f"answer {answer.status}"
            log.warn(f"request-metrics: collector {self.config.collector_cluster!r} gave {outcome}; "
                     f"{records} records dropped")
