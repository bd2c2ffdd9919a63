"""The authorization cache with batched reports (``backend.cache``), against the backend simulator.

The simulator's limits here are per ``eternity``, so no calendar period rolls over during a test.
"""

# mypy: disable-error-code="import-not-found"
# (conftest is this folder's, which pytest puts on sys.path)

from __future__ import annotations

import pytest
import requests
from conftest import SERVICE_TOKEN, reply, user_key_config

from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig
from meshext.testing import HttpResponse

FLUSH_MS = 1000
LIMITED = (429, "Usage limit exceeded\n")


def simulator_config(limit):
    return {"services": [{
        "id": "2555417777820", "token": SERVICE_TOKEN,
        "metrics": [{"name": "hits", "children": ["orders"]}],
        "plans": [{"name": "P", "limits": [{"metric": "hits", "period": "eternity", "value": limit}]}],
        "applications": [{"user_key": "hot", "plan": "P"}, {"user_key": "other", "plan": "P"},
                         {"user_key": "off", "plan": "P", "state": "suspended"}],
    }]}


@pytest.fixture
def limited_simulator(request):
    limit = getattr(request, "param", 1000)
    with BackendServer(Backend(SimulatorConfig.model_validate(simulator_config(limit)))) as server:
        yield server


def cached_config():
    config = user_key_config()
    config["backend"]["cache"] = {"flush_period": FLUSH_MS, "ttl": 60_000}
    config["services"][0]["mapping_rules"].append({"method": "GET", "pattern": "/orders",
                                                   "usages": [{"name": "orders", "delta": 1}]})
    return config


def calls_to(simulator, path):
    return [request for request in simulator.backend.requests if request[1].startswith(path)]


def totals(simulator):
    return simulator.backend.totals().get("2555417777820", {})


def test_a_hot_application_costs_one_authorize_then_batched_reports(filter_module, proxy_host, limited_simulator):
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    with filter_module(config=cached_config()) as plugin:
        for _ in range(20):
            assert reply(plugin.exchange("GET", "/?user_key=hot")) is None
        for _ in range(5):
            assert reply(plugin.exchange("GET", "/orders?user_key=hot")) is None
        assert len(calls_to(limited_simulator, "/transactions/authorize.xml")) == 1
        assert calls_to(limited_simulator, "/transactions/authrep.xml") == []
        assert totals(limited_simulator) == {}  # nothing reported before the flush

        proxy_host.advance(FLUSH_MS)
        # the miss the authorize call decided, and the 24 hits admitted from the cache (counted at the tick)
        assert proxy_host.metric("threescale_authorized_total") == 25
        assert len(calls_to(limited_simulator, "/transactions.xml")) == 1
        (report,) = limited_simulator.backend.reports
        assert report["transactions[0][user_key]"] == "hot"
        # rule "/" matched all 25 requests (a prefix match), "/orders" the last 5
        assert (report["transactions[0][usage][hits]"], report["transactions[0][usage][orders]"]) == ("25", "5")
        # the backend's totals are the usage served: orders count for hits, their parent, there
        assert totals(limited_simulator) == {"user_key:hot": {"hits": 30, "orders": 5}}
        assert len(calls_to(limited_simulator, "/transactions/authorize.xml")) == 2  # the refresh

        proxy_host.advance(FLUSH_MS)  # nothing pending: no report
        assert len(calls_to(limited_simulator, "/transactions.xml")) == 1


@pytest.mark.parametrize("limited_simulator", [5], indirect=True)
def test_with_one_worker_the_cache_admits_exactly_the_limit(filter_module, proxy_host, limited_simulator):
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    with filter_module(config=cached_config()) as plugin:
        outcomes = [reply(plugin.exchange("GET", "/?user_key=hot")) for _ in range(8)]
        assert outcomes == [None] * 5 + [LIMITED] * 3
        # a child metric counts for its parent's limit
        assert reply(plugin.exchange("GET", "/orders?user_key=hot")) == LIMITED
        proxy_host.advance(FLUSH_MS)
        assert totals(limited_simulator) == {"user_key:hot": {"hits": 5}}
        assert reply(plugin.exchange("GET", "/?user_key=hot")) == LIMITED   # refreshed: the backend says so too
        assert reply(plugin.exchange("GET", "/?user_key=other")) is None    # another application, its own entry
        assert proxy_host.metric("threescale_limits_exceeded_total") == 5


@pytest.mark.parametrize("limited_simulator", [8], indirect=True)
def test_requests_of_different_usages_share_the_limit_one_by_one(filter_module, proxy_host, limited_simulator):
    """``/`` costs hits 1, ``/orders`` hits 1 + orders 1 (its child): 2 against the hits limit of 8."""
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    with filter_module(config=cached_config()) as plugin:
        paths = ["/", "/", "/orders", "/orders", "/", "/orders", "/", "/", "/orders"]
        outcomes = [reply(plugin.exchange("GET", f"{path}?user_key=hot")) for path in paths]
        # used 1, 2, 4, 6, 7; then 9 > 8 is refused while 8 still fits; then nothing fits
        assert outcomes == [None] * 5 + [LIMITED, None, LIMITED, LIMITED]
        proxy_host.advance(FLUSH_MS)
        assert totals(limited_simulator) == {"user_key:hot": {"hits": 8, "orders": 2}}
        assert proxy_host.metric("threescale_authorized_total") == 6


@pytest.mark.parametrize("limited_simulator", [10], indirect=True)
def test_with_two_workers_the_overshoot_stays_within_the_documented_bound(filter_module, proxy_host,
                                                                           limited_simulator):
    """Bound (cache.py): the backend records at most max + (W - 1) * Q, Q = the quota left at the last refresh."""
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    limit, workers = 10, 2
    with filter_module(config=cached_config(), vm_id="3scale") as first, \
            filter_module(config=cached_config(), vm_id="3scale") as second:
        served = 0
        for index in range(40):
            plugin = first if index % 2 == 0 else second
            if reply(plugin.exchange("GET", "/?user_key=hot")) is None:
                served += 1
        assert limit <= served <= limit + (workers - 1) * limit
        assert served == 20  # each worker admitted the whole quota it saw: the bound is tight
        proxy_host.advance(FLUSH_MS)
        assert totals(limited_simulator) == {"user_key:hot": {"hits": served}}
        # after the flush every worker sees the real total and denies
        assert reply(first.exchange("GET", "/?user_key=hot")) == LIMITED
        assert reply(second.exchange("GET", "/?user_key=hot")) == LIMITED
        assert len(calls_to(limited_simulator, "/transactions.xml")) == workers  # one report per worker's VM


def test_denials_are_cached_as_the_module_would_answer_them(filter_module, proxy_host, limited_simulator):
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    with filter_module(config=cached_config()) as plugin:
        for _ in range(3):
            assert reply(plugin.exchange("GET", "/?user_key=off")) == (403, "Authentication failed\n")
        assert len(calls_to(limited_simulator, "/transactions/authorize.xml")) == 1  # 409 cached
        for _ in range(2):
            assert reply(plugin.exchange("GET", "/?user_key=nobody")) == (403, "Authentication failed\n")
        assert len(calls_to(limited_simulator, "/transactions/authorize.xml")) == 3  # 403 errors are not cached


def test_an_entry_expires_after_its_ttl(filter_module, proxy_host, limited_simulator):
    proxy_host.add_cluster("backend", address=("127.0.0.1", limited_simulator.port))
    config = cached_config()
    config["backend"]["cache"]["ttl"] = 5000
    with filter_module(config=config) as plugin:
        plugin.exchange("GET", "/?user_key=hot")
        proxy_host.advance(FLUSH_MS)  # report + refresh: a new entry
        proxy_host.advance(5000)
        plugin.exchange("GET", "/?user_key=hot")
        assert len(calls_to(limited_simulator, "/transactions/authorize.xml")) == 3


def test_a_report_the_backend_cannot_take_is_sent_again(filter_module, proxy_host, limited_simulator):
    failures = [503]

    def flaky(call):
        """503 to the first report (Envoy's answer when it cannot connect), the simulator otherwise."""
        if call.header(":method") == "POST" and failures:
            return HttpResponse(failures.pop())
        url = limited_simulator.url + call.header(":path")
        headers = {name: value for name, value in call.headers if not name.startswith(":")}
        answer = requests.request(call.header(":method"), url, headers=headers, data=call.body, timeout=5)
        return HttpResponse(answer.status_code, list(answer.headers.items()), answer.content)

    proxy_host.add_cluster("backend", flaky)
    with filter_module(config=cached_config()) as plugin:
        for _ in range(3):
            plugin.exchange("GET", "/?user_key=hot")
        proxy_host.advance(FLUSH_MS)
        assert totals(limited_simulator) == {}
        plugin.exchange("GET", "/?user_key=hot")
        proxy_host.advance(FLUSH_MS)
        assert totals(limited_simulator) == {"user_key:hot": {"hits": 4}}
        assert any("sending it again with the next flush" in line for line in plugin.log_messages())


def test_a_backend_down_on_a_miss_fails_closed(filter_module, proxy_host):
    proxy_host.add_cluster("backend", lambda call: HttpResponse(503))
    with filter_module(config=cached_config()) as plugin:
        assert reply(plugin.exchange("GET", "/?user_key=hot")) == (403, "Authentication failed\n")
