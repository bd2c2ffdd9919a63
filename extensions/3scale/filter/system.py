"""Mapping rules (and the service token) fetched from 3scale System, refreshed in the background.

As the module does (``src/proxy/root_context.rs``, ``config_fetcher.rs``):
for each service, ``GET <system url>admin/api/services/<id>/proxy/configs/
<environment>/latest.json?access_token=<token>`` when the configuration
loads, then again every ``clamp(system.upstream.timeout, 20 s, ttl)``
seconds plus 0-15 s of random jitter (so workers do not ask at once).  The
answer's ``proxy_config.content.proxy.proxy_rules`` become mapping rules
(``metric_system_name`` default ``Hits``, ``delta``, ``last``), appended after
the service's static rules and replacing the previous fetch; a
``backend_authentication_type: service_token`` sets the service's token.
A failed fetch (no answer, non-200, bad JSON) keeps the rules it had and
tries again at the next refresh.  Each worker's VM fetches for itself.
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

import json
import random
import time

from authrep import call_headers, encode
from problems import ConfigProblem
from rules import MappingRule

from meshext.sdk import CalloutError, HttpCallResponse, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from config import Configuration, Service
    from filter import Root

JITTER_S = 15


class SystemFetcher:
    """Fetches every service's proxy configuration, now and then on the refresh period."""

    def __init__(self, root: Root, configuration: Configuration) -> None:
        self.root = root
        self.configuration = configuration
        self.next_fetch: dict[str, float] = {}
        self.in_flight: set[str] = set()

    def fetch_all(self) -> None:
        for service in self.configuration.services:
            self.fetch(service)

    def on_tick(self) -> None:
        now = time.time()
        for service in self.configuration.services:
            if service.id not in self.in_flight and now >= self.next_fetch.get(service.id, 0):
                self.fetch(service)

    def _schedule(self, service: Service) -> None:
        system = self.configuration.system
        assert system is not None
        self.next_fetch[service.id] = time.time() + system.refresh_s() + random.uniform(0, JITTER_S)

    def fetch(self, service: Service) -> None:
        system = self.configuration.system
        assert system is not None
        upstream = system.upstream
        target = upstream.target(f"admin/api/services/{encode(service.id)}/proxy/configs/{service.environment}"
                                 "/latest.json", f"access_token={encode(system.token)}")
        self._schedule(service)
        try:
            self.root.http_call(upstream.name, call_headers(upstream, "GET", target, None),
                                callback=lambda answer: self.on_answer(service, answer), timeout_ms=upstream.timeout_ms)
        except CalloutError as error:
            log.error(f"3scale: system fetch for service {service.id}: {error}")
            return
        self.in_flight.add(service.id)

    def on_answer(self, service: Service, answer: HttpCallResponse) -> None:
        self.in_flight.discard(service.id)
        if answer.status != 200:
            log.warn(f"3scale: system fetch for service {service.id} got "
                     f"{'no answer' if answer.failed else answer.status}; keeping its current mapping rules")
            return
        try:
            rules, token = parse_proxy_config(answer.body)
        except (ValueError, KeyError, TypeError, ConfigProblem) as error:
            log.warn(f"3scale: system fetch for service {service.id}: unusable answer ({error}); keeping its "
                     "current mapping rules")
            return
        service.mapping_rules = service.static_rules + rules
        self.root.prepared.clear()  # memoised usages came from the old rules
        if token is not None:
            service.token = token
        log.info(f"3scale: service {service.id}: {len(rules)} mapping rules from system")


def parse_proxy_config(body: bytes) -> tuple[list[MappingRule], str | None]:
    """Mapping rules and service token of a ``latest.json`` answer."""
    document = json.loads(body)
    content = document["proxy_config"]["content"]
    rules = []
    for index, rule in enumerate(content["proxy"]["proxy_rules"]):
        where = f"system proxy_rules[{index}]"
        rules.append(MappingRule(str(rule["http_method"]), str(rule["pattern"]),
                                 [(str(rule.get("metric_system_name") or "Hits"), int(rule.get("delta", 1)))],
                                 bool(rule.get("last", False)), where))
    token = None
    if content.get("backend_authentication_type") == "service_token":
        token = content.get("backend_authentication_value")
    return rules, token if isinstance(token, str) else None
