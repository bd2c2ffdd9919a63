"""Requests through the filter against the backend simulator: the module's order, replies and status codes."""

# mypy: disable-error-code="import-not-found"
# (conftest is this folder's, which pytest puts on sys.path)

from __future__ import annotations

from typing import Any

import pytest
from conftest import SERVICE_TOKEN, authrep_params, recording_backend, reply, user_key_config

FAILED = (403, "Authentication failed\n")


@pytest.fixture
def plugin(filter_module, backend_cluster):
    with filter_module(config=user_key_config()) as loaded:
        yield loaded


def test_a_valid_user_key_in_the_query_is_authorized_and_reported(plugin, simulator):
    stream = plugin.exchange("GET", "/orders?user_key=key-basic")
    assert reply(stream) is None
    assert stream.response.header("powered-by") == "3scale"
    assert simulator.backend.totals()["2555417777820"]["user_key:key-basic"] == {"hits": 1}


def test_a_valid_user_key_in_a_header_is_authorized(plugin):
    assert reply(plugin.exchange("GET", "/", headers={"x-api-key": "key-basic"})) is None


@pytest.mark.parametrize(("path", "headers", "expected"), [
    ("/", {}, (403, "Authentication parameters missing\n")),
    ("/?user_key=wrong", {}, FAILED),                       # simulator: 403 user_key_invalid
    ("/?user_key=key-suspended", {}, FAILED),               # simulator: 409 application_not_active
])
def test_denials_answer_as_the_module_does(plugin, path, headers, expected):
    stream = plugin.exchange("GET", path, headers=headers)
    assert reply(stream) == expected
    assert stream.response.header("powered-by") == "3scale"  # local replies too


def test_usage_limits_exceeded_is_429(plugin, simulator):
    for _ in range(5):
        assert reply(plugin.exchange("GET", "/?user_key=key-basic")) is None
    assert reply(plugin.exchange("GET", "/?user_key=key-basic")) == (429, "Usage limit exceeded\n")
    assert simulator.backend.totals()["2555417777820"]["user_key:key-basic"] == {"hits": 5}


def test_an_authority_no_service_claims_is_unknown_service(filter_module, backend_cluster):
    config = user_key_config()
    config["services"][0]["authorities"] = ["*.shop.example", "api.example:8443"]
    with filter_module(config=config) as plugin:
        assert reply(plugin.exchange("GET", "/?user_key=key-basic", authority="web.shop.example")) is None
        assert reply(plugin.exchange("GET", "/?user_key=key-basic", authority="api.example:8443")) is None
        # the default port is dropped from the authority, others are kept (the url crate's parsing)
        assert reply(plugin.exchange("GET", "/?user_key=key-basic", authority="web.shop.example:80")) is None
        assert reply(plugin.exchange("GET", "/?user_key=key-basic", authority="web.shop.example:8080")) == (
            403, "Unknown service\n")
        assert reply(plugin.exchange("GET", "/?user_key=key-basic", authority="shop.example")) == (
            403, "Unknown service\n")


def test_no_matching_rule_is_404_before_any_callout(filter_module, proxy_host):
    calls = recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["mapping_rules"] = [{"method": "POST", "pattern": "/orders",
                                               "usages": [{"name": "hits", "delta": 1}]}]
    with filter_module(config=config) as plugin:
        assert reply(plugin.exchange("GET", "/orders?user_key=k")) == (404, "No Mapping Rule matched\n")
        assert reply(plugin.exchange("POST", "/orders?user_key=k")) is None
    assert len(calls) == 1


@pytest.mark.parametrize(("status", "headers", "expected"), [
    (200, {}, None),
    (409, {"3scale-rejection-reason": "limits_exceeded"}, (429, "Usage limit exceeded\n")),
    (409, {"3scale-rejection-reason": "application_key_invalid"}, FAILED),
    (403, {}, FAILED), (404, {}, FAILED), (422, {}, FAILED), (500, {}, FAILED),
    (503, {}, FAILED),   # Envoy's answer when it cannot connect to the backend
    (504, {}, FAILED),   # Envoy's answer when the backend does not answer within the timeout
])
def test_the_backends_status_decides(filter_module, proxy_host, status, headers, expected):
    recording_backend(proxy_host, status, headers)
    with filter_module(config=user_key_config()) as plugin:
        assert reply(plugin.exchange("GET", "/?user_key=k")) == expected


def test_an_answer_without_status_is_502(filter_module, proxy_host):
    proxy_host.add_cluster("backend", lambda call: None)
    with filter_module(config=user_key_config()) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "GET", ":path": "/?user_key=k", ":authority": "a", ":scheme": "http"},
                                    end_stream=True)
        plugin.http_calls[0].fail()
        assert reply(stream) == (502, "Bad Gateway\n")


def test_the_authrep_call_carries_service_credentials_and_summed_usages(filter_module, proxy_host):
    calls = recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["mapping_rules"] = [
        {"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]},
        {"method": "ANY", "pattern": "/orders/{id}", "usages": [{"name": "orders", "delta": 2},
                                                                {"name": "hits", "delta": 1}]},
        {"method": "get", "pattern": "/orders/{id}$", "usages": [{"name": "exact", "delta": 5}], "last": True},
        {"method": "GET", "pattern": "/orders", "usages": [{"name": "after_last", "delta": 7}]},
    ]
    with filter_module(config=config) as plugin:
        plugin.exchange("GET", "/orders/17?user_key=key-basic")
        plugin.exchange("GET", "/orders/17/lines?user_key=key-basic")
    assert authrep_params(calls[0]) == [("service_id", "2555417777820"), ("service_token", SERVICE_TOKEN),
                                        ("user_key", "key-basic"), ("usage[hits]", "2"), ("usage[orders]", "2"),
                                        ("usage[exact]", "5")]
    # no exact match: the `last` rule does not match, so the evaluation goes on
    assert authrep_params(calls[1])[3:] == [("usage[hits]", "2"), ("usage[orders]", "2"), ("usage[after_last]", "7")]
    assert calls[0].header("user-agent") == "meshext-3scale"


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/", "/anything/at/all", True),
    ("/orders", "/orders.json", True),              # a prefix match
    ("/orders$", "/orders.json", False),            # `$` anchors: a raw regex
    ("/v1.0/x", "/v1X0/x", True),                   # `.` is any character
    ("/{a}/{b}.json", "/x/y.json", True),
    ("/{a}/{b}.json", "/x/.json", False),           # a placeholder needs one character
    ("/users/{id}", "/users/a%20b~!$'()*+,;=@:", True),
    ("/users/{id}/x", "/users/a?b/x", False),       # `?` is where the query starts
    ("//double//slash", "/double/slash", True),     # `//` coalesced on both sides
    ("/double/slash", "//double///slash", True),
    ("/search?q={term}", "/search?q=shoes&page=2", True),
    ("/search?q={term}", "/search?page=2&q=shoes", True),   # query pairs in any order
    ("/search?q={term}", "/search?q=", False),
    ("/search?q={term}&page=1", "/search?page=1&q=a", True),
    ("/search?q={term}&page=1", "/search?q=a&page=2", False),
    ("/search?q=a.b", "/search?q=aXb", False),      # query literals are escaped
    ("/b$", "/a/../b", True),                       # the request path is normalised (dot segments)
    ("/b$", "/a/%2e%2E/b", True),
])
def test_mapping_rule_patterns_follow_the_module(filter_module, proxy_host, pattern, path, matches):
    recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["credentials"] = {"user_key": [{"header": {"keys": ["x-key"]}}]}
    config["services"][0]["mapping_rules"] = [{"method": "GET", "pattern": pattern,
                                               "usages": [{"name": "hits", "delta": 1}]}]
    with filter_module(config=config) as plugin:
        result = reply(plugin.exchange("GET", path, headers={"x-key": "k"}))
    assert (result is None) == matches, result


def test_app_id_and_app_key_are_sent_and_checked(filter_module, backend_cluster):
    config = user_key_config()
    config["services"][0] = {
        "id": "42", "token": "token-42",
        "credentials": {"app_id": [{"header": {"keys": ["app_id"]}}, {"query_string": {"keys": ["app_id"]}}],
                        "app_key": [{"header": {"keys": ["app_key"]}}, {"query_string": {"keys": ["app_key"]}}]},
        "mapping_rules": [{"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]}],
    }
    with filter_module(config=config) as plugin:
        assert reply(plugin.exchange("GET", "/?app_id=app-1&app_key=key-2")) is None
        assert reply(plugin.exchange("GET", "/", headers={"app_id": "app-1", "app_key": "key-1"})) is None
        assert reply(plugin.exchange("GET", "/?app_id=app-1&app_key=nope")) == FAILED      # 409 application_key_invalid
        assert reply(plugin.exchange("GET", "/?app_id=app-1")) == FAILED                   # app key is missing
        assert reply(plugin.exchange("GET", "/?app_id=unknown&app_key=k")) == FAILED       # 404 application_not_found


def resolved_credential(filter_module, proxy_host, credentials, path="/", headers=(), properties=None):
    """The credential parameters the filter sent for one request, or the local reply."""
    calls = recording_backend(proxy_host)
    config = user_key_config()
    config["services"][0]["credentials"] = credentials
    with filter_module(config=config) as plugin:
        result = reply(plugin.exchange("GET", path, headers=headers, properties=properties))
    if result is not None:
        return result
    return [pair for pair in authrep_params(calls[0]) if pair[0] in ("user_key", "app_id", "app_key")]


def test_the_first_source_that_resolves_wins(filter_module, proxy_host):
    credentials = {"user_key": [{"query_string": {"keys": ["user_key", "api_key"]}},
                                {"header": {"keys": ["user_key"]}}]}
    assert resolved_credential(filter_module, proxy_host, credentials, "/?api_key=q&user_key=q2",
                               {"user_key": "h"}) == [("user_key", "q2")]


def test_query_values_are_url_decoded(filter_module, proxy_host):
    credentials = {"user_key": [{"query_string": {"keys": ["user key"]}}]}
    assert resolved_credential(filter_module, proxy_host, credentials, "/?user+key=a%2Bb+c") == [
        ("user_key", "a%2Bb%20c")]  # decoded to 'a+b c', percent-encoded again in the authrep query


def test_a_user_key_wins_over_an_app_id(filter_module, proxy_host):
    credentials = {"app_id": [{"header": {"keys": ["app_id"]}}], "user_key": [{"header": {"keys": ["user_key"]}}]}
    assert resolved_credential(filter_module, proxy_host, credentials, headers={"app_id": "a", "user_key": "u"}) == [
        ("user_key", "u")]


def test_a_second_app_id_value_is_the_app_key_and_the_app_key_list_is_skipped(filter_module, proxy_host):
    credentials: dict[str, Any] = {"app_id": [{"header": {"keys": ["authorization"],
                                          "ops": [{"split": {"separator": " ", "max": 2}}, "base64_standard",
                                                  {"split": {}}]}}],
                   "app_key": [{"header": {"keys": ["app_key"]}}]}
    basic = "Basic " + __import__("base64").b64encode(b"my-app:my-key").decode()
    assert resolved_credential(filter_module, proxy_host, credentials,
                               headers={"authorization": basic, "app_key": "other"}) == [
        ("app_id", "Basic"), ("app_key", "my-app")]  # the stack is [Basic, my-app, my-key]: bottom values
    credentials["app_id"][0]["header"]["ops"].insert(1, {"drop": {"head": 1}})
    assert resolved_credential(filter_module, proxy_host, credentials,
                               headers={"authorization": basic, "app_key": "other"}) == [
        ("app_id", "my-app"), ("app_key", "my-key")]


def test_an_app_key_comes_from_its_own_list_when_the_app_id_stack_has_one_value(filter_module, proxy_host):
    credentials = {"app_id": [{"header": {"keys": ["app_id"]}}], "app_key": [{"query_string": {"keys": ["key"]}}]}
    assert resolved_credential(filter_module, proxy_host, credentials, "/?key=k", {"app_id": "a"}) == [
        ("app_id", "a"), ("app_key", "k")]
    assert resolved_credential(filter_module, proxy_host, credentials, "/", {"app_id": "a"}) == [("app_id", "a")]


def test_the_filter_source_reads_jwt_authn_metadata(filter_module, proxy_host):
    from envoy.config.core.v3.base_pb2 import Metadata

    metadata = Metadata()
    metadata.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"verified_jwt": {"azp": "my-app", "aud": ["a", "b"], "sub": "s"}})
    credentials = {"app_id": [{"filter": {"path": ["envoy.filters.http.jwt_authn", "0"], "keys": ["azp", "aud"],
                                          "ops": [{"take": {"head": 1}}]}}]}
    properties = {"metadata": metadata.SerializeToString()}
    assert resolved_credential(filter_module, proxy_host, credentials, properties=properties) == [("app_id", "my-app")]
    credentials["app_id"][0]["filter"]["keys"] = ["aud"]
    credentials["app_id"][0]["filter"]["ops"] = []
    assert resolved_credential(filter_module, proxy_host, credentials, properties=properties) == [
        ("app_id", "a"), ("app_key", "b")]  # a list is several stack values
    credentials["app_id"][0]["filter"]["path"] = ["envoy.filters.http.jwt_authn"]  # needs a second segment
    assert resolved_credential(filter_module, proxy_host, credentials, properties=properties) == (
        403, "Authentication parameters missing\n")
    assert resolved_credential(filter_module, proxy_host, credentials) == (403, "Authentication parameters missing\n")


def test_passthrough_metadata_adds_headers_and_makes_no_callout(filter_module, proxy_host):
    calls = recording_backend(proxy_host)
    config = user_key_config(passthrough_metadata=True)
    config["services"][0]["mapping_rules"].append({"method": "GET", "pattern": "/o",
                                                   "usages": [{"name": "orders", "delta": 3}]})
    with filter_module(config=config) as plugin:
        stream = plugin.exchange("GET", "/o?user_key=key-basic")
    assert reply(stream) is None and calls == []
    assert stream.request.header("x-3scale-user-key") == "key-basic"
    assert stream.request.header("x-3scale-cluster-name") == "backend"
    assert stream.request.header("x-3scale-upstream-url") == "http://backend.example/"
    assert stream.request.header("x-3scale-timeout") == "5000"
    assert stream.request.header("x-3scale-service-id") == "2555417777820"
    assert stream.request.header("x-3scale-service-token") == SERVICE_TOKEN
    assert stream.request.header("x-3scale-usages") == '{"hits":1,"orders":3}'


def test_a_callout_the_cluster_refuses_is_403(filter_module, proxy_host):
    with filter_module(config=user_key_config()) as plugin:  # no "backend" cluster declared
        assert reply(plugin.exchange("GET", "/?user_key=k")) == FAILED


def test_a_url_that_does_not_parse_is_403(filter_module, proxy_host):
    recording_backend(proxy_host)
    with filter_module(config=user_key_config()) as plugin:
        assert reply(plugin.exchange("GET", "/?user_key=k", authority="bad host")) == FAILED


def test_backend_timeout_in_the_test_host(filter_module, proxy_host):
    proxy_host.add_cluster("backend", lambda call: None)
    with filter_module(config=user_key_config()) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "GET", ":path": "/?user_key=k", ":authority": "a", ":scheme": "http"},
                                    end_stream=True)
        proxy_host.advance(4999)
        assert stream.local_response is None
        proxy_host.advance(2)
        # Envoy 1.40 answers a timed-out callout with 504 (=> 403, tests/extensions/threescale checks it in
        # Envoy); the test host delivers no headers at all (=> 502).
        assert reply(stream) in ((502, "Bad Gateway\n"), FAILED)


def test_each_request_resolves_its_own_credentials_on_one_route(filter_module, proxy_host):
    """Resolutions are memoised per query and header values: a hot route still reads each request's key."""
    calls = recording_backend(proxy_host)
    with filter_module(config=user_key_config()) as plugin:
        for key in ("key-a", "key-b", "key-a"):
            plugin.exchange("GET", "/same", headers={"x-api-key": key})
        plugin.exchange("GET", "/same?user_key=key-q", headers={"x-api-key": "key-a"})
        assert reply(plugin.exchange("GET", "/same")) == (403, "Authentication parameters missing\n")
    sent = [dict(authrep_params(call))["user_key"] for call in calls]
    assert sent == ["key-a", "key-b", "key-a", "key-q"]
