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
from credentials import Credential
from problems import ConfigProblem
from rules import BadUrl, RequestUrl, parse_url, usages_for
from system import SystemFetcher

from meshext.sdk import Action, CalloutError, Counter, HttpCallResponse, HttpContext, RootContext, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from config import Upstream

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
    response_headers_to_add = {"powered-by": "3scale"}  # on every response, local replies included

    def on_request_headers(self, end_of_stream: bool) -> Action:
        root = self.root
        # Every header this path reads, in one host call: in Envoy that costs less than a call per header.
        memo_key = self.request.headers.get_many(root.request_headers)
        prepared = root.prepared.get(memo_key) or root.prepare(memo_key)
        if isinstance(prepared, str):
            return self.reply(prepared)
        url, service, credential, usages, cache_key = prepared
        if credential is None:  # its sources read Envoy's metadata or log: resolved on every request
            credential = service.credentials.resolve(root.header_lookup(memo_key), url)
            if credential is None:
                return self.reply("missing_credentials")
            if not usages:
                return self.reply("no_mapping_rule")
        if service.token is None:  # a system fetch has not brought it yet
            return self.reply("authentication_failed")
        if root.passthrough_metadata:
            return self.pass_metadata(service, credential, usages)
        cache = root.cache
        if cache is not None:
            verdict = cache.admit(self, cache_key or cache.key_for(service, credential), service, credential, usages)
            if verdict == "":  # admitted without a callout (counted at the next tick: a host call per flush)
                return Action.CONTINUE
            if verdict is None:
                return Action.PAUSE  # cache.admit made the callout; its answer resumes or replies
            return self.reply(verdict)
        upstream = root.upstream
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

    def pass_metadata(self, service: Service, credential: Credential,
                      usages: dict[str, int]) -> Action:
        assert service.token is not None  # on_request_headers replied without one
        upstream = self.root.upstream
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



# What a route depends on, in the order Root.prepare reads them.  What a request needs before the cache or the
# backend decides (its URL, service, credentials, usages and cache key) is memoised per these headers' values and
# those the credential sources read (Root.request_headers): parsing the URL, matching authorities and rules and
# resolving credentials are most of a cached request's work.  Bounded: short values only, and the memo starts
# over when full.
ROUTE_HEADERS = (":scheme", "x-forwarded-proto", ":authority", ":path", ":method")
REQUEST_MEMO_ENTRIES = 1024
REQUEST_MEMO_MAX_CHARS = 1024  # of the memo key's header values together

# (url, service, credential or None: resolved on every request, usages, cache key or None)
Prepared = tuple[RequestUrl, Service, Credential | None, dict[str, int], str | None]
MemoKey = tuple[str | None, ...]


class Root(RootContext):
    http_context = Authorize

    def __init__(self, context_id: int) -> None:
        super().__init__(context_id)
        self.configuration: Configuration | None = None
        self.passthrough_metadata = False
        # Every header a request's route and credentials read (ROUTE_HEADERS, then the credential sources'):
        # their values are the memo key.
        self.request_headers = ROUTE_HEADERS
        self.prepared: dict[MemoKey, Prepared | str] = {}
        self.cache: AuthorizationCache | None = None
        self.fetcher: SystemFetcher | None = None

    @property
    def upstream(self) -> Upstream:
        """The backend's upstream (``backend.upstream``)."""
        assert self.configuration is not None and self.configuration.backend is not None  # parse_configuration
        return self.configuration.backend.upstream

    def header_lookup(self, memo_key: MemoKey) -> Callable[[str], str | None]:
        """The credential sources' header lookup, from the values of :attr:`request_headers`."""
        return dict(zip(self.request_headers, memo_key, strict=True)).get

    def prepare(self, memo_key: MemoKey) -> Prepared | str:
        """What the request with these headers needs before a decision, or the outcome to reply with.

        ``memo_key``: the values of :attr:`request_headers`; memoised in ``prepared`` (the caller looks there
        first), except a URL that does not parse, which is logged each time.
        """
        scheme, forwarded_proto, authority, path, method = memo_key[:len(ROUTE_HEADERS)]
        assert self.configuration is not None  # Envoy creates no stream before a configuration was accepted
        try:
            if authority is None or path is None:
                raise BadUrl("no :authority or :path")
            url = parse_url(scheme or forwarded_proto or "https", authority, path)
        except BadUrl as error:
            log.info(f"3scale: request URL does not parse ({error})")
            return "authentication_failed"
        service = next((service for service in self.configuration.services
                        if service.matches_authority(url.authority)), None)
        prepared: Prepared | str
        if service is None:
            prepared = "unknown_service"
        else:
            usages = usages_for(service.mapping_rules, method or "", url)
            if not service.credentials.memoisable:
                prepared = (url, service, None, usages, None)
            else:
                credential = service.credentials.resolve(self.header_lookup(memo_key), url)
                if credential is None:
                    prepared = "missing_credentials"
                elif not usages:
                    prepared = "no_mapping_rule"
                else:
                    cache_key = self.cache.key_for(service, credential) if self.cache is not None else None
                    prepared = (url, service, credential, usages, cache_key)
        if sum(len(value) for value in memo_key if value) <= REQUEST_MEMO_MAX_CHARS:
            if len(self.prepared) >= REQUEST_MEMO_ENTRIES:
                self.prepared.clear()
            self.prepared[memo_key] = prepared
        return prepared

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
        self.passthrough_metadata = configuration.passthrough_metadata
        self.request_headers = ROUTE_HEADERS + tuple(sorted({
            name for service in configuration.services for name in service.credentials.header_names}))
        self.prepared.clear()
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
            self.cache.on_tick()
            if self.cache.admitted:
                count("authorized", self.cache.admitted)
                self.cache.admitted = 0
        if self.fetcher is not None:
            self.fetcher.on_tick()
