"""grpc-call in the meshext test host (`meshext test examples/grpc-call`).

The rate limit service is a gRPC handler on the test host's cluster
"ratelimit".  It reads and writes messages with the generated classes of
Envoy's protos (the ``xds-protos`` package meshext depends on), so these
tests also check the filter's hand-written encoding against protobuf's own.
"""

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from meshext.testing import Action, GrpcReply, MeshextError

CONFIG = {
    "cluster": "ratelimit",
    "domain": "shop",
    "descriptors": [
        {"entries": [{"key": "user", "header": "x-user-id"}]},
        {"entries": [{"key": "route", "value": "orders"}, {"key": "method", "header": ":method"}]},
    ],
}
ALICE = {"x-user-id": "alice"}
Response = rls_pb2.RateLimitResponse
UNAVAILABLE = 14


class RateLimitService:
    """Plays envoyproxy/ratelimit: each user may make ``limit`` requests, then is OVER_LIMIT."""

    def __init__(self, limit=2):
        self.limit = limit
        self.requests = []  # what it was asked, decoded

    def __call__(self, call):
        request = rls_pb2.RateLimitRequest.FromString(call.messages[0])
        self.requests.append(request)
        users = [entry.value for descriptor in request.descriptors for entry in descriptor.entries
                 if entry.key == "user"]
        used = sum(1 for asked in self.requests for descriptor in asked.descriptors for entry in descriptor.entries
                   if entry.key == "user" and entry.value in users)
        remaining = max(self.limit - used, 0)
        reply = Response(overall_code=Response.OK if used <= self.limit else Response.OVER_LIMIT)
        # A status per descriptor, as the real service sends: the filter must skip what it does not use.
        reply.statuses.add(code=reply.overall_code, limit_remaining=remaining)
        reply.response_headers_to_add.add(key="x-ratelimit-remaining", value=str(remaining))
        if reply.overall_code == Response.OK:
            # raw_value is how newer services send header values.
            reply.request_headers_to_add.add(key="x-ratelimit-checked", raw_value=b"yes")
        else:
            reply.raw_body = b"slow down\n"
        return GrpcReply(0, [reply.SerializeToString()])


def descriptors(request):
    return [[(entry.key, entry.value) for entry in descriptor.entries] for descriptor in request.descriptors]


@pytest.fixture
def service(proxy_host):
    service = RateLimitService()
    proxy_host.add_cluster("ratelimit", grpc=service)
    return service


def test_the_service_is_asked_about_the_descriptors_the_request_has(service, filter_module):
    with filter_module(config=CONFIG) as plugin:
        plugin.exchange("GET", "/orders", headers=ALICE)
        plugin.exchange("POST", "/orders")  # no x-user-id: the first descriptor is left out
        (call, _) = plugin.grpc_calls
        assert (call.cluster, call.service, call.method) == (
            "ratelimit", "envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
        assert call.timeout_ms == 100
        first, second = service.requests
        assert first.domain == "shop" and first.hits_addend == 0  # 0: one hit
        assert descriptors(first) == [[("user", "alice")], [("route", "orders"), ("method", "GET")]]
        assert descriptors(second) == [[("route", "orders"), ("method", "POST")]]


def test_a_request_with_no_descriptor_is_not_asked_about(service, filter_module):
    config = {**CONFIG, "descriptors": [{"entries": [{"key": "user", "header": "x-user-id"}]}]}
    with filter_module(config=config) as plugin:
        stream = plugin.exchange("GET", "/orders")
        assert stream.request.complete and stream.local_response is None
        assert plugin.grpc_calls == []


def test_under_the_limit_the_request_and_response_get_the_services_headers(service, filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert stream.local_response is None and stream.request.complete
        assert stream.request.header("x-ratelimit-checked") == "yes"
        assert stream.response.header("x-ratelimit-remaining") == "1"
        assert proxy_host.metric("ratelimit_ok_total") == 1


def test_over_the_limit_the_client_gets_429_and_the_upstream_nothing(service, filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:
        for _ in range(2):
            plugin.exchange("GET", "/orders", headers=ALICE)
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert stream.local_response is not None and stream.local_response.status == 429
        assert stream.request.forwarded_headers is None
        assert stream.response.header("x-envoy-ratelimited") == "true"
        assert stream.response.header("x-ratelimit-remaining") == "0"
        assert stream.response.forwarded_body == b"slow down\n"
        assert proxy_host.metric("ratelimit_over_limit_total") == 1
        # Another user still passes.
        assert plugin.exchange("GET", "/orders", headers={"x-user-id": "bob"}).local_response is None


def test_the_request_and_its_body_wait_for_the_reply(filter_module, proxy_host):
    proxy_host.add_cluster("ratelimit", grpc=lambda call: None)  # the test replies itself
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.http_stream()
        assert stream.send_request_headers({":method": "POST", ":path": "/orders", ":authority": "shop"}) == (
            Action.PAUSE)
        stream.send_request_body(b"order", end_stream=True)
        assert stream.request.forwarded_headers is None

        plugin.grpc_calls[0].reply(Response(overall_code=Response.OK).SerializeToString())
        assert stream.request.complete and stream.request.forwarded_body == b"order"


@pytest.mark.parametrize(("reply", "problem"), [
    # Envoy's gRPC client adds its response code details to the service's message.
    (GrpcReply(UNAVAILABLE, status_message="no healthy upstream"),
     "gRPC status UNAVAILABLE: no healthy upstream{via_upstream}"),
    (GrpcReply(0, [b"\x08"]), "unreadable reply: varint cut off by the end of the message at byte 1"),
    (GrpcReply(0, [b"\x00\x01"]), "unreadable reply: field number 0 before byte 1: not a protobuf message"),
    (GrpcReply(0, [Response().SerializeToString()]), "reply with overall_code 0 (UNKNOWN)"),
], ids=["grpc-error", "truncated", "garbage", "unknown-code"])
def test_without_a_usable_reply_the_request_goes_on_with_a_warning(filter_module, proxy_host, reply, problem):
    proxy_host.add_cluster("ratelimit", grpc=lambda call: reply)
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert stream.local_response is None and stream.request.complete
        assert f"grpc-call: rate limit service 'ratelimit': {problem}; request let through" in plugin.log_messages()
        assert proxy_host.metric("ratelimit_error_total") == 1


def test_with_failure_mode_deny_a_failed_call_means_500(filter_module, proxy_host):
    proxy_host.add_cluster("ratelimit", grpc=lambda call: GrpcReply(UNAVAILABLE))
    with filter_module(config={**CONFIG, "failure_mode_deny": True}) as plugin:
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert stream.local_response is not None and stream.local_response.status == 500
        assert stream.request.forwarded_headers is None
        assert stream.response.forwarded_body == b"rate limit service unavailable\n"
        # Without a message of the service's, Envoy's gRPC client gives its response code details.
        assert ("grpc-call: rate limit service 'ratelimit': gRPC status UNAVAILABLE: via_upstream; request refused "
                "(failure_mode_deny)") in plugin.log_messages()


@pytest.mark.parametrize(("deny", "status"), [(False, None), (True, 500)])
def test_a_cluster_missing_from_envoy_is_a_failed_call(filter_module, deny, status):
    with filter_module(config={**CONFIG, "failure_mode_deny": deny}) as plugin:  # no cluster "ratelimit"
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert (stream.local_response.status if stream.local_response else None) == status
        assert any("grpc_call to cluster 'ratelimit' was refused" in line for line in plugin.log_messages())


def test_a_service_that_does_not_answer_in_time_lets_the_request_through(filter_module, proxy_host):
    proxy_host.add_cluster("ratelimit", grpc=lambda call: None)  # never answers
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "GET", ":path": "/orders", ":authority": "shop"}, end_stream=True)
        proxy_host.advance(100)
        assert stream.request.complete
        assert proxy_host.metric("ratelimit_error_total") == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"cluster": "ratelimit", "descriptors": []}, "config.domain: required field is missing"),
    ({**CONFIG, "domain": ""}, "config.domain: empty"),
    ({**CONFIG, "descriptors": []}, "config.descriptors: empty, nothing would ever be limited"),
    ({**CONFIG, "descriptors": [{"entries": []}]}, "config.descriptors[0].entries: empty"),
    ({**CONFIG, "descriptors": [{"entries": [{"key": "user", "header": "x-user-id", "value": "x"}]}]},
     "config.descriptors[0].entries[0]: give exactly one of 'header' and 'value'"),
    ({**CONFIG, "descriptors": [{"entries": [{"key": "user"}]}]},
     "config.descriptors[0].entries[0]: give exactly one of 'header' and 'value'"),
    ({**CONFIG, "descriptors": [{"entries": [{"header": "x-user-id"}]}]},
     "config.descriptors[0].entries[0].key: required field is missing"),
    ({**CONFIG, "descriptors": [{"entries": [{"key": "user", "header": 5}]}]},
     "config.descriptors[0].entries[0].header: expected a string, got an integer 5"),
    ({**CONFIG, "failure_mode_deny": "yes"}, "config.failure_mode_deny: expected true or false, got a string 'yes'"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)
