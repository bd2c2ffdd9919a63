"""header-policy: allowed methods, required headers and header rewrites, per path prefix.

Every request is checked against the top-level policy and the first rule
whose ``prefix`` matches its path (query string ignored, rules tried in
order, like Envoy's routes).  A request that breaks the policy gets a local
403 whose JSON body names the rule and the reason; the upstream never sees
it.  Allowed requests get the request rewrites (top-level, then the rule's);
their responses, local 403s included, get the response rewrites.
"""

import json
from dataclasses import dataclass, field

from meshext.sdk import Action, ConfigError, Counter, HeaderMap, HttpContext, RootContext, log

DEFAULT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# RFC 9110 token characters: what a header name may consist of.
TOKEN_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The rule name in a denial when no rule matched the path.
DEFAULT_RULE = "default"
HEADER_NAME_FIX = "use letters, digits and '-' (pseudo-headers such as :path cannot be listed)"

DENIED = Counter("header_policy_denied_total")


@dataclass
class HeaderRewrite:
    """Header changes for one direction: ``remove`` these names, then ``set`` (replace) these values."""

    set: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)


@dataclass
class PathRule:
    """Policy for paths starting with ``prefix``, on top of the top-level policy."""

    name: str
    prefix: str
    allowed_methods: list[str] | None = None  # None: the top-level list
    required_headers: list[str] = field(default_factory=list)  # in addition to the top-level ones
    request: HeaderRewrite = field(default_factory=HeaderRewrite)  # after the top-level rewrite
    response: HeaderRewrite = field(default_factory=HeaderRewrite)


@dataclass
class Config:
    """The plugin configuration (JSON); every field is optional."""

    allowed_methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    required_headers: list[str] = field(default_factory=list)
    request: HeaderRewrite = field(default_factory=HeaderRewrite)
    response: HeaderRewrite = field(default_factory=HeaderRewrite)
    rules: list[PathRule] = field(default_factory=list)


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    problem = _methods_problem("config.allowed_methods", config.allowed_methods)
    problem = problem or _headers_problem("config.required_headers", config.required_headers)
    problem = problem or _rewrite_problem("config.request", config.request)
    problem = problem or _rewrite_problem("config.response", config.response)
    if problem:
        return problem
    seen: set[str] = set()
    for index, rule in enumerate(config.rules):
        where = f"config.rules[{index}]"
        if not rule.name or rule.name in seen or rule.name == DEFAULT_RULE:
            return (f"{where}.name: {rule.name!r} is empty, repeated or reserved; "
                    f"fix: give each rule its own name (not {DEFAULT_RULE!r})")
        seen.add(rule.name)
        if not rule.prefix.startswith("/"):
            return (f"{where}.prefix: {rule.prefix!r} does not start with '/'; "
                    f"fix: write it as a path, e.g. '/{rule.prefix}'")
        if rule.allowed_methods is not None:
            problem = _methods_problem(f"{where}.allowed_methods", rule.allowed_methods)
        problem = problem or _headers_problem(f"{where}.required_headers", rule.required_headers)
        problem = problem or _rewrite_problem(f"{where}.request", rule.request)
        problem = problem or _rewrite_problem(f"{where}.response", rule.response)
        if problem:
            return problem
    return None


def _methods_problem(where: str, methods: list[str]) -> str | None:
    if not methods:
        return f"{where}: an empty list allows no request at all; fix: list the methods to allow, or leave it out"
    for index, method in enumerate(methods):
        if not method.isalpha() or not method.isupper():
            return f"{where}[{index}]: {method!r} is not an HTTP method; fix: use upper-case names such as 'GET'"
    return None


def _headers_problem(where: str, names: list[str]) -> str | None:
    for index, name in enumerate(names):
        if not _is_header_name(name):
            return f"{where}[{index}]: {name!r} is not a header name; fix: {HEADER_NAME_FIX}"
    return None


def _rewrite_problem(where: str, rewrite: HeaderRewrite) -> str | None:
    problem = _headers_problem(f"{where}.remove", rewrite.remove)
    for name in rewrite.set:
        if not problem and not _is_header_name(name):
            problem = f"{where}.set[{name!r}]: not a header name; fix: {HEADER_NAME_FIX}"
    return problem


def _is_header_name(name: str) -> bool:
    return bool(name) and TOKEN_CHARACTERS.issuperset(name)


class Policy(HttpContext):
    root: "Root"
    rule: PathRule | None

    def on_request_headers(self, end_of_stream: bool) -> Action:
        config = self.root.config
        headers = self.request.headers
        path = (headers.get(":path") or "").partition("?")[0]
        self.rule = next((rule for rule in config.rules if path.startswith(rule.prefix)), None)
        rule = self.rule

        allowed = config.allowed_methods if rule is None or rule.allowed_methods is None else rule.allowed_methods
        method = headers.get(":method") or ""
        if method not in allowed:
            return self.deny(f"method {method} is not allowed (allowed: {', '.join(allowed)})")
        for name in config.required_headers + (rule.required_headers if rule else []):
            if name not in headers:
                return self.deny(f"required header {name} is missing")

        rewrite(headers, config.request)
        if rule:
            rewrite(headers, rule.request)
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action:
        rewrite(self.response.headers, self.root.config.response)
        if self.rule:
            rewrite(self.response.headers, self.rule.response)
        return Action.CONTINUE

    def deny(self, reason: str) -> Action:
        rule_name = self.rule.name if self.rule else DEFAULT_RULE
        DENIED.increment()
        log.info(f"header-policy: denied by rule {rule_name}: {reason}")
        body = json.dumps({"error": "forbidden", "rule": rule_name, "reason": reason})
        return self.send_local_response(403, body + "\n", [("content-type", "application/json")],
                                        details="header_policy_denied")


def rewrite(headers: HeaderMap, changes: HeaderRewrite) -> None:
    """Apply one HeaderRewrite to a request or response header map."""
    for name in changes.remove:
        headers.remove(name)
    for name, value in changes.set.items():
        headers.set(name, value)


class Root(RootContext):
    http_context = Policy
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)
