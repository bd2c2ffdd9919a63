"""Differential conformance: each scenario runs in Envoy 1.40 (V8) and in meshext.runtime.

What is compared (see conformance.py here): the requests the upstream
received (callouts included), the responses the client received (local
replies included), the module's log lines (start-up as a set, then in order)
and the module's metrics.  Any difference fails the test and names the
scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance import (
    Request,
    Scenario,
    TcpScenario,
    UpstreamReply,
    compare,
    run_in_envoy,
    run_in_host,
    run_tcp_in_envoy,
    run_tcp_in_host,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

TRAFFIC = [
    Request("GET", "/plain", [("x-keep", "k")]),
    Request("GET", "/edit?q=1", [("x-replace-me", "old"), ("x-remove-me", "gone"), ("x-keep", "k"),
                                 ("x-keep", "twice")]),
    Request("POST", "/upload", [("content-type", "text/plain")], body=b"hello body"),
    Request("GET", "/denied", [("x-deny", "yes")]),
    Request("POST", "/chunked", [("x-keep", "k")], body=b"chunk body", trailers=[("x-checksum", "c0ffee")]),
]


# Local replies whose filter set its own content-type, with a body and without one.
DENY_TRAFFIC = TRAFFIC + [
    Request("GET", "/denied-json", [("x-deny", "yes"), ("x-deny-type", "application/json")]),
    Request("GET", "/denied-empty", [("x-deny", "yes"), ("x-deny-type", "application/json"), ("x-deny-empty", "1")]),
]

# HTTP callouts (as_callout_answers) that Envoy's async client answers, or refuses, itself.
CALLOUT_ANSWER_TRAFFIC = [
    Request("GET", "/answered"),
    Request("GET", "/post", [("x-callout-body", "callout body")]),  # Envoy adds content-length
    Request("GET", "/no-timeout", [("x-callout-timeout", "0")]),  # no x-envoy-expected-rq-timeout-ms
    Request("GET", "/timeout", [("x-callout-cluster", "silent"), ("x-callout-timeout", "300")]),  # 504
    Request("GET", "/refused", [("x-callout-cluster", "refused")]),  # 503
    Request("GET", "/reset", [("x-callout-cluster", "reset")]),  # no headers
    Request("GET", "/no-endpoints", [("x-callout-cluster", "no_endpoints")]),  # INTERNAL_FAILURE
    Request("GET", "/unknown-cluster", [("x-callout-cluster", "nosuch")]),  # BAD_ARGUMENT
]

# Unary gRPC calls (grpc_call.wat): answered, failed by the server, or ended by Envoy itself.
GRPC_TRAFFIC = [
    Request("GET", "/a"), Request("POST", "/b", body=b"xy"), Request("GET", "/fail"), Request("GET", "/fail-quietly"),
    Request("GET", "/timeout", [("x-grpc-cluster", "silent"), ("x-grpc-timeout", "300")]),
    Request("GET", "/refused", [("x-grpc-cluster", "refused")]),
    Request("GET", "/no-endpoints", [("x-grpc-cluster", "no_endpoints")]),
    Request("GET", "/unknown-cluster", [("x-grpc-cluster", "nosuch")]),
]

PYTHON_TRAFFIC = TRAFFIC + [Request("POST", "/form", [("x-keep", "k")], body=b"name=value"),
                            Request("GET", "/replace-answer", [("x-fail-response", "1")])]


def python_scenarios(python_modules: dict[str, Path]) -> list[Scenario]:
    return [
        # meshext.sdk filter (CPython inside the module): headers, local replies from the request
        # and the response path, body buffering, counters and a gauge, shared data with CAS,
        # a shared queue drained by the root context, logs from on_request_headers and on_log.
        Scenario("python-policy", python_modules["policy"], '{"deny_header": "x-deny", "tag": "conformance"}',
                 "policy", PYTHON_TRAFFIC,
                 metrics=["py_policy_requests_total", "py_policy_denied_total", "py_policy_last_body_bytes"],
                 async_log_prefixes=("info: event:",)),
    ]


@pytest.mark.parametrize("name", ["python-policy"])
def test_python_filter_matches_envoy(name, python_modules):
    scenario = {s.name: s for s in python_scenarios(python_modules)}[name]
    envoy = run_in_envoy(scenario)
    host = run_in_host(scenario)
    problems = compare(scenario, envoy, host)
    assert not problems, "\n".join(problems)
    assert len(envoy.responses) == len(PYTHON_TRAFFIC) and envoy.logs
    assert None not in envoy.metrics.values(), envoy.metrics  # Envoy really had these metrics


def scenarios(as_modules: dict[str, Path], wat_module) -> list[Scenario]:
    return [
        # Hand-written WAT: logs every callback with its arguments (call order, context ids,
        # header counts, body sizes, end-of-stream flags) and adds a header both ways.
        Scenario("wat-callback-trace", wat_module("trace"), "trace-config", "trace_root", TRAFFIC),
        # AssemblyScript SDK (npm), third-party: header mutations, configuration, counter.
        Scenario("as-headers", as_modules["headers"], "config-from-envoy", "as_headers", TRAFFIC,
                 metrics=["as_headers_requests_total"]),
        # Local replies (403 + body + header; the filter's own content-type, with and without a body)
        # that also pass the filter's response path; gauge.
        Scenario("as-deny", as_modules["deny"], "deny-config", "as_deny", DENY_TRAFFIC,
                 upstream=UpstreamReply(201, [("content-type", "application/json"), ("x-upstream", "1")], b"{}"),
                 metrics=["as_deny_denied_total", "as_deny_last_status"]),
        # Body buffering (StopIterationAndBuffer) and rewriting in both directions.
        Scenario("as-body", as_modules["body"], "suffix", "as_body", TRAFFIC),
        # HTTP callout to a real upstream while the request is paused, then continue.
        Scenario("as-callout", as_modules["callout"], "callout-config", "as_callout", TRAFFIC),
        # HTTP callouts whose answer Envoy makes (timeout, connection refused), a reset answer, calls
        # Envoy refuses (no healthy endpoint, unknown cluster), and the headers Envoy adds to a callout.
        Scenario("as-callout-answers", as_modules["callout_answers"], "answers", "as_callout_answers",
                 CALLOUT_ANSWER_TRAFFIC, failing_upstreams=True),
        # Hand-written WAT: unary gRPC calls to a real gRPC server, answered or failed, and the
        # statuses and messages Envoy gives calls that time out, are refused or cannot start.
        Scenario("wat-grpc-call", wat_module("grpc_call"), "grpc", "grpc_root", GRPC_TRAFFIC,
                 grpc_upstream=True, failing_upstreams=True),
        # Envoy attributes via proxy_get_property/proxy_set_property, and when header maps
        # stop being readable (after CONTINUE) and become readable again (proxy_on_log).
        Scenario("as-properties", as_modules["properties"], "p", "as_properties", TRAFFIC),
    ]


SCENARIO_NAMES = ["wat-callback-trace", "as-headers", "as-deny", "as-body", "as-callout", "as-callout-answers",
                  "wat-grpc-call", "as-properties"]


@pytest.fixture(scope="module")
def envoy_observations():
    """Envoy runs are the slow part: each scenario's is kept for the module's tests."""
    return {}


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_host_matches_envoy(name, as_modules, wat_module, envoy_observations):
    scenario = {s.name: s for s in scenarios(as_modules, wat_module)}[name]
    envoy = run_in_envoy(scenario)
    envoy_observations[name] = (scenario, envoy)
    host = run_in_host(scenario)
    problems = compare(scenario, envoy, host)
    assert not problems, "\n".join(problems)
    # The scenario must have exercised something: traffic reached the client in both runs.
    assert len(envoy.responses) == len(scenario.requests) and envoy.logs
    assert None not in envoy.metrics.values(), envoy.metrics  # Envoy really had these metrics


def test_a_difference_is_reported_with_the_scenario_name(as_modules, wat_module, envoy_observations):
    """The comparison is not vacuous: a host run with another configuration is caught."""
    if "as-headers" not in envoy_observations:
        scenario = {s.name: s for s in scenarios(as_modules, wat_module)}["as-headers"]
        envoy_observations["as-headers"] = (scenario, run_in_envoy(scenario))
    scenario, envoy = envoy_observations["as-headers"]
    altered = Scenario(scenario.name, scenario.module, "another-config", scenario.root_id,
                       scenario.requests, metrics=scenario.metrics)
    problems = compare(scenario, envoy, run_in_host(altered))
    assert problems
    assert all("scenario 'as-headers'" in problem for problem in problems)
    assert any("config-from-envoy" in problem and "another-config" in problem for problem in problems)


def test_tcp_filter_matches_envoy(wat_module):
    """Network filter: the trace module between a client and an echo upstream (tcp_proxy in Envoy)."""
    scenario = TcpScenario("wat-tcp-trace", wat_module("trace"), "tcp-config", "trace_root",
                           [b"ping", b"a second, longer message"])
    envoy = run_tcp_in_envoy(scenario)
    problems = compare(scenario, envoy, run_tcp_in_host(scenario))
    assert not problems, "\n".join(problems)
    assert envoy.responses == [{"bytes": b"pong:pingpong:a second, longer message"}]
    assert "info: on_new_connection 2" in envoy.logs


def test_wasi_subset_matches_envoy(wat_module):
    """stdout/stderr to the log at info/error, environment from the VM config, Envoy's errno for stubs."""
    # One variable: Envoy keeps them in a hash map, so the order of several is unspecified.
    scenario = Scenario("wat-wasi", wat_module("wasi"), "wasi", "wasi_root", [Request("GET", "/")],
                        env={"GREETING": "hello from the vm config"})
    envoy = run_in_envoy(scenario)
    problems = compare(scenario, envoy, run_in_host(scenario))
    assert not problems, "\n".join(problems)
    assert {"info: env: GREETING=hello from the vm config", "error: to stderr"} <= envoy.startup_logs
