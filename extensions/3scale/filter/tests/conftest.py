"""Fixtures of the 3scale filter's test-host tests: a real backend simulator on loopback, configurations."""

from __future__ import annotations

import pytest

from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig

SERVICE_TOKEN = "token-value"
SIMULATOR = {
    "access_tokens": ["system-access-token"],
    "services": [
        {"id": "2555417777820", "token": SERVICE_TOKEN, "backend_version": "1",
         "metrics": [{"name": "hits", "children": ["orders", "list"]}],
         "plans": [{"name": "Basic", "limits": [{"metric": "hits", "period": "minute", "value": 5}]},
                   {"name": "Unlimited"}],
         "applications": [{"user_key": "key-basic", "plan": "Basic"},
                          {"user_key": "key-unlimited", "plan": "Unlimited"},
                          {"user_key": "key-suspended", "plan": "Unlimited", "state": "suspended"}],
         "mapping_rules": [{"http_method": "GET", "pattern": "/fetched", "metric_system_name": "hits", "delta": 3}]},
        {"id": "42", "token": "token-42", "backend_version": "2",
         "plans": [{"name": "Gold", "limits": [{"metric": "hits", "period": "day", "value": 100}]}],
         "applications": [{"id": "app-1", "keys": ["key-1", "key-2"], "plan": "Gold"}]},
    ],
}


@pytest.fixture
def simulator():
    """The backend simulator serving on a free loopback port."""
    with BackendServer(Backend(SimulatorConfig.model_validate(SIMULATOR))) as server:
        yield server


@pytest.fixture
def backend_cluster(proxy_host, simulator):
    """The test host's cluster "backend" forwarding callouts to the simulator."""
    return proxy_host.add_cluster("backend", address=("127.0.0.1", simulator.port))


def user_key_config(**changes):
    """The OpenShift Service Mesh documentation's user_key configuration, pointed at the simulator."""
    config = {
        "api": "v1",
        "backend": {"name": "backend", "upstream": {"name": "backend", "url": "http://backend.example/",
                                                    "timeout": 5000}},
        "services": [{
            "id": "2555417777820",
            "token": SERVICE_TOKEN,
            "authorities": ["*"],
            "credentials": {"user_key": [{"query_string": {"keys": ["user_key"]}},
                                         {"header": {"keys": ["user_key", "x-api-key"]}}]},
            "mapping_rules": [{"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]}],
        }],
    }
    config.update(changes)
    return config


def reply(stream):
    """(status, body) of the filter's local reply, or None when the request went upstream."""
    if stream.local_response is None:
        assert stream.request.complete
        return None
    return stream.local_response.status, stream.local_response.body.decode()


def authrep_params(call):
    """The query parameters of an authrep callout, in order (values as sent)."""
    path = call.header(":path")
    assert path.startswith("/transactions/authrep.xml?"), path
    return [tuple(pair.split("=", 1)) for pair in path.split("?", 1)[1].split("&")]


def recording_backend(proxy_host, status=200, headers=None):
    """A test-host cluster "backend" answering every callout with ``status``; returns the list of calls."""
    from meshext.testing import HttpResponse

    calls = []

    def answer(call):
        calls.append(call)
        return HttpResponse(status, headers or {})

    proxy_host.add_cluster("backend", answer)
    return calls
