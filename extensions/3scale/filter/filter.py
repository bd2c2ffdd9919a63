"""3scale API Management as a meshext filter: the 3scale WebAssembly module's configuration and behaviour.

Each request, in the module's order (threescale-wasm-auth v0.0.4,
``src/proxy/http_context.rs``):

1. the service whose ``authorities`` glob matches the request's authority
   (first wins), else 403 ``Unknown service``;
2. its credentials (:mod:`credentials`), else 403 ``Authentication
   parameters missing``;
3. the usages of the matching mapping rules, summed per metric
   (:mod:`rules`), else 404 ``No Mapping Rule matched``;
4. with ``passthrough_metadata: true``, the ``x-3scale-*`` headers for a
   later filter and no callout;
5. an authrep callout to the backend (:mod:`authrep`), or with
   ``backend.cache`` the authorization cache (:mod:`cache`), which decides.

Every response gets ``Powered-By: 3scale``, local replies included.  With
a ``system`` section, each service's mapping rules (and its token) are
fetched from 3scale System when the configuration loads and then every
``clamp(system.upstream.timeout, 20 s, system.ttl)`` plus 0-15 s of jitter,
as the module does; fetched rules are appended after the static ones.
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

import json

import authrep
from cache import AuthorizationCache
from config import Configuration, Service, parse_configuration
from problems import ConfigProblem
from rules import BadUrl, RequestUrl, parse_url, usages_for
from system import SystemFetcher

from meshext.sdk import Action, CalloutError, Counter, HttpCallResponse, HttpContext, RootContext, log

_COUNTERS: dict[str, Counter] = {}


def count(outcome: str, requests: int = 1) -> None:
    """``requests`` more requests with this outcome (``threescale_<outcome>_total``).

    The one place metrics are made: labelled metrics will replace these
    plain counters when the SDK has them.
    """
    counter = _COUNTERS.get(outcome)
    if counter is None:
        counter = _COUNTERS[outcome] = Counter(f"threescale_{outcome}_total")
    counter.increment(requests)


class Authorize(HttpContext):
    root: Root

    def on_request_headers(self, end_of_stream: bool) -> Action:
        root = self.root
        configuration = root.configuration
        assert configuration is not None  # Envoy creates no stream before a configuration was accepted
        # The whole map in one host call, the first value of each name as HeaderMap.get gives it: in Envoy
        # that costs less than one call per header read (this path reads four to six).
        header = dict(reversed(self.request.headers.items())).get
        route_key = tuple(map(header, ROUTE_HEADERS))
        found = root.routes.get(route_key)
        if found is None:
            try:
                found = root.route(route_key)
            except BadUrl as error:
                log.info(f"3scale: request URL does not parse ({error})")
                return self.reply("authentication_failed")
        url, service, usages = found
        if service is None:
            return self.reply("unknown_service")
        credential = service.credentials.resolve(header, url)
        if credential is None:
            return self.reply("missing_credentials")
        if not usages:
            return self.reply("no_mapping_rule")
        if configuration.passthrough_metadata:
            return self.pass_metadata(service, credential, usages)
        if service.token is None:  # a system fetch has not brought it yet
            return self.reply("authentication_failed")
        cache = root.cache
        if cache is not None:
            verdict = cache.admit(self, service, credential, usages)
            if verdict is None:
                return Action.PAUSE  # cache.admit made the callout; its answer resumes or replies
            if verdict == "":  # admitted without a callout
                cache.admitted += 1  # counted at the next tick: one host call per flush, not per request
                return Action.CONTINUE
            return self.reply(verdict)
        backend = configuration.backend
        assert backend is not None  # parse_configuration requires it
        upstream = backend.upstream
        query = authrep.query(service.id, service.token, credential, usages)
        target = upstream.target("transactions/authrep.xml", query)
        try:
            self.http_call(upstream.name, authrep.call_headers(upstream, "GET", target, authrep.MODULE_OPTIONS),
                           callback=self.on_authrep, timeout_ms=upstream.timeout_ms)
        except CalloutError as error:
            log.error(f"3scale: {error}")
            return self.reply("authentication_failed")
        return Action.PAUSE

    def on_authrep(self, answer: HttpCallResponse) -> None:
        self.decide(authrep.outcome_of(answer))

    def decide(self, outcome: str | None) -> None:
        """Resume the paused request (``None``) or answer it with the module's reply for ``outcome``."""
        if outcome is None:
            count("authorized")
            self.request.resume()
        else:
            self.reply(outcome)

    def reply(self, outcome: str) -> Action:
        count(outcome)
        status, body = authrep.REPLIES[outcome]
        return self.send_local_response(status, body, details=f"threescale_{outcome}")

    def pass_metadata(self, service: Service, credential: tuple[str, str, str | None],
                      usages: dict[str, int]) -> Action:
        configuration = self.root.configuration
        assert configuration is not None and configuration.backend is not None
        if service.token is None:
            return self.reply("authentication_failed")
        upstream = configuration.backend.upstream
        kind, value, app_key = credential
        headers = self.request.headers
        if kind == "user_key":
            headers.add("x-3scale-user-key", value)
        else:
            headers.add("x-3scale-app-id", value if app_key is None else f"{value}:{app_key}")
        headers.add("x-3scale-cluster-name", upstream.name)
        url = f"{upstream.scheme}://{upstream.authority}{upstream.path}"
        url += f"?{upstream.query}" if upstream.query else ""
        headers.add("x-3scale-upstream-url", url)
        headers.add("x-3scale-timeout", str(upstream.timeout_ms))
        headers.add("x-3scale-service-id", service.id)
        headers.add("x-3scale-service-token", service.token)
        headers.add("x-3scale-usages", json.dumps(usages, separators=(",", ":")))
        count("passed_through")
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action:
        self.response.headers.set("powered-by", "3scale")
        return Action.CONTINUE


# What a route depends on, in the order Root.route reads them.  Routes are memoised per these headers' values:
# parsing the URL and matching authorities and rules is most of a cached request's work.  Bounded: short paths
# only, and the memo starts over when full.
ROUTE_HEADERS = (":scheme", "x-forwarded-proto", ":authority", ":path", ":method")
ROUTE_MEMO_ENTRIES = 1024
ROUTE_MEMO_MAX_PATH = 512
RouteKey = tuple[str | None, ...]


class Root(RootContext):
    http_context = Authorize

    def __init__(self, context_id: int) -> None:
        super().__init__(context_id)
        self.configuration: Configuration | None = None
        self.routes: dict[RouteKey, tuple[RequestUrl, Service | None, dict[str, int]]] = {}
        self.cache: AuthorizationCache | None = None
        self.fetcher: SystemFetcher | None = None

    def route(self, key: RouteKey) -> tuple[RequestUrl, Service | None, dict[str, int]]:
        """The parsed URL, the service its authority selects (None: unknown) and the usages of its rules.

        ``key``: the values of :data:`ROUTE_HEADERS`; memoised in ``routes`` (the caller looks there first).
        Raises :class:`BadUrl` when they make no URL.
        """
        scheme, forwarded_proto, authority, path, method = key
        if authority is None or path is None:
            raise BadUrl("no :authority or :path")
        assert self.configuration is not None
        method = method or ""
        url = parse_url(scheme or forwarded_proto or "https", authority, path)
        service = next((service for service in self.configuration.services
                        if service.matches_authority(url.authority)), None)
        found = (url, service, usages_for(service.mapping_rules, method, url) if service is not None else {})
        if len(path) <= ROUTE_MEMO_MAX_PATH:
            if len(self.routes) >= ROUTE_MEMO_ENTRIES:
                self.routes.clear()
            self.routes[key] = found
        return found

    def on_configure(self, config: bytes) -> bool:
        try:
            data = json.loads(config) if config.strip() else None
        except ValueError as error:
            log.error(f"3scale: plugin configuration refused: it is not JSON ({error}); fix: give the module's "
                      "configuration as a JSON object (the mesh turns YAML config into JSON)")
            return False
        try:
            configuration = parse_configuration(data)
        except ConfigProblem as problem:
            log.error(f"3scale: plugin configuration refused: {problem}")
            return False
        self.configuration = configuration
        self.routes.clear()
        backend = configuration.backend
        assert backend is not None
        self.cache = AuthorizationCache(self, backend) if backend.cache is not None else None
        self.fetcher = SystemFetcher(self, configuration) if configuration.system is not None else None
        periods = [period for period in (
            backend.cache.flush_period_ms if backend.cache is not None else None,
            1000 if self.fetcher is not None else None) if period]
        self.set_tick_period(min(periods) if periods else 0)
        if self.fetcher is not None:
            self.fetcher.fetch_all()
        return True

    def on_tick(self) -> None:
        if self.cache is not None:
            if self.cache.admitted:
                count("authorized", self.cache.admitted)
                self.cache.admitted = 0
            self.cache.on_tick()
        if self.fetcher is not None:
            self.fetcher.on_tick()
