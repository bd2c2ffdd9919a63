"""auth-callout: ask an auth service before a request goes upstream (forward auth).

For each request the filter pauses it and sends a GET to the auth service's
Envoy cluster, carrying the request's credentials (``forward_headers``) and
where it was going (``x-forwarded-method``, ``x-forwarded-uri``,
``x-forwarded-host``).  The answer decides:

- 200: the request continues, with the answer's ``copy_headers`` (e.g. the
  user id the auth service established) set on it;
- 401: 401 to the client, with the auth service's ``www-authenticate``;
- 5xx, or no answer at all: 503, the filter fails closed.  (Envoy answers a
  callout itself when the auth service cannot: 504 after ``timeout_ms``, 503
  when it cannot connect; a reset arrives as no answer);
- any other answer: 403.

Copies of ``copy_headers`` that the client sent itself are always removed,
so a client cannot claim an identity the auth service did not give it.
"""

import json
from dataclasses import dataclass, field

from meshext.sdk import Action, CalloutError, ConfigError, Counter, HttpCallResponse, HttpContext, RootContext, log

ALLOWED = Counter("auth_callout_allowed_total")
DENIED = Counter("auth_callout_denied_total")
FAILED = Counter("auth_callout_failed_total")


@dataclass
class Config:
    """The plugin configuration (JSON); only ``cluster`` is required."""

    cluster: str  # the auth service's cluster in Envoy's configuration
    path: str = "/check"  # path of the check request
    authority: str = ""  # :authority of the check request; empty: the cluster name
    timeout_ms: int = 1000  # no answer within this time: 503
    forward_headers: list[str] = field(default_factory=lambda: ["authorization", "cookie"])
    copy_headers: list[str] = field(default_factory=lambda: ["x-user-id"])
    skip_prefixes: list[str] = field(default_factory=list)  # paths served without a check (health checks)


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    if not config.cluster:
        return "config.cluster: empty; fix: name the auth service's cluster in Envoy's configuration"
    if not config.path.startswith("/"):
        return f"config.path: {config.path!r} does not start with '/'; fix: write the check path, e.g. '/check'"
    if config.timeout_ms <= 0:
        return f"config.timeout_ms: {config.timeout_ms} is not positive; fix: give milliseconds, e.g. 1000"
    for index, prefix in enumerate(config.skip_prefixes):
        if not prefix.startswith("/"):
            return f"config.skip_prefixes[{index}]: {prefix!r} does not start with '/'; fix: write it as a path"
    return None


class Authenticate(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream: bool) -> Action:
        config = self.root.config
        headers = self.request.headers
        for name in config.copy_headers:
            headers.remove(name)  # only the auth service may set these
        path = headers.get(":path") or "/"
        if any(path.startswith(prefix) for prefix in config.skip_prefixes):
            return Action.CONTINUE

        check = [
            (":method", "GET"),
            (":path", config.path),
            (":authority", config.authority or config.cluster),
            ("x-forwarded-method", headers.get(":method") or ""),
            ("x-forwarded-uri", path),
            ("x-forwarded-host", headers.get(":authority") or ""),
        ]
        for name in config.forward_headers:
            check += [(name, value) for value in headers.get_all(name)]
        try:
            self.http_call(config.cluster, check, callback=self.on_auth_answer, timeout_ms=config.timeout_ms)
        except CalloutError as error:
            log.error(f"auth-callout: {error}")
            return self.fail()
        return Action.PAUSE  # until the auth service answers

    def on_auth_answer(self, answer: HttpCallResponse) -> None:
        if answer.failed or (answer.status or 0) >= 500:
            outcome = "no answer" if answer.failed else f"answer {answer.status}"
            log.warn(f"auth-callout: cluster {self.root.config.cluster!r} gave {outcome}; request refused")
            self.fail()
        elif answer.status == 200:
            ALLOWED.increment()
            for name in self.root.config.copy_headers:
                value = answer.header(name)
                if value is not None:
                    self.request.headers.set(name, value)
            self.request.resume()
        elif answer.status == 401:
            challenge = answer.header("www-authenticate")
            self.deny(401, "unauthorized", [("www-authenticate", challenge)] if challenge else [])
        else:
            self.deny(403, "forbidden", [])

    def deny(self, status: int, error: str, headers: list[tuple[str, str]]) -> None:
        DENIED.increment()
        self.send_local_response(status, json.dumps({"error": error}) + "\n",
                                 [("content-type", "application/json"), *headers], details=f"auth_callout_{error}")

    def fail(self) -> Action:
        FAILED.increment()
        return self.send_local_response(503, json.dumps({"error": "auth service unavailable"}) + "\n",
                                        [("content-type", "application/json")], details="auth_callout_unavailable")


class Root(RootContext):
    http_context = Authenticate
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)
