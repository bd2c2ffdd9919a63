"""Counters, gauges and histograms in Envoy's stats.

Define metrics once (at module level or in ``on_configure``); they show on
Envoy's ``/stats`` and ``/stats/prometheus`` under the name given (Envoy
prefixes nothing).  Define-by-name is idempotent within a VM.
"""

from __future__ import annotations

from meshext.sdk.abi import MetricType
from meshext.sdk.host import host


class _Metric:
    kind: MetricType

    def __init__(self, name: str) -> None:
        self.name = name
        self._id: int | None = None

    @property
    def metric_id(self) -> int:
        # Defined lazily: module-level metrics are created at build time,
        # when there is no Envoy to define them in.
        if self._id is None:
            self._id = host.define_metric(int(self.kind), self.name)
        return self._id

    def value(self) -> int:
        return host.get_metric(self.metric_id)


class Counter(_Metric):
    kind = MetricType.COUNTER

    def increment(self, delta: int = 1) -> None:
        host.increment_metric(self.metric_id, delta)


class Gauge(_Metric):
    kind = MetricType.GAUGE

    def set(self, value: int) -> None:
        host.record_metric(self.metric_id, value)

    def add(self, delta: int) -> None:
        host.increment_metric(self.metric_id, delta)


class Histogram(_Metric):
    kind = MetricType.HISTOGRAM

    def record(self, value: int) -> None:
        host.record_metric(self.metric_id, value)
