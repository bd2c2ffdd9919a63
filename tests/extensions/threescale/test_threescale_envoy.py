"""The 3scale filter in a real Envoy 1.40 (hand-written bootstrap), against the backend simulator.

An ``app_id`` from a JWT Envoy validated is tested here with a bootstrap that puts
``envoy.filters.http.jwt_authn`` before the filter, as a standalone Envoy user writes it; the mesh tests
(test_threescale_mesh.py) have the control plane place it from a RequestAuthentication.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from conftest import (
    ISSUER,
    OIDC_CREDENTIALS,
    OIDC_SERVICE_ID,
    OIDC_TOKEN,
    SERVICE_ID,
    SERVICE_TOKEN,
    documented_config,
)

from meshext.envoy import EnvoyProcess
from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
BACKEND = "outbound|443||su1.3scale.net"
FAILED, MISSING = (403, "Authentication failed\n"), (403, "Authentication parameters missing\n")


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "0.5s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}}}]}]}}


def _jwt_authn(jwks: str) -> dict[str, Any]:
    """As Istio's RequestAuthentication: a token must be valid if present, the payload under the issuer's name."""
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"keycloak": {"issuer": ISSUER, "local_jwks": {"inline_string": jwks},
                                   "payload_in_metadata": ISSUER, "forward": True}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "keycloak"}, {"allow_missing": {}}]}}}]}}


def bootstrap(module, config: dict[str, Any], clusters: dict[str, int], jwks: str | None = None) -> dict[str, Any]:
    wasm = {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "threescale", "root_id": "", "failure_policy": "FAIL_CLOSED",
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": json.dumps(config)},
                   "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}}}}}
    filters = ([_jwt_authn(jwks)] if jwks else []) + [wasm, {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    connection_manager = {
        "@type": HCM, "stat_prefix": "main", "http_filters": filters,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "upstream"}}}]}]},
    }
    listener = {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": connection_manager}]}]}
    return {"static_resources": {"listeners": [listener],
                                 "clusters": [_cluster(name, port) for name, port in clusters.items()]}}


class Proxy:
    def __init__(self, envoy: EnvoyProcess) -> None:
        self.envoy = envoy
        host, port = envoy.listener_address("main")
        self.base = f"http://{host}:{port}"

    def get(self, path: str, **headers: str) -> tuple[int, str]:
        response = requests.get(self.base + path, headers={"Host": "productpage.bookinfo", **headers}, timeout=10)
        self.last = response
        return response.status_code, response.text


def run_envoy(module, config, clusters, jwks=None, concurrency=1) -> Iterator[Proxy]:
    envoy = EnvoyProcess(bootstrap(module, config, clusters, jwks), concurrency=concurrency)
    try:
        envoy.start(timeout=60)
        yield Proxy(envoy)
    finally:
        envoy.cleanup()


@pytest.fixture
def proxy(threescale_module, simulator):
    config = documented_config(BACKEND, "https://su1.3scale.net/")
    yield from run_envoy(threescale_module, config, {BACKEND: simulator.port})


def test_user_key_in_the_query_or_a_header(proxy, simulator):
    assert proxy.get("/productpage?user_key=user-key-basic") == (200, "upstream")
    assert proxy.last.headers["powered-by"] == "3scale"
    assert proxy.get("/productpage", user_key="user-key-basic") == (200, "upstream")
    assert proxy.get("/productpage?user_key=wrong") == FAILED
    assert proxy.last.headers["powered-by"] == "3scale"   # local replies too
    assert proxy.get("/productpage") == MISSING
    # the authrep Envoy sent: the service, its token, the key, the usage of the matching rules
    method, path = simulator.backend.requests[0]
    assert (method, path) == ("GET", f"/transactions/authrep.xml?service_id={SERVICE_ID}&service_token="
                                     "service-token-780&user_key=user-key-basic&usage[hits]=1")


def test_app_id_and_app_key(threescale_module, simulator):
    config = documented_config(BACKEND, "https://su1.3scale.net/", id=OIDC_SERVICE_ID, token=OIDC_TOKEN)
    for proxy in run_envoy(threescale_module, config, {BACKEND: simulator.port}):
        assert proxy.get("/?app_id=app-basic&app_key=key-basic") == (200, "upstream")
        assert proxy.get("/?application_id=app-basic", app_key="key-basic") == (200, "upstream")
        assert proxy.get("/?app_id=app-basic&app_key=wrong") == FAILED   # 409 application_key_invalid


def test_several_mapping_rules_sum_their_usages(proxy, simulator):
    assert proxy.get("/products/7/sold?user_key=user-key-basic")[0] == 200
    assert proxy.get("/products/?user_key=user-key-basic")[0] == 200
    # /products/7/sold matches "/", "/products/" (a prefix) and "/products/{id}/sold": products counted twice
    assert simulator.backend.totals()[SERVICE_ID]["user_key:user-key-basic"] == {
        "hits": 2, "products": 3, "sales": 1}
    assert simulator.backend.requests[0][1].endswith("&usage[hits]=1&usage[products]=2&usage[sales]=1")
    assert proxy.get("/other", user_key="user-key-basic")[0] == 200   # "/" is a prefix of every path


def test_no_mapping_rule_and_unknown_service(threescale_module, simulator):
    config = documented_config(BACKEND, "https://su1.3scale.net/", authorities=["productpage.bookinfo"])
    config["services"][0]["mapping_rules"] = [{"method": "POST", "pattern": "/buy$",
                                               "usages": [{"name": "hits", "delta": 1}]}]
    for proxy in run_envoy(threescale_module, config, {BACKEND: simulator.port}):
        assert proxy.get("/buy?user_key=user-key-basic") == (404, "No Mapping Rule matched\n")
        status = requests.get(proxy.base + "/buy?user_key=user-key-basic", headers={"Host": "other"}, timeout=10)
        assert (status.status_code, status.text) == (403, "Unknown service\n")


def test_limits_exceeded_is_429(proxy, simulator):
    for _ in range(3):
        assert proxy.get("/?user_key=user-key-trial")[0] == 200
    assert proxy.get("/?user_key=user-key-trial") == (429, "Usage limit exceeded\n")


def test_an_app_id_from_a_jwt_validated_by_jwt_authn(threescale_module, simulator, issuer):
    config = documented_config(BACKEND, "https://su1.3scale.net/", id=OIDC_SERVICE_ID, token=OIDC_TOKEN,
                               credentials=OIDC_CREDENTIALS)
    for proxy in run_envoy(threescale_module, config, {BACKEND: simulator.port}, jwks=issuer.jwks):
        token = issuer.token(azp="my-client", aud=["account"], sub="alice")
        assert proxy.get("/", authorization=f"Bearer {token}") == (200, "upstream")
        assert simulator.backend.requests[-1][1].endswith("&app_id=my-client&usage[hits]=1")
        unknown = issuer.token(azp="somebody-else", sub="bob")
        assert proxy.get("/", authorization=f"Bearer {unknown}") == FAILED    # 404 application_not_found
        assert proxy.get("/") == MISSING                                      # no token: no metadata
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert proxy.get("/", authorization=f"Bearer {forged}")[0] == 401     # jwt_authn refuses it first


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(3)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_backend_down_or_slow_is_authentication_failed(threescale_module):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        for cluster, port in (("down", down_port), ("slow", slow.server_address[1])):
            config = documented_config(cluster, "http://backend.example/")
            config["backend"]["upstream"]["timeout"] = 500
            for proxy in run_envoy(threescale_module, config, {cluster: port}):
                started = time.monotonic()
                # Envoy answers the callout itself: 503 when it cannot connect, 504 after the timeout; the
                # module's rule for any non-200 is 403 (a callout without :status would be 502)
                assert proxy.get("/?user_key=k") == FAILED, cluster
                if cluster == "slow":
                    assert 0.4 < time.monotonic() - started < 2.5
    finally:
        slow.shutdown()
        slow.server_close()


def test_with_the_cache_the_backend_sees_batched_reports_totalling_the_requests_served(threescale_module, simulator):
    config = documented_config(BACKEND, "https://su1.3scale.net/")
    config["backend"]["cache"] = {"flush_period": 500}
    for proxy in run_envoy(threescale_module, config, {BACKEND: simulator.port}, concurrency=2):
        served = sum(proxy.get("/?user_key=user-key-basic")[0] == 200 for _ in range(60))
        assert served == 60
        authorizations = [p for _, p in simulator.backend.requests if p.startswith("/transactions/authorize.xml")]
        assert len(authorizations) <= 2 + 2  # one miss per worker, plus refreshes after flushes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            totals = simulator.backend.totals().get(SERVICE_ID, {}).get("user_key:user-key-basic", {})
            if totals.get("hits") == served:
                break
            time.sleep(0.1)
        assert totals == {"hits": served}
        assert 1 <= len(simulator.backend.reports) < served / 5  # batched, not one per request
        assert not [p for _, p in simulator.backend.requests if p.startswith("/transactions/authrep.xml")]


def test_with_the_cache_and_two_workers_admissions_stay_within_the_documented_bound(threescale_module):
    """Bound (extensions/3scale/README.md, cache.py): with W workers the backend records at most max + (W - 1) * Q,
    Q the quota left at the last refresh (here the whole limit: nothing was used before), and at least the limit."""
    limit, workers, flush_ms = 10, 2, 500
    limited = SimulatorConfig.model_validate({"services": [{
        "id": SERVICE_ID, "token": SERVICE_TOKEN, "metrics": [{"name": "hits"}],
        "plans": [{"name": "Limited", "limits": [{"metric": "hits", "period": "eternity", "value": limit}]}],
        "applications": [{"user_key": "hot", "plan": "Limited"}]}]})
    config = documented_config(BACKEND, "https://su1.3scale.net/")
    config["backend"]["cache"] = {"flush_period": flush_ms}
    with BackendServer(Backend(limited)) as simulator:
        for proxy in run_envoy(threescale_module, config, {BACKEND: simulator.port}, concurrency=workers):
            # A bounded burst: 120 requests from 4 clients, a connection each (requests.get pools none), which
            # Envoy spreads over its workers.  Usually over before the first flush, it is the worst case: each
            # worker sees the whole quota and admits all of it (20 here); a flush during the burst only makes
            # the workers see more of each other's usage.
            with ThreadPoolExecutor(4) as clients:
                statuses = [status for status, _ in clients.map(proxy.get, ["/?user_key=hot"] * 120)]
            admitted = statuses.count(200)
            assert statuses.count(429) == len(statuses) - admitted      # every other answer is "limits exceeded"
            # named after the configured address, port 0
            per_worker = [value for name, value in proxy.envoy.stats("listener.127.0.0.1_0.worker_").items()
                          if name.endswith(".downstream_cx_total")]
            assert len(per_worker) == workers and all(per_worker), per_worker   # both workers took requests
            assert limit <= admitted <= limit + (workers - 1) * limit, statuses
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                recorded = simulator.backend.totals().get(SERVICE_ID, {}).get("user_key:hot", {}).get("hits")
                if recorded == admitted:
                    break
                time.sleep(0.1)
            assert recorded == admitted   # the backend's total is what was served, overshoot included
            time.sleep(2 * flush_ms / 1000)   # every worker refreshed after its last report: all deny now
            assert [proxy.get("/?user_key=hot")[0] for _ in range(6)] == [429] * 6
