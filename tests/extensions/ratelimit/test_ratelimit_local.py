"""Local mode in a real Envoy with two workers: one limit shared by both worker VMs, never over-admitted."""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import bootstrap, wasm_filter
from prometheus_client.parser import text_string_to_metric_families

from meshext.envoy import EnvoyProcess
from meshext.extensions.ratelimit.filter.ratelimit_metrics import REQUESTS

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CLIENTS = 8


def hammer(address: tuple[str, int], requests: int, headers: dict[str, str] | None = None) -> list[int]:
    """``requests`` GETs from CLIENTS parallel keep-alive connections; the statuses, bounded to 60 s."""
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def client(share: int) -> None:
        connection = http.client.HTTPConnection(*address, timeout=10)
        try:
            for _ in range(share):
                if time.monotonic() > deadline:
                    return
                connection.request("GET", "/limited", headers=headers or {})
                response = connection.getresponse()
                response.read()
                with lock:
                    statuses.append(response.status)
        finally:
            connection.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, [requests // CLIENTS] * CLIENTS))
    return statuses


def rate_limit_samples(envoy: EnvoyProcess) -> dict[tuple[str, str, str], float]:
    """ratelimit_requests_total from Envoy's /stats/prometheus, parsed by prometheus-client: (domain, rule,
    outcome) -> value."""
    families = text_string_to_metric_families(envoy.admin_get("/stats/prometheus"))
    return {(sample.labels["domain"], sample.labels["rule"], sample.labels["outcome"]): sample.value
            for family in families for sample in family.samples if sample.name == REQUESTS}


def wait_for_a_quiet_hour() -> None:
    """Stay clear of an hour boundary, where a fixed window starts over."""
    into_hour = time.time() % 3600
    if into_hour > 3600 - 90:
        time.sleep(3600 - into_hour + 1)


# 4000: leases of up to 32 tokens (1/64 of what is left) are in play most of the time; 300: leases of 4 and less.
@pytest.mark.parametrize(("algorithm", "limit"), [("fixed_window", 300), ("token_bucket", 300),
                                                  ("fixed_window", 4000), ("token_bucket", 4000)])
def test_two_workers_admit_the_limit_within_2_percent(ratelimit_module: Path, algorithm: str, limit: int) -> None:
    config = {"domain": f"accuracy-{algorithm}", "rules": [{
        "name": "all", "descriptor": [{"key": "route", "value": "limited"}], "algorithm": algorithm,
        "limit": {"requests_per_unit": limit, "unit": "hour"}}]}
    wait_for_a_quiet_hour()
    with EnvoyProcess(bootstrap([wasm_filter(ratelimit_module, config)]), concurrency=2) as envoy:
        address = envoy.listener_address("main")
        started = time.monotonic()
        statuses = hammer(address, 2 * limit)
        elapsed = time.monotonic() - started
        assert len(statuses) == 2 * limit
        admitted = statuses.count(200)
        assert set(statuses) == {200, 429}
        # Both workers served (exact_balance spreads the connections), so both VMs counted in one bucket.
        workers = envoy.stats("listener.127.0.0.1_")
        served = [value for name, value in workers.items()
                  if name.endswith("downstream_cx_total") and "worker_" in name]
        assert len([value for value in served if value > 0]) == 2, workers
        assert abs(admitted - limit) <= limit * 0.02, f"{admitted} admitted, limit {limit}"
        # Never over: a window admits its limit; a bucket its capacity plus what it refilled meanwhile.
        refilled = int(elapsed * limit / 3600) + 1 if algorithm == "token_bucket" else 0
        assert admitted <= limit + refilled, f"{admitted} admitted, at most {limit + refilled} allowed"
        # Never over: the filter's own count says the same as the clients, as real Prometheus labels.
        domain = f"accuracy-{algorithm}"
        assert rate_limit_samples(envoy) == {(domain, "all", "ok"): admitted,
                                             (domain, "all", "over_limit"): 2 * limit - admitted}
