"""The ratelimit filter in the meshext test host (`meshext test extensions/ratelimit/filter`).

Local mode counts in the host's shared data (two VMs of one plugin share it,
as Envoy's workers do); global mode's rate limit service is a gRPC handler
that reads and writes messages with xds-protos' generated classes, so the
filter's hand-written encoding is checked against protobuf's own.
"""

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from meshext.errors import MeshextError
from meshext.extensions.ratelimit.filter.ratelimit_metrics import LABELS, REQUESTS
from meshext.sdk.metrics import encoded_name
from meshext.testing import GrpcReply

PER_CLIENT = {"name": "per-client", "descriptor": [{"key": "client", "header": "x-client", "default": "unknown"}],
              "limit": {"requests_per_unit": 2, "unit": "second", "units": 5}}
LOCAL = {"mode": "local", "domain": "test", "response_headers": True, "rules": [PER_CLIENT]}
Response = rls_pb2.RateLimitResponse
UNAVAILABLE = 14


def requests(proxy_host, domain, rule, outcome):
    """ratelimit_requests_total{domain, rule, outcome} as the filter counted it (None: never counted)."""
    return proxy_host.metric(encoded_name(REQUESTS, LABELS, (domain, rule, outcome)))


def statuses(plugin, count, **request):
    return [plugin.exchange(**request).local_response for _ in range(count)]


def test_a_fixed_window_admits_the_limit_then_answers_429_with_the_headers(filter_module, proxy_host):
    with filter_module(config=LOCAL) as plugin:
        first, second = (plugin.exchange(headers={"x-client": "a"}) for _ in range(2))
        assert first.local_response is None and second.local_response is None
        assert first.response.header("x-ratelimit-limit") == "2"
        assert first.response.header("x-ratelimit-remaining") == "1"
        assert second.response.header("x-ratelimit-remaining") == "0"
        denied = plugin.exchange(headers={"x-client": "a"})
        assert denied.local_response is not None and denied.local_response.status == 429
        assert denied.request.forwarded_headers is None
        reset = int(denied.response.header("x-ratelimit-reset"))
        assert 1 <= reset <= 5
        assert denied.response.header("retry-after") == str(reset)
        assert denied.response.header("x-ratelimit-remaining") == "0"
        # Another client has its own count; no header means "unknown", one more client.
        assert plugin.exchange(headers={"x-client": "b"}).local_response is None
        assert plugin.exchange().local_response is None
        assert requests(proxy_host, "test", "per-client", "ok") == 4
        assert requests(proxy_host, "test", "per-client", "over_limit") == 1


def test_the_window_starts_over_after_its_length(filter_module, proxy_host):
    with filter_module(config=LOCAL) as plugin:
        proxy_host.advance(5000 - proxy_host.realtime_ns // 1_000_000 % 5000)  # the start of a window
        first, second, third = statuses(plugin, 3)
        assert first is None and second is None and third.status == 429
        proxy_host.advance(4900)
        assert plugin.exchange().local_response.status == 429
        proxy_host.advance(100)
        assert plugin.exchange().local_response is None


def test_two_vms_share_one_bucket(filter_module_path, proxy_host):
    first = proxy_host.load(filter_module_path, config=LOCAL, vm_id="shared")
    second = proxy_host.load(filter_module_path, config=LOCAL, vm_id="shared")
    proxy_host.advance(5000 - proxy_host.realtime_ns // 1_000_000 % 5000)
    assert first.exchange().local_response is None
    assert second.exchange().local_response is None
    assert first.exchange().local_response.status == 429
    assert second.exchange().local_response.status == 429


def bucket_writes(proxy_host, vm_id):
    """How many writes the plugin's buckets have had (every write gives a key a new cas, counted host-wide)."""
    return max(cas for (vm, key), (_, cas) in proxy_host.shared_data.items()
               if vm == vm_id and not key.endswith("create-lock"))


def test_two_vms_leasing_tokens_admit_exactly_the_limit_with_few_shared_writes(filter_module_path, proxy_host):
    config = {"rules": [{"name": "all", "descriptor": [{"key": "route", "value": "all"}],
                         "limit": {"requests_per_unit": 1000, "unit": "hour"}}]}
    vms = [proxy_host.load(filter_module_path, config=config, vm_id="leasing") for _ in range(2)]
    proxy_host.advance(3_600_000 - proxy_host.realtime_ns // 1_000_000 % 3_600_000)  # the start of a window
    answers = [vms[number % 2].exchange().local_response for number in range(1200)]
    assert answers.count(None) == 1000  # not one more: leased tokens are counted in the window when taken
    assert all(answer.status == 429 for answer in answers[1000:])
    # Without leases every admission is a write; leases are 1/64 of what is left (at most 32), so they
    # shrink as the window fills: the last 127 admissions write one each.
    assert bucket_writes(proxy_host, "leasing") < 300
    assert requests(proxy_host, "meshext", "all", "ok") == 1000
    assert requests(proxy_host, "meshext", "all", "over_limit") == 200


def test_tokens_held_in_leases_keep_a_token_bucket_from_refilling_past_its_capacity(filter_module_path,
                                                                                      proxy_host):
    rule = {"name": "bucket", "descriptor": [{"key": "all", "value": "all"}], "algorithm": "token_bucket",
            "limit": {"requests_per_unit": 1000, "unit": "second"}}
    first, second = (proxy_host.load(filter_module_path, config={"rules": [rule]}, vm_id="refill")
                     for _ in range(2))
    proxy_host.advance(1000 - proxy_host.realtime_ns // 1_000_000 % 1000)  # the start of a lease epoch
    assert first.exchange().local_response is None  # full: the first VM takes a lease of 15, spends 1
    proxy_host.advance(500)  # 500 tokens' worth of refill, but the bucket was full less what is leased
    drained = [second.exchange().local_response for _ in range(1100)]
    held = [first.exchange().local_response for _ in range(20)]
    # A strict bucket admits 1 at the start and then its capacity (refilled to full): 1001, no more.
    assert 1 + drained.count(None) + held.count(None) == 1001


def test_a_token_bucket_holds_the_burst_and_refills_evenly(filter_module, proxy_host):
    rule = {"name": "bucket", "descriptor": [{"key": "all", "value": "all"}], "algorithm": "token_bucket",
            "limit": {"requests_per_unit": 10, "unit": "second", "burst": 5}}
    with filter_module(config={"rules": [rule]}) as plugin:
        results = statuses(plugin, 16)
        assert results[:15] == [None] * 15 and results[15].status == 429
        assert results[15].headers and dict(results[15].headers)["retry-after"] == "1"
        proxy_host.advance(100)  # 10 per second: one token back
        assert plugin.exchange().local_response is None
        assert plugin.exchange().local_response.status == 429
        proxy_host.advance(60_000)  # full again, not more
        refilled = statuses(plugin, 16)
        assert refilled[:15] == [None] * 15 and refilled[15].status == 429


def test_the_first_matching_override_wins(filter_module):
    rule = {**PER_CLIENT, "overrides": [
        {"dimensions": {"client": "vip"}, "limit": {"requests_per_unit": 4, "unit": "second", "units": 5}},
        {"dimensions": {"client": "vip"}, "limit": {"requests_per_unit": 1, "unit": "second"}},
        {"dimensions": {"client": "slow"}, "limit": {"requests_per_unit": 1, "unit": "minute"}}]}
    with filter_module(config={"rules": [rule]}) as plugin:
        vip = statuses(plugin, 5, headers={"x-client": "vip"})
        assert vip[:4] == [None] * 4 and vip[4].status == 429
        slow = statuses(plugin, 2, headers={"x-client": "slow"})
        assert slow[0] is None and slow[1].status == 429
        assert dict(slow[1].headers)["x-ratelimit-limit"] == "1"


def test_rules_apply_only_where_they_match(filter_module):
    rule = {"name": "api-posts", "descriptor": [{"key": "path", "attribute": "path"}],
            "match": {"path_prefix": "/api/", "path_regex": "/api/[a-z]+", "methods": ["POST"],
                      "authority": "shop"},
            "limit": {"requests_per_unit": 1, "unit": "minute"}}
    with filter_module(config={"rules": [rule]}) as plugin:
        def post(path, **options):
            return plugin.exchange("POST", path, authority="shop:8080", **options).local_response
        assert post("/api/orders?x=1") is None
        assert post("/api/orders").status == 429  # the query string is not part of the path
        assert post("/api/carts") is None  # another descriptor value
        assert plugin.exchange("GET", "/api/orders", authority="shop").local_response is None  # method
        assert post("/api/orders2") is None and post("/api/orders2") is None  # regex is a full match
        assert post("/other") is None and post("/other") is None
        assert plugin.exchange("POST", "/api/orders", authority="elsewhere").local_response is None


def test_an_entry_without_value_or_default_leaves_the_rule_out(filter_module):
    rule = {"name": "per-user", "descriptor": [{"key": "user", "header": "x-user"},
                                               {"key": "source", "attribute": "source.address"}],
            "limit": {"requests_per_unit": 1, "unit": "hour"}}
    with filter_module(config={"rules": [rule]}) as plugin:
        assert statuses(plugin, 3) == [None, None, None]  # no x-user: not limited
        first = plugin.exchange(headers={"x-user": "u"}, properties={"source.address": "10.0.0.1:1234"})
        other_source = plugin.exchange(headers={"x-user": "u"}, properties={"source.address": "10.0.0.2:1234"})
        again = plugin.exchange(headers={"x-user": "u"}, properties={"source.address": "10.0.0.1:999"})
        assert first.local_response is None and other_source.local_response is None
        assert again.local_response.status == 429  # the port is not part of the address


def test_dry_run_counts_but_never_denies(filter_module, proxy_host):
    rule = {**PER_CLIENT, "dry_run": True}
    with filter_module(config={"rules": [rule]}) as plugin:
        assert statuses(plugin, 4) == [None] * 4
        assert requests(proxy_host, "meshext", "per-client", "ok") == 2
        assert requests(proxy_host, "meshext", "per-client", "dry_run") == 2
        assert requests(proxy_host, "meshext", "per-client", "over_limit") in (None, 0)


def test_allowed_responses_carry_no_headers_by_default(filter_module):
    # As Envoy's own rate limit filters (enable_x_ratelimit_headers: OFF); a denied answer always has them.
    with filter_module(config={"mode": "local", "domain": "test", "rules": [PER_CLIENT]}) as plugin:
        allowed = [plugin.exchange() for _ in range(2)]
        assert all(stream.response.header("x-ratelimit-limit") is None for stream in allowed)
        denied = plugin.exchange()
        assert dict(denied.local_response.headers)["x-ratelimit-limit"] == "2"


@pytest.mark.parametrize(("change", "named"), [
    ({"rules": [{**PER_CLIENT, "colour": "red"}]}, "config.rules[0]: unknown field 'colour'"),
    ({"rules": [{**PER_CLIENT, "limit": {"requests_per_unit": 0, "unit": "second"}}]},
     "config.rules[0].limit.requests_per_unit: 0 is not positive"),
    ({"rules": [{**PER_CLIENT, "limit": {"requests_per_unit": -3, "unit": "second"}}]},
     "config.rules[0].limit.requests_per_unit: -3 is not positive"),
    ({"rules": [{**PER_CLIENT, "limit": {"requests_per_unit": 3, "unit": "fortnight"}}]},
     "config.rules[0].limit.unit: 'fortnight' is not one of second, minute, hour, day"),
    ({"rules": [{**PER_CLIENT, "match": {"path_regex": "/api/(["}}]}, "config.rules[0].match.path_regex"),
    ({"rules": [{**PER_CLIENT, "overrides": [{"dimensions": {}, "limit": {"requests_per_unit": 1,
                                                                          "unit": "second"}}]}]},
     "config.rules[0].overrides[0].dimensions: empty"),
    ({"rules": [{**PER_CLIENT, "limit": {"requests_per_unit": "many", "unit": "second"}}]},
     "config.rules[0].limit.requests_per_unit: expected an integer"),
    ({"mode": "global"}, "config.service: required in global mode"),
    ({"rules": [{**PER_CLIENT, "limit": {"requests_per_unit": 3, "unit": "second", "burst": 2}}]},
     "config.rules[0].limit.burst: only token buckets have a burst"),
], ids=["unknown-field", "zero-limit", "negative-limit", "unknown-unit", "bad-regex", "override-without-dimensions",
        "wrong-type", "global-without-service", "burst-on-fixed-window"])
def test_bad_configuration_is_refused_naming_the_field(filter_module, change, named):
    with pytest.raises(MeshextError) as refused:
        filter_module(config={**LOCAL, **change})
    assert "plugin configuration refused: " + named in str(refused.value)


# -- global mode -----------------------------------------------------------------------------------

GLOBAL = {"mode": "global", "domain": "shop", "response_headers": True,
          "service": {"cluster": "ratelimit", "timeout_ms": 50},
          "rules": [{"name": "per-user", "descriptor": [{"key": "user", "header": "x-user"}]},
                    {"name": "shadow", "descriptor": [{"key": "route", "value": "all"}], "dry_run": True,
                     "limit": {"requests_per_unit": 7, "unit": "minute"}}]}


class Service:
    """Plays the rate limit service: each user may make ``limit`` requests; 'all' is always over."""

    def __init__(self, limit=1):
        self.limit = limit
        self.requests = []
        self.used = {}

    def __call__(self, call):
        request = rls_pb2.RateLimitRequest.FromString(call.messages[0])
        self.requests.append(request)
        reply = Response(overall_code=Response.OK)
        for descriptor in request.descriptors:
            key = tuple((entry.key, entry.value) for entry in descriptor.entries)
            self.used[key] = self.used.get(key, 0) + 1
            over = key == (("route", "all"),) or self.used[key] > self.limit
            status = reply.statuses.add(code=Response.OVER_LIMIT if over else Response.OK,
                                        limit_remaining=max(0, self.limit - self.used[key]))
            status.current_limit.requests_per_unit = self.limit
            status.current_limit.unit = 2
            status.duration_until_reset.seconds = 42
            if over:
                reply.overall_code = Response.OVER_LIMIT
        if reply.overall_code == Response.OVER_LIMIT:
            reply.raw_body = b"over\n"
        return GrpcReply(0, [reply.SerializeToString()])


def test_global_mode_sends_the_descriptors_and_limit_overrides(filter_module, proxy_host):
    service = Service()
    proxy_host.add_cluster("ratelimit", grpc=service)
    with filter_module(config=GLOBAL) as plugin:
        plugin.exchange(headers={"x-user": "ann"})
        (call,) = plugin.grpc_calls
        assert (call.service, call.method, call.timeout_ms) == (
            "envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit", 50)
        (request,) = service.requests
        assert request.domain == "shop"
        user, route = request.descriptors
        assert [(e.key, e.value) for e in user.entries] == [("user", "ann")] and not user.HasField("limit")
        assert [(e.key, e.value) for e in route.entries] == [("route", "all")]
        assert (route.limit.requests_per_unit, route.limit.unit) == (7, 2)


@pytest.mark.parametrize(("service", "authority"), [
    ({"cluster": "ratelimit"}, "ratelimit"),   # Envoy's default: the cluster name
    ({"cluster": "outbound|9080||ratelimit.default.svc.cluster.local"}, "ratelimit.default.svc.cluster.local"),
    ({"cluster": "outbound|9080||ratelimit.default.svc.cluster.local", "authority": "rls.example"}, "rls.example"),
], ids=["plain-cluster", "mesh-cluster", "given"])
def test_global_mode_calls_with_an_authority_the_services_sidecar_accepts(filter_module, proxy_host, service,
                                                                           authority):
    proxy_host.add_cluster(service["cluster"], grpc=Service())
    with filter_module(config={**GLOBAL, "service": service}) as plugin:
        plugin.exchange(headers={"x-user": "ann"})
        (call,) = plugin.grpc_calls
        assert (call.cluster, call.authority) == (service["cluster"], authority)


def test_global_mode_denies_over_limit_but_not_for_dry_run_rules(filter_module, proxy_host):
    proxy_host.add_cluster("ratelimit", grpc=Service())
    with filter_module(config=GLOBAL) as plugin:
        allowed = plugin.exchange(headers={"x-user": "ann"})
        assert allowed.local_response is None and allowed.request.complete
        assert allowed.response.header("x-ratelimit-limit") == "1"
        assert allowed.response.header("x-ratelimit-reset") == "42"
        denied = plugin.exchange(headers={"x-user": "ann"})
        assert denied.local_response.status == 429
        headers = dict(denied.local_response.headers)
        assert headers["x-envoy-ratelimited"] == "true" and headers["retry-after"] == "42"
        assert denied.response.forwarded_body == b"over\n"
        assert requests(proxy_host, "shop", "shadow", "dry_run") == 2
        assert requests(proxy_host, "shop", "per-user", "over_limit") == 1


@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
@pytest.mark.parametrize("answer", ["grpc-error", "malformed", "unknown-code", "wrong-status-count"])
def test_no_usable_answer_applies_the_failure_mode(filter_module, proxy_host, failure_mode, answer):
    replies = {
        "grpc-error": GrpcReply(UNAVAILABLE, status_message="redis down"),
        "malformed": GrpcReply(0, [b"\x0a\xff"]),
        "unknown-code": GrpcReply(0, [Response(overall_code=Response.UNKNOWN).SerializeToString()]),
        "wrong-status-count": GrpcReply(0, [Response(overall_code=Response.OK, statuses=[
            Response.DescriptorStatus(code=Response.OK)]).SerializeToString()]),
    }
    proxy_host.add_cluster("ratelimit", grpc=lambda call: replies[answer])
    with filter_module(config={**GLOBAL, "failure_mode": failure_mode}) as plugin:
        stream = plugin.exchange(headers={"x-user": "ann"})
        if failure_mode == "allow":
            assert stream.local_response is None and stream.request.complete
        else:
            assert stream.local_response.status == 500
            assert stream.request.forwarded_headers is None
        assert requests(proxy_host, "shop", "per-user", "failure") == 1


def test_an_unknown_cluster_applies_the_failure_mode(filter_module):
    with filter_module(config={**GLOBAL, "failure_mode": "deny"}) as plugin:
        assert plugin.exchange(headers={"x-user": "ann"}).local_response.status == 500
