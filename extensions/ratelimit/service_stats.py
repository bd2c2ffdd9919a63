"""The rate limit service's own statistics, as envoyproxy/ratelimit keeps them, exposed as Prometheus text.

That service names its stats (statsd) ``ratelimit.service.<name>``
(src/stats/manager_impl.go); here each becomes a Prometheus counter, the
variable parts as labels, the way its statsd-exporter mapping turns them
into Prometheus series:

- ``ratelimit.service.rate_limit.<domain>.<descriptor>.total_hits``:
  ``ratelimit_service_rate_limit_total_hits_total{domain, descriptor}``;
  likewise ``over_limit``, ``near_limit``, ``within_limit``, ``shadow_mode``;
- ``ratelimit.service.rate_limit.<domain>.domain_not_found``:
  ``ratelimit_service_rate_limit_domain_not_found_total{domain}``;
- ``ratelimit.service.call.should_rate_limit.redis_error`` (and ``service_error``):
  ``ratelimit_service_call_should_rate_limit_redis_error_total`` (``..._service_error_total``);
- ``ratelimit.service.config_load_success``: ``ratelimit_service_config_load_success_total``
  (a configuration that fails to load stops ``meshext ratelimit serve`` with the
  error, so there is no ``config_load_error``: the service does not reload).

(prometheus-client writes a counter's samples with the suffix ``_total``.)

``<descriptor>`` is the path of the configuration node that gave the limit,
one ``key`` (or ``key_value`` for a node with a value) per level joined by
``.``, e.g. ``user`` or ``user.path_/checkout``; with ``detailed_metric`` (and
for limits sent by the proxy) the request's own ``key_value`` entries.
Counts are in hits (a request's hits_addend), as the reference counts them:
``over_limit`` the hits beyond the limit, ``near_limit`` the hits past
``NEAR_LIMIT_RATIO`` (0.8) of it and within it, ``within_limit`` the hits of
requests let through.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter

NEAR_LIMIT_RATIO = 0.8  # the reference's default NEAR_LIMIT_RATIO
DESCRIPTOR_STATS = ("total_hits", "over_limit", "near_limit", "within_limit", "shadow_mode")


class ServiceStats:
    """The counters of one service, in their own registry (served by ``RateLimitServer``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.descriptor = {
            name: Counter(f"ratelimit_service_rate_limit_{name}", f"ratelimit.service.rate_limit.<domain>."
                          f"<descriptor>.{name}", ["domain", "descriptor"], registry=self.registry)
            for name in DESCRIPTOR_STATS}
        self.domain_not_found = Counter("ratelimit_service_rate_limit_domain_not_found",
                                        "ratelimit.service.rate_limit.<domain>.domain_not_found: requests for a "
                                        "domain the configuration does not have", ["domain"], registry=self.registry)
        self.redis_error = Counter("ratelimit_service_call_should_rate_limit_redis_error",
                                   "ratelimit.service.call.should_rate_limit.redis_error: calls failed by Redis",
                                   registry=self.registry)
        self.service_error = Counter("ratelimit_service_call_should_rate_limit_service_error",
                                     "ratelimit.service.call.should_rate_limit.service_error: calls failed otherwise",
                                     registry=self.registry)
        self.config_load_success = Counter("ratelimit_service_config_load_success",
                                           "ratelimit.service.config_load_success", registry=self.registry)

    def counted(self, domain: str, descriptor: str, limit: int, hits: int, after: int, shadow_mode: bool) -> None:
        """Record one counted descriptor: ``hits`` added, the count ``after`` them, against ``limit``."""
        labels = {"domain": domain, "descriptor": descriptor}
        stats = self.descriptor
        stats["total_hits"].labels(**labels).inc(hits)
        before = after - hits
        near = math.floor(limit * NEAR_LIMIT_RATIO)
        if after > limit:
            stats["over_limit"].labels(**labels).inc(hits if before >= limit else after - limit)
            if before < limit:  # the hits that took the count from near the limit to it
                stats["near_limit"].labels(**labels).inc(limit - max(near, before))
            if shadow_mode:
                stats["shadow_mode"].labels(**labels).inc(hits)
        else:
            if after > near:
                stats["near_limit"].labels(**labels).inc(hits if before >= near else after - near)
            stats["within_limit"].labels(**labels).inc(hits)
