"""Calls to the 3scale Service Management API (Apisonator) and the replies the module gives.

One authrep per request, as the module does: ``GET <backend path>
transactions/authrep.xml?service_id=…&service_token=…&user_key=…`` (or
``app_id=…[&app_key=…]``) ``&usage[metric]=delta…`` with ``3scale-options:
no_body=1&rejection_reason_header=1``, and the answer decides:

=========================================================  ===============================
backend answer                                             reply to the client
=========================================================  ===============================
200                                                        the request continues
non-200 with ``3scale-rejection-reason: limits_exceeded``  429 ``Usage limit exceeded``
any other status (409, 403, 404, 422, 5xx; Envoy's own     403 ``Authentication failed``
504 after the timeout and 503 when it cannot connect)
no ``:status`` at all (a reset)                            502 ``Bad Gateway``
=========================================================  ===============================

Parameter values the module sends unencoded; here a value with characters
outside RFC 3986's unreserved set (and ``~``) is percent-encoded, so a
credential holding ``&`` cannot add parameters of its own (for ordinary
keys the request is byte for byte the module's).
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from config import Upstream
    from credentials import Credential

    from meshext.sdk import HttpCallResponse

REPLIES = {
    # outcome: (status, body) exactly as threescale-wasm-auth v0.0.3+ (src/proxy/http_context.rs)
    "unknown_service": (403, "Unknown service\n"),
    "missing_credentials": (403, "Authentication parameters missing\n"),
    "no_mapping_rule": (404, "No Mapping Rule matched\n"),
    "authentication_failed": (403, "Authentication failed\n"),
    "limits_exceeded": (429, "Usage limit exceeded\n"),
    "bad_gateway": (502, "Bad Gateway\n"),
}
MODULE_OPTIONS = "no_body=1&rejection_reason_header=1"
USER_AGENT = "meshext-3scale"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def encode(value: str) -> str:
    """Percent-encode what is not unreserved (so ``&``, ``=`` and spaces cannot change the query)."""
    data = value.encode("utf-8", "surrogateescape")
    return "".join(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in data)


def credential_params(credential: Credential) -> list[tuple[str, str]]:
    kind, value, app_key = credential
    params = [(kind, value)]
    if app_key is not None:
        params.append(("app_key", app_key))
    return params


def query(service_id: str, token: str, credential: Credential,
          usages: dict[str, int] | None) -> str:
    """``service_id=…&service_token=…&<credentials>&usage[m]=d…``."""
    params = [("service_id", service_id), ("service_token", token), *credential_params(credential)]
    params += [(f"usage[{name}]", str(delta)) for name, delta in (usages or {}).items()]
    return "&".join(f"{name}={encode(value)}" for name, value in params)


def call_headers(upstream: Upstream, method: str, path: str, options: str | None) -> list[tuple[str, str]]:
    headers = [(":authority", upstream.authority), (":scheme", upstream.scheme), (":method", method),
               (":path", path), ("user-agent", USER_AGENT)]
    if options:
        headers.append(("3scale-options", options))
    return headers


def outcome_of(answer: HttpCallResponse) -> str | None:
    """The module's verdict on an authrep answer: None (authorized) or a key of :data:`REPLIES`."""
    status = answer.header(":status")
    if status is None:
        return "bad_gateway"
    if status == "200":
        return None
    if answer.header("3scale-rejection-reason") == "limits_exceeded":
        return "limits_exceeded"
    return "authentication_failed"
