"""The 3scale backend simulator over HTTP: Apisonator's status codes, XML bodies and 3scale-options."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from meshext.errors import MeshextError
from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig, load_config

FILTER = Path(__file__).resolve().parents[3] / "extensions" / "3scale" / "filter"
CONFIG: dict[str, Any] = {
    "access_tokens": ["read-token"],
    "services": [
        {"id": "1", "token": "st1",
         "metrics": [{"name": "hits", "children": ["orders", "list"]}, {"name": "bytes"}],
         "plans": [{"name": "Basic", "limits": [{"metric": "hits", "period": "minute", "value": 3},
                                                {"metric": "orders", "period": "day", "value": 10},
                                                {"metric": "bytes", "period": "eternity", "value": 1000}]},
                   {"name": "Free"}],
         "applications": [{"user_key": "uk", "plan": "Basic"}, {"user_key": "free", "plan": "Free"},
                          {"user_key": "off", "plan": "Free", "state": "suspended"}],
         "mapping_rules": [{"http_method": "GET", "pattern": "/orders", "metric_system_name": "orders", "delta": 2}]},
        {"id": "2", "token": "st2", "backend_version": "2",
         "plans": [{"name": "P", "limits": [{"metric": "hits", "period": "week", "value": 100}]}],
         "applications": [{"id": "app", "keys": ["k1"], "plan": "P"}, {"id": "keyless", "plan": "P"}]},
    ],
}
NOW = datetime(2026, 12, 2, 10, 30, 15, tzinfo=UTC).timestamp()  # a Wednesday


@pytest.fixture
def backend():
    with BackendServer(Backend(SimulatorConfig.model_validate(CONFIG), clock=lambda: NOW)) as server:
        yield server


def get(server, path, options=None, **params):
    headers = {"3scale-options": options} if options else {}
    return requests.get(server.url + path, params=params, headers=headers, timeout=5)


def authrep(server, options=None, **params):
    return get(server, "/transactions/authrep.xml", options, **{"service_id": "1", "service_token": "st1", **params})


def xml(response):
    assert response.headers["content-type"] == "application/vnd.3scale-v2.0+xml"
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ElementTree.fromstring(response.content)


def test_authorized_is_200_with_the_status_and_usage_reports(backend):
    response = authrep(backend, **{"user_key": "uk", "usage[orders]": "2"})
    assert response.status_code == 200
    status = xml(response)
    assert status.findtext("authorized") == "true" and status.findtext("plan") == "Basic"
    reports = {(r.get("metric"), r.get("period")): r for r in status.iter("usage_report")}
    assert list(reports) == [("bytes", "eternity"), ("hits", "minute"), ("orders", "day")]
    minute = reports[("hits", "minute")]
    assert minute.findtext("period_start") == "2026-12-02 10:30:00 +0000"
    assert minute.findtext("period_end") == "2026-12-02 10:31:00 +0000"
    assert minute.findtext("max_value") == "3"
    assert minute.findtext("current_value") == "2"  # a child's usage counts for its parent, this call included
    assert reports[("bytes", "eternity")].find("period_start") is None
    assert minute.get("exceeded") is None


def test_over_the_limit_is_409_limits_exceeded_and_not_recorded(backend):
    assert authrep(backend, **{"user_key": "uk", "usage[hits]": "3"}).status_code == 200
    response = authrep(backend, "rejection_reason_header=1", **{"user_key": "uk", "usage[hits]": "1"})
    assert response.status_code == 409
    assert response.headers["3scale-rejection-reason"] == "limits_exceeded"
    status = xml(response)
    assert status.findtext("authorized") == "false"
    assert status.findtext("reason") == "usage limits are exceeded"
    assert backend.backend.totals()["1"]["user_key:uk"] == {"hits": 3}
    # authorize checks without recording
    assert get(backend, "/transactions/authorize.xml", service_id="1", service_token="st1",
               user_key="uk").status_code == 200


def test_the_rejection_reason_header_only_when_asked(backend):
    assert "3scale-rejection-reason" not in authrep(backend, user_key="off").headers
    assert authrep(backend, "rejection_reason_header=1", user_key="off").headers[
        "3scale-rejection-reason"] == "application_not_active"


@pytest.mark.parametrize(("params", "status", "code", "message"), [
    ({"service_id": "1", "user_key": "uk"}, 403, "provider_key_or_service_token_required",
     "Provider key or service token are required"),
    ({"service_token": "st1", "user_key": "uk"}, 422, "service_id_missing", "Service ID is missing"),
    ({"service_id": "1", "service_token": "bad", "user_key": "uk"}, 403, "service_token_invalid",
     'service token "bad" or service id "1" is invalid'),
    ({"service_id": "1", "service_token": "st1", "user_key": "nope"}, 403, "user_key_invalid",
     'user key "nope" is invalid'),
    ({"service_id": "1", "service_token": "st1"}, 403, "user_key_invalid", "user key is missing"),
    ({"service_id": "1", "service_token": "st1", "user_key": "uk", "app_id": "a"}, 403, "authentication_error",
     "either app_id or user_key is allowed, not both"),
    ({"service_id": "2", "service_token": "st2", "app_id": "x"}, 404, "application_not_found",
     'application with id="x" was not found'),
    ({"service_id": "2", "service_token": "st2"}, 404, "application_not_found", "application id is missing"),
    ({"service_id": "1", "service_token": "st1", "user_key": "uk", "usage[nope]": "1"}, 404, "metric_invalid",
     'metric "nope" is invalid'),
    ({"service_id": "1", "service_token": "st1", "user_key": "uk", "usage[hits]": "x"}, 403, "usage_value_invalid",
     'usage value "x" for metric "hits" is invalid'),
])
def test_errors_are_xml_with_apisonators_codes(backend, params, status, code, message):
    response = get(backend, "/transactions/authrep.xml", **params)
    assert response.status_code == status
    error = xml(response)
    assert (error.tag, error.get("code"), error.text) == ("error", code, message)
    assert get(backend, "/transactions/authrep.xml", "no_body=1", **params).content == b""


def test_app_keys(backend):
    def call(**params):
        response = get(backend, "/transactions/authrep.xml", "rejection_reason_header=1", service_id="2",
                       service_token="st2", **params)
        return response.status_code, response.headers.get("3scale-rejection-reason"), xml(response).findtext("reason")

    assert call(app_id="app", app_key="k1") == (200, None, None)
    assert call(app_id="app") == (409, "application_key_invalid", "application key is missing")
    assert call(app_id="app", app_key="k2") == (409, "application_key_invalid", 'application key "k2" is invalid')
    assert call(app_id="keyless") == (200, None, None)


def test_no_body_keeps_status_and_headers(backend):
    response = authrep(backend, "no_body=1&rejection_reason_header=1", user_key="off")
    assert (response.status_code, response.content) == (409, b"")
    assert response.headers["3scale-rejection-reason"] == "application_not_active"


def test_limit_headers_name_the_most_constrained_limit(backend):
    response = authrep(backend, "limit_headers=1", **{"user_key": "uk", "usage[hits]": "1"})
    assert response.headers["3scale-limit-max-value"] == "3"
    assert response.headers["3scale-limit-remaining"] == "2"   # identical calls left this minute
    assert response.headers["3scale-limit-reset"] == "45"      # seconds to the end of the minute
    free = authrep(backend, "limit_headers=1", user_key="free")
    assert (free.headers["3scale-limit-remaining"], free.headers["3scale-limit-reset"]) == ("-1", "-1")


def test_hierarchy_extension(backend):
    status = xml(authrep(backend, "hierarchy=1", user_key="uk"))
    assert [(m.get("name"), m.get("children")) for m in status.find("hierarchy")] == [
        ("hits", "orders list"), ("bytes", "")]


def test_flat_usage_does_not_count_children_for_parents(backend):
    authrep(backend, "flat_usage=1", **{"user_key": "uk", "usage[orders]": "1"})
    assert backend.backend.totals()["1"]["user_key:uk"] == {"orders": 1}


def test_report_is_202_and_records_every_transaction(backend):
    form = {"service_id": "1", "service_token": "st1",
            "transactions[0][user_key]": "uk", "transactions[0][usage][hits]": "5",
            "transactions[1][user_key]": "free", "transactions[1][usage][orders]": "2",
            "transactions[2][user_key]": "ghost", "transactions[2][usage][hits]": "1"}
    response = requests.post(backend.url + "/transactions.xml", data=form, timeout=5)
    assert (response.status_code, response.content) == (202, b"")
    assert backend.backend.totals()["1"] == {"user_key:uk": {"hits": 5}, "user_key:free": {"orders": 2, "hits": 2}}
    # limits do not refuse reports: the next authorization sees the excess
    assert authrep(backend, user_key="uk").status_code == 409
    bad = requests.post(backend.url + "/transactions.xml", data={**form, "service_token": "x"}, timeout=5)
    assert bad.status_code == 403 and xml(bad).get("code") == "service_token_invalid"


def test_unknown_routes_are_404_and_health_is_200(backend):
    assert get(backend, "/transactions/oauth_nothing.xml").status_code == 404
    assert get(backend, "/status").status_code == 200
    assert get(backend, "/check.txt").status_code == 200
    assert requests.get(backend.url + "/_simulator/usage", timeout=5).json() == {}


def test_system_proxy_config_lists_mapping_rules_and_the_token(backend):
    response = get(backend, "/admin/api/services/1/proxy/configs/production/latest.json", access_token="read-token")
    content = response.json()["proxy_config"]["content"]
    assert content["backend_authentication_type"] == "service_token"
    assert content["backend_authentication_value"] == "st1"
    assert content["proxy"]["proxy_rules"] == [{"id": 1, "http_method": "GET", "pattern": "/orders",
                                                "metric_system_name": "orders", "delta": 2, "last": False}]
    assert get(backend, "/admin/api/services/1/proxy/configs/production/latest.json",
               access_token="wrong").status_code == 403
    assert get(backend, "/admin/api/services/9/proxy/configs/production/latest.json",
               access_token="read-token").status_code == 404


def test_periods_are_calendar_periods_in_utc():
    from meshext.extensions.threescale.backend import period_bounds

    now = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)  # a Thursday
    assert [f"{start:%F %T}" for start, _ in (period_bounds(p, now) for p in ("week", "month", "year"))] == [
        "2024-02-26 00:00:00", "2024-02-01 00:00:00", "2024-01-01 00:00:00"]
    assert f"{period_bounds('month', now)[1]:%F}" == "2024-03-01"
    assert period_bounds("eternity", now) is None


def test_the_filters_xml_parser_reads_the_simulators_answers(backend, monkeypatch):
    monkeypatch.syspath_prepend(str(FILTER))
    import statusxml  # the filter's own parser (pure Python, no SDK), as it runs in the VM

    response = authrep(backend, "hierarchy=1", **{"user_key": "uk", "usage[hits]": "3"})
    status = statusxml.parse_status(response.content)
    assert status.authorized and status.plan == "Basic"
    assert [(r.metric, r.period, r.max_value, r.current_value) for r in status.usage_reports] == [
        ("bytes", "eternity", 1000, 0), ("hits", "minute", 3, 3), ("orders", "day", 10, 0)]
    denied = statusxml.parse_status(authrep(backend, **{"user_key": "uk", "usage[hits]": "1"}).content)
    assert not denied.authorized and denied.reason == "usage limits are exceeded"
    for garbage in (b"<status><authorized>true</authorized>", b"<!-- x --><status/>", b"<status>&bogus;</status>",
                    b"<status><authorized>maybe</authorized></status>", b"<error code='x'>no</error>"):
        with pytest.raises(ValueError):
            statusxml.parse_status(garbage)


def test_a_bad_file_is_named_with_the_field(tmp_path):
    path = tmp_path / "backend.yaml"
    path.write_text(yaml.safe_dump({"services": [{"id": "1", "token": "t", "plans": [], "applications": [
        {"user_key": "k", "plan": "Missing"}]}]}))
    with pytest.raises(MeshextError, match="unknown plan 'Missing'"):
        load_config(path)
    path.write_text("services: [{id: 1}]")
    with pytest.raises(MeshextError, match=r"services\[0\]\.id: Input should be a valid string"):
        load_config(path)


def test_the_serve_command_serves_until_terminated(tmp_path):
    path = tmp_path / "backend.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    process = subprocess.Popen([sys.executable, "-m", "meshext", "3scale-backend", "serve", "--config", str(path),
                                "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert line.startswith("3scale backend simulator listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        response = requests.get(url + "/transactions/authrep.xml", params={
            "service_id": "1", "service_token": "st1", "user_key": "uk"}, timeout=5)
        assert response.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_the_how_to_of_serve_help_and_the_readme_works_as_printed(tmp_path):
    """`serve --help` and extensions/3scale/README.md show one example; run as printed (its port moved), the
    authrep is authorized and the usage recorded."""
    shown = subprocess.run([sys.executable, "-m", "meshext", "3scale-backend", "serve", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    serve = next(line for line in lines if line.startswith("meshext 3scale-backend serve --config "))
    curls = [line for line in lines if line.startswith("curl ")]
    readme = (FILTER.parent / "README.md").read_text()
    assert serve in readme and all(curl in readme for curl in curls)
    repository = FILTER.parents[2]
    process = subprocess.Popen([sys.executable, "-m", "meshext", *serve.split()[1:], "--port", "0"],
                               cwd=repository, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stderr.readline().split()[-1]
        authorize, usage = (curl.split()[-1].strip("'").replace("http://127.0.0.1:3001", url) for curl in curls)
        response = requests.get(authorize, timeout=5)
        assert response.status_code == 200
        assert xml(response).findtext("authorized") == "true"
        assert requests.get(usage, timeout=5).json() == {"2555417834780": {"user_key:demo-user-key": {"hits": 1}}}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
