"""Counters, gauges and histograms in Envoy's stats, with or without labels.

Define metrics once (at module level or in ``on_configure``); they show on
Envoy's ``/stats`` and ``/stats/prometheus``.  Define-by-name is idempotent
within a VM.  The style is prometheus-client's::

    REQUESTS = Counter("my_requests_total", "Requests seen", labelnames=("method", "code"))
    REQUESTS.labels("GET", "200").inc()          # or .labels(method="GET", code="200")
    LATENCY = Histogram("my_latency_ms", labelnames=("method",))
    LATENCY.labels("GET").observe(12)

``labels(...)`` returns a child that is cached per value tuple, so a hot path
builds no string and asks Envoy for no id after the first use of a
combination.  A metric without ``labelnames`` is used directly
(``Counter("x").inc()``).

**How labels reach Prometheus.**  The Proxy-Wasm ABI defines metrics by name
only, so, as Istio's Wasm stats plugin did, each label is encoded into the
name: ``method=.=GET;.;code=.=200;.;my_requests_total``.  Envoy cuts them out
again with one ``stats_tags`` entry per label name, regex
``(NAME=\\.=(.*?);\\.;)`` (:func:`envoy_stats_tags`; the sidecar bootstrap that
`meshext proxy` writes carries them, and `meshext telemetry stats-config`
prints them for other Envoys).  Without those tags the labels stay in the
metric name.

**Escaping.**  A value containing the separators ``;.;`` or ``=.=`` would end
its label early and spill into the next one.  So in values ``%``, ``;`` and
``=`` are written ``%25``, ``%3B`` and ``%3D`` (URL percent-encoding, which
:func:`decode_label_value` undoes): values never contain ``;`` or ``=``, and
no separator can form, whatever the values are.  A value's final ``.`` is
written ``%2E``: Envoy drops a dot just before the ``;.;`` (its stat names are
dot-separated), which would make ``"a."`` and ``"a"`` one series.
"""

from __future__ import annotations

from meshext.sdk.abi import MetricType
from meshext.sdk.errors import SdkError
from meshext.sdk.host import host

TYPE_CHECKING = False  # typing is not imported inside the VM (memory in every VM)
if TYPE_CHECKING:
    from typing import Self

TAG_VALUE_SEPARATOR = "=.="  # between a label name and its value
TAG_END = ";.;"  # after each label value

# Applied in this order by encode; "%" first, so the escapes themselves are unambiguous.
_ESCAPES = (("%", "%25"), (";", "%3B"), ("=", "%3D"))


def encode_label_value(value: str) -> str:
    """``value`` as it is written into a metric name: ``%``, ``;``, ``=`` and a final ``.``
    percent-encoded (see the module doc)."""
    if "%" in value or ";" in value or "=" in value:
        for raw, escaped in _ESCAPES:
            value = value.replace(raw, escaped)
    if value.endswith("."):
        value = value[:-1] + "%2E"
    return value


def decode_label_value(encoded: str) -> str:
    """The original of a value :func:`encode_label_value` wrote (as Prometheus shows it)."""
    if encoded.endswith("%2E"):
        encoded = encoded[:-3] + "."
    for raw, escaped in reversed(_ESCAPES):
        encoded = encoded.replace(escaped, raw)
    return encoded


def _valid_name(name: str, extra: str = "") -> bool:
    """Prometheus' name rule: ``[a-zA-Z_<extra>][a-zA-Z0-9_<extra>]*`` (ASCII only)."""
    return bool(name) and name.isascii() and not name[0].isdigit() and all(
        character.isalnum() or character == "_" or character in extra for character in name)


def encoded_name(name: str, labelnames: tuple[str, ...], values: tuple[str, ...]) -> str:
    """The Proxy-Wasm metric name carrying ``values`` for ``labelnames``: ``n=.=v;.;...;.;name``."""
    return "".join(f"{label}{TAG_VALUE_SEPARATOR}{encode_label_value(value)}{TAG_END}"
                   for label, value in zip(labelnames, values, strict=True)) + name


def envoy_stats_tags(labelnames: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """Envoy ``stats_config.stats_tags`` entries that turn encoded labels back into tags.

    One entry per label name, in the order given; set ``use_all_default_tags:
    false`` beside them (Envoy's default extractors would cut pieces out of
    these names too).  The regexes are not anchored, so a name that ends
    another (``app`` in ``source_app``) would match inside it: such sets are
    refused."""
    names = list(dict.fromkeys(labelnames))
    for name in names:
        if not _valid_name(name):
            raise SdkError(f"label name {name!r} is not a Prometheus label name",
                           fix="use letters, digits and '_', not starting with a digit")
        clash = next((other for other in names if other != name and other.endswith(name)), None)
        if clash is not None:
            raise SdkError(f"label name {name!r} ends label name {clash!r}: its stats tag would match inside it",
                           fix=f"rename {name!r} (e.g. give it a prefix)")
    return [{"tag_name": name, "regex": f"({name}=\\.=(.*?);\\.;)"} for name in names]


class _Metric:
    """A metric named ``name`` (its encoded name when it is a labelled child), defined in Envoy on first use."""

    kind: MetricType

    def __init__(self, name: str, documentation: str = "", labelnames: tuple[str, ...] | list[str] = ()) -> None:
        self.name = name
        self.documentation = documentation  # Envoy's ABI has no help text; kept for readers
        self.labelnames = tuple(labelnames)
        self._id: int | None = None
        self._children: dict[tuple[str, ...], Self] = {}
        if self.labelnames:
            if not _valid_name(name, ":"):
                raise SdkError(f"metric name {name!r} is not a Prometheus metric name",
                               fix="use letters, digits, '_' and ':', not starting with a digit")
            for label in self.labelnames:
                if not _valid_name(label) or label.startswith("__"):
                    raise SdkError(f"{name}: label name {label!r} is not a Prometheus label name",
                                   fix="use letters, digits and '_', not starting with a digit or '__'")
            if len(set(self.labelnames)) != len(self.labelnames):
                raise SdkError(f"{name}: a label name is listed twice in {self.labelnames}",
                               fix="list each label name once")

    def labels(self, *values: str, **by_name: str) -> Self:
        """The child for one combination of label values, by position or by name (all of them, as str).

        Children are cached: the same values give the same child, and only the
        first use of a combination builds its name and defines it in Envoy."""
        child = self._children.get(values) if not by_name else None
        if child is not None:
            return child
        if not self.labelnames:
            raise SdkError(f"{self.name} has no label names, so it has no labels()",
                           fix="use the metric directly, or give it labelnames=(...)")
        if by_name:
            if values:
                raise SdkError(f"{self.name}.labels(): pass values by position or by name, not both",
                               fix=f"e.g. .labels({', '.join(f'{n}=...' for n in self.labelnames)})")
            if set(by_name) != set(self.labelnames):
                raise SdkError(f"{self.name}.labels(): got labels {sorted(by_name)}, "
                               f"expected {list(self.labelnames)}", fix="pass exactly the metric's label names")
            values = tuple(by_name[label] for label in self.labelnames)
            child = self._children.get(values)
            if child is not None:
                return child
        if len(values) != len(self.labelnames):
            raise SdkError(f"{self.name}.labels(): got {len(values)} values, expected {len(self.labelnames)} "
                           f"({', '.join(self.labelnames)})", fix="pass one value per label name")
        for label, value in zip(self.labelnames, values, strict=True):
            if not isinstance(value, str):
                raise SdkError(f"{self.name}.labels(): {label}={value!r} is not a str",
                               fix=f"pass str({value!r})")
        child = type(self)(encoded_name(self.name, self.labelnames, values))
        self._children[values] = child
        return child

    @property
    def metric_id(self) -> int:
        """Envoy's id for the metric (defining it on first use)."""
        # Defined lazily: module-level metrics are created at build time,
        # when there is no Envoy to define them in.
        if self._id is None:
            if self.labelnames:
                raise SdkError(f"{self.name} has label names {self.labelnames}: it has no value of its own",
                               fix=f"use {self.name}.labels(...)")
            self._id = host.define_metric(int(self.kind), self.name)
        return self._id

    def value(self) -> int:
        """The metric's current value in this Envoy (all VMs together)."""
        return host.get_metric(self.metric_id)


class Counter(_Metric):
    """A count that only goes up (Prometheus counter); ``labelnames`` make it a family (see ``labels``)."""

    kind = MetricType.COUNTER

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (an int of at least 0) to the counter."""
        metric_id = self._id if self._id is not None else self.metric_id
        host.increment_metric(metric_id, amount)

    increment = inc


class Gauge(_Metric):
    """A value that goes up and down (Prometheus gauge); ``labelnames`` make it a family (see ``labels``)."""

    kind = MetricType.GAUGE

    def set(self, value: int) -> None:
        """Set the gauge to ``value``."""
        host.record_metric(self.metric_id, value)

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (negative to subtract) to the gauge."""
        host.increment_metric(self.metric_id, amount)

    def dec(self, amount: int = 1) -> None:
        """Subtract ``amount`` from the gauge."""
        host.increment_metric(self.metric_id, -amount)

    add = inc


class Histogram(_Metric):
    """A distribution of recorded values (Prometheus histogram with Envoy's buckets);
    ``labelnames`` make it a family (see ``labels``)."""

    kind = MetricType.HISTOGRAM

    def observe(self, value: int) -> None:
        """Record one observation ``value`` (an int of at least 0)."""
        metric_id = self._id if self._id is not None else self.metric_id
        host.record_metric(metric_id, value)

    record = observe
