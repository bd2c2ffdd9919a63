"""The plugin configuration, as the 3scale WebAssembly module (threescale-wasm-auth v0.0.4) parses it.

``api`` must be ``v1`` (or ``v1.0``, ``v1.0.0``); then ``system``,
``backend``, ``services`` and ``passthrough_metadata``, all optional; keys
the module does not know are ignored, so the documentation examples and a
user's existing ServiceMeshExtension ``config`` / WasmPlugin ``pluginConfig``
work unchanged.  Where the module accepts a configuration that cannot serve
a single request, this filter refuses it at configure time instead, naming
the field (Envoy then keeps the last good configuration):

- a service without ``token`` when there is no ``system`` to fetch it from
  (the module would answer 403 ``Authentication failed`` to every request);
- a configuration without ``services`` or without ``backend`` (ditto, or
  with the module, a panic on the first request when the configuration is
  empty).

Additions (ignored by the original module, so a configuration using them
still loads there): ``backend.cache`` (authorization cache with batched
reports, :mod:`cache`).
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

from credentials import Credentials, parse_credentials
from operations import compile_globs
from problems import (
    ConfigProblem,
    kind,
    only_keys,
    optional,
    required,
    want_bool,
    want_int,
    want_list,
    want_object,
    want_string,
)
from rules import BadUrl, MappingRule, parse_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

API_VERSIONS = ("v1", "v1.0", "v1.0.0")
ENVIRONMENTS = ("production", "staging", "sandbox")
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_SYSTEM_TTL_S = 300
# The module's refresh: clamp(upstream timeout, 20 s, ttl) (src/proxy/root_context.rs, MIN_SYNC).
MIN_SYSTEM_REFRESH_S = 20


class Upstream:
    """An Envoy cluster (``name``) and the URL requests to it are built from."""

    __slots__ = ("name", "url", "scheme", "authority", "path", "query", "timeout_ms")

    def __init__(self, name: str, url: str, scheme: str, authority: str, path: str, query: str | None,
                 timeout_ms: int) -> None:
        self.name, self.url, self.scheme, self.authority = name, url, scheme, authority
        self.path, self.query, self.timeout_ms = path, query, timeout_ms

    def target(self, path: str, extra_query: str | None = None) -> str:
        """``:path`` of a call: the URL's path (ending in ``/``) + ``path``, then its query and ``extra_query``."""
        full = self.path + path.lstrip("/")
        query = "&".join(part for part in (self.query, extra_query) if part)
        if query:
            full += ("&" if "?" in path else "?") + query
        return full


def parse_upstream(value: object, where: str) -> Upstream:
    data = want_object(value, where)
    only_keys(data, ("name", "url", "timeout"), where)
    name = required(data, "name", where, want_string, "name the Envoy cluster of this service, e.g. "
                    "outbound|443||su1.3scale.net")
    url = required(data, "url", where, want_string, "give the service's URL, e.g. https://su1.3scale.net")
    timeout = optional(data, "timeout", where, lambda item, at: want_int(item, at, minimum=0), DEFAULT_TIMEOUT_MS)
    scheme, separator, rest = url.partition("://")
    authority, slash, path_and_query = rest.partition("/")
    try:
        if not separator or not authority:
            raise BadUrl("no authority")
        parsed = parse_url(scheme, authority, slash + path_and_query)
    except BadUrl as error:
        raise ConfigProblem(f"{where}.url", f"{url!r} is not a URL with an authority ({error})",
                            "write scheme://host[:port][/path]") from None
    path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"  # the module appends '/'
    return Upstream(name, url, scheme.lower(), parsed.authority, path, parsed.query, timeout)


class System:
    __slots__ = ("upstream", "token", "ttl_s")

    def __init__(self, upstream: Upstream, token: str, ttl_s: int) -> None:
        self.upstream, self.token, self.ttl_s = upstream, token, ttl_s

    def refresh_s(self) -> int:
        """Seconds between two fetches of a service's rules (before the module's 0-15 s jitter)."""
        return max(MIN_SYSTEM_REFRESH_S, min(self.upstream.timeout_ms // 1000, self.ttl_s))


class CacheSettings:
    """``backend.cache``: see :mod:`cache` for what each setting bounds."""

    __slots__ = ("flush_period_ms", "ttl_ms")

    def __init__(self, flush_period_ms: int, ttl_ms: int) -> None:
        self.flush_period_ms, self.ttl_ms = flush_period_ms, ttl_ms


class Backend:
    __slots__ = ("upstream", "cache")

    def __init__(self, upstream: Upstream, cache: CacheSettings | None) -> None:
        self.upstream, self.cache = upstream, cache


class Service:
    __slots__ = ("id", "token", "environment", "matches_authority", "credentials", "static_rules", "mapping_rules")

    def __init__(self, service_id: str, token: str | None, environment: str,
                 matches_authority: Callable[[str], bool],
                 credentials: Credentials, mapping_rules: list[MappingRule]) -> None:
        self.id, self.token, self.environment = service_id, token, environment
        self.matches_authority = matches_authority
        self.credentials = credentials
        self.static_rules = mapping_rules
        self.mapping_rules = mapping_rules  # static, then those fetched from system


class Configuration:
    __slots__ = ("system", "backend", "services", "passthrough_metadata")

    def __init__(self, system: System | None, backend: Backend | None, services: list[Service],
                 passthrough_metadata: bool) -> None:
        self.system, self.backend, self.services = system, backend, services
        self.passthrough_metadata = passthrough_metadata


def _positive(value: object, where: str) -> int:
    return want_int(value, where, minimum=1)


def _parse_cache(value: object, where: str) -> CacheSettings | None:
    if value is False:
        return None
    data = {} if value is True else want_object(value, where)
    return CacheSettings(optional(data, "flush_period", where, _positive, 1000),
                         optional(data, "ttl", where, _positive, 60_000))


def _parse_usage(value: object, where: str) -> tuple[str, int]:
    data = want_object(value, where)
    name = required(data, "name", where, want_string, "name the metric, e.g. hits (metric names are case-sensitive)")
    if not name:
        raise ConfigProblem(f"{where}.name", "empty metric name", "name the metric, e.g. hits")
    delta = required(data, "delta", where, want_int, "give the amount to add, e.g. 1")
    return name, delta


def parse_mapping_rule(value: object, where: str) -> MappingRule:
    data = want_object(value, where)
    method = required(data, "method", where, want_string, "give an HTTP method or ANY")
    pattern = required(data, "pattern", where, want_string, "give a path pattern, e.g. /orders/{id}")
    usages_value = required(data, "usages", where, want_list, "list the metrics this rule counts, e.g. "
                            "[{name: hits, delta: 1}]")
    usages = [_parse_usage(item, f"{where}.usages[{index}]") for index, item in enumerate(usages_value)]
    last = optional(data, "last", where, want_bool, False)
    return MappingRule(method, pattern, usages, last, where)


def _parse_service(value: object, where: str, has_system: bool) -> Service:
    data = want_object(value, where)
    service_id = required(data, "id", where, want_string, "give the 3scale service id, e.g. '2555417834789'")
    token = optional(data, "token", where, want_string)
    if token is None and not has_system:
        raise ConfigProblem(f"{where}.token", "required field is missing (there is no system section to fetch it "
                            "from, so every request would get 403 Authentication failed)",
                            "give the service token, or add a system section")
    environment = optional(data, "environment", where, want_string, "production")
    if environment not in ENVIRONMENTS:
        environment = "unknown"  # the module's #[serde(other)]
    authorities = optional(data, "authorities", where, lambda item, at: [
        want_string(entry, f"{at}[{index}]") for index, entry in enumerate(want_list(item, at))], ["*"])
    matches_authority = compile_globs(authorities, f"{where}.authorities")
    credentials = required(data, "credentials", where, parse_credentials,
                           "add credentials with a user_key or app_id list of sources")
    rules = optional(data, "mapping_rules", where, want_list, [])
    mapping_rules = [parse_mapping_rule(rule, f"{where}.mapping_rules[{index}]") for index, rule in enumerate(rules)]
    return Service(service_id, token, environment, matches_authority, credentials, mapping_rules)


def parse_configuration(value: object) -> Configuration:
    """The configuration, or :class:`ConfigProblem` naming the field."""
    where = "config"
    if not isinstance(value, dict):
        raise ConfigProblem(where, f"expected an object, got {kind(value)}", "give the module's configuration "
                            "(api: v1, backend, services)")
    api = value.get("api")
    if api not in API_VERSIONS:
        raise ConfigProblem(f"{where}.api", "missing" if api is None else f"unknown version {api!r}",
                            "write api: v1")
    system = None
    if value.get("system") is not None:
        data = want_object(value["system"], f"{where}.system")
        upstream = required(data, "upstream", f"{where}.system", parse_upstream, "give system's upstream")
        token = required(data, "token", f"{where}.system", want_string, "give a 3scale access token with read "
                         "access to the services")
        ttl = optional(data, "ttl", f"{where}.system",
                       lambda item, at: want_int(item, at, minimum=MIN_SYSTEM_REFRESH_S), DEFAULT_SYSTEM_TTL_S)
        system = System(upstream, token, ttl)
    if value.get("backend") is None:
        raise ConfigProblem(f"{where}.backend", "required field is missing (without it the module answers 403 "
                            "Authentication failed to every request)", "add backend with its upstream")
    data = want_object(value["backend"], f"{where}.backend")
    backend = Backend(required(data, "upstream", f"{where}.backend", parse_upstream, "give backend's upstream"),
                      optional(data, "cache", f"{where}.backend", _parse_cache))
    if value.get("services") is None:
        raise ConfigProblem(f"{where}.services", "required field is missing", "list the 3scale services")
    services_value = want_list(value["services"], f"{where}.services")
    services = [_parse_service(item, f"{where}.services[{index}]", system is not None)
                for index, item in enumerate(services_value)]
    passthrough = optional(value, "passthrough_metadata", where, want_bool, False)
    return Configuration(system, backend, services, passthrough)
