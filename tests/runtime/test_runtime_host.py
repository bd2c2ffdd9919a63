"""meshext.runtime host behaviour that Envoy cannot be driven into deterministically:
controllable clock, several VMs sharing data and queues, callouts answered by
test handlers or real upstreams (HTTP and gRPC), crashes and refused imports.
"""

from __future__ import annotations

import http.server
import socket
import threading
from concurrent import futures

import grpc
import pytest

from meshext.errors import MeshextError
from meshext.testing import Action, GrpcReply, Host, HttpResponse, LogLevel, WasmTrap


def test_module_importing_what_envoy_lacks_is_refused_naming_each_import(wat_module):
    with pytest.raises(MeshextError) as refused:
        Host().load(wat_module("forbidden_import"))
    text = str(refused.value)
    assert "wasi_snapshot_preview1.path_symlink" in text and "import type mismatch" in text
    assert "env.proxy_open_socket" in text
    assert "fd_write" not in text  # Envoy does provide that one


def test_trap_shows_wasm_backtrace_and_last_error_logs(wat_module):
    plugin = Host().load(wat_module("crash"))
    with pytest.raises(WasmTrap) as trapped:
        plugin.exchange("GET", "/")
    trap = trapped.value
    assert trap.callback == "proxy_on_request_headers"
    assert "integer divide by zero" in str(trap)
    assert [frame.split("!")[1].split(" ")[0] for frame in trap.frames[:2]] == ["divide", "compute_quota"]
    assert trap.module_logs == ["[error] about to divide by zero"]
    with pytest.raises(MeshextError, match="crashed earlier"):
        plugin.exchange("GET", "/")


def test_ticks_follow_the_controllable_clock_and_vms_share_data_and_queues(wat_module):
    host = Host()
    first = host.load(wat_module("stateful"), name="first", vm_id="shared_vm")
    second = host.load(wat_module("stateful"), name="second", vm_id="shared_vm")
    host.advance(99)
    assert host.metric("ticks_total") == 0  # no tick before one period
    host.advance(1)
    # Both VMs ticked once; the second saw the first one's value through shared data (CAS ok).
    assert first.log_messages() == ["configured queue 1", "tick 1 set status 0"]
    # The queue was registered by both VMs; the last registrant is notified of every item,
    # right after the enqueuing callback returned (before the next VM's tick).
    assert second.log_messages() == ["configured queue 1", "dequeued 1", "queue status 7",
                                     "tick 2 set status 0", "dequeued 2", "queue status 7"]
    assert host.metric("ticks_total") == 2
    host.advance(300)
    assert host.metric("ticks_total") == 8
    assert host.shared_data[("shared_vm", "ticks")][0] == (8).to_bytes(4, "little")


def test_shared_data_is_separate_per_vm_id(wat_module):
    host = Host()
    host.load(wat_module("stateful"), vm_id="one")
    host.load(wat_module("stateful"), vm_id="two")
    host.advance(100)
    assert host.shared_data[("one", "ticks")][0] == host.shared_data[("two", "ticks")][0] == b"\x01\0\0\0"


def test_stale_cas_write_fails_and_grpc_answer_from_handler_continues_request(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: GrpcReply(0, [b"pong:" + call.messages[0]]))
    plugin = host.load(wat_module("stateful"))
    host.advance(100)
    stream = plugin.exchange("GET", "/")
    assert plugin.log_messages()[-2:] == ["stale cas status 8", "grpc call status 0"]  # success: no close
    call = plugin.grpc_calls[0]
    assert (call.cluster, call.service, call.method, call.messages) == ("grpc_upstream", "echo.Echo", "Say", [b"ping"])
    assert stream.request.header("x-grpc-reply") == "pong:ping"
    assert stream.response.complete and stream.ended


def test_pending_grpc_call_keeps_request_paused_until_the_test_answers(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: None)  # answer later
    plugin = host.load(wat_module("stateful"))
    stream = plugin.http_stream()
    assert stream.send_request_headers({":path": "/", ":method": "GET", ":authority": "a"}, end_stream=True) \
        == Action.PAUSE
    assert stream.request.paused and stream.request.forwarded_headers is None
    plugin.grpc_calls[0].reply(b"late")
    assert not stream.request.paused and stream.request.header("x-grpc-reply") == "late"


def test_failed_grpc_call_arrives_as_close_with_its_status(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: GrpcReply(status=14, status_message="unavailable"))
    plugin = host.load(wat_module("stateful"))
    stream = plugin.exchange("GET", "/")
    assert plugin.log_messages()[-1] == "grpc close 14"
    assert stream.request.header("x-grpc-reply") is None and stream.request.complete


def test_grpc_call_to_a_real_grpc_server(wat_module):
    def say(request: bytes, context) -> bytes:
        return b"real:" + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        host = Host()
        host.add_cluster("grpc_upstream", address=("127.0.0.1", port))
        plugin = host.load(wat_module("stateful"))
        stream = plugin.exchange("GET", "/")
        assert stream.request.header("x-grpc-reply") == "real:ping"
        assert plugin.log_messages()[-1] == "grpc call status 0"
    finally:
        server.stop(None)


def test_grpc_call_to_an_undeclared_cluster_fails_like_envoy(wat_module):
    plugin = Host().load(wat_module("stateful"))
    plugin.http_stream().send_request_headers({":path": "/"}, end_stream=True)
    assert "grpc call status 4" in plugin.log_messages()  # PARSE_FAILURE


def test_http_callout_answered_by_test_handler(as_modules):
    host = Host()
    seen = []

    def auth(call):
        seen.append((call.cluster, call.header(":path"), call.header("x-plugin-config")))
        return HttpResponse(202, {"content-type": "text/plain"}, b"ok")

    host.add_cluster("upstream", auth)
    plugin = host.load(as_modules["callout"], config="cfg", root_id="as_callout")
    stream = plugin.exchange("GET", "/resource")
    assert seen == [("upstream", "/auth?for=/resource", "cfg")]
    assert stream.request.header("x-auth-status") == "202"
    assert "auth said 202 body_size=2 upstream-time=present" in plugin.log_messages(LogLevel.INFO)


def test_a_reset_callout_reaches_the_filter_without_headers_and_it_replies_locally(as_modules):
    host = Host()
    host.add_cluster("upstream", lambda call: None)  # the test answers
    plugin = host.load(as_modules["callout"], config="cfg", root_id="as_callout")
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/x", ":method": "GET", ":authority": "a"}, end_stream=True)
    assert stream.request.paused
    plugin.http_calls[0].fail()
    assert plugin.http_calls[0].failed and plugin.http_calls[0].response is None
    assert stream.local_response.status == 503
    assert stream.local_response.body == b"auth unavailable\n"
    assert stream.response.header(":status") == "503" and stream.ended


ENVOY_TIMEOUT_ANSWER = ["answer headers=3 body_size=24 trailers=0", "answer header :status: 504",
                        "answer header content-length: 24", "answer header content-type: text/plain",
                        "answer body: upstream request timeout"]


def answer_lines(plugin):
    return [line for line in plugin.log_messages(LogLevel.INFO) if line.startswith("answer")]


def test_an_http_callout_past_its_timeout_gets_envoys_504_on_the_clock(as_modules):
    host = Host()
    host.add_cluster("auth", lambda call: None)  # never answers
    plugin = host.load(as_modules["callout_answers"], config="c", root_id="as_callout_answers")
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/x", ":method": "GET", ":authority": "a", "x-callout-cluster": "auth",
                                 "x-callout-timeout": "250"}, end_stream=True)
    host.advance(249)
    assert stream.request.paused and answer_lines(plugin) == []
    host.advance(1)
    assert answer_lines(plugin) == ENVOY_TIMEOUT_ANSWER  # no x-envoy-upstream-service-time: Envoy answered
    assert stream.request.header("x-answer-status") == "504" and stream.request.complete
    call = plugin.http_calls[0]
    assert call.response.status == 504 and not call.failed
    with pytest.raises(MeshextError, match="already answered"):
        call.respond(200)


def test_an_http_callout_carries_the_headers_envoy_adds(as_modules):
    host = Host()
    host.add_cluster("auth", lambda call: HttpResponse(200))
    plugin = host.load(as_modules["callout_answers"], config="c", root_id="as_callout_answers")
    plugin.exchange("GET", "/a", headers={"x-callout-cluster": "auth", "x-callout-body": "hi"})
    plugin.exchange("GET", "/b", headers={"x-callout-cluster": "auth", "x-callout-timeout": "0"})
    with_body, without_timeout = plugin.http_calls
    assert with_body.headers == [(":method", "POST"), (":path", "/answer"), (":authority", "answers.local"),
                                 ("x-asked-for", "/a"), ("content-length", "2"), ("x-envoy-internal", "true"),
                                 ("x-envoy-expected-rq-timeout-ms", "5000")]
    assert without_timeout.header("x-envoy-internal") == "true"
    assert without_timeout.header("x-envoy-expected-rq-timeout-ms") is None
    assert without_timeout.header("content-length") is None


def test_an_http_callout_to_an_address_refusing_connections_gets_envoys_503(as_modules):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        address = closed.getsockname()[:2]
    host = Host()
    host.add_cluster("auth", address=address)
    plugin = host.load(as_modules["callout_answers"], config="c", root_id="as_callout_answers")
    stream = plugin.exchange("GET", "/", headers={"x-callout-cluster": "auth"})
    assert answer_lines(plugin)[1:] == [
        "answer header :status: 503", "answer header content-length: 98", "answer header content-type: text/plain",
        "answer body: upstream connect error or disconnect/reset before headers. reset reason: remote connection "
        "failure"]
    assert stream.request.header("x-answer-status") == "503"


def test_envoy_refuses_an_http_callout_to_a_cluster_without_healthy_endpoints(as_modules):
    host = Host()
    host.add_cluster("down", healthy=False)
    host.add_cluster("up", lambda call: HttpResponse(200))
    plugin = host.load(as_modules["callout_answers"], config="c", root_id="as_callout_answers")
    stream = plugin.exchange("GET", "/", headers={"x-callout-cluster": "down"})
    assert "callout to down result 10" in plugin.log_messages()  # INTERNAL_FAILURE, and no callback
    assert stream.request.complete and plugin.http_calls == []
    plugin.exchange("GET", "/", headers={"x-callout-cluster": "up"})
    assert plugin.http_calls[0].token == 8  # the refused call used token 4 up


def grpc_close_lines(plugin):
    return [line for line in plugin.log_messages() if line.startswith("grpc")]


def test_a_unary_grpc_call_past_its_timeout_is_closed_by_envoy_on_the_clock(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: None)  # never answers
    plugin = host.load(wat_module("grpc_call"))
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/x", ":method": "GET", ":authority": "a", "x-grpc-timeout": "300"},
                                end_stream=True)
    host.advance(299)
    assert stream.request.paused and grpc_close_lines(plugin) == []
    host.advance(1)
    assert grpc_close_lines(plugin) == ["grpc closed: 14 upstream request timeout{response_timeout}"]
    assert stream.request.complete
    with pytest.raises(MeshextError, match="already ended"):
        plugin.grpc_calls[0].reply(b"late")


def test_a_failed_grpc_call_gets_envoys_response_code_details_in_its_message(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: GrpcReply(7, status_message="not you"))
    plugin = host.load(wat_module("grpc_call"))
    plugin.exchange("GET", "/")
    assert grpc_close_lines(plugin) == ["grpc closed: 7 not you{via_upstream}"]


def test_envoy_refuses_a_grpc_call_to_a_cluster_without_healthy_endpoints_then_closes_it(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", healthy=False)
    plugin = host.load(wat_module("grpc_call"))
    stream = plugin.exchange("GET", "/")
    assert grpc_close_lines(plugin) == ["grpc call refused: 10",  # INTERNAL_FAILURE
                                        "grpc closed: 14 no healthy upstream{no_healthy_upstream}"]
    assert stream.request.complete and plugin.grpc_calls == []


def test_http_callout_to_a_real_upstream(as_modules):
    class Auth(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(418)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = Host()
        host.add_cluster("upstream", address=server.server_address)
        plugin = host.load(as_modules["callout"], config="cfg", root_id="as_callout")
        assert plugin.exchange("GET", "/").request.header("x-auth-status") == "418"
    finally:
        server.shutdown()
        server.server_close()


def test_body_buffered_while_paused_then_rewritten(as_modules):
    plugin = Host().load(as_modules["body"], config="!", root_id="as_body")
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/", ":method": "POST", "content-length": "10"})
    assert stream.send_request_body(b"part1") == Action.PAUSE
    assert stream.send_request_body(b"part2", end_stream=True) == Action.CONTINUE
    assert bytes(stream.request.forwarded_body) == b"part1part2+!"
    assert stream.request.header("content-length") is None
    assert plugin.log_messages(LogLevel.INFO)[-3:] == [
        "request body 5 end=0", "request body 10 end=1", "request body was 'part1part2' set status 0"]


def test_local_reply_runs_through_the_filter_response_path(as_modules):
    host = Host()
    plugin = host.load(as_modules["deny"], config="x", root_id="as_deny")
    stream = plugin.exchange("GET", "/secret", headers={"x-deny": "1"})
    assert stream.local_response.status == 403 and stream.local_response.details == "denied_by_policy"
    assert stream.request.forwarded_headers is None  # never reached the upstream
    assert stream.response.forwarded_headers == [
        (":status", "403"), ("x-denied-by", "as-deny"), ("content-length", "14"), ("content-type", "text/plain")]
    assert host.metric("as_deny_denied_total") == 1 and host.metric("as_deny_last_status") == 403
    assert "denying /secret" in plugin.log_messages(LogLevel.WARN)


def test_a_local_reply_keeps_the_filters_content_type_and_drops_it_without_a_body(as_modules):
    plugin = Host().load(as_modules["deny"], config="x", root_id="as_deny")
    json_reply = plugin.exchange("GET", "/", headers={"x-deny": "1", "x-deny-type": "application/json"})
    assert json_reply.response.forwarded_headers == [
        (":status", "403"), ("x-denied-by", "as-deny"), ("content-type", "application/json"), ("content-length", "14")]
    empty_reply = plugin.exchange("GET", "/", headers={"x-deny": "1", "x-deny-type": "application/json",
                                                       "x-deny-empty": "1"})
    assert empty_reply.response.forwarded_headers == [(":status", "403"), ("x-denied-by", "as-deny")]


HISTOGRAM_MODULE = """(module
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "latency_ms")
  (data (i32.const 32) "requests")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 2) (i32.const 16) (i32.const 10) (i32.const 0)))
    (drop (call $define (i32.const 0) (i32.const 32) (i32.const 8) (i32.const 4)))
    (drop (call $record (i32.load (i32.const 0)) (i64.const 25)))
    (drop (call $record (i32.load (i32.const 0)) (i64.const 3)))
    (i32.const 1)))"""


def test_histogram_gives_the_recorded_values_in_order():
    import wasmtime

    host = Host()
    host.load(wasmtime.wat2wasm(HISTOGRAM_MODULE))
    assert host.histogram("latency_ms") == [25, 3]
    assert host.histogram("never_defined") is None
    with pytest.raises(MeshextError, match="'requests' is a counter, not a histogram") as wrong:
        host.histogram("requests")
    assert "host.metric('requests')" in str(wrong.value)


def test_plugin_refusing_its_configuration_is_reported(as_modules):
    # The AssemblyScript runtime traps on an empty plugin configuration (a known SDK trait).
    with pytest.raises(WasmTrap) as trapped:
        Host().load(as_modules["headers"], config="", root_id="as_headers")
    assert trapped.value.callback == "proxy_on_configure"


def test_unknown_root_id_is_the_modules_own_error(as_modules):
    with pytest.raises(WasmTrap):
        Host().load(as_modules["headers"], config="c", root_id="no_such_root")


def test_not_a_wasm_file_is_explained(tmp_path):
    bogus = tmp_path / "filter.wasm"
    bogus.write_text("print('hello')")
    with pytest.raises(MeshextError, match="not a valid Wasm module") as error:
        Host().load(bogus)
    assert str(bogus) in str(error.value)


def test_trailers_and_chunked_bodies_reach_the_filter_in_envoys_order(wat_module):
    host = Host()
    plugin = host.load(wat_module("trace"), root_id="r")
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/", ":method": "POST"})
    stream.send_request_body(b"abc")
    stream.send_request_body(b"defg")
    stream.send_request_trailers({"x-checksum": "1"})
    stream.send_response_headers({":status": "200"})
    stream.send_response_body(b"ok", end_stream=False)
    stream.send_response_trailers({"grpc-status": "0"})
    assert plugin.log_messages()[3:] == [
        "on_context_create 2 1", "on_request_headers 2 2 0", "on_request_body 2 3 0", "on_request_body 2 4 0",
        "on_request_trailers 2 1", "on_response_headers 2 1 0", "on_response_body 2 2 0",
        "on_response_trailers 2 1", "on_log 2", "on_done 2", "on_delete 2"]
    assert bytes(stream.request.forwarded_body) == b"abcdefg"
    assert stream.request.forwarded_trailers == [("x-checksum", "1")] and stream.request.complete


def test_body_arriving_while_headers_are_paused_is_held_then_given_to_the_filter(as_modules):
    host = Host()
    host.add_cluster("upstream", lambda call: None)
    plugin = host.load(as_modules["callout"], config="cfg", root_id="as_callout")
    stream = plugin.http_stream()
    assert stream.send_request_headers({":path": "/p", ":method": "POST", ":authority": "a"}) == Action.PAUSE
    assert stream.send_request_body(b"abc") is None  # held: the filter stopped at headers
    assert stream.send_request_body(b"def", end_stream=True) is None
    assert stream.request.forwarded_headers is None and not stream.request.forwarded_body
    plugin.http_calls[0].respond(200)
    assert stream.request.header("x-auth-status") == "200"
    assert bytes(stream.request.forwarded_body) == b"abcdef" and stream.request.complete
    assert stream.request.actions[-1] == ("proxy_on_request_body", Action.CONTINUE)


def test_tcp_connection_callbacks_and_close_order(wat_module):
    plugin = Host().load(wat_module("trace"), root_id="r")
    connection = plugin.tcp_stream()
    assert connection.send_downstream_data(b"ping") == Action.CONTINUE
    assert bytes(connection.to_upstream) == b"ping"
    connection.close()
    assert plugin.log_messages()[-3:] == ["on_done 2", "on_log 2", "on_delete 2"]  # Envoy's TCP order


def test_grpc_stream_messages_go_to_the_handler_and_answers_come_back(wat_module):
    host = Host()
    host.add_cluster("grpc_upstream", grpc=lambda call: GrpcReply(0, [b"echo:" + call.messages[-1]]))
    plugin = host.load(wat_module("grpc_stream"))
    stream = plugin.exchange("GET", "/chat")
    call = plugin.grpc_calls[0]
    assert (call.is_stream, call.service, call.method, call.messages) == (True, "chat.Chat", "Talk", [b"hello", b"bye"])
    assert call.token % 4 == 2  # Envoy's numbering for gRPC streams
    assert [value for name, value in stream.request.forwarded_headers if name == "x-chat"] == ["echo:hello", "echo:bye"]
    assert plugin.log_messages() == ["stream closed"] and stream.request.complete


def test_trailers_arriving_while_the_body_is_held_release_it(as_modules):
    plugin = Host().load(as_modules["body"], config="!", root_id="as_body")
    stream = plugin.http_stream()
    stream.send_request_headers({":path": "/", ":method": "POST"})
    assert stream.send_request_body(b"held") == Action.PAUSE  # buffering until end of stream
    assert stream.send_request_trailers({"x-sum": "1"}) == Action.CONTINUE
    assert bytes(stream.request.forwarded_body) == b"held"  # never saw end_of_stream: not rewritten
    assert stream.request.forwarded_trailers == [("x-sum", "1")] and stream.request.complete
    assert not stream.request.paused


def test_module_without_abi_marker_is_explained():
    import wasmtime

    module = wasmtime.wat2wasm('(module (memory (export "memory") 1)'
                               ' (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)))')
    with pytest.raises(MeshextError, match="proxy_abi_version_0_2_1") as error:
        Host().load(module)
    assert "Proxy-Wasm SDK" in str(error.value)


def test_abi_0_2_0_modules_do_not_get_proxy_get_log_level():
    import wasmtime

    module = wasmtime.wat2wasm('(module (import "env" "proxy_get_log_level" (func (param i32) (result i32)))'
                               ' (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0"))'
                               ' (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)))')
    with pytest.raises(MeshextError, match="env.proxy_get_log_level: only provided to modules declaring ABI 0.2.1"):
        Host().load(module)
