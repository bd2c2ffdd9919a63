"""The ratelimit filter's configuration: its schema (the dataclasses) and the checks types cannot express.

One source for both sides: the filter (inside the VM, where this module is
the top-level ``ratelimit_config``) validates its plugin configuration with
it, and the host side (``meshext ratelimit convert``, the tests) imports it
as ``meshext.extensions.ratelimit.filter.ratelimit_config`` to build and
check configurations.  It imports only the standard library and
``meshext.sdk.config``.

A configuration, as JSON::

    {"mode": "local", "domain": "bookinfo",
     "rules": [{"name": "per-client",
                "match": {"path_prefix": "/productpage", "methods": ["GET"]},
                "descriptor": [{"key": "client", "header": "x-forwarded-for", "default": "unknown"}],
                "limit": {"requests_per_unit": 2, "unit": "second", "units": 5},
                "algorithm": "fixed_window",
                "overrides": [{"dimensions": {"client": "10.28.11.20"},
                               "limit": {"requests_per_unit": 500, "unit": "second"}}]}]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from meshext.sdk.config import ConfigError

UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# RLS v3 RateLimitUnit numbers (envoy/config/route/v3... ratelimit_unit.proto: UNKNOWN 0, SECOND 1 ... DAY 4).
UNIT_NUMBERS = {"second": 1, "minute": 2, "hour": 3, "day": 4}
ALGORITHMS = ("fixed_window", "token_bucket")
MODES = ("local", "global")
FAILURE_MODES = ("allow", "deny")
# What an entry's "attribute" may name (the filter reads them), besides DESTINATION_LABEL + a label name.
ATTRIBUTES = ("path", "method", "authority", "source.address", "source.principal", "source.workload",
              "destination.workload")
DESTINATION_LABEL = "destination.labels."  # a label of this proxy's workload (node metadata LABELS)
DEFAULT_TIMEOUT_MS = 20  # as Envoy's ratelimit filter
# Optional fields are written ``None | X``: the SDK's validator reports the error of
# a union's last member, and for a value that is given, X's error is the useful one.


@dataclass
class Limit:
    """``requests_per_unit`` requests per ``units`` × ``unit``; token buckets may hold ``burst`` more."""

    requests_per_unit: int
    unit: str  # second | minute | hour | day
    units: int = 1  # the window is this many units long (Mixer's validDuration: 5s = second × 5)
    burst: int = 0  # token_bucket only: extra tokens a full bucket holds

    @property
    def window_seconds(self) -> int:
        """The window (fixed_window) or refill period (token_bucket) in seconds."""
        return UNIT_SECONDS[self.unit] * self.units


@dataclass
class Entry:
    """One (key, value) of a descriptor; the value comes from exactly one of header, attribute, value."""

    key: str
    header: str = ""  # a request header (":path" includes the query string)
    attribute: str = ""  # one of ATTRIBUTES
    value: str = ""  # a fixed value
    default: None | str = None  # used when the header/attribute is absent; None: the rule does not apply


@dataclass
class Match:
    """Which requests a rule applies to: all the conditions given must hold."""

    path_prefix: str = ""
    path_regex: str = ""  # full match against the path without its query string
    methods: list[str] = field(default_factory=list)
    authority: str = ""  # exact, port ignored
    headers: dict[str, str] = field(default_factory=dict)  # header name -> exact value


@dataclass
class Override:
    """A different limit for descriptors whose entries include all ``dimensions`` (first match wins)."""

    dimensions: dict[str, str]
    limit: Limit


@dataclass
class Rule:
    """A named limit on the requests it matches, counted per distinct descriptor value."""

    name: str
    descriptor: list[Entry]
    limit: None | Limit = None  # required in local mode; in global mode sent to the service as an override
    match: Match = field(default_factory=Match)
    algorithm: str = "fixed_window"
    overrides: list[Override] = field(default_factory=list)
    dry_run: bool = False  # count and report, never deny


@dataclass
class Service:
    """The rate limit service (global mode): an Envoy cluster speaking RLS v3 over HTTP/2."""

    cluster: str
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    # The calls' :authority; empty: the host of a mesh cluster (outbound|port|subset|host), else
    # the cluster name, which is what Envoy sends by default (see call_authority).
    authority: str = ""


def call_authority(service: Service) -> str | None:
    """The ``:authority`` of the calls to ``service``, or None for Envoy's default (the cluster name).

    A mesh cluster's name (``outbound|9080||ratelimit.default.svc.cluster.local``) is not a valid
    authority: the service's sidecar refuses it, so its host part is sent instead, as Istio's own
    rate-limit configuration does with ``GrpcService.envoy_grpc.authority``.
    """
    if service.authority:
        return service.authority
    parts = service.cluster.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound") and parts[3]:
        return parts[3]
    return None


@dataclass
class Config:
    """The plugin configuration."""

    rules: list[Rule]
    mode: str = "local"
    domain: str = "meshext"  # global: the service's domain; local: keeps two plugins' buckets apart
    service: None | Service = None  # global mode only
    failure_mode: str = "allow"  # global mode, service unreachable/slow/unreadable: allow | deny (500)
    # x-ratelimit-* on allowed responses too (denied ones always get them).  Off by default, as Envoy's
    # own filters have enable_x_ratelimit_headers OFF: three header writes a request cost as much as
    # the token bucket's decision (benchmarks/ratelimit_local.py).
    response_headers: bool = False


def check(config: Config) -> None:
    """Raise ConfigError naming the first field that is wrong, with the fix."""
    _one_of("config.mode", config.mode, MODES)
    _one_of("config.failure_mode", config.failure_mode, FAILURE_MODES)
    if not config.domain:
        raise ConfigError("config.domain: empty; fix: name the limits' domain, e.g. the service's name")
    if config.mode == "global":
        if config.service is None:
            raise ConfigError("config.service: required in global mode; fix: give the rate limit service's cluster")
        if not config.service.cluster:
            raise ConfigError("config.service.cluster: empty; fix: name the Envoy cluster of the rate limit service")
        if config.service.timeout_ms <= 0:
            raise ConfigError(f"config.service.timeout_ms: {config.service.timeout_ms} is not positive; "
                              f"fix: give milliseconds, e.g. {DEFAULT_TIMEOUT_MS}")
    elif config.service is not None:
        raise ConfigError("config.service: only used in global mode; fix: remove it or set mode to 'global'")
    if not config.rules:
        raise ConfigError("config.rules: empty, nothing would be limited; fix: give at least one rule")
    names = set()
    for index, rule in enumerate(config.rules):
        where = f"config.rules[{index}]"
        if not rule.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", rule.name):
            raise ConfigError(f"{where}.name: {rule.name!r} is not a metric-safe name; fix: use letters, digits, "
                              "'_', '.' and '-'")
        if rule.name in names:
            raise ConfigError(f"{where}.name: {rule.name!r} is used by an earlier rule; fix: give each rule its "
                              "own name")
        names.add(rule.name)
        _check_rule(config.mode, rule, where)


def _check_rule(mode: str, rule: Rule, where: str) -> None:
    _one_of(f"{where}.algorithm", rule.algorithm, ALGORITHMS)
    if not rule.descriptor:
        raise ConfigError(f"{where}.descriptor: empty; fix: give at least one entry, e.g. a fixed value")
    keys = set()
    for number, entry in enumerate(rule.descriptor):
        at = f"{where}.descriptor[{number}]"
        if not entry.key:
            raise ConfigError(f"{at}.key: empty; fix: name the entry")
        if entry.key in keys:
            raise ConfigError(f"{at}.key: {entry.key!r} appears twice in the descriptor; fix: use distinct keys")
        keys.add(entry.key)
        sources = [name for name in ("header", "attribute", "value") if getattr(entry, name)]
        if len(sources) != 1:
            raise ConfigError(f"{at}: give exactly one of 'header', 'attribute' and 'value' (got "
                              f"{', '.join(sources) or 'none'}); fix: say where the entry's value comes from")
        if entry.attribute and not (entry.attribute.startswith(DESTINATION_LABEL)
                                    and len(entry.attribute) > len(DESTINATION_LABEL)):
            _one_of(f"{at}.attribute", entry.attribute, ATTRIBUTES + (DESTINATION_LABEL + "<label>",))
        if entry.value and entry.default is not None:
            raise ConfigError(f"{at}.default: a fixed value needs no default; fix: remove 'default'")
    match = rule.match
    if match.path_regex:
        try:
            re.compile(match.path_regex)
        except re.error as error:
            raise ConfigError(f"{where}.match.path_regex: {match.path_regex!r} is not a regular expression "
                              f"({error}); fix: correct it (Python re syntax, matched against the whole path)") \
                from None
    if match.path_prefix and not match.path_prefix.startswith("/"):
        raise ConfigError(f"{where}.match.path_prefix: {match.path_prefix!r} does not start with '/'; "
                          "fix: give a path prefix such as '/api'")
    if mode == "local" and rule.limit is None:
        raise ConfigError(f"{where}.limit: required in local mode; fix: give requests_per_unit and unit")
    if rule.limit is not None:
        _check_limit(mode, rule.algorithm, rule.limit, f"{where}.limit")
    if mode == "global" and rule.algorithm != "fixed_window":
        raise ConfigError(f"{where}.algorithm: the rate limit service counts fixed windows; fix: use "
                          "'fixed_window' in global mode, or token_bucket in local mode")
    for number, override in enumerate(rule.overrides):
        at = f"{where}.overrides[{number}]"
        if not override.dimensions:
            raise ConfigError(f"{at}.dimensions: empty, the override would match everything; fix: give the "
                              "descriptor values it applies to")
        unknown = sorted(set(override.dimensions) - keys)
        if unknown:
            raise ConfigError(f"{at}.dimensions: {unknown[0]!r} is not a key of the rule's descriptor; fix: use "
                              f"one of {', '.join(sorted(keys))}")
        _check_limit(mode, rule.algorithm, override.limit, f"{at}.limit")


def _check_limit(mode: str, algorithm: str, limit: Limit, where: str) -> None:
    _one_of(f"{where}.unit", limit.unit, tuple(UNIT_SECONDS))
    if limit.requests_per_unit <= 0:
        raise ConfigError(f"{where}.requests_per_unit: {limit.requests_per_unit} is not positive; fix: give the "
                          "number of requests allowed per window (at least 1)")
    if limit.units <= 0:
        raise ConfigError(f"{where}.units: {limit.units} is not positive; fix: give the window length in units")
    if limit.burst < 0:
        raise ConfigError(f"{where}.burst: {limit.burst} is negative; fix: give 0 or more extra tokens")
    if limit.burst and algorithm != "token_bucket":
        raise ConfigError(f"{where}.burst: only token buckets have a burst; fix: set algorithm to 'token_bucket' "
                          "or remove 'burst'")
    if mode == "global" and limit.units != 1:
        raise ConfigError(f"{where}.units: the rate limit service's windows are one unit long; fix: remove "
                          "'units' (or use local mode)")


def _one_of(where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}; fix: use one of those")
