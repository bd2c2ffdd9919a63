"""request-metrics in the meshext test host (`meshext test examples/request-metrics`).

Two VMs loaded with one ``vm_id`` are two Envoy workers of one plugin: they
share data and queues, and Envoy adds up their metrics.
"""

import json

import pytest

from meshext.testing import HttpResponse, MeshextError

FLUSH_MS = 1000


def request(plugin, path, *, status=200, duration_ms=0, host=None):
    """One request whose response arrives ``duration_ms`` after its headers."""
    stream = plugin.http_stream()
    stream.send_request_headers({":method": "GET", ":path": path, ":authority": "shop"}, end_stream=True)
    if duration_ms:
        host.advance(duration_ms)
    stream.send_response_headers({":status": str(status)}, end_stream=True)
    return stream


def stats(plugin):
    stream = plugin.exchange("GET", "/request-metrics")
    assert stream.local_response is not None and stream.local_response.status == 200
    assert stream.request.forwarded_headers is None  # answered by the filter, not the upstream
    assert stream.response.header("content-type") == "application/json"
    return json.loads(stream.response.forwarded_body)


def records_logged(host):
    return [json.loads(line.removeprefix("request-metrics: ")) for line in host.log_lines()
            if line.startswith("request-metrics: {")]


@pytest.fixture
def workers(filter_module):
    """Two VMs of the plugin (two Envoy workers), flushing every FLUSH_MS."""
    config = {"flush_period_ms": FLUSH_MS}
    with (filter_module(config=config, vm_id="metrics") as first,
          filter_module(config=config, vm_id="metrics") as second):
        yield first, second


def test_requests_are_counted_and_their_duration_recorded(filter_module, proxy_host):
    with filter_module() as plugin:
        request(plugin, "/orders", duration_ms=25, host=proxy_host)
        request(plugin, "/orders", status=503, duration_ms=40, host=proxy_host)
        request(plugin, "/health")
        assert proxy_host.metric("request_metrics_requests_total") == 3
        assert proxy_host.metric("request_metrics_responses_5xx_total") == 1
        assert proxy_host.histogram("request_metrics_duration_ms") == [25, 40, 0]


def test_per_path_counts_are_shared_by_all_workers(workers, proxy_host):
    first, second = workers
    request(first, "/orders")
    request(first, "/orders?page=2")  # the query string is not part of the path
    request(second, "/orders")
    request(second, "/users/7")
    assert stats(first) == stats(second) == {"/orders": 3, "/users/7": 1}
    # Metrics from both VMs add up, as Envoy's do; the stats requests themselves are not counted.
    assert proxy_host.metric("request_metrics_requests_total") == 4


def test_paths_beyond_the_tracked_number_count_together(filter_module):
    with filter_module(config={"max_tracked_paths": 2}) as plugin:
        for path in ("/a", "/b", "/c", "/a", "/d"):
            request(plugin, path)
        assert stats(plugin) == {"/a": 2, "/b": 1, "(other)": 2}


def test_queued_records_of_all_workers_are_flushed_once_per_period(workers, proxy_host):
    first, second = workers
    request(first, "/orders", duration_ms=5, host=proxy_host)
    request(second, "/users/7", status=404)
    proxy_host.advance(FLUSH_MS - 6)
    assert records_logged(proxy_host) == []  # nothing before the timer fires

    proxy_host.advance(1)
    assert records_logged(proxy_host) == [
        {"method": "GET", "path": "/orders", "status": 200, "duration_ms": 5},
        {"method": "GET", "path": "/users/7", "status": 404, "duration_ms": 0},
    ]
    assert proxy_host.metric("request_metrics_flushed_records_total") == 2

    request(second, "/orders")
    proxy_host.advance(FLUSH_MS)
    assert len(records_logged(proxy_host)) == 3  # only the new record was added
    assert proxy_host.metric("request_metrics_flushed_records_total") == 3


def test_a_batch_goes_to_the_collector_as_json_lines(filter_module, proxy_host):
    received = []
    proxy_host.add_cluster("collector", lambda call: received.append(call) or HttpResponse(204))
    with filter_module(config={"flush_period_ms": FLUSH_MS, "collector_cluster": "collector"}) as plugin:
        request(plugin, "/orders")
        request(plugin, "/orders", status=500)
        proxy_host.advance(FLUSH_MS)
        (call,) = received
        assert (call.header(":method"), call.header(":path")) == ("POST", "/v1/requests")
        assert call.header("content-type") == "application/x-ndjson"
        lines = call.body.decode().splitlines()
        assert [json.loads(line)["status"] for line in lines] == [200, 500]
        assert proxy_host.metric("request_metrics_flushed_records_total") == 2
        assert records_logged(proxy_host) == []


def test_a_batch_the_collector_refuses_is_dropped_with_a_warning(filter_module, proxy_host):
    proxy_host.add_cluster("collector", lambda call: HttpResponse(503))
    with filter_module(config={"flush_period_ms": FLUSH_MS, "collector_cluster": "collector"}) as plugin:
        request(plugin, "/orders")
        proxy_host.advance(FLUSH_MS)
        assert "request-metrics: collector 'collector' gave answer 503; 1 records dropped" in plugin.log_messages()
        # Never incremented, so never defined: meshext.sdk defines a metric on its first use.
        assert proxy_host.metric("request_metrics_flushed_records_total") is None


def test_a_collector_missing_from_envoy_is_logged(filter_module, proxy_host):
    with filter_module(config={"flush_period_ms": FLUSH_MS, "collector_cluster": "collector"}) as plugin:
        request(plugin, "/orders")
        proxy_host.advance(FLUSH_MS)
        assert any(line.startswith("request-metrics: 1 records dropped: http_call to cluster 'collector' was refused")
                   for line in plugin.log_messages())


@pytest.mark.parametrize(("config", "message"), [
    ({"flush_period_ms": 0}, "config.flush_period_ms: 0 is not positive"),
    ({"max_tracked_paths": -1}, "config.max_tracked_paths: -1 is not positive"),
    ({"stats_path": "stats"}, "config.stats_path: 'stats' does not start with '/'"),
    ({"collector_path": "v1"}, "config.collector_path: 'v1' does not start with '/'"),
    ({"flush_period_ms": 2.5}, "config.flush_period_ms: expected an integer, got a number 2.5"),
    ({"flush_ms": 10}, "config: unknown field 'flush_ms'"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)
