"""The per-stream callbacks have one definition, meshext.sdk.contexts.STREAM_CALLBACKS:
the C shim's exports are generated from it, and each export Envoy calls
reaches its Python method with its arguments.  Runs modules in meshext's
Proxy-Wasm host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshext import wasm_binary
from meshext.errors import MeshextError
from meshext.sdk.abi import BufferType, LogLevel, Status, StreamType
from meshext.sdk.builder import build_filter, shim
from meshext.sdk.builder.shim import build_shim
from meshext.sdk.contexts import STREAM_CALLBACKS
from meshext.testing import Host

# Every callback overridden, none returning anything: None means continue.
EVERY_CALLBACK = '''
from meshext.sdk import HttpContext, RootContext, StreamContext, log


class EveryHttp(HttpContext):
    def on_request_headers(self, end_of_stream):
        log.info(f"on_request_headers {end_of_stream}")

    def on_request_body(self, body_size, end_of_stream):
        log.info(f"on_request_body {body_size} {end_of_stream}")

    def on_request_trailers(self):
        log.info("on_request_trailers")

    def on_response_headers(self, end_of_stream):
        log.info(f"on_response_headers {end_of_stream}")

    def on_response_body(self, body_size, end_of_stream):
        log.info(f"on_response_body {body_size} {end_of_stream}")

    def on_response_trailers(self):
        log.info("on_response_trailers")

    def on_log(self):
        log.info("http on_log")

    def on_done(self):
        log.info("http on_done")


class EveryTcp(StreamContext):
    def on_new_connection(self):
        log.info("on_new_connection")

    def on_downstream_data(self, data_size, end_of_stream):
        log.info(f"on_downstream_data {data_size} {end_of_stream}")

    def on_upstream_data(self, data_size, end_of_stream):
        log.info(f"on_upstream_data {data_size} {end_of_stream}")

    def on_downstream_close(self, peer):
        log.info(f"on_downstream_close {int(peer)}")

    def on_upstream_close(self, peer):
        log.info(f"on_upstream_close {int(peer)}")

    def on_log(self):
        log.info("tcp on_log")

    def on_done(self):
        log.info("tcp on_done")


class Root(RootContext):
    http_context = EveryHttp
    stream_context = EveryTcp
'''

# Exports of the shim that are not per-stream callbacks (never pruned by callback).
OTHER_CALLBACK_EXPORTS = {
    "proxy_on_memory_allocate", "proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure",
    "proxy_on_tick", "proxy_on_queue_ready", "proxy_on_foreign_function", "proxy_on_delete",
    "proxy_on_http_call_response", "proxy_on_grpc_receive_initial_metadata", "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata", "proxy_on_grpc_close",
}


def test_the_shim_exports_exactly_the_tables_stream_callbacks() -> None:
    shim_path, _ = build_shim()
    exports = {export.name for export in wasm_binary.read_exports(wasm_binary.parse_sections(shim_path.read_bytes()))}
    callback_exports = {name for name in exports if name.startswith("proxy_on_")}
    assert callback_exports - OTHER_CALLBACK_EXPORTS == {callback.export for callback in STREAM_CALLBACKS}


def _abi_header_constants() -> dict[str, int]:
    """The enum constants of the shim's ABI header (``PROXY_`` dropped), counted as C counts them."""
    header = (Path(shim.__file__).resolve().parents[1] / "shim" / "proxy_wasm.h").read_text()
    constants: dict[str, int] = {}
    for body in re.findall(r"enum\s*\{([^}]*)\}", header):
        following = 0
        for item in filter(None, (part.strip() for part in body.split(","))):
            name, _, value = (word.strip() for word in item.partition("="))
            following = int(value) if value else following
            constants[name.removeprefix("PROXY_")] = following
            following += 1
    return constants


def _family(constants: dict[str, int], prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix): value for name, value in constants.items() if name.startswith(prefix)}


def test_the_shims_abi_constants_agree_with_the_sdks() -> None:
    # The C shim and the Python SDK each need the ABI's numbers: they must be the same numbers.
    constants = _abi_header_constants()
    assert _family(constants, "LOG_") == {level.name: level.value for level in LogLevel}
    assert _family(constants, "STREAM_") == {stream.name: stream.value for stream in StreamType}
    assert {name: value for name, value in constants.items() if name in Status.__members__} == \
        {status.name: status.value for status in Status}
    buffers = _family(constants, "BUFFER_")
    assert buffers and buffers.items() <= {buffer.name: buffer.value for buffer in BufferType}.items()


def load(tmp_path: Path):
    folder = tmp_path / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "every"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(EVERY_CALLBACK)
    return Host().load(build_filter(folder, tmp_path / "every.wasm").output)


def test_each_callback_reaches_its_method_with_its_arguments(tmp_path: Path) -> None:
    plugin = load(tmp_path)

    stream = plugin.http_stream()
    stream.send_request_headers({":method": "POST", ":path": "/", ":authority": "example.com"})
    stream.send_request_body(b"abc")
    stream.send_request_trailers({"x-request-trailer": "1"})
    stream.send_response_headers({":status": "200"})
    stream.send_response_body(b"hello")
    stream.send_response_trailers({"x-response-trailer": "1"})
    assert plugin.log_messages() == [
        "on_request_headers False", "on_request_body 3 False", "on_request_trailers",
        "on_response_headers False", "on_response_body 5 False", "on_response_trailers",
        "http on_log", "http on_done",
    ]
    assert bytes(stream.request.forwarded_body) == b"abc" and bytes(stream.response.forwarded_body) == b"hello"

    before = len(plugin.log_messages())
    connection = plugin.tcp_stream()
    connection.send_downstream_data(b"ab")
    connection.send_upstream_data(b"xyz", end_stream=True)
    connection.close()  # upstream closes (peer UNKNOWN, 0), then Envoy closes the client (LOCAL, 1)
    assert plugin.log_messages()[before:] == [
        "on_new_connection", "on_downstream_data 2 False", "on_upstream_data 3 True",
        "on_upstream_close 0", "on_downstream_close 1", "tcp on_done", "tcp on_log",
    ]
    assert bytes(connection.to_upstream) == b"ab" and bytes(connection.to_downstream) == b"xyz"


# A root that picks its context class per configuration: with "report" false
# its streams get the base class, which has no response callback.
NARROWING = '''
from meshext.sdk import HttpContext, RootContext, log


class Decide(HttpContext):
    def on_request_headers(self, end_of_stream):
        log.info("decided")


class DecideAndReport(Decide):
    def on_response_headers(self, end_of_stream):
        log.info("reported")
        self.response.headers.add("x-reported", "1")


class Wider(HttpContext):
    def on_request_body(self, body_size, end_of_stream):
        log.info("body")


class Root(RootContext):
    http_context = DecideAndReport

    def on_configure(self, config):
        if not super().on_configure(config):
            return False
        choice = self.config.get("context")
        self.http_context = {"base": Decide, "wider": Wider}.get(choice, DecideAndReport)
        return True
'''


def _narrowing(tmp_path: Path, context: str):
    folder = tmp_path / context
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "narrowing"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(NARROWING)
    return Host().load(build_filter(folder, tmp_path / f"{context}.wasm").output, config={"context": context})


def test_a_root_may_choose_a_context_class_with_fewer_callbacks_in_on_configure(tmp_path: Path) -> None:
    for context, reported in (("full", True), ("base", False)):
        plugin = _narrowing(tmp_path, context)
        for _ in range(2):  # the second stream gets the kept context object, of the same class
            stream = plugin.http_stream()
            stream.send_request_headers({":method": "GET", ":path": "/", ":authority": "example.com"})
            stream.send_response_headers({":status": "200"})
            assert stream.response.header("x-reported") == ("1" if reported else None), context
        assert plugin.log_messages() == (["decided", "reported"] * 2 if reported else ["decided"] * 2)


def test_a_context_class_chosen_in_on_configure_may_not_add_callbacks(tmp_path: Path) -> None:
    # The module only exports the callbacks of the class set on the root class: Envoy would never call
    # Wider.on_request_body, so the configuration is refused, saying why.
    with pytest.raises(MeshextError) as refused:
        _narrowing(tmp_path, "wider")
    refusal = str(refused.value)
    assert "proxy_on_configure returned false" in refusal, refusal
    assert "on_configure chose context classes that override on_request_body" in refusal, refusal
    assert "Root.http_context / stream_context" in refusal and "its base class" in refusal, refusal


# Fixed response headers set by the shim (response_headers_to_add): alone, with an on_response_headers that
# sees them, on a local reply, and not once the stream's filter code raised.
FIXED_HEADERS = '''
from meshext.sdk import HttpContext, RootContext, log


class Fixed(HttpContext):
    response_headers_to_add = {"powered-by": "fixed", "x-two": "2"}

    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/deny":
            return self.send_local_response(403, "denied")
        if path == "/raise":
            raise ValueError("asked to fail")


class FixedAndMore(Fixed):
    response_headers_to_add = [("powered-by", "more")]

    def on_response_headers(self, end_of_stream):
        self.response.headers.add("x-saw", self.response.headers.get("powered-by") or "nothing")


class Root(RootContext):
    http_context = Fixed

    def on_configure(self, config):
        if not super().on_configure(config):
            return False
        self.http_context = FixedAndMore if self.config.get("more") else Fixed
        return True
'''


def _fixed(tmp_path: Path, source: str, config: dict):
    folder = tmp_path / "fixed"
    folder.mkdir(exist_ok=True)
    (folder / "meshext.toml").write_text('[filter]\nname = "fixed"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    return Host().load(build_filter(folder, tmp_path / "fixed.wasm").output, config=config)


def test_response_headers_to_add_are_set_on_every_response_without_python(tmp_path: Path) -> None:
    plugin = _fixed(tmp_path, FIXED_HEADERS, {})
    for _ in range(2):
        stream = plugin.exchange("GET", "/", response_headers={"powered-by": "upstream"})
        assert (stream.response.header("powered-by"), stream.response.header("x-two")) == ("fixed", "2")  # set
    denied = plugin.exchange("GET", "/deny")
    assert denied.local_response is not None and denied.local_response.status == 403
    assert denied.response.header("powered-by") == "fixed"  # local replies included
    failed = plugin.exchange("GET", "/raise")
    assert failed.response.header("powered-by") is None  # the stream's filter code raised: none of it runs
    more = _fixed(tmp_path, FIXED_HEADERS, {"more": True})
    stream = more.exchange("GET", "/")
    assert (stream.response.header("powered-by"), stream.response.header("x-saw")) == ("more", "more")
    assert stream.response.header("x-two") is None


@pytest.mark.parametrize(("value", "message"), [
    ('"3"', "'3' is not a (name, value) pair of str"),
    ("{'x-n': 1}", "('x-n', 1) is not a (name, value) pair of str"),
    ("7", "not a dict or a list of (name, value) pairs"),
])
def test_a_bad_response_headers_to_add_fails_the_build_naming_it(tmp_path: Path, value: str, message: str) -> None:
    source = FIXED_HEADERS.replace('response_headers_to_add = {"powered-by": "fixed", "x-two": "2"}',
                                   f"response_headers_to_add = {value}")
    with pytest.raises(MeshextError) as refused:
        _fixed(tmp_path, source, {})
    refusal = str(refused.value)
    assert "Fixed.response_headers_to_add" in refusal and message in refusal, refusal
    assert 'response_headers_to_add = {"powered-by": "my-filter"}' in refusal, refusal
