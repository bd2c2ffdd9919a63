"""``meshext ratelimit serve``: an Envoy rate limit service (RLS v3 over gRPC) counting in Redis.

It answers ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``
as envoyproxy/ratelimit does, so Envoy's own ``envoy.filters.http.ratelimit``
and this project's filter (global mode) both use it, and several proxies
share one limit:

- each request descriptor gets its limit from the YAML configuration
  (``service_config``) or from the descriptor's own ``limit`` override (when
  the domain is configured); ``replaces`` drops the limits it names;
- counting is that service's fixed window: Redis key ``<prefix><domain>_``
  + ``<key>_<value>_`` per entry + the window's start (unix seconds rounded
  down to the unit), one pipelined ``INCRBY key hits`` + ``EXPIRE key
  <unit seconds + jitter>`` for all descriptors of a request;
- a descriptor is OVER_LIMIT when its count after the increment exceeds
  requests_per_unit (``shadow_mode``: reported OK); ``limit_remaining`` and
  ``duration_until_reset`` as that service computes them; unlimited
  descriptors are OK with remaining 2^32-1 and cost no Redis call; the
  overall code is OVER_LIMIT when any status is;
- when Redis fails the call fails with gRPC status UNKNOWN (Envoy applies
  its failure mode), and the next request tries Redis again;
- its statistics (``service_stats``: hits, over/near/within limit per
  descriptor, unknown domains, Redis errors) are served as Prometheus text
  on ``metrics_address`` when one is given.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import start_http_server

from meshext.errors import MeshextError
from meshext.extensions.ratelimit.service_config import (
    UNIT_NAMES,
    UNIT_NUMBERS,
    UNIT_SECONDS,
    RateLimitPolicy,
    ServiceConfig,
    request_stat_key,
)
from meshext.extensions.ratelimit.service_stats import ServiceStats

logger = logging.getLogger("meshext.ratelimit")
Response = rls_pb2.RateLimitResponse
MAX_UINT32 = 2**32 - 1


@dataclass(frozen=True)
class RedisSettings:
    """Where the counters live and how long to wait for Redis."""

    host: str = "127.0.0.1"
    port: int = 6379
    timeout_seconds: float = 10.0  # as the reference service's REDIS_TIMEOUT
    key_prefix: str = ""  # CACHE_KEY_PREFIX
    expiration_jitter_seconds: int = 300  # EXPIRATION_JITTER_MAX_SECONDS


@dataclass
class _Limited:
    """A descriptor that is counted: its status, to be completed with the count."""

    status: Any
    policy: RateLimitPolicy
    shadow_mode: bool
    key: str
    hits: int
    unit_seconds: int
    stat_key: str


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """The ShouldRateLimit handler."""

    def __init__(self, config: ServiceConfig, settings: RedisSettings, stats: ServiceStats | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise MeshextError("the redis client library is not installed", where="meshext ratelimit serve",
                               fix="pip install 'redis>=5'") from None
        self.config = config
        self.settings = settings
        self.stats = stats or ServiceStats()
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.redis = redis.Redis(host=settings.host, port=settings.port, socket_timeout=settings.timeout_seconds,
                                 socket_connect_timeout=settings.timeout_seconds)

    def ShouldRateLimit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        """Answer one RateLimitRequest."""
        try:
            return self._answer(request)
        except self._redis_errors as error:
            logger.warning("redis error: %s", error)
            self.stats.redis_error.inc()
            context.abort(grpc.StatusCode.UNKNOWN, f"redis error: {error}")
        except Exception:
            self.stats.service_error.inc()
            raise  # gRPC answers UNKNOWN and logs the traceback

    def _answer(self, request: Any) -> Any:
        now = int(time.time())
        request_hits = request.hits_addend or 1
        reply = Response(overall_code=Response.OK)
        domain_known = request.domain in self.config.domains
        if not domain_known:
            self.stats.domain_not_found.labels(domain=request.domain).inc()
        limited: list[_Limited] = []
        matches = []
        for descriptor in request.descriptors:
            entries = [(entry.key, entry.value) for entry in descriptor.entries]
            policy, shadow, stat_key = None, False, ""
            if domain_known and descriptor.HasField("limit"):
                unit = UNIT_NAMES.get(descriptor.limit.unit)
                if unit is not None:
                    policy = RateLimitPolicy(unit=unit, requests_per_unit=descriptor.limit.requests_per_unit)
                    stat_key = request_stat_key(entries)
            if policy is None:
                found = self.config.match(request.domain, entries)
                if found is not None:
                    policy, shadow, stat_key = found.policy, found.shadow_mode, found.stat_key
            hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else request_hits
            matches.append((entries, policy, shadow, hits, stat_key))
        replaced = {item.name for _, policy, _, _, _ in matches if policy is not None for item in policy.replaces}
        for entries, policy, shadow, hits, stat_key in matches:
            status = reply.statuses.add(code=Response.OK)
            if policy is None or (policy.name and policy.name in replaced):
                continue
            if policy.unlimited:
                status.limit_remaining = MAX_UINT32
                continue
            unit_seconds = UNIT_SECONDS[policy.unit_name]
            status.current_limit.requests_per_unit = policy.requests_per_unit
            status.current_limit.unit = UNIT_NUMBERS[policy.unit_name]
            if policy.name:
                status.current_limit.name = policy.name
            window_start = now // unit_seconds * unit_seconds
            key = (self.settings.key_prefix + request.domain + "_"
                   + "".join(f"{key}_{value}_" for key, value in entries) + str(window_start))
            limited.append(_Limited(status, policy, shadow, key, hits, unit_seconds, stat_key))
        if limited:
            counts = self._count(limited)
            for item, after in zip(limited, counts, strict=True):
                limit = item.policy.requests_per_unit
                self.stats.counted(request.domain, item.stat_key, limit, item.hits, after, item.shadow_mode)
                item.status.limit_remaining = max(0, limit - after)
                item.status.duration_until_reset.seconds = item.unit_seconds - now % item.unit_seconds
                if after > limit:
                    if item.shadow_mode:
                        logger.info("shadow mode: %s over its limit", item.key)
                    else:
                        item.status.code = Response.OVER_LIMIT
                        reply.overall_code = Response.OVER_LIMIT
        return reply

    def _count(self, limited: list[_Limited]) -> list[int]:
        pipeline = self.redis.pipeline(transaction=False)
        for item in limited:
            pipeline.incrby(item.key, item.hits)
            jitter = random.randrange(self.settings.expiration_jitter_seconds) \
                if self.settings.expiration_jitter_seconds > 0 else 0
            pipeline.expire(item.key, item.unit_seconds + jitter)
        results = pipeline.execute()
        return [int(count) for count in results[0::2]]


class RateLimitServer:
    """The gRPC server around :class:`RateLimitService`; use as a context manager or start()/stop()."""

    def __init__(self, config: ServiceConfig, settings: RedisSettings, address: str = "127.0.0.1:8081",
                 workers: int = 16, metrics_address: str | None = None) -> None:
        self.stats = ServiceStats()
        self.stats.config_load_success.inc()  # the configuration it serves was loaded (load_service_config)
        self.service = RateLimitService(config, settings, self.stats)
        self.metrics_address = metrics_address
        self.metrics_port: int | None = None
        self.metrics_url: str | None = None
        self._metrics_server: Any = None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise MeshextError(f"cannot listen on {address}", where="--address",
                               fix="give a free HOST:PORT (port 0 picks one)")
        self.host = address.rsplit(":", 1)[0]

    def start(self) -> RateLimitServer:
        """Serve gRPC, and the statistics on ``metrics_address`` (port 0: any; see ``metrics_port``)."""
        if self.metrics_address is not None:
            host, _, port = self.metrics_address.rpartition(":")
            try:
                self._metrics_server, _ = start_http_server(int(port), host, registry=self.stats.registry)
            except (OSError, ValueError) as error:
                raise MeshextError(f"cannot serve the statistics on {self.metrics_address}: {error}",
                                   where="--metrics-address", fix="give a free HOST:PORT (port 0 picks one)") from None
            self.metrics_port = self._metrics_server.server_port
            self.metrics_url = f"http://{host}:{self.metrics_port}/metrics"
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving (in-flight calls get a second to finish)."""
        self.server.stop(grace=1).wait()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.service.redis.close()

    def __enter__(self) -> RateLimitServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
