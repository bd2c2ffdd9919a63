"""HeaderMap and Body as filter authors use them, on both directions,
through the C methods the module runs (sdk/shim/hostcalls.c), and Action
lookups after the build's speed-up.  Runs the module in meshext's
Proxy-Wasm host."""

from __future__ import annotations

import json

import pytest

from meshext.sdk.builder import build_filter
from meshext.testing import Host

PROBES = '''
import json
from meshext.sdk import Action, HeaderMap, HttpContext, RootContext
from meshext.sdk.abi import MapType


class Shouting(HeaderMap):
    """A user subclass adding a method."""

    def shout(self, name):
        return (self.get(name) or "").upper()


def outcome(call):
    try:
        return ["ok", call()]
    except Exception as error:
        return [type(error).__name__, str(error)]


def probe(headers, map_type):
    results = {
        "get": headers.get("X-Probe"),
        "get_absent": headers.get("x-absent"),
        "get_default": headers.get("x-absent", "fallback"),
        "get_default_keyword": headers.get("x-absent", default="keyword"),
        "get_name_keyword": headers.get(name="x-probe"),
        "get_bytes_name": headers.get(b"x-probe"),
        "get_bad_name": outcome(lambda: headers.get(3)),
        "get_no_name": outcome(lambda: headers.get()),
        "get_unknown_keyword": outcome(lambda: headers.get("x-probe", fallback="x")),
        "get_many": headers.get_many(("x-probe", "X-Probe", "x-absent", b"x-probe")),
        "get_many_none": headers.get_many(()),
        "get_many_list": outcome(lambda: headers.get_many(["x-probe"])),
        "get_many_bad_name": outcome(lambda: headers.get_many(("x-probe", 3))),
        "getitem": outcome(lambda: headers["x-probe"]),
        "getitem_absent": outcome(lambda: headers["x-absent"]),
        "in": "x-probe" in headers,
        "in_upper": "X-PROBE" in headers,
        "in_absent": "x-absent" in headers,
        "in_bytes": b"x-probe" in headers,
        "in_number": 3 in headers,
        "remove_absent": outcome(lambda: headers.remove("x-absent")),
        "map_type": headers.map_type == map_type,
        "is_header_map": isinstance(headers, HeaderMap),
        "subclass": Shouting(map_type).shout("x-probe"),
        "continue": [Action.CONTINUE is Action(0), Action["PAUSE"] is Action.PAUSE, int(Action.PAUSE)],
        "action_missing": outcome(lambda: Action.MISSING)[0],
    }
    headers.add("x-added", "one")
    headers.add(name="x-added", value="two")
    results["get_all"] = headers.get_all("x-added")
    results["get_many_repeated"] = headers.get_many(("x-added", "x-added"))
    headers.set("x-set", "first")
    headers.set("x-set", "second")
    headers["x-item"] = "by-item"
    del headers["x-delete-me"]
    headers.remove("x-remove-me")
    results["after_writes"] = [headers.get("x-set"), headers["x-item"], "x-delete-me" in headers,
                               "x-remove-me" in headers]
    headers.add("x-probes", json.dumps(results))


class Probe(HttpContext):
    def on_request_headers(self, end_of_stream):
        probe(self.request.headers, MapType.HTTP_REQUEST_HEADERS)
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream):
        probe(self.response.headers, MapType.HTTP_RESPONSE_HEADERS)
        return Action.CONTINUE

    def on_request_body(self, body_size, end_of_stream):
        body = self.request.body
        results = {
            "size": [body.size(), body_size],
            "read": body.read().decode(),
            "read_from": body.read(2).decode(),
            "read_slice": body.read(1, 3).decode(),
            "read_keywords": body.read(start=2, size=1).decode(),
            "read_size_only": body.read(size=2).decode(),
            "read_past_end": body.read(50).decode(),
            "text": body.text(),
            "bad_data": outcome(lambda: body.append(3)),
            "no_data": outcome(lambda: body.append()),
        }
        body.replace(b"new")
        body.append("+tail")
        body.prepend(data=b"head+")
        results["after"] = body.text()
        body.replace(json.dumps(results))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Probe
'''

EXPECTED = {
    "get": "here",
    "get_absent": None,
    "get_default": "fallback",
    "get_default_keyword": "keyword",
    "get_name_keyword": "here",
    "get_bytes_name": "here",
    "get_bad_name": ["TypeError", "expected str or bytes, got int"],
    "get_no_name": ["TypeError", "get() missing required argument 'name'"],
    "get_unknown_keyword": ["TypeError", "get() got an unexpected keyword argument 'fallback'"],
    "get_many": ["here", "here", None, "here"],
    "get_many_none": [],
    "get_many_list": ["TypeError", "get_many() takes a tuple of header names, got list"],
    "get_many_bad_name": ["TypeError", "expected str or bytes, got int"],
    "getitem": ["ok", "here"],
    "getitem_absent": ["KeyError", "'x-absent'"],
    "in": True,
    "in_upper": True,
    "in_absent": False,
    "in_bytes": False,
    "in_number": False,
    "remove_absent": ["ok", None],
    "map_type": True,
    "is_header_map": True,
    "subclass": "HERE",
    "continue": [True, True, 1],
    "action_missing": "AttributeError",
    "get_all": ["one", "two"],
    "get_many_repeated": ["one", "one"],
    "after_writes": ["second", "by-item", False, False],
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("probe") / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "probe"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(PROBES)
    return Host().load(build_filter(folder, folder.parent / "probe.wasm").output)


def test_header_map_reads_and_writes_request_headers(plugin) -> None:
    stream = plugin.exchange("GET", "/", headers={"x-probe": "here", "x-delete-me": "1", "x-remove-me": "1"})
    assert json.loads(stream.request.header("x-probes") or "null") == EXPECTED
    assert stream.request.header("x-set") == "second"
    assert stream.request.header("x-item") == "by-item"
    assert stream.request.header("x-delete-me") is None and stream.request.header("x-remove-me") is None


def test_header_map_reads_and_writes_response_headers(plugin) -> None:
    stream = plugin.exchange("GET", "/", headers={"x-probe": "request side"},
                             response_headers={"x-probe": "here", "x-delete-me": "1", "x-remove-me": "1"})
    assert json.loads(stream.response.header("x-probes") or "null") == EXPECTED
    assert stream.response.header("x-set") == "second"
    assert stream.response.header("x-delete-me") is None and stream.response.header("x-remove-me") is None


def test_header_map_and_body_outside_a_vm_import_and_explain() -> None:
    from meshext.sdk import Body, HeaderMap
    from meshext.sdk.abi import BufferType, MapType

    headers = HeaderMap(MapType.HTTP_REQUEST_HEADERS)
    body = Body(BufferType.HTTP_REQUEST_BODY)
    assert headers.map_type == int(MapType.HTTP_REQUEST_HEADERS)
    assert body.buffer_type == int(BufferType.HTTP_REQUEST_BODY)
    with pytest.raises(RuntimeError, match="only inside a Proxy-Wasm VM"):
        headers.get(":path")
    with pytest.raises(RuntimeError, match="only inside a Proxy-Wasm VM"):
        headers[":path"]
    with pytest.raises(RuntimeError, match=r"Body\.read exists only inside a Proxy-Wasm VM"):
        body.read()


def test_body_reads_and_writes_the_request_body(plugin) -> None:
    stream = plugin.exchange("POST", "/", body=b"abcdef")
    assert json.loads(bytes(stream.request.forwarded_body)) == {
        "size": [6, 6],
        "read": "abcdef",
        "read_from": "cdef",
        "read_slice": "bcd",
        "read_keywords": "c",
        "read_size_only": "ab",
        "read_past_end": "",
        "text": "abcdef",
        "bad_data": ["TypeError", "expected str or bytes, got int"],
        "no_data": ["TypeError", "append() missing required argument 'data'"],
        "after": "head+new+tail",
    }


# Every SDK call that takes headers, given them as a dict, a tuple of pairs,
# a generator or a HeaderMap.
HEADER_ARGUMENTS = '''
from meshext.sdk import Action, GrpcStreamHandler, HttpContext, RootContext


class Calls(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/local-dict":
            return self.send_local_response(403, "no", {"x-reason": "dict"})
        if path == "/local-pairs":
            return self.send_local_response(403, "no", (("x-reason", "pairs"),))
        if path == "/local-generator":
            return self.send_local_response(403, "no", ((name, "generator") for name in ["x-reason"]))
        if path == "/calls":
            self.http_call("auth", {":method": "GET", ":path": "/check", ":authority": "auth"},
                           trailers={"x-trailer": "dict"}, callback=self.ignore)
            self.http_call("auth", self.request.headers, callback=self.ignore)
            self.grpc_call("grpc", "mesh.Auth", "Check", b"", metadata={"x-meta": "unary"}, callback=self.ignore)
            self.grpc_stream("grpc", "mesh.Auth", "Watch", GrpcStreamHandler(), metadata={"x-meta": "stream"})
        if path == "/authority":
            self.grpc_call("outbound|9080||auth.default.svc.cluster.local", "mesh.Auth", "Check", b"",
                           authority="auth.default.svc.cluster.local", callback=self.ignore)
            self.grpc_stream("outbound|9080||auth.default.svc.cluster.local", "mesh.Auth", "Watch",
                             GrpcStreamHandler(), authority="auth.default.svc.cluster.local")
        if path == "/replace":
            self.request.headers.replace_all({":method": "GET", ":path": "/replaced", ":authority": "a", "x-only": "1"})
        return Action.CONTINUE

    def ignore(self, response):
        pass


class Root(RootContext):
    http_context = Calls
'''


@pytest.fixture(scope="module")
def header_arguments(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("headers") / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "headers"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(HEADER_ARGUMENTS)
    host = Host()
    host.add_cluster("auth", lambda call: None)
    host.add_cluster("grpc", grpc=lambda call: None)
    host.add_cluster("outbound|9080||auth.default.svc.cluster.local", grpc=lambda call: None)
    return host.load(build_filter(folder, folder.parent / "headers.wasm").output)


@pytest.mark.parametrize("kind", ["dict", "pairs", "generator"])
def test_local_responses_take_headers_as_a_dict_or_pairs(header_arguments, kind: str) -> None:
    stream = header_arguments.exchange("GET", f"/local-{kind}")
    assert stream.local_response is not None and stream.local_response.status == 403
    assert ("x-reason", kind) in stream.local_response.headers


def test_callouts_take_headers_and_metadata_as_a_dict_or_a_header_map(header_arguments) -> None:
    header_arguments.exchange("GET", "/calls", headers={"x-user": "alice"})
    by_dict, by_header_map = header_arguments.http_calls[-2:]
    assert (by_dict.header(":path"), by_dict.trailers) == ("/check", [("x-trailer", "dict")])
    assert by_header_map.header(":path") == "/calls" and by_header_map.header("x-user") == "alice"
    unary, stream = header_arguments.grpc_calls[-2:]
    assert ("x-meta", "unary") in unary.initial_metadata and ("x-meta", "stream") in stream.initial_metadata


def test_grpc_callouts_send_the_cluster_name_or_the_authority_given(header_arguments) -> None:
    header_arguments.exchange("GET", "/calls")
    assert [call.authority for call in header_arguments.grpc_calls[-2:]] == ["grpc", "grpc"]
    header_arguments.exchange("GET", "/authority")
    unary, stream = header_arguments.grpc_calls[-2:]
    # A mesh cluster's name is no valid :authority: the SDK sends a GrpcService naming both.
    assert unary.cluster == stream.cluster == "outbound|9080||auth.default.svc.cluster.local"
    assert unary.authority == stream.authority == "auth.default.svc.cluster.local"


def test_replace_all_takes_a_dict(header_arguments) -> None:
    stream = header_arguments.exchange("GET", "/replace", headers={"x-dropped": "1"})
    assert stream.request.header(":path") == "/replaced" and stream.request.header("x-only") == "1"
    assert stream.request.header("x-dropped") is None
