"""What a filter author sees when something goes wrong: the SDK's exceptions
share one base, a root's missing return value does not refuse the VM, a
configuration a dataclass rejects is refused with the reason, and after filter
code raises the SDK calls none of that stream's code again.  Runs modules in
meshext's Proxy-Wasm host."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshext.errors import MeshextError
from meshext.sdk import CalloutError, CasMismatch, ConfigError, HostError, SdkError
from meshext.sdk.builder import build_filter
from meshext.testing import Host, HttpResponse

# on_vm_start and on_configure without a return statement; the VM
# configuration "raise" makes on_vm_start raise, "refuse" return False.
NO_RETURN = '''
from meshext.sdk import HttpContext, RootContext


class Tag(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-started", self.root.started)
        self.request.headers.add("x-greeting", self.root.config["greeting"])


class Root(RootContext):
    http_context = Tag

    def on_vm_start(self, vm_config):
        if vm_config == b"raise":
            raise RuntimeError("this VM cannot start")
        if vm_config == b"refuse":
            return False
        self.started = "yes"

    def on_configure(self, config):
        super().on_configure(config)
'''

CONFIG_CLASS = '''
from dataclasses import dataclass, field

from meshext.sdk import ConfigError, HttpContext, RootContext


@dataclass
class Limits:
    burst: int = 1

    def __post_init__(self):
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")


@dataclass
class Config:
    name: str = "default"
    limits: Limits = field(default_factory=Limits)


class Tag(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-burst", str(self.root.config.limits.burst))


class Root(RootContext):
    http_context = Tag
    config_class = Config

    def check_config(self, config):
        if config.name == "reserved":
            raise ConfigError("'reserved' is taken", where="config.name", fix="choose another name")
'''

# A request callback that raises before it sets the state the other
# callbacks use; the plugin configuration "closed" makes the policy fail closed.
FRAGILE = '''
from meshext.sdk import Action, FailPolicy, HttpContext, RootContext, StreamContext, log


class Fragile(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/raise":
            raise ValueError("request headers failed")
        if path == "/callout":
            self.http_call("auth", {":method": "GET", ":path": "/check", ":authority": "auth"},
                           callback=self.on_answer)
            return Action.PAUSE
        self.tenant = "acme"
        return Action.CONTINUE

    def on_answer(self, response):
        raise ValueError("callout callback failed")

    def on_request_body(self, body_size, end_of_stream):
        log.info(f"on_request_body for {self.tenant}")

    def on_response_headers(self, end_of_stream):
        self.response.headers.add("x-tenant", self.tenant)

    def on_response_body(self, body_size, end_of_stream):
        log.info(f"on_response_body for {self.tenant}")

    def on_log(self):
        log.info(f"on_log for {self.tenant}")

    def on_done(self):
        log.info(f"on_done for {self.tenant}")


class FragileTcp(StreamContext):
    def on_new_connection(self):
        raise ValueError("new connection failed")

    def on_downstream_data(self, data_size, end_of_stream):
        log.info(f"on_downstream_data for {self.tenant}")

    def on_upstream_data(self, data_size, end_of_stream):
        log.info(f"on_upstream_data for {self.tenant}")

    def on_downstream_close(self, peer):
        log.info(f"on_downstream_close for {self.tenant}")

    def on_done(self):
        log.info(f"on_done for {self.tenant}")


class Root(RootContext):
    http_context = Fragile
    stream_context = FragileTcp

    def on_configure(self, config):
        if config == b"closed":
            self.fail_policy = FailPolicy.CLOSED
        return True
'''


def build(tmp_path_factory: pytest.TempPathFactory, name: str, source: str) -> Path:
    folder = tmp_path_factory.mktemp(name) / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text(f'[filter]\nname = "{name}"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    return build_filter(folder, folder.parent / f"{name}.wasm").output


@pytest.fixture(scope="module")
def no_return(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory, "no-return", NO_RETURN)


@pytest.fixture(scope="module")
def config_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory, "config-class", CONFIG_CLASS)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory, "fragile", FRAGILE)


def test_every_sdk_exception_derives_from_sdk_error_and_names_where_and_fix() -> None:
    for error_class in (HostError, CalloutError, CasMismatch, ConfigError):
        assert issubclass(error_class, SdkError)
    assert issubclass(ConfigError, ValueError) and issubclass(CalloutError, RuntimeError)
    error = ConfigError("unknown field 'brust'", where="config.limits", fix="use one of burst")
    assert str(error) == "config.limits: unknown field 'brust'; fix: use one of burst"
    assert (error.where, error.fix) == ("config.limits", "use one of burst")
    assert str(HostError("proxy_http_call", 2)) == "proxy_http_call answered BAD_ARGUMENT"
    assert str(CasMismatch("hits")) == "shared data key 'hits': changed by another VM since it was read"


def test_root_callbacks_without_a_return_value_accept(no_return: Path) -> None:
    plugin = Host().load(no_return, config='{"greeting": "hi"}')
    stream = plugin.exchange("GET", "/")
    assert stream.request.header("x-started") == "yes"
    assert stream.request.header("x-greeting") == "hi"


def test_an_exception_in_on_vm_start_is_logged_with_its_traceback(no_return: Path) -> None:
    host = Host()
    with pytest.raises(MeshextError, match="proxy_on_vm_start returned false"):
        host.load(no_return, vm_config="raise", config='{"greeting": "hi"}')
    log = "\n".join(host.log_lines())
    assert "Root.on_vm_start raised" in log
    assert 'File "filter/filter.py", line 16, in on_vm_start' in log  # the project's own path
    assert "RuntimeError: this VM cannot start" in log


def test_a_vm_refused_by_on_vm_start_says_so_in_the_log(no_return: Path) -> None:
    host = Host()
    with pytest.raises(MeshextError, match="proxy_on_vm_start returned false"):
        host.load(no_return, vm_config="refuse", config='{"greeting": "hi"}')
    assert "meshext filter 'no-return': Root.on_vm_start answered False: Envoy refuses the VM" in host.log_lines()


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ('{"limits": {"burst": 0}}', "plugin configuration refused: config.limits: burst must be at least 1, got 0"),
        ('{"limits": {"brust": 2}}',
         "plugin configuration refused: config.limits: unknown field 'brust'; fix: use one of burst"),
        ('{"name": 7}', "plugin configuration refused: config.name: expected a string, got an integer 7"),
        ("{not json", "plugin configuration refused: plugin configuration is not JSON"),
        ('{"name": "reserved"}',
         "plugin configuration refused: config.name: 'reserved' is taken; fix: choose another name"),
    ],
    ids=["post-init-value-error", "unknown-field", "wrong-type", "not-json", "check-config"],
)
def test_a_refused_configuration_names_the_problem(config_class: Path, config: str, refusal: str) -> None:
    host = Host()
    with pytest.raises(MeshextError, match="refused its plugin configuration"):
        host.load(config_class, config=config)
    log = "\n".join(host.log_lines())
    assert refusal in log
    assert "Traceback" not in log


def test_a_configuration_the_dataclass_accepts_is_converted(config_class: Path) -> None:
    plugin = Host().load(config_class, config='{"limits": {"burst": 5}}')
    assert plugin.exchange("GET", "/").request.header("x-burst") == "5"


def test_fail_closed_reply_does_not_run_the_failed_streams_response_callbacks(fragile: Path) -> None:
    plugin = Host().load(fragile, config="closed")
    stream = plugin.exchange("GET", "/raise")
    assert stream.response.header(":status") == "500"
    assert b"request rejected (fail closed)" in bytes(stream.response.forwarded_body)
    log = "\n".join(plugin.log_messages())
    assert log.count(" raised:") == 1 and "ValueError: request headers failed" in log
    assert "AttributeError" not in log and " for " not in log
    # Other streams are untouched.
    assert plugin.exchange("GET", "/").response.header("x-tenant") == "acme"


def test_fail_open_stream_continues_without_its_filter_code(fragile: Path) -> None:
    plugin = Host().load(fragile)
    stream = plugin.exchange("POST", "/raise", body=b"payload", response_body=b"answer")
    assert stream.request.forwarded_body == b"payload"
    assert stream.response.header(":status") == "200" and stream.response.header("x-tenant") is None
    assert stream.response.forwarded_body == b"answer"
    log = "\n".join(plugin.log_messages())
    assert log.count(" raised:") == 1 and "AttributeError" not in log and " for " not in log


def test_a_failing_callout_callback_ends_the_streams_filter_code_too(fragile: Path) -> None:
    host = Host()
    host.add_cluster("auth", lambda call: HttpResponse(200))
    plugin = host.load(fragile, config="closed")
    stream = plugin.exchange("GET", "/callout")
    assert stream.response.header(":status") == "500"
    log = "\n".join(plugin.log_messages())
    assert "ValueError: callout callback failed" in log
    assert log.count(" raised:") == 1 and "AttributeError" not in log and " for " not in log


def test_a_tcp_connection_whose_code_raised_gets_no_more_calls(fragile: Path) -> None:
    plugin = Host().load(fragile)
    connection = plugin.tcp_stream()
    connection.send_downstream_data(b"ping")
    connection.send_upstream_data(b"pong")
    connection.close()
    assert bytes(connection.to_upstream) == b"ping" and bytes(connection.to_downstream) == b"pong"
    log = "\n".join(plugin.log_messages())
    assert log.count(" raised:") == 1 and "ValueError: new connection failed" in log
    assert "AttributeError" not in log and " for " not in log


def test_a_fail_closed_tcp_connection_is_closed_without_more_calls(fragile: Path) -> None:
    plugin = Host().load(fragile, config="closed")
    connection = plugin.tcp_stream()
    assert connection.ended
    log = "\n".join(plugin.log_messages())
    assert log.count(" raised:") == 1 and "AttributeError" not in log and " for " not in log


def test_a_failing_callout_callback_under_fail_open_resumes_the_paused_request(fragile: Path) -> None:
    host = Host()
    host.add_cluster("auth", lambda call: HttpResponse(200))
    plugin = host.load(fragile)
    stream = plugin.exchange("POST", "/callout", body=b"payload", response_body=b"answer")
    # The request was paused for the callout: failing open, it goes on to the upstream.
    assert stream.request.forwarded_body == b"payload"
    assert stream.response.header(":status") == "200" and stream.response.forwarded_body == b"answer"
    log = "\n".join(plugin.log_messages())
    assert log.count(" raised:") == 1 and "ValueError: callout callback failed" in log and " for " not in log
