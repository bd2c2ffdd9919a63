"""meshext ratelimit serve: a real RLS v3 server on real Redis, asked by a gRPC client, Envoy's own
ratelimit filter and the ratelimit filter in global mode."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import RedisServer, bootstrap, cluster, wasm_filter
from control_harness import free_port, start_app, wait_until
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from test_ratelimit_local import wait_for_a_quiet_hour

from meshext.envoy import EnvoyProcess
from meshext.errors import MeshextError
from meshext.extensions.ratelimit.service import RateLimitServer, RedisSettings
from meshext.extensions.ratelimit.service_config import load_service_config

Response = rls_pb2.RateLimitResponse
CONFIG = """
domain: shop
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-user}
    descriptors:
      - key: path
        value: /checkout
        rate_limit: {unit: hour, requests_per_unit: 1}
  - key: user
    value: vip
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: route
    value: "api*"
    rate_limit: {unit: second, requests_per_unit: 1000}
  - key: internal
    rate_limit: {unlimited: true}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: global
    rate_limit: {unit: hour, requests_per_unit: 1, name: global}
  - key: special
    rate_limit: {unit: hour, requests_per_unit: 5, replaces: [{name: global}]}
"""


@pytest.fixture
def service_config(tmp_path: Path) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def server(service_config: Path, redis_server: RedisServer):
    settings = RedisSettings(port=redis_server.port, timeout_seconds=1.0, expiration_jitter_seconds=0)
    with RateLimitServer(load_service_config([service_config]), settings, "127.0.0.1:0",
                         metrics_address="127.0.0.1:0") as running:
        yield running


def ask(server: RateLimitServer, *descriptors: list[tuple[str, str]], domain: str = "shop", hits: int = 0,
        override: tuple[int, int] | None = None, deadline: float = 5):
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        descriptor = request.descriptors.add()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
        if override:
            descriptor.limit.requests_per_unit, descriptor.limit.unit = override
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=deadline)


def test_a_key_only_descriptor_counts_per_value_in_the_reference_key_scheme(server, redis_server):
    answers = [ask(server, [("user", "ann")]) for _ in range(4)]
    assert [answer.overall_code for answer in answers] == [Response.OK] * 3 + [Response.OVER_LIMIT]
    status = answers[0].statuses[0]
    assert (status.current_limit.requests_per_unit, status.current_limit.unit, status.current_limit.name) == (
        3, 2, "per-user")
    assert [answer.statuses[0].limit_remaining for answer in answers] == [2, 1, 0, 0]
    assert 0 < status.duration_until_reset.seconds <= 60
    assert ask(server, [("user", "bob")]).overall_code == Response.OK
    window = int(time.time()) // 60 * 60
    client = redis_server.client()
    assert int(client.get(f"shop_user_ann_{window}")) == 4  # counting goes on over the limit, as the reference
    assert 0 < client.ttl(f"shop_user_ann_{window}") <= 60


def test_matching_nested_values_wildcards_unlimited_shadow_and_replaces(server, redis_server):
    assert ask(server, [("user", "vip")]).statuses[0].current_limit.requests_per_unit == 100  # value before key-only
    nested = [ask(server, [("user", "ann"), ("path", "/checkout")]) for _ in range(2)]
    assert [answer.overall_code for answer in nested] == [Response.OK, Response.OVER_LIMIT]
    assert ask(server, [("user", "ann"), ("path", "/other")]).statuses[0].HasField("current_limit") is False
    assert ask(server, [("route", "api-v2")]).statuses[0].current_limit.requests_per_unit == 1000
    unlimited = ask(server, [("internal", "x")])
    assert unlimited.overall_code == Response.OK and unlimited.statuses[0].limit_remaining == 2**32 - 1
    assert [ask(server, [("shadow", "s")]).overall_code for _ in range(3)] == [Response.OK] * 3
    # "special" replaces the limit named "global": with both, only special counts.
    answers = [ask(server, [("global", "g")], [("special", "s")]) for _ in range(3)]
    assert [answer.overall_code for answer in answers] == [Response.OK] * 3
    assert not answers[0].statuses[0].HasField("current_limit")
    assert ask(server, [("nothing", "configured")]).overall_code == Response.OK
    assert ask(server, [("user", "ann")], domain="unknown-domain").overall_code == Response.OK
    assert redis_server.client().keys("*internal*") == []  # unlimited costs no Redis call


def test_hits_addend_and_limit_overrides(server):
    assert ask(server, [("user", "carl")], hits=3).statuses[0].limit_remaining == 0
    assert ask(server, [("user", "carl")]).overall_code == Response.OVER_LIMIT
    overridden = ask(server, [("user", "dora")], override=(50, 3))
    assert (overridden.statuses[0].current_limit.requests_per_unit, overridden.statuses[0].current_limit.unit) == (
        50, 3)
    request = rls_pb2.RateLimitRequest(domain="shop", descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="user", value="erin")])])
    request.descriptors[0].hits_addend.value = 4  # the descriptor's own addend wins
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request).overall_code == Response.OVER_LIMIT


def test_redis_down_is_a_grpc_error_and_the_service_recovers_without_restart(server, redis_server):
    assert ask(server, [("user", "ann")]).overall_code == Response.OK
    redis_server.stop()
    with pytest.raises(grpc.RpcError) as failed:
        ask(server, [("user", "ann")])
    assert failed.value.code() == grpc.StatusCode.UNKNOWN and "redis" in failed.value.details()
    redis_server.start()
    assert wait_until(lambda: _answers(server), what="the service answering again").overall_code == Response.OK


def _answers(server):
    try:
        return ask(server, [("user", "zed")])
    except grpc.RpcError:
        return None


def statistics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The Prometheus text at ``url``: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_service_keeps_the_reference_statistics_as_prometheus_text(server, redis_server):
    for _ in range(5):
        ask(server, [("user", "ann")])  # limit 3 per minute; near limit from floor(3 × 0.8) = 2
    ask(server, [("user", "ann"), ("path", "/checkout")])
    ask(server, [("user", "dora")], override=(50, 3))  # the proxy's limit: named by the request's values
    ask(server, [("shadow", "s")])
    ask(server, [("shadow", "s")])  # over its 1 per day, reported OK: shadow_mode
    ask(server, [("user", "ann")], domain="unknown-domain")
    redis_server.stop()
    # The service's answer, not the client's deadline: a Redis shutting down can hold the service's
    # attempts (1 s socket timeout each, redis-py's retries) for longer than the usual 5 s.
    with pytest.raises(grpc.RpcError) as failed:
        ask(server, [("user", "ann")], deadline=60)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN and "redis error" in failed.value.details()
    stats = statistics(server.metrics_url)

    def descriptor(stat: str, key: str) -> float:
        return stats[(f"ratelimit_service_rate_limit_{stat}_total", (("descriptor", key), ("domain", "shop")))]

    assert [descriptor(stat, "user") for stat in ("total_hits", "within_limit", "near_limit", "over_limit")] == [
        5, 3, 1, 2]
    assert descriptor("total_hits", "user.path_/checkout") == 1
    assert descriptor("within_limit", "user_dora") == 1
    assert (descriptor("over_limit", "shadow"), descriptor("shadow_mode", "shadow")) == (1, 1)
    assert stats[("ratelimit_service_rate_limit_domain_not_found_total", (("domain", "unknown-domain"),))] == 1
    assert stats[("ratelimit_service_call_should_rate_limit_redis_error_total", ())] == 1
    assert stats[("ratelimit_service_call_should_rate_limit_service_error_total", ())] == 0
    assert stats[("ratelimit_service_config_load_success_total", ())] == 1


@pytest.mark.parametrize(("yaml_text", "named"), [
    ("domain: d\ndescriptors: [{key: k, colour: red}]", "descriptors[0].colour: Extra inputs are not permitted"),
    ("domain: d\ndescriptors: [{key: k, rate_limit: {unit: fortnight, requests_per_unit: 1}}]", "unit 'fortnight'"),
    ("domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, unlimited: true}}]", "unlimited with a unit"),
    ("descriptors: []", "domain: Field required"),
    ("domain: d\ndescriptors: [{value: v}]", "descriptors[0].key: Field required"),
])
def test_bad_service_configuration_is_refused_naming_the_field(tmp_path, yaml_text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MeshextError) as refused:
        load_service_config([path])
    assert named in str(refused.value) and str(path) in str(refused.value)


def test_the_command_serves_until_terminated(service_config, redis_server):
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "meshext", "ratelimit", "serve", "--config", str(service_config),
                                "--address", f"127.0.0.1:{port}", "--redis", f"127.0.0.1:{redis_server.port}",
                                "--metrics-address", f"127.0.0.1:{metrics_port}"],
                               stderr=subprocess.PIPE, text=True)
    try:
        class Address:
            pass
        target = Address()
        target.port = port  # type: ignore[attr-defined]
        answer = wait_until(lambda: _answers(target), what="meshext ratelimit serve answering")
        assert answer.statuses[0].current_limit.name == "per-user"
        stats = statistics(f"http://127.0.0.1:{metrics_port}/metrics")
        assert stats[("ratelimit_service_rate_limit_total_hits_total", (("descriptor", "user"), ("domain", "shop")))] \
            >= 1
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    printed = process.stderr.read()
    assert f"rate limit service on 127.0.0.1:{port}" in printed
    assert f"statistics on http://127.0.0.1:{metrics_port}/metrics" in printed


# -- with Envoy ------------------------------------------------------------------------------------

ENVOY_RATELIMIT = {
    "name": "envoy.filters.http.ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "shop", "timeout": "1s", "failure_mode_deny": True,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}}}}
USER_ACTION = [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]


@contextlib.contextmanager
def _closing(app):
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


def get(address, headers):
    import http.client
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


@pytest.mark.envoy
def test_envoys_own_ratelimit_filter_uses_the_service(server, redis_server):
    app_port = free_port()
    app = start_app("app", app_port)  # Envoy's filter limits routed requests only (not direct responses)
    config = bootstrap([ENVOY_RATELIMIT], [cluster("ratelimit", server.port), cluster("app", app_port, http2=False)],
                       route_action={"cluster": "app", "rate_limits": USER_ACTION})
    with EnvoyProcess(config) as envoy, _closing(app):
        address = envoy.listener_address("main")
        answers = [get(address, {"x-user": "fay"}) for _ in range(4)]
        assert [status for status, _ in answers] == [200, 200, 200, 429]
        assert answers[3][1]["x-envoy-ratelimited"] == "true"
        assert answers[3][1]["x-ratelimit-limit"].startswith("3")
        assert answers[3][1]["x-ratelimit-remaining"] == "0"
        redis_server.stop()  # failure_mode_deny: Envoy answers 500 on the service's gRPC error
        assert get(address, {"x-user": "gus"})[0] == 500
        redis_server.start()
        assert wait_until(lambda: get(address, {"x-user": "gus"})[0] == 200, what="Envoy served again")


GLOBAL = {"mode": "global", "domain": "shop", "service": {"cluster": "ratelimit", "timeout_ms": 1000},
          "rules": [{"name": "per-user", "descriptor": [{"key": "user", "header": "x-user"}]}]}


@pytest.mark.envoy
@pytest.mark.slow
def test_two_envoys_in_global_mode_share_one_limit_within_2_percent(server, ratelimit_module, tmp_path):
    yaml_path = tmp_path / "shared.yaml"
    yaml_path.write_text("domain: shop\ndescriptors: [{key: user, rate_limit: {unit: hour, requests_per_unit: 200}}]")
    server.service.config = load_service_config([yaml_path])
    from test_ratelimit_local import hammer
    envoys = [EnvoyProcess(bootstrap([wasm_filter(ratelimit_module, GLOBAL)], [cluster("ratelimit", server.port)]),
                           concurrency=2) for _ in range(2)]
    try:
        for envoy in envoys:
            envoy.start(timeout=120)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda envoy: hammer(envoy.listener_address("main"), 200, {"x-user": "hal"}),
                                    envoys))
        admitted = sum(statuses.count(200) for statuses in results)
        assert all(set(statuses) <= {200, 429} for statuses in results), results
        assert abs(admitted - 200) <= 4, f"{admitted} admitted, shared limit 200"
        assert all(statuses.count(200) > 0 for statuses in results)  # both proxies took part
    finally:
        for envoy in envoys:
            envoy.cleanup()


@pytest.mark.envoy
@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
def test_global_mode_redis_down_and_service_timeouts_follow_the_failure_mode(server, redis_server, ratelimit_module,
                                                                             failure_mode):
    config = {**GLOBAL, "failure_mode": failure_mode}
    with EnvoyProcess(bootstrap([wasm_filter(ratelimit_module, config)],
                                [cluster("ratelimit", server.port)])) as envoy:
        address = envoy.listener_address("main")
        statuses = [get(address, {"x-user": "ivy"}) for _ in range(4)]
        assert [status for status, _ in statuses] == [200, 200, 200, 429]
        assert statuses[3][1]["retry-after"] == statuses[3][1]["x-ratelimit-reset"]
        redis_server.stop()
        expected = 200 if failure_mode == "allow" else 500
        assert get(address, {"x-user": "ivy"})[0] == expected  # never more than the failure mode admits
        redis_server.start()
        assert wait_until(lambda: get(address, {"x-user": "ivy"})[0] == 429, what="the limit counted again")


@pytest.mark.envoy
@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
def test_a_service_slower_than_the_timeout_follows_the_failure_mode(ratelimit_module, failure_mode):
    class Slow(rls_pb2_grpc.RateLimitServiceServicer):
        def ShouldRateLimit(self, request, context):  # noqa: N802
            time.sleep(1.0)
            return Response(overall_code=Response.OVER_LIMIT)

    from concurrent import futures
    slow = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Slow(), slow)
    port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    config = {**GLOBAL, "failure_mode": failure_mode, "service": {"cluster": "ratelimit", "timeout_ms": 100}}
    try:
        with EnvoyProcess(bootstrap([wasm_filter(ratelimit_module, config)], [cluster("ratelimit", port)])) as envoy:
            started = time.monotonic()
            status, _ = get(envoy.listener_address("main"), {"x-user": "jo"})
            assert status == (200 if failure_mode == "allow" else 500)
            assert time.monotonic() - started < 0.9  # the timeout, not the service's answer
    finally:
        slow.stop(0)


@dataclass
class TimedLoad:
    """A bounded parallel load (at most ``count`` requests within ``seconds``, ``clients`` keep-alive
    connections on loopback) recording each request's (start, end, status); status 0: no HTTP answer."""

    address: tuple[str, int]
    headers: dict[str, str]
    clients: int = 8
    count: int = 4000
    seconds: float = 60.0
    results: list[tuple[float, float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> TimedLoad:
        deadline = time.monotonic() + self.seconds
        self._threads = [threading.Thread(target=self._client, args=(deadline,), daemon=True)
                         for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def _client(self, deadline: float) -> None:
        connection = http.client.HTTPConnection(*self.address, timeout=10)
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.results) < self.count:
            started = time.monotonic()
            try:
                connection.request("GET", "/", headers=self.headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection(*self.address, timeout=10)
                status = 0
            with self._lock:
                self.results.append((started, time.monotonic(), status))
        connection.close()

    def between(self, start: float, end: float) -> list[int]:
        """Statuses of the requests that started at or after ``start`` and ended at or before ``end``."""
        with self._lock:
            return [status for began, ended, status in self.results if began >= start and ended <= end]

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.mark.envoy
@pytest.mark.slow
@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
def test_redis_killed_and_restarted_under_load_admits_no_more_than_the_failure_mode(
        server, redis_server, ratelimit_module, tmp_path, failure_mode):
    limit = 40
    yaml_path = tmp_path / "load.yaml"
    yaml_path.write_text(f"domain: shop\ndescriptors: [{{key: user, rate_limit: {{unit: hour, "
                         f"requests_per_unit: {limit}}}}}]")
    server.service.config = load_service_config([yaml_path])
    # A generous timeout: on a busy machine a slow answer would be the failure mode's, not Redis's.
    config = {**GLOBAL, "failure_mode": failure_mode, "service": {"cluster": "ratelimit", "timeout_ms": 5000}}
    wait_for_a_quiet_hour()  # one window for the whole test
    with EnvoyProcess(bootstrap([wasm_filter(ratelimit_module, config)], [cluster("ratelimit", server.port)]),
                      concurrency=2) as envoy:
        begin = time.monotonic()
        with TimedLoad(envoy.listener_address("main"), {"x-user": f"load-{failure_mode}"}) as load:
            wait_until(lambda: len(load.between(begin, time.monotonic())) > 3 * limit, timeout=40,
                       what="load before the kill")
            killing = time.monotonic()
            redis_server.kill()
            killed = time.monotonic()
            wait_until(lambda: len(load.between(killed, time.monotonic())) > 50, timeout=40,
                       what="load while Redis is down")
            restarting = time.monotonic()
            redis_server.start()  # the same port; the service is not restarted
            restarted = time.monotonic()
            wait_until(lambda: load.between(restarted, time.monotonic()).count(429) > 20, timeout=40,
                       what="the limit enforced again after the restart")
        end = time.monotonic()
    before, down, after = load.between(begin, killing), load.between(killed, restarting), load.between(restarted, end)
    assert set(before) == {200, 429} and before.count(200) == limit  # Redis up: exactly the limit
    assert set(down) == ({200} if failure_mode == "allow" else {500}), sorted(set(down))
    # Recovered: Redis starts empty (no persistence), so the window starts over, at most the limit again.
    assert set(after) == {200, 429} and after.count(200) <= limit
    # Nothing admitted beyond the failure mode: while Redis lived (its two lives), at most the limit each time.
    with load._lock:
        results = list(load.results)
    admitted_while_up = [status for began, ended, status in results
                         if status == 200 and (ended <= killing or began >= restarted)]
    assert len(admitted_while_up) <= 2 * limit
    if failure_mode == "deny":
        assert [status for _, _, status in results].count(200) <= 2 * limit
    assert len(results) <= load.count + load.clients
