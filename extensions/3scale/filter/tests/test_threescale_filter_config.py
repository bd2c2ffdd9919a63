"""The configuration as the 3scale module parses it: what it accepts, what it refuses (naming the field)."""

# mypy: disable-error-code="import-not-found"
# (conftest is this folder's, which pytest puts on sys.path)

from __future__ import annotations

import copy

import pytest
from conftest import SERVICE_TOKEN, recording_backend, reply, user_key_config

from meshext.errors import MeshextError


def refused(filter_module, config):
    """The filter's error line: the test host raises as Envoy refuses the configuration."""
    with pytest.raises(MeshextError, match="proxy_on_configure returned false") as refusal:
        filter_module(config=config)
    (line,) = [line for line in str(refusal.value).splitlines() if "configuration refused" in line]
    return line


@pytest.mark.parametrize("api", ["v1", "v1.0", "v1.0.0"])
def test_the_api_tag_and_its_aliases_are_accepted(filter_module, proxy_host, api):
    calls = recording_backend(proxy_host)
    plugin = filter_module(config=user_key_config(api=api))
    assert not plugin.failed
    assert reply(plugin.exchange("GET", "/?user_key=k")) is None
    assert len(calls) == 1


def test_keys_the_module_does_not_know_are_ignored(filter_module, proxy_host):
    recording_backend(proxy_host)
    config = user_key_config(some_future_field={"x": 1})
    config["services"][0]["unknown"] = True
    config["services"][0]["mapping_rules"][0]["comment"] = "ignored"
    config["backend"]["extensions"] = ["no_body"]  # parsed and unused by the module
    plugin = filter_module(config=config)
    assert not plugin.failed
    assert reply(plugin.exchange("GET", "/?user_key=k")) is None


def with_service(**changes):
    config = user_key_config()
    config["services"][0].update(changes)
    return config


def without(config, *path):
    config = copy.deepcopy(config)
    node = config
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return config


@pytest.mark.parametrize(("config", "expected"), [
    ({"backend": {}}, "config.api: missing; fix: write api: v1"),
    (user_key_config(api="v2"), "config.api: unknown version 'v2'"),
    (without(user_key_config(), "services", 0, "id"), "config.services[0].id: required field is missing"),
    (without(user_key_config(), "services", 0, "token"), "config.services[0].token: required field is missing"),
    (with_service(credentials={"user_key": [{"cookie": {"keys": ["k"]}}]}),
     "config.services[0].credentials.user_key[0].cookie: unknown credential source 'cookie'"),
    (with_service(credentials={"user_key": [{"header": {"keys": ["k"], "ops": [{"base32": None}]}}]}),
     "config.services[0].credentials.user_key[0].header.ops[0]: unknown operation 'base32'"),
    (with_service(credentials={"user_key": [{"header": {"keys": ["k"], "ops": ["pop"]}}]}),
     "config.services[0].credentials.user_key[0].header.ops[0]: 'pop' is not an operation without parameters"),
    (with_service(credentials={"user_key": [{"header": {"keys": ["k"], "ops": [{"strlen": {"mode": "bytes"}}]}}]}),
     "config.services[0].credentials.user_key[0].header.ops[0].strlen.mode: unknown strlen mode 'bytes'"),
    (with_service(credentials={"user_key": [{"header": {"keys": ["k"]}}], "client_id": []}),
     "config.services[0].credentials.client_id: unknown field"),
    (with_service(credentials={"app_key": [{"header": {"keys": ["k"]}}]}),
     "config.services[0].credentials: you must provide at least one of user_key or app_id"),
    (with_service(mapping_rules=[{"method": "GET", "pattern": "/orders(", "usages": [{"name": "hits", "delta": 1}]}]),
     "config.services[0].mapping_rules[0].pattern: '/orders(' does not compile"),
    (with_service(mapping_rules=[{"method": "GET", "pattern": "/", "usages": [{"delta": 1}]}]),
     "config.services[0].mapping_rules[0].usages[0].name: required field is missing"),
    (with_service(mapping_rules=[{"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": "1"}]}]),
     "config.services[0].mapping_rules[0].usages[0].delta: expected an integer, got a string"),
    (user_key_config(backend={"upstream": {"name": "b", "url": "backend"}}),
     "config.backend.upstream.url: 'backend' is not a URL with an authority"),
    (user_key_config(backend={"upstream": {"name": "b", "url": "http://b", "timeout": 1, "retries": 2}}),
     "config.backend.upstream.retries: unknown field"),
    (without(user_key_config(), "backend"), "config.backend: required field is missing"),
])
def test_bad_input_is_refused_at_configure_time_naming_the_field(filter_module, config, expected):
    assert expected in refused(filter_module, config)


def test_a_configuration_that_is_not_json_is_refused(filter_module):
    assert "it is not JSON" in refused(filter_module, "api: v1")


def test_a_service_without_token_is_accepted_when_system_can_supply_it(filter_module, proxy_host):
    proxy_host.add_cluster("system", lambda call: None)
    config = without(user_key_config(), "services", 0, "token")
    config["system"] = {"upstream": {"name": "system", "url": "https://admin.example"}, "token": "access"}
    plugin = filter_module(config=config)
    assert not plugin.failed
    # until system answers, the module has no token: 403 Authentication failed
    assert reply(plugin.exchange("GET", "/?user_key=k")) == (403, "Authentication failed\n")


def test_an_upper_case_header_key_is_accepted_with_a_warning_and_never_matches(filter_module, proxy_host):
    calls = recording_backend(proxy_host)
    plugin = filter_module(config=with_service(credentials={"user_key": [{"header": {"keys": ["X-API-Key"]}}]}))
    assert not plugin.failed
    assert any("'X-API-Key' has capitals and never matches" in line for line in plugin.log_messages())
    stream = plugin.exchange("GET", "/", headers={"x-api-key": "k"})
    assert reply(stream) == (403, "Authentication parameters missing\n")
    assert calls == []


def test_the_upstream_timeout_defaults_to_1000_ms_and_is_used(filter_module, proxy_host):
    calls = recording_backend(proxy_host)
    config = user_key_config()
    del config["backend"]["upstream"]["timeout"]
    plugin = filter_module(config=config)
    plugin.exchange("GET", "/?user_key=k")
    assert calls[0].timeout_ms == 1000
    assert calls[0].header(":authority") == "backend.example"
    assert calls[0].header("3scale-options") == "no_body=1&rejection_reason_header=1"
    assert SERVICE_TOKEN in calls[0].header(":path")
