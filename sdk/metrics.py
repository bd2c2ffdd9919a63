"""Counters, gauges and histograms in Envoy's stats.

Define metrics once (at module level or in ``on_configure``); they show on
Envoy's ``/stats`` and ``/stats/prometheus`` under the name given (Envoy
prefixes nothing).  Define-by-name is idempotent within a VM.
"""

from __future__ import annotations

from meshext.sdk.abi import MetricType
from meshext.sdk.host import host


class _Metric:
    """A metric named ``name``, defined in Envoy on first use."""

    kind: MetricType

    def __init__(self, name: str) -> None:
        self.name = name
        self._id: int | None = None

    @property
    def metric_id(self) -> int:
        """Envoy's id for the metric (defining it on first use)."""
        # Defined lazily: module-level metrics are created at build time,
        # when there is no Envoy to define them in.
        if self._id is None:
            self._id = host.define_metric(int(self.kind), self.name)
        return self._id

    def value(self) -> int:
        """The metric's current value in this Envoy (all VMs together)."""
        return host.get_metric(self.metric_id)


class Counter(_Metric):
    """A count that only goes up (Prometheus counter)."""

    kind = MetricType.COUNTER

    def increment(self, delta: int = 1) -> None:
        """Add ``delta`` (at least 0) to the counter."""
        host.increment_metric(self.metric_id, delta)


class Gauge(_Metric):
    """A value that goes up and down (Prometheus gauge)."""

    kind = MetricType.GAUGE

    def set(self, value: int) -> None:
        """Set the gauge to ``value``."""
        host.record_metric(self.metric_id, value)

    def add(self, delta: int) -> None:
        """Add ``delta`` (negative to subtract) to the gauge."""
        host.increment_metric(self.metric_id, delta)


class Histogram(_Metric):
    """A distribution of recorded values (Prometheus histogram)."""

    kind = MetricType.HISTOGRAM

    def record(self, value: int) -> None:
        """Record one observation ``value`` (an int of at least 0)."""
        host.record_metric(self.metric_id, value)
