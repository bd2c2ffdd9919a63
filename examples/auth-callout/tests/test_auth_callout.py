"""auth-callout in the meshext test host (`meshext test examples/auth-callout`).

The auth service is a handler of the test host's cluster "auth": it gets
each check request and answers like a real service would.
"""

import json

import pytest

from meshext.errors import MeshextError
from meshext.testing import Action, HttpResponse

CONFIG = {
    "cluster": "auth",
    "forward_headers": ["authorization"],
    "copy_headers": ["x-user-id", "x-user-roles"],
    "skip_prefixes": ["/healthz"],
}
ALICE = {"authorization": "Bearer alice-token"}


def auth_service(call):
    """Knows one token (alice's); no credentials: 401 with a challenge; others: 403."""
    token = call.header("authorization")
    if token == "Bearer alice-token":
        return HttpResponse(200, {"x-user-id": "alice", "x-user-roles": "admin", "x-auth-internal": "1"})
    if token is None:
        return HttpResponse(401, {"www-authenticate": 'Bearer realm="orders"'})
    return HttpResponse(403)


def never_answers(call):
    return None  # the call stays pending: the test answers it, or the clock runs out


def local_reply(stream, status):
    """The JSON error the client got, after checking the upstream saw nothing."""
    assert stream.local_response is not None and stream.local_response.status == status
    assert stream.response.header("content-type") == "application/json"
    assert stream.request.forwarded_headers is None
    return json.loads(stream.response.forwarded_body)["error"]


@pytest.fixture
def auth(proxy_host):
    return proxy_host.add_cluster("auth", auth_service)


def test_an_accepted_request_continues_with_the_identity_the_auth_service_gave(auth, filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders?limit=5", authority="shop.example",
                                 headers={**ALICE, "cookie": "session=1", "x-user-id": "mallory"})
        assert stream.local_response is None and stream.request.complete
        assert stream.request.header("x-user-id") == "alice"  # the client's own x-user-id is gone
        assert stream.request.header("x-user-roles") == "admin"
        assert stream.request.header("x-auth-internal") is None  # not in copy_headers
        assert stream.request.header("authorization") == "Bearer alice-token"

        (check,) = plugin.http_calls
        assert check.cluster == "auth"
        assert check.header(":method") == "GET" and check.header(":path") == "/check"
        assert check.header(":authority") == "auth"
        assert check.header("x-forwarded-method") == "GET"
        assert check.header("x-forwarded-uri") == "/orders?limit=5"
        assert check.header("x-forwarded-host") == "shop.example"
        assert check.header("authorization") == "Bearer alice-token"
        assert check.header("cookie") is None  # only forward_headers go to the auth service
        assert check.timeout_ms == 1000
        assert proxy_host.metric("auth_callout_allowed_total") == 1


def test_a_request_body_waits_for_the_answer_then_goes_upstream(filter_module, proxy_host):
    proxy_host.add_cluster("auth", never_answers)
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.http_stream()
        headers = {":method": "POST", ":path": "/orders", ":authority": "shop.example", **ALICE}
        assert stream.send_request_headers(headers) == Action.PAUSE
        stream.send_request_body(b'{"item": 1}', end_stream=True)
        assert stream.request.forwarded_headers is None and stream.request.forwarded_body == b""

        plugin.http_calls[0].respond(200, {"x-user-id": "alice"})
        assert stream.request.header("x-user-id") == "alice"
        assert stream.request.forwarded_body == b'{"item": 1}'
        assert stream.request.complete


def test_no_credentials_get_401_with_the_auth_services_challenge(auth, filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders")
        assert local_reply(stream, 401) == "unauthorized"
        assert stream.response.header("www-authenticate") == 'Bearer realm="orders"'
        assert proxy_host.metric("auth_callout_denied_total") == 1


def test_credentials_the_auth_service_refuses_get_403(auth, filter_module):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders", headers={"authorization": "Bearer stolen"})
        assert local_reply(stream, 403) == "forbidden"


# 500: the service failed.  Envoy answers the callout itself when the service cannot:
# 503 when it cannot connect, 504 after the callout's timeout (checked with Envoy 1.40).
@pytest.mark.parametrize("status", [500, 503, 504])
def test_a_failing_auth_service_means_503_not_access(filter_module, proxy_host, status):
    proxy_host.add_cluster("auth", lambda call: HttpResponse(status, body=b"upstream connect error"))
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert local_reply(stream, 503) == "auth service unavailable"
        assert f"auth-callout: cluster 'auth' gave answer {status}; request refused" in plugin.log_messages()
        assert proxy_host.metric("auth_callout_failed_total") == 1


def test_no_answer_within_the_timeout_means_503(filter_module, proxy_host):
    proxy_host.add_cluster("auth", never_answers)
    with filter_module(config={**CONFIG, "timeout_ms": 250}) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "GET", ":path": "/orders", ":authority": "shop", **ALICE},
                                    end_stream=True)
        proxy_host.advance(249)
        assert stream.request.paused and stream.local_response is None
        proxy_host.advance(1)
        assert local_reply(stream, 503) == "auth service unavailable"
        assert proxy_host.metric("auth_callout_failed_total") == 1


def test_a_reset_call_to_the_auth_service_means_503(filter_module, proxy_host):
    proxy_host.add_cluster("auth", never_answers)
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "GET", ":path": "/orders", ":authority": "shop", **ALICE},
                                    end_stream=True)
        plugin.http_calls[0].fail()
        assert local_reply(stream, 503) == "auth service unavailable"
        assert "auth-callout: cluster 'auth' gave no answer; request refused" in (
            plugin.log_messages())


def test_a_cluster_missing_from_envoy_means_503_and_an_error_naming_it(filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:  # no cluster "auth" declared
        stream = plugin.exchange("GET", "/orders", headers=ALICE)
        assert local_reply(stream, 503) == "auth service unavailable"
        assert any("http_call to cluster 'auth' was refused" in line for line in plugin.log_messages())


def test_skipped_paths_need_no_check_but_still_lose_spoofed_identities(auth, filter_module):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/healthz", headers={"x-user-id": "mallory"})
        assert stream.local_response is None and stream.request.complete
        assert stream.request.header("x-user-id") is None
        assert plugin.http_calls == []


@pytest.mark.parametrize(("config", "message"), [
    ({}, "config.cluster: required field is missing"),
    ({"cluster": ""}, "config.cluster: empty; fix: name the auth service's cluster"),
    ({"cluster": "auth", "path": "check"}, "config.path: 'check' does not start with '/'"),
    ({"cluster": "auth", "timeout_ms": 0}, "config.timeout_ms: 0 is not positive"),
    ({"cluster": "auth", "timeout_ms": "1s"}, "config.timeout_ms: expected an integer, got a string '1s'"),
    ({"cluster": "auth", "forward_headers": "authorization"}, "config.forward_headers: expected a list"),
    ({"cluster": "auth", "skip_prefixes": ["healthz"]}, "config.skip_prefixes[0]: 'healthz' does not start"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)
