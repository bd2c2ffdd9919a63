"""What a filter author sees when something goes wrong: the SDK's exceptions
share one base."""

from __future__ import annotations

from meshext.sdk import CalloutError, CasMismatch, ConfigError, HostError, SdkError


def test_every_sdk_exception_derives_from_sdk_error_and_names_where_and_fix() -> None:
    for error_class in (HostError, CalloutError, CasMismatch, ConfigError):
        assert issubclass(error_class, SdkError)
    assert issubclass(ConfigError, ValueError) and issubclass(CalloutError, RuntimeError)
    error = ConfigError("unknown field 'brust'", where="config.limits", fix="use one of burst")
    assert str(error) == "config.limits: unknown field 'brust'\n  fix: use one of burst"
    assert (error.where, error.fix) == ("config.limits", "use one of burst")
    assert str(HostError("proxy_http_call", 2)) == "proxy_http_call answered BAD_ARGUMENT"
    assert str(CasMismatch("hits")) == "shared data key 'hits': changed by another VM since it was read"
