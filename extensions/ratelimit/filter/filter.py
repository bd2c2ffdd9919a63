"""ratelimit: request rate limits per descriptor, counted in the proxy (local) or by an RLS v3 service (global).

Each rule that matches a request builds one descriptor, its (key, value)
entries taken from headers, request attributes or fixed values
(``ratelimit_config``).  Local mode counts in shared data, shared by every
worker VM (``buckets``); global mode asks the rate limit service over gRPC
(``rls_messages``) and acts on its answer.  A denied request gets 429 with
``x-ratelimit-limit``/``-remaining``/``-reset`` (draft-03, as Envoy's
filters) and ``retry-after``; allowed responses carry the x-ratelimit-*
headers too unless ``response_headers`` is false.
"""

from __future__ import annotations

import re
import time

# In the VM the filter's modules are top-level; mypy, checking the package, cannot resolve them that way.
import buckets  # type: ignore[import-not-found]
import rls_messages  # type: ignore[import-not-found]
from ratelimit_config import (  # type: ignore[import-not-found]
    DESTINATION_LABEL,
    UNIT_NUMBERS,
    Config,
    Entry,
    Limit,
    Rule,
    check,
)

from meshext.sdk import Action, CalloutError, Counter, GrpcResponse, HttpContext, RootContext, log, properties
from meshext.sdk.config import ConfigError

OUTCOMES = ("allowed", "denied", "dry_run_denied", "errors")
_counters: dict[str, Counter] = {}


def count(rule: str, outcome: str) -> None:
    """Count one decision of ``rule``.

    The one place metrics are named: ``ratelimit.<rule>.<outcome>``; when the
    SDK has labelled metrics this becomes ``ratelimit_requests{rule, outcome}``.
    """
    name = f"ratelimit.{rule}.{outcome}"
    counter = _counters.get(name)
    if counter is None:
        counter = _counters[name] = Counter(name)
    counter.increment()


class PreparedRule:
    """A rule with what its checks need per request computed once at configure time."""

    def __init__(self, rule: Rule, domain: str) -> None:
        self.rule = rule
        self.name = rule.name
        self.path_regex = re.compile(rule.match.path_regex) if rule.match.path_regex else None
        self.methods = frozenset(rule.match.methods)
        self.key_prefix = f"ratelimit:{domain}:{rule.name}:"

    def matches(self, context: RateLimit) -> bool:
        match = self.rule.match
        headers = context.request.headers
        if self.methods and headers.get(":method") not in self.methods:
            return False
        if match.path_prefix or self.path_regex:
            path = context.path()
            if not path.startswith(match.path_prefix):
                return False
            if self.path_regex is not None and not self.path_regex.fullmatch(path):
                return False
        if match.authority and _without_port(headers.get(":authority") or "") != match.authority:
            return False
        return all(headers.get(name) == value for name, value in match.headers.items())

    def entries(self, context: RateLimit) -> list[tuple[str, str]] | None:
        """The descriptor for this request, or None when an entry has no value and no default."""
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


class Verdict:
    """The outcome of one rule for one request."""

    __slots__ = ("rule", "allowed", "limit", "remaining", "reset_seconds")

    def __init__(self, rule: PreparedRule, allowed: bool, limit: int, remaining: int, reset_seconds: int) -> None:
        self.rule = rule
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset_seconds = reset_seconds


def rate_limit_headers(verdicts: list[Verdict], denied: bool) -> list[tuple[str, str]]:
    """x-ratelimit-* (draft-03) of the tightest limit (least remaining); retry-after when ``denied``."""
    counted = [verdict for verdict in verdicts if verdict.limit > 0]
    if not counted:
        return []
    tightest = min(counted, key=lambda verdict: (verdict.remaining, verdict.limit))
    headers = [("x-ratelimit-limit", str(tightest.limit)), ("x-ratelimit-remaining", str(tightest.remaining)),
               ("x-ratelimit-reset", str(tightest.reset_seconds))]
    if denied:
        headers.append(("retry-after", str(max(1, tightest.reset_seconds))))
    return headers


class RateLimit(HttpContext):
    """One request: decide in on_request_headers, add the headers to the response."""

    root: Root

    def path(self) -> str:
        return (self.request.headers.get(":path") or "").split("?", 1)[0]

    def on_request_headers(self, end_of_stream: bool) -> Action:
        self.verdicts: list[Verdict] = []
        root = self.root
        applicable = [(rule, entries) for rule in root.rules
                      if rule.matches(self) and (entries := rule.entries(self)) is not None]
        if not applicable:
            return Action.CONTINUE
        if root.config.mode == "global":
            return self.ask_service(applicable)
        now_ns = time.time_ns()
        for rule, entries in applicable:
            limit, override = rule.limit_for(entries)
            assert limit is not None  # check(): local rules have limits
            key = rule.key_prefix + _limit_key(limit, override) + ";".join(f"{k}={_escape(v)}" for k, v in entries)
            window_ns = limit.window_seconds * 1_000_000_000
            try:
                if rule.rule.algorithm == "fixed_window":
                    decision = buckets.fixed_window(root.lock_key, key, limit.requests_per_unit, window_ns, now_ns)
                else:
                    decision = buckets.token_bucket(root.lock_key, key, limit.requests_per_unit,
                                                    limit.requests_per_unit + limit.burst, window_ns, now_ns)
            except buckets.ContentionError as error:
                # Never over-admit: a bucket that cannot be read consistently denies.
                count(rule.name, "errors")
                log.error(f"ratelimit: rule {rule.name!r}: {error}; request denied")
                decision = buckets.Decision(False, limit.requests_per_unit, 0, 1)
            verdict = Verdict(rule, decision.allowed, decision.limit, decision.remaining, decision.reset_seconds)
            if self.record(verdict):
                return self.deny()
        return Action.CONTINUE

    def record(self, verdict: Verdict) -> bool:
        """Count ``verdict``; True when the request must be denied for it (dry-run rules never deny)."""
        self.verdicts.append(verdict)
        if verdict.allowed:
            count(verdict.rule.name, "allowed")
            return False
        if verdict.rule.rule.dry_run:
            count(verdict.rule.name, "dry_run_denied")
            verdict.allowed = True  # reported as allowed: the client was let through
            return False
        count(verdict.rule.name, "denied")
        return True

    def deny(self, extra_headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Action:
        headers = rate_limit_headers(self.verdicts, denied=True) + (extra_headers or [])
        self.verdicts = []  # the local reply passes through on_response_headers: add nothing twice
        return self.send_local_response(429, body or b"rate limited\n", headers, details="request_rate_limited")

    # -- global mode ---------------------------------------------------------------------------

    def ask_service(self, applicable: list[tuple[PreparedRule, list[tuple[str, str]]]]) -> Action:
        self.asked = applicable
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
                           timeout_ms=config.service.timeout_ms)
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
            verdict = Verdict(rule, not over, status.requests_per_unit if status else 0,
                              status.limit_remaining if status else 0, status.reset_seconds if status else 0)
            denied = self.record(verdict) or denied
        if denied:
            self.deny([("x-envoy-ratelimited", "true"), *answer.response_headers], answer.body)
            return
        for name, value in answer.request_headers:
            self.request.headers.set(name, value)
        self.service_headers = answer.response_headers
        self.request.resume()

    def service_failed(self, problem: str, resume: bool = True) -> Action:
        """No usable answer: apply the failure mode (allow, or deny with 500 as Envoy's filter)."""
        for rule, _ in self.asked:
            count(rule.name, "errors")
        deny = self.root.config.failure_mode == "deny"
        log.warn(f"ratelimit: rate limit service: {problem}; request " + ("denied (failure_mode deny)" if deny
                                                                            else "allowed (failure_mode allow)"))
        if deny:
            return self.send_local_response(500, b"rate limit service unavailable\n", details="rate_limiter_error")
        if resume:
            self.request.resume()
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action:
        if self.root.config.response_headers:
            for name, value in rate_limit_headers(self.verdicts, denied=False):
                self.response.headers.set(name, value)
        for name, value in getattr(self, "service_headers", ()):
            self.response.headers.add(name, value)
        return Action.CONTINUE


class Root(RootContext):
    """The plugin: validates the configuration and creates the bucket creation lock."""

    http_context = RateLimit
    config_class = Config
    config: Config

    def on_configure(self, config: bytes) -> bool:
        if not super().on_configure(config):  # JSON and field types, checked against Config
            return False
        try:
            check(self.config)
        except ConfigError as error:
            log.error(f"plugin configuration refused: {error}")
            return False
        self.rules = [PreparedRule(rule, self.config.domain) for rule in self.config.rules]
        self.lock_key = f"ratelimit:{self.config.domain}:create-lock"
        if self.config.mode == "local":
            buckets.ensure_lock(self.lock_key)
        return True
