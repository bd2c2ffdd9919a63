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
  its failure mode), and the next request tries Redis again.
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

from meshext.errors import MeshextError
from meshext.extensions.ratelimit.service_config import (
    UNIT_NAMES,
    UNIT_NUMBERS,
    UNIT_SECONDS,
    RateLimitPolicy,
    ServiceConfig,
)

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


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """The ShouldRateLimit handler."""

    def __init__(self, config: ServiceConfig, settings: RedisSettings) -> None:
        try:
            import redis
        except ImportError:
            raise MeshextError("the redis client library is not installed", where="meshext ratelimit serve",
                               fix="pip install 'redis>=5'") from None
        self.config = config
        self.settings = settings
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.redis = redis.Redis(host=settings.host, port=settings.port, socket_timeout=settings.timeout_seconds,
                                 socket_connect_timeout=settings.timeout_seconds)

    def ShouldRateLimit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        """Answer one RateLimitRequest."""
        now = int(time.time())
        request_hits = request.hits_addend or 1
        reply = Response(overall_code=Response.OK)
        domain_known = request.domain in self.config.domains
        limited: list[_Limited] = []
        matches = []
        for descriptor in request.descriptors:
            entries = [(entry.key, entry.value) for entry in descriptor.entries]
            policy, shadow = None, False
            if domain_known and descriptor.HasField("limit"):
                unit = UNIT_NAMES.get(descriptor.limit.unit)
                if unit is not None:
                    policy = RateLimitPolicy(unit=unit, requests_per_unit=descriptor.limit.requests_per_unit)
            if policy is None:
                found = self.config.match(request.domain, entries)
                if found is not None:
                    policy, shadow = found.policy, found.shadow_mode
            hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else request_hits
            matches.append((entries, policy, shadow, hits))
        replaced = {item.name for _, policy, _, _ in matches if policy is not None for item in policy.replaces}
        for entries, policy, shadow, hits in matches:
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
            limited.append(_Limited(status, policy, shadow, key, hits, unit_seconds))
        if limited:
            try:
                counts = self._count(limited)
            except self._redis_errors as error:
                logger.warning("redis error: %s", error)
                context.abort(grpc.StatusCode.UNKNOWN, f"redis error: {error}")
            for item, after in zip(limited, counts, strict=True):
                limit = item.policy.requests_per_unit
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
                 workers: int = 16) -> None:
        self.service = RateLimitService(config, settings)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise MeshextError(f"cannot listen on {address}", where="--address",
                               fix="give a free HOST:PORT (port 0 picks one)")
        self.host = address.rsplit(":", 1)[0]

    def start(self) -> RateLimitServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=1).wait()
        self.service.redis.close()

    def __enter__(self) -> RateLimitServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
