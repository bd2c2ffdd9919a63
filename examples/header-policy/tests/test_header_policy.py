"""header-policy in the meshext test host (`meshext test examples/header-policy`)."""

import json

import pytest

from meshext.testing import MeshextError

CONFIG = {
    "required_headers": ["x-request-id"],
    "request": {"set": {"x-policy": "checked"}, "remove": ["x-debug"]},
    "response": {"set": {"x-content-type-options": "nosniff"}, "remove": ["server"]},
    "rules": [
        {
            "name": "admin",
            "prefix": "/admin/",
            "allowed_methods": ["GET"],
            "required_headers": ["x-admin-token"],
            "request": {"set": {"x-policy-rule": "admin"}},
            "response": {"set": {"cache-control": "no-store"}},
        },
        {"name": "api", "prefix": "/api/", "allowed_methods": ["GET", "POST"]},
        # Never matches: rules are tried in order and "api" comes first.
        {"name": "api-v2", "prefix": "/api/v2/", "allowed_methods": ["GET", "POST", "PUT"]},
    ],
}
REQUEST_ID = {"x-request-id": "r-1"}


def denial(stream):
    """The 403 the client got, as (rule, reason), after checking its form."""
    assert stream.local_response is not None and stream.local_response.status == 403
    assert stream.response.header(":status") == "403"
    assert stream.response.header("content-type") == "application/json"
    assert stream.request.forwarded_headers is None  # the upstream never saw the request
    body = json.loads(stream.response.forwarded_body)
    assert body["error"] == "forbidden"
    return body["rule"], body["reason"]


def test_an_allowed_request_is_rewritten_on_the_way_in_and_out(filter_module):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("POST", "/api/items", headers={**REQUEST_ID, "x-debug": "1"}, body=b"{}",
                                 response_headers={"server": "gunicorn", "content-type": "text/plain"})
        assert stream.local_response is None
        assert stream.request.header("x-policy") == "checked"
        assert stream.request.header("x-debug") is None
        assert stream.request.header("x-request-id") == "r-1"
        assert stream.request.forwarded_body == b"{}"
        assert stream.response.header("x-content-type-options") == "nosniff"
        assert stream.response.header("server") is None
        assert stream.response.header("content-type") == "text/plain"


def test_the_403_carries_only_the_json_content_type(filter_module):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/public/index.html")
        assert [value for name, value in stream.response.forwarded_headers if name == "content-type"] == [
            "application/json"]


def test_a_rule_adds_its_rewrites_after_the_top_level_ones(filter_module):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/admin/users?page=2", headers={**REQUEST_ID, "x-admin-token": "t"})
        assert stream.local_response is None
        assert stream.request.header("x-policy") == "checked"
        assert stream.request.header("x-policy-rule") == "admin"
        assert stream.response.header("cache-control") == "no-store"
        assert stream.response.header("x-content-type-options") == "nosniff"


def test_a_method_the_rule_does_not_allow_gets_a_json_403_naming_the_rule(filter_module, proxy_host):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("DELETE", "/admin/users/7", headers={**REQUEST_ID, "x-admin-token": "t"})
        assert denial(stream) == ("admin", "method DELETE is not allowed (allowed: GET)")
        # The local reply goes through the filter's response path: its rewrites apply too.
        assert stream.response.header("x-content-type-options") == "nosniff"
        assert stream.response.header("cache-control") == "no-store"
        assert proxy_host.metric("header_policy_denied_total") == 1
        assert "header-policy: denied by rule admin: method DELETE is not allowed (allowed: GET)" in (
            plugin.log_messages())


def test_a_missing_top_level_header_is_denied_by_the_default_rule(filter_module):
    with filter_module(config=CONFIG) as plugin:
        assert denial(plugin.exchange("GET", "/public/index.html")) == (
            "default", "required header x-request-id is missing")


def test_a_rule_requires_its_headers_in_addition_to_the_top_level_ones(filter_module):
    with filter_module(config=CONFIG) as plugin:
        assert denial(plugin.exchange("GET", "/admin/users", headers=REQUEST_ID)) == (
            "admin", "required header x-admin-token is missing")
        assert denial(plugin.exchange("GET", "/admin/users", headers={"x-admin-token": "t"})) == (
            "admin", "required header x-request-id is missing")


def test_the_first_matching_rule_wins(filter_module):
    with filter_module(config=CONFIG) as plugin:
        assert denial(plugin.exchange("PUT", "/api/v2/items", headers=REQUEST_ID)) == (
            "api", "method PUT is not allowed (allowed: GET, POST)")


def test_without_configuration_common_methods_pass_and_others_are_denied(filter_module):
    with filter_module() as plugin:
        stream = plugin.exchange("GET", "/", response_headers={"server": "gunicorn"})
        assert stream.local_response is None
        assert stream.response.header("server") == "gunicorn"  # no rewrites configured
        assert denial(plugin.exchange("TRACE", "/")) == (
            "default", "method TRACE is not allowed (allowed: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)")


@pytest.mark.parametrize(("config", "message"), [
    ({"rules": [{"name": "admin", "prefix": "admin/"}]},
     "config.rules[0].prefix: 'admin/' does not start with '/'; fix: write it as a path, e.g. '/admin/'"),
    ({"rules": [{"prefix": "/admin/"}]},
     "config.rules[0].name: required field is missing"),
    ({"rules": [{"name": "a", "prefix": "/a"}, {"name": "a", "prefix": "/b"}]},
     "config.rules[1].name: 'a' is empty, repeated or reserved"),
    ({"rules": [{"name": "a", "prefix": "/a", "allowed_methods": "GET"}]},
     "config.rules[0].allowed_methods: expected a list or null, got a string"),
    ({"rules": [{"name": "a", "prefix": "/a", "reponse": {}}]},
     "config.rules[0]: unknown field 'reponse'"),
    ({"allowed_methods": []},
     "config.allowed_methods: an empty list allows no request at all"),
    ({"allowed_methods": ["get"]},
     "config.allowed_methods[0]: 'get' is not an HTTP method; fix: use upper-case names"),
    ({"request": {"set": {"x bad": "1"}}},
     "config.request.set['x bad']: not a header name"),
    ({"rules": [{"name": "a", "prefix": "/a", "required_headers": [":path"]}]},
     "config.rules[0].required_headers[0]: ':path' is not a header name"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)


def test_a_configuration_that_is_not_json_is_refused(filter_module):
    with pytest.raises(MeshextError, match="plugin configuration is not JSON"):
        filter_module(config="rules: []")
