"""json-transform in the meshext test host (`meshext test examples/json-transform`)."""

import json

import pytest

from meshext.errors import MeshextError
from meshext.testing import Action

CONFIG = {
    "request": {"drop": ["debug", "user.password"], "rename": {"user.mail": "email", "items.qty": "quantity"}},
    "response": {"drop": ["internal_id", "items.cost"], "rename": {"createdAt": "created_at"}},
    "max_body_bytes": 300,
}
ORDER = {"user": {"name": "Ada", "mail": "ada@example.com", "password": "hunter2"}, "debug": True,
         "items": [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": 1}, "not an object"]}
ORDER_UPSTREAM = {"user": {"name": "Ada", "email": "ada@example.com"},
                  "items": [{"sku": "A1", "quantity": 2}, {"sku": "B2", "quantity": 1}, "not an object"]}
ANSWER = {"id": 7, "internal_id": "db-19", "createdAt": "2026-12-01", "items": [{"sku": "A1", "cost": 3}]}
ANSWER_DOWNSTREAM = {"id": 7, "items": [{"sku": "A1"}], "created_at": "2026-12-01"}


def json_headers(body):
    return {"content-type": "application/json; charset=utf-8", "content-length": str(len(body))}


def headers_named(pairs, name):
    return [value for key, value in pairs if key == name]


def post(plugin, body, **options):
    return plugin.exchange("POST", "/orders", headers=json_headers(body), body=body, **options)


def test_a_json_request_reaches_the_upstream_changed_and_without_a_stale_content_length(filter_module):
    body = json.dumps(ORDER).encode()
    with filter_module(config=CONFIG) as plugin:
        stream = post(plugin, body)
        assert stream.local_response is None and stream.request.complete
        assert stream.request.forwarded_body == json.dumps(ORDER_UPSTREAM, separators=(",", ":")).encode()
        assert headers_named(stream.request.forwarded_headers, "content-length") == []
        assert stream.request.header("content-type") == "application/json; charset=utf-8"


def test_a_body_in_chunks_is_held_until_its_end(filter_module):
    body = json.dumps(ORDER).encode()
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.http_stream()
        stream.send_request_headers({":method": "POST", ":path": "/orders", ":authority": "shop", **json_headers(body)})
        assert stream.send_request_body(body[:20]) == Action.PAUSE
        assert stream.request.forwarded_body == b""
        assert stream.send_request_body(body[20:], end_stream=True) == Action.CONTINUE
        assert json.loads(stream.request.forwarded_body) == ORDER_UPSTREAM


def test_a_json_response_reaches_the_client_changed(filter_module):
    answer = json.dumps(ANSWER).encode()
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders/7", response_headers=json_headers(answer), response_body=answer)
        assert stream.response.forwarded_body == json.dumps(ANSWER_DOWNSTREAM, separators=(",", ":")).encode()
        assert headers_named(stream.response.forwarded_headers, "content-length") == []


def test_a_document_that_is_a_list_has_each_of_its_objects_changed(filter_module):
    answer = json.dumps([ANSWER, ANSWER, 3]).encode()
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders", response_headers={"content-type": "application/vnd.api+json"},
                                 response_body=answer)
        assert json.loads(stream.response.forwarded_body) == [ANSWER_DOWNSTREAM, ANSWER_DOWNSTREAM, 3]


@pytest.mark.parametrize("headers", [
    {"content-type": "text/plain"},
    {"content-type": "application/json", "content-encoding": "gzip"},
    {},
], ids=["text", "gzip-json", "no-content-type"])
def test_other_bodies_pass_untouched_with_their_content_length(filter_module, headers):
    body = json.dumps(ORDER).encode()
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("POST", "/orders", headers={**headers, "content-length": str(len(body))}, body=body,
                                 response_headers={**headers, "content-length": "14"}, response_body=b'{"debug": true}')
        assert stream.request.forwarded_body == body
        assert headers_named(stream.request.forwarded_headers, "content-length") == [str(len(body))]
        assert stream.response.forwarded_body == b'{"debug": true}'
        assert headers_named(stream.response.forwarded_headers, "content-length") == ["14"]


def rejection(stream, status):
    assert stream.local_response is not None and stream.local_response.status == status
    assert stream.response.header("content-type") == "application/json"
    assert stream.request.forwarded_body == b""  # the upstream got no body
    return json.loads(stream.response.forwarded_body)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"user": 1 "debug": 2}', "request body is not valid JSON: Expecting ',' delimiter: line 1 column 12 (char 11)"),
    (b'{"user": "\xff"}', "request body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 10: "
                         "invalid start byte"),
], ids=["syntax", "not-utf8"])
def test_a_request_body_that_is_not_json_gets_400_saying_why(filter_module, proxy_host, body, message):
    # The response rules would rename "error": the filter's own reply must not be transformed.
    with filter_module(config={**CONFIG, "response": {"rename": {"error": "message"}}}) as plugin:
        stream = post(plugin, body)
        assert rejection(stream, 400) == {"error": message}
        assert proxy_host.metric("json_transform_rejected_requests_total") == 1


def test_a_request_body_nested_deeper_than_python_parses_gets_400(filter_module):
    body = b"[" * 1000 + b"]" * 1000  # the VM's recursion limit is 600
    with filter_module(config={**CONFIG, "max_body_bytes": 4096}) as plugin:
        assert rejection(post(plugin, body), 400) == {"error": "request body is not valid JSON: nested too deeply"}


def test_a_request_body_over_the_limit_gets_413(filter_module):
    body = json.dumps({"note": "x" * 300}).encode()
    with filter_module(config=CONFIG) as plugin:
        assert rejection(post(plugin, body), 413) == {"error": "request body is larger than 300 bytes"}


@pytest.mark.parametrize(("answer", "problem"), [
    (b'{"id": 7,', "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 10 (char 9)"),
    (json.dumps({"note": "x" * 300}).encode(), "larger than 300 bytes"),
], ids=["invalid", "too-large"])
def test_a_response_body_that_cannot_be_transformed_passes_unchanged_with_a_warning(
        filter_module, proxy_host, answer, problem):
    with filter_module(config=CONFIG) as plugin:
        stream = plugin.exchange("GET", "/orders/7", response_headers=json_headers(answer), response_body=answer)
        assert stream.response.forwarded_body == answer
        assert f"json-transform: response body of /orders/7 is {problem}; passed on unchanged" in (
            plugin.log_messages())
        assert proxy_host.metric("json_transform_untransformed_responses_total") == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"request": {"rename": {"user.mail": "user.email"}}},
     "config.request.rename['user.mail']: the new name 'user.email' is not a field name"),
    ({"response": {"drop": ["items..cost"]}},
     "config.response.drop[0]: 'items..cost' is not a dotted path"),
    ({"max_body_bytes": 0}, "config.max_body_bytes: 0 is not positive"),
    ({"request": {"drop": "debug"}}, "config.request.drop: expected a list, got a string"),
    ({"request": {"remove": ["debug"]}}, "config.request: unknown field 'remove'; fix: use one of drop, rename"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)
