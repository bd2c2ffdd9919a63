"""Mapping rules and the service token fetched from 3scale System (the simulator serves its endpoint)."""

# mypy: disable-error-code="import-not-found"
# (conftest is this folder's, which pytest puts on sys.path)

from __future__ import annotations

from conftest import authrep_params, recording_backend, reply, user_key_config

from meshext.extensions.threescale.backend import MappingRule
from meshext.testing import HttpResponse

REFRESH_MAX_MS = (20 + 15) * 1000  # clamp(timeout, 20 s, ttl) + at most 15 s of jitter


def system_config(**system):
    config = user_key_config()
    del config["services"][0]["token"]
    config["services"][0]["mapping_rules"] = [{"method": "GET", "pattern": "/static",
                                               "usages": [{"name": "hits", "delta": 1}]}]
    config["system"] = {"upstream": {"name": "system", "url": "http://system.example/", "timeout": 1000},
                        "token": "system-access-token", **system}
    return config


def test_rules_and_token_come_from_system_at_start_and_are_refreshed(filter_module, proxy_host, simulator):
    proxy_host.add_cluster("system", address=("127.0.0.1", simulator.port))
    calls = recording_backend(proxy_host)
    with filter_module(config=system_config()) as plugin:
        assert reply(plugin.exchange("GET", "/static?user_key=k")) is None
        assert reply(plugin.exchange("GET", "/fetched?user_key=k")) is None
        assert authrep_params(calls[1])[1] == ("service_token", "token-value")   # the token system gave
        assert authrep_params(calls[1])[3:] == [("usage[hits]", "3")]            # the fetched rule's delta
        assert reply(plugin.exchange("GET", "/new?user_key=k")) == (404, "No Mapping Rule matched\n")

        simulator.backend.config.services[0].mapping_rules.append(MappingRule(pattern="/new", delta=2))
        proxy_host.advance(REFRESH_MAX_MS)
        assert reply(plugin.exchange("GET", "/new?user_key=k")) is None
        assert reply(plugin.exchange("GET", "/static?user_key=k")) is None  # static rules stay first
        fetches = [path for method, path in simulator.backend.requests if "/proxy/configs/" in path]
        assert fetches[0] == ("/admin/api/services/2555417777820/proxy/configs/production/latest.json"
                              "?access_token=system-access-token")
        assert len(fetches) == 2


def test_a_failed_fetch_keeps_the_rules_it_had(filter_module, proxy_host, simulator):
    answers = []
    fetched = (b'{"proxy_config": {"content": {"proxy": {"proxy_rules": [{"http_method": "GET", "pattern": "/f",'
               b' "metric_system_name": null, "delta": 1, "last": false}]}}}}')

    def system(call):
        answers.append(call)
        return HttpResponse(200, body=fetched) if len(answers) == 1 else HttpResponse(500)

    proxy_host.add_cluster("system", system)
    recording_backend(proxy_host)
    config = system_config()
    config["services"][0]["token"] = "static-token"
    with filter_module(config=config) as plugin:
        assert reply(plugin.exchange("GET", "/f?user_key=k")) is None
        proxy_host.advance(REFRESH_MAX_MS)
        assert len(answers) == 2
        assert any("got 500; keeping its current mapping rules" in line for line in plugin.log_messages())
        assert reply(plugin.exchange("GET", "/f?user_key=k")) is None


def test_a_wrong_access_token_keeps_static_rules_serving(filter_module, proxy_host, simulator):
    proxy_host.add_cluster("system", address=("127.0.0.1", simulator.port))
    recording_backend(proxy_host)
    config = system_config(token="wrong")
    config["services"][0]["token"] = "static-token"
    with filter_module(config=config) as plugin:
        assert reply(plugin.exchange("GET", "/static?user_key=k")) is None
        assert reply(plugin.exchange("GET", "/fetched?user_key=k")) == (404, "No Mapping Rule matched\n")
        assert any("got 403" in line for line in plugin.log_messages())
