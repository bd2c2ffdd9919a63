"""ratelimit: request rate limits per descriptor, counted in the proxy (local) or by an RLS v3 service (global).

Each rule that matches a request builds one descriptor, its (key, value)
entries taken from headers, request attributes or fixed values
(``ratelimit_config``).  Local mode counts in shared data, shared by every
worker VM (``buckets``); global mode asks the rate limit service over gRPC
(``rls_messages``) and acts on its answer.  A denied request gets 429 with
``x-ratelimit-limit``/``-remaining``/``-reset`` (draft-03, as Envoy's
filters) and ``retry-after``; allowed responses carry the x-ratelimit-*
headers too with ``response_headers: true`` (off by default, as in Envoy).  Every decision is
counted in ``ratelimit_requests_total{domain, rule, outcome}``
(``ratelimit_metrics``).

The per-request path is short on purpose (CPython steps are what a request
costs, see benchmarks/ratelimit_local.py --steps): rules are compiled at
configure time, a rule with a fixed descriptor and no conditions has its
bucket ready, others remember the bucket of each descriptor, and a bucket
usually admits from its worker's lease without a host call.
"""

from __future__ import annotations

import re
import time

# In the VM the filter's modules are top-level; mypy, checking the package, cannot resolve them that way.
import buckets  # type: ignore[import-not-found]
import ratelimit_metrics  # type: ignore[import-not-found]
import rls_messages  # type: ignore[import-not-found]
from ratelimit_config import (  # type: ignore[import-not-found]
    DESTINATION_LABEL,
    UNIT_NUMBERS,
    Config,
    Entry,
    Limit,
    Rule,
    call_authority,
    check,
)

from meshext.sdk import (
    Action,
    CalloutError,
    Counter,
    GrpcResponse,
    HeaderMap,
    HttpContext,
    RootContext,
    log,
    properties,
)

REQUESTS = Counter(ratelimit_metrics.REQUESTS, "Requests each rule decided, by outcome",
                   labelnames=ratelimit_metrics.LABELS)
MAX_CACHED_BUCKETS = 1024  # per rule: descriptors whose bucket (and lease) is remembered; beyond, all are dropped


class PreparedRule:
    """A rule compiled at configure time: its conditions, counters and (for fixed descriptors) its bucket.

    Per request it reads only the headers its conditions and entries name."""

    def __init__(self, rule: Rule, domain: str, local: bool) -> None:
        self.rule = rule
        self.name = rule.name
        self.dry_run = rule.dry_run
        match = rule.match
        self.path_prefix = match.path_prefix
        self.path_regex = re.compile(match.path_regex) if match.path_regex else None
        self.methods = frozenset(match.methods)
        self.authority = match.authority
        self.headers = tuple(match.headers.items())
        self.unconditional = not (self.path_prefix or self.path_regex or self.methods or self.authority
                                  or self.headers)
        self.key_prefix = f"ratelimit:{domain}:{rule.name}:"
        self.ok, self.over_limit, self.dry_run_over, self.failure = (
            REQUESTS.labels(domain, rule.name, outcome) for outcome in ratelimit_metrics.OUTCOMES)
        self._buckets: dict[tuple[tuple[str, str], ...], buckets.Bucket] = {}
        # A descriptor of fixed values is the same for every request: so are its limit and bucket.
        self.fixed_entries: list[tuple[str, str]] | None = None
        self.always: buckets.Bucket | None = None  # the bucket of every request, when the rule needs no look
        if all(entry.value for entry in rule.descriptor):
            self.fixed_entries = [(entry.key, entry.value) for entry in rule.descriptor]
            if local:
                fixed_bucket = self._buckets[tuple(self.fixed_entries)] = self._bucket(self.fixed_entries)
                self.always = fixed_bucket if self.unconditional else None

    def matches(self, context: RateLimit, headers: HeaderMap) -> bool:
        if self.methods and headers.get(":method") not in self.methods:
            return False
        if self.path_prefix or self.path_regex:
            path = context.path()
            if not path.startswith(self.path_prefix):
                return False
            if self.path_regex is not None and not self.path_regex.fullmatch(path):
                return False
        if self.authority and _without_port(headers.get(":authority") or "") != self.authority:
            return False
        return all(headers.get(name) == value for name, value in self.headers)

    def entries(self, context: RateLimit) -> list[tuple[str, str]] | None:
        """The descriptor for this request, or None when an entry has no value and no default."""
        if self.fixed_entries is not None:
            return self.fixed_entries
        found = []
        for entry in self.rule.descriptor:
            value = _entry_value(entry, context)
            if value is None:
                return None
            found.append((entry.key, value))
        return found

    def limit_for(self, entries: list[tuple[str, str]]) -> tuple[Limit | None, int]:
        """The first override whose dimensions all match (and its number, -1 for none), as Mixer."""
        values = dict(entries)
        for number, override in enumerate(self.rule.overrides):
            if all(values.get(key) == value for key, value in override.dimensions.items()):
                return override.limit, number
        return self.rule.limit, -1

    def bucket(self, context: RateLimit) -> buckets.Bucket | None:
        """Local mode: the bucket of this request's descriptor (remembered per descriptor), None without one."""
        entries = self.entries(context)
        if entries is None:
            return None
        descriptor = tuple(entries)
        found = self._buckets.get(descriptor)
        if found is None:
            if len(self._buckets) >= MAX_CACHED_BUCKETS:
                self._buckets.clear()
            found = self._buckets[descriptor] = self._bucket(entries)
        return found

    def _bucket(self, entries: list[tuple[str, str]]) -> buckets.Bucket:
        limit, override = self.limit_for(entries)
        assert limit is not None  # check(): local rules have limits
        key = self.key_prefix + _limit_key(limit, override) + ";".join(f"{k}={_escape(v)}" for k, v in entries)
        if self.rule.algorithm == "token_bucket":
            return buckets.TokenBucket(key, limit.requests_per_unit, limit.burst, limit.window_seconds)
        return buckets.FixedWindow(key, limit.requests_per_unit, limit.window_seconds)


def _without_port(authority: str) -> str:
    return authority.rsplit(":", 1)[0] if ":" in authority and not authority.endswith("]") else authority


def _entry_value(entry: Entry, context: RateLimit) -> str | None:
    if entry.value:
        return entry.value
    value = context.request.headers.get(entry.header) if entry.header else _attribute(entry.attribute, context)
    return entry.default if value is None else value


def _attribute(name: str, context: RateLimit) -> str | None:
    headers = context.request.headers
    if name == "path":
        return context.path()
    if name == "method":
        return headers.get(":method")
    if name == "authority":
        authority = headers.get(":authority")
        return None if authority is None else _without_port(authority)
    if name == "source.address":
        address = properties.get_str("source.address")
        return None if address is None else _without_port(address)
    if name in ("source.principal", "source.workload"):
        principal = properties.get_str("connection.uri_san_peer_certificate")
        if not principal:
            return None
        # The workload identity of a SPIFFE id (spiffe://<domain>/ns/<ns>/sa/<name>): its last segment.
        return principal if name == "source.principal" else principal.rstrip("/").rsplit("/", 1)[-1]
    if name == "destination.workload":
        return properties.get_str(("node", "metadata", "WORKLOAD_NAME"))
    # check() allows nothing else: a label of this proxy's workload.
    return properties.get_str(("node", "metadata", "LABELS", name.removeprefix(DESTINATION_LABEL)))


def _limit_key(limit: Limit, override: int) -> str:
    # Part of the bucket key, so a changed limit starts a fresh bucket.
    return f"{override}:{limit.requests_per_unit}/{limit.units}{limit.unit}+{limit.burst}:"


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace(";", "%3B").replace("=", "%3D")


def rate_limit_headers(tightest: tuple[int, int, int], denied: bool) -> list[tuple[str, str]]:
    """x-ratelimit-* (draft-03) of ``tightest`` (remaining, limit, reset seconds); retry-after when ``denied``."""
    remaining, limit, reset = tightest
    headers = [("x-ratelimit-limit", str(limit)), ("x-ratelimit-remaining", str(remaining)),
               ("x-ratelimit-reset", str(reset))]
    if denied:
        headers.append(("retry-after", str(max(1, reset))))
    return headers


class RateLimit(HttpContext):
    """One request: decide in on_request_headers (and, in global mode, on the service's answer)."""

    root: Root
    # The limit the response reports: (remaining, limit, reset seconds) of the rule with the least
    # remaining (then the lowest limit), None while no rule with a known limit decided.
    tightest: tuple[int, int, int] | None = None
    service_headers: tuple[tuple[str, str], ...] = ()  # global mode: the service's response_headers_to_add

    def path(self) -> str:
        return (self.request.headers.get(":path") or "").split("?", 1)[0]

    def on_request_headers(self, end_of_stream: bool) -> Action:
        root = self.root
        if root.mode_global:
            return self.ask_service()
        now_ns = time.time_ns()
        for rule in root.rules:
            bucket = rule.always
            if bucket is None:
                if not (rule.unconditional or rule.matches(self, self.request.headers)):
                    continue
                bucket = rule.bucket(self)
                if bucket is None:
                    continue
            try:
                allowed, remaining, reset = bucket.take(root.lock_key, now_ns)
            except buckets.ContentionError as error:
                # Never over-admit: a bucket that cannot be read consistently denies (a dry-run rule never does).
                rule.failure.inc()
                log.error(f"ratelimit: rule {rule.name!r}: {error}; "
                          + ("request let through (dry_run)" if rule.dry_run else "request denied"))
                if rule.dry_run:
                    continue
                self.tightest = (0, bucket.capacity, 1)
                return self.deny()
            if self.decided(rule, allowed, bucket.capacity, remaining, reset):
                return self.deny()
        return Action.CONTINUE

    def decided(self, rule: PreparedRule, allowed: bool, limit: int, remaining: int, reset: int) -> bool:
        """Count ``rule``'s decision and keep the tightest limit; True when the request must be denied for it
        (a dry-run rule never denies).  ``limit`` 0: not known (a service answer without a status)."""
        tightest = self.tightest
        if limit and (tightest is None or remaining < tightest[0]
                      or (remaining == tightest[0] and limit < tightest[1])):
            self.tightest = (remaining, limit, reset)
        if allowed:
            rule.ok.inc()
            return False
        if rule.dry_run:
            rule.dry_run_over.inc()
            return False
        rule.over_limit.inc()
        return True

    def deny(self, extra_headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Action:
        tightest = self.tightest
        headers = (rate_limit_headers(tightest, denied=True) if tightest else []) + (extra_headers or [])
        self.tightest = None  # the local reply passes through on_response_headers: add nothing twice
        return self.send_local_response(429, body or b"rate limited\n", headers, details="request_rate_limited")

    # -- global mode ---------------------------------------------------------------------------

    def ask_service(self) -> Action:
        headers = self.request.headers
        self.asked = applicable = [(rule, entries) for rule in self.root.rules
                                   if (rule.unconditional or rule.matches(self, headers))
                                   and (entries := rule.entries(self)) is not None]
        if not applicable:
            return Action.CONTINUE
        descriptors = []
        for rule, entries in applicable:
            limit, _ = rule.limit_for(entries)
            override = None if limit is None else (limit.requests_per_unit, UNIT_NUMBERS[limit.unit])
            descriptors.append((entries, override))
        config = self.root.config
        assert config.service is not None  # check(): global mode has a service
        try:
            self.grpc_call(config.service.cluster, rls_messages.SERVICE, rls_messages.METHOD,
                           rls_messages.encode_request(config.domain, descriptors), callback=self.on_answer,
                           timeout_ms=config.service.timeout_ms, authority=self.root.service_authority)
        except CalloutError as error:
            return self.service_failed(f"call refused: {error}", resume=False)
        return Action.PAUSE

    def on_answer(self, reply: GrpcResponse) -> None:
        if not reply.ok:
            self.service_failed(f"gRPC status {reply.status_code} {reply.status_message}".rstrip())
            return
        try:
            answer = rls_messages.Answer(reply.message)
        except ValueError as error:  # WireError, UnicodeDecodeError
            self.service_failed(f"unreadable reply: {error}")
            return
        if answer.code not in (rls_messages.CODE_OK, rls_messages.CODE_OVER_LIMIT):
            self.service_failed(f"reply with overall_code {answer.code} (UNKNOWN)")
            return
        if answer.statuses and len(answer.statuses) != len(self.asked):
            self.service_failed(f"{len(answer.statuses)} statuses for {len(self.asked)} descriptors")
            return
        denied = False
        for number, (rule, _) in enumerate(self.asked):
            status = answer.statuses[number] if answer.statuses else None
            code = status.code if status else answer.code
            over = code == rls_messages.CODE_OVER_LIMIT
            denied = self.decided(rule, not over, status.requests_per_unit if status else 0,
                                  status.limit_remaining if status else 0,
                                  status.reset_seconds if status else 0) or denied
        if denied:
            self.deny([("x-envoy-ratelimited", "true"), *answer.response_headers], answer.body)
            return
        for name, value in answer.request_headers:
            self.request.headers.set(name, value)
        self.service_headers = tuple(answer.response_headers)
        self.request.resume()

    def service_failed(self, problem: str, resume: bool = True) -> Action:
        """No usable answer: apply the failure mode (allow, or deny with 500 as Envoy's filter)."""
        for rule, _ in self.asked:
            rule.failure.inc()
        deny = self.root.config.failure_mode == "deny"
        log.warn(f"ratelimit: rate limit service: {problem}; request " + ("denied (failure_mode deny)" if deny
                                                                            else "allowed (failure_mode allow)"))
        if deny:
            return self.send_local_response(500, b"rate limit service unavailable\n", details="rate_limiter_error")
        if resume:
            self.request.resume()
        return Action.CONTINUE


class ReportingRateLimit(RateLimit):
    """A decision the response reports: the x-ratelimit-* headers (``response_headers``) and, in global
    mode, the service's ``response_headers_to_add``.  Without either the root chooses :class:`RateLimit`,
    and Envoy does not call into the filter for the response at all."""

    def on_response_headers(self, end_of_stream: bool) -> Action:
        headers = self.response.headers
        tightest = self.tightest
        if tightest is not None and self.root.response_headers:
            for name, value in rate_limit_headers(tightest, denied=False):
                headers.set(name, value)
        for name, value in self.service_headers:
            headers.add(name, value)
        return Action.CONTINUE


class Root(RootContext):
    """The plugin: validates the configuration and creates the bucket creation lock."""

    http_context: type[RateLimit] = ReportingRateLimit  # narrowed in on_configure
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        check(config)

    def on_configure(self, config: bytes) -> bool:
        if not super().on_configure(config):  # JSON, field types against Config, then check()
            return False
        self.mode_global = self.config.mode == "global"
        self.rules = [PreparedRule(rule, self.config.domain, not self.mode_global) for rule in self.config.rules]
        self.lock_key = f"ratelimit:{self.config.domain}:create-lock"
        self.service_authority = call_authority(self.config.service) if self.config.service else None
        self.response_headers = self.config.response_headers
        self.http_context = ReportingRateLimit if self.response_headers or self.mode_global else RateLimit
        if not self.mode_global:
            buckets.ensure_lock(self.lock_key)
        return True
