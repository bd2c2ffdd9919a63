"""A 3scale backend simulator: the Service Management API subset the filter uses, plus System's proxy config.

A real HTTP server (``http.server``, loopback by default) speaking
Apisonator's protocol (3scale/apisonator ``app/api/internal``, ``lib/3scale/
backend/{listener,transactor,validators,errors}.rb``):

- ``GET /transactions/authorize.xml`` and ``GET /transactions/authrep.xml``:
  ``service_token`` + ``service_id``, ``user_key`` or ``app_id`` [+
  ``app_key``], ``usage[metric]=N``; **200** with the status XML when
  authorized, **409** with it (``<reason>``) when not; authrep records the
  usage only when authorized.  Errors raised before an authorization result
  answer ``<error code="…">message</error>`` with 403 (``service_token_invalid``,
  ``provider_key_or_service_token_required``, ``user_key_invalid``,
  ``authentication_error``, ``usage_value_invalid``), 404
  (``application_not_found``, ``metric_invalid``) or 422
  (``service_id_missing``).
- ``POST /transactions.xml`` (report): a form of ``transactions[i][app_id|
  user_key]`` and ``transactions[i][usage][metric]``; **202** empty, usage
  recorded without limit checks (as Apisonator's asynchronous report);
  transactions naming unknown applications or metrics are dropped (logged).
- ``3scale-options`` header (URL-encoded, as Apisonator reads it):
  ``rejection_reason_header=1`` adds ``3scale-rejection-reason: <code>`` to
  409s, ``no_body=1`` drops the body of authorization results and errors,
  ``limit_headers=1`` adds ``3scale-limit-remaining`` / ``-reset`` /
  ``-max-value`` (the most constrained limit), ``hierarchy=1`` adds
  ``<hierarchy>``, ``flat_usage=1`` stops child usage counting for parents.
- Validation order as Apisonator's: service credentials, credentials
  present and not both, the application, usage values and metrics, then
  app key, application state, service state, limits (first failure wins).
  A limit holds when ``current + requested <= max``, child usage counting
  for its parent metric; periods minute … year are calendar periods in
  UTC (weeks from Monday), plus ``eternity``.
- ``GET /admin/api/services/<id>/proxy/configs/<env>/latest.json?access_token=…``:
  3scale System's proxy configuration with the service's ``mapping_rules``
  and its token, for the filter's ``system`` section.
- ``GET /status`` and ``GET /check.txt`` (health); ``GET /_simulator/usage``
  (not 3scale: every application's recorded totals as JSON, for tests and
  for looking).

The services, applications, plans, metrics and limits come from a YAML file
(:class:`SimulatorConfig`; ``meshext 3scale-backend serve --config FILE``).
"""

from __future__ import annotations

import calendar
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape, quoteattr

import pydantic
import yaml

from meshext.errors import MeshextError, first_validation_problem

CONTENT_TYPE = "application/vnd.3scale-v2.0+xml"
PERIODS = ("minute", "hour", "day", "week", "month", "year", "eternity")
Period = Literal["minute", "hour", "day", "week", "month", "year", "eternity"]


# -- the file ---------------------------------------------------------------------------------------------------

class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Metric(_Model):
    """A metric; ``children`` are its methods (their usage counts for it too)."""

    name: str
    children: list[str] = []


class Limit(_Model):
    metric: str
    period: Period
    value: int = pydantic.Field(ge=0)


class Plan(_Model):
    name: str
    limits: list[Limit] = []


class Application(_Model):
    """An application: a ``user_key`` (backend version 1 services) or an ``id`` with ``keys``."""

    id: str | None = None
    user_key: str | None = None
    keys: list[str] = []
    plan: str
    state: Literal["active", "suspended"] = "active"

    @pydantic.model_validator(mode="after")
    def _one_identity(self) -> Application:
        if (self.id is None) == (self.user_key is None):
            raise ValueError("give an application either an id or a user_key")
        return self


class MappingRule(_Model):
    """A rule System hands out in the proxy configuration."""

    http_method: str = "GET"
    pattern: str
    metric_system_name: str = "hits"
    delta: int = 1
    last: bool = False


class ThreescaleService(_Model):
    id: str
    token: str
    backend_version: Literal["1", "2", "oidc"] = "1"
    state: Literal["active", "suspended"] = "active"
    metrics: list[Metric] = [Metric(name="hits")]
    plans: list[Plan] = []
    applications: list[Application] = []
    mapping_rules: list[MappingRule] = []


class SimulatorConfig(_Model):
    """The simulator's file: ``services`` and the System ``access_tokens`` that may read proxy configs."""

    services: list[ThreescaleService]
    access_tokens: list[str] = []

    @pydantic.model_validator(mode="after")
    def _references(self) -> SimulatorConfig:
        for service in self.services:
            metrics = {metric.name for metric in service.metrics}
            metrics |= {child for metric in service.metrics for child in metric.children}
            plans = {plan.name for plan in service.plans}
            for plan in service.plans:
                for limit in plan.limits:
                    if limit.metric not in metrics:
                        raise ValueError(f"service {service.id}: plan {plan.name}: limit on unknown metric "
                                         f"{limit.metric!r}")
            for application in service.applications:
                if application.plan not in plans:
                    raise ValueError(f"service {service.id}: application {application.id or application.user_key}: "
                                     f"unknown plan {application.plan!r}")
        return self


def load_config(path: Path) -> SimulatorConfig:
    """The simulator's YAML file, or a MeshextError naming the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise MeshextError(f"cannot read the simulator file: {error.strerror}", where=str(path),
                           fix="give the path of a YAML file with services") from None
    except yaml.YAMLError as error:
        raise MeshextError(f"not YAML: {error}", where=str(path), fix="correct the YAML syntax") from None
    try:
        return SimulatorConfig.model_validate(data)
    except pydantic.ValidationError as error:
        location, problem = first_validation_problem(error, "services")
        raise MeshextError(problem["msg"], where=f"{path}: {location}",
                           fix="see the file format in extensions/3scale/README.md (The simulator)") from None


# -- periods ----------------------------------------------------------------------------------------------------

def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime] | None:
    """[start, end) of the calendar ``period`` holding ``now`` (UTC); None for eternity."""
    if period == "eternity":
        return None
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + timedelta(days=days)
    start = day.replace(month=1, day=1)
    return start, start.replace(year=start.year + 1)


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S +0000")


# -- the protocol ------------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error Apisonator raises before any authorization result (``<error code=…>``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def xml(self) -> str:
        return (f'<?xml version="1.0" encoding="UTF-8"?><error code={quoteattr(self.code)}>'
                f"{escape(self.message)}</error>")


class Denied(Exception):
    """A validator refused: 409 with ``reason`` (``code`` goes in ``3scale-rejection-reason``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Backend:
    """The simulator's state: the configuration and the usage recorded per application, metric and period."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        # (service id, application identity, metric, period, period start) -> value
        self.usage: dict[tuple[str, str, str, str, str], int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.reports: list[dict[str, str]] = []    # every accepted report's form

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    def service(self, params: dict[str, str]) -> ThreescaleService:
        token, service_id = params.get("service_token", ""), params.get("service_id", "")
        if not token and not params.get("provider_key"):
            raise ApiError(403, "provider_key_or_service_token_required",
                           "Provider key or service token are required")
        if not service_id:
            raise ApiError(422, "service_id_missing", "Service ID is missing")
        for service in self.config.services:
            if service.id == service_id and service.token == token:
                return service
        raise ApiError(403, "service_token_invalid", f'service token "{token}" or service id "{service_id}" is invalid')

    @staticmethod
    def application(service: ThreescaleService, app_id: str, user_key: str) -> Application:
        if app_id and user_key:
            raise ApiError(403, "authentication_error", "either app_id or user_key is allowed, not both")
        if user_key:
            for application in service.applications:
                if service.backend_version == "1" and application.user_key == user_key:
                    return application
            raise ApiError(403, "user_key_invalid", f'user key "{user_key}" is invalid')
        if app_id:
            for application in service.applications:
                if application.id == app_id:
                    return application
            raise ApiError(404, "application_not_found", f'application with id="{app_id}" was not found')
        if service.backend_version == "1":
            raise ApiError(403, "user_key_invalid", "user key is missing")
        raise ApiError(404, "application_not_found", "application id is missing")

    @staticmethod
    def identity(application: Application) -> str:
        return f"user_key:{application.user_key}" if application.user_key is not None else f"app_id:{application.id}"

    @staticmethod
    def parents(service: ThreescaleService) -> dict[str, str]:
        return {child: metric.name for metric in service.metrics for child in metric.children}

    def requested_usage(self, service: ThreescaleService, usage: dict[str, str], flat: bool) -> dict[str, int]:
        """Usage per metric, children added to their parents unless ``flat``; ``#N`` values set, not add."""
        known = {metric.name for metric in service.metrics} | set(self.parents(service))
        result: dict[str, int] = {}
        for name, raw in usage.items():
            if not re.fullmatch(r"#?[0-9]+", raw.strip()):
                raise ApiError(403, "usage_value_invalid", f'usage value "{raw}" for metric "{name}" is invalid')
            if name not in known:
                raise ApiError(404, "metric_invalid", f'metric "{name}" is invalid')
            value = int(raw.strip().lstrip("#"))
            result[name] = result.get(name, 0) + value
            parent = self.parents(service).get(name)
            if parent is not None and not flat:
                result[parent] = result.get(parent, 0) + value
        return result

    def current(self, service: ThreescaleService, application: Application, metric: str, period: str) -> int:
        bounds = period_bounds(period, self.now())
        start = _timestamp(bounds[0]) if bounds else ""
        return self.usage.get((service.id, self.identity(application), metric, period, start), 0)

    def record(self, service: ThreescaleService, application: Application, usage: dict[str, int]) -> None:
        now = self.now()
        for metric, value in usage.items():
            for period in PERIODS:
                bounds = period_bounds(period, now)
                key = (service.id, self.identity(application), metric, period, _timestamp(bounds[0]) if bounds else "")
                self.usage[key] = self.usage.get(key, 0) + value

    def limits(self, service: ThreescaleService, application: Application) -> list[Limit]:
        plan = next(plan for plan in service.plans if plan.name == application.plan)
        return sorted(plan.limits, key=lambda limit: (limit.metric, PERIODS.index(limit.period)))

    def validate(self, service: ThreescaleService, application: Application, params: dict[str, str],
                 requested: dict[str, int]) -> None:
        if service.backend_version != "1" and application.keys:
            app_key = params.get("app_key", "")
            if not app_key and service.backend_version == "2":
                raise Denied("application_key_invalid", "application key is missing")
            if app_key and app_key not in application.keys:
                raise Denied("application_key_invalid", f'application key "{app_key}" is invalid')
        if application.state != "active":
            raise Denied("application_not_active", "application is not active")
        if service.state != "active":
            raise Denied("service_not_active", "service is not active")
        for limit in self.limits(service, application):
            current = self.current(service, application, limit.metric, limit.period)
            if current + requested.get(limit.metric, 0) > limit.value:
                raise Denied("limits_exceeded", "usage limits are exceeded")

    def status_xml(self, service: ThreescaleService, application: Application, denied: Denied | None,
                   hierarchy: bool) -> str:
        parts = ['<?xml version="1.0" encoding="UTF-8"?><status>']
        parts.append("<authorized>true</authorized>" if denied is None
                     else f"<authorized>false</authorized><reason>{escape(denied.reason)}</reason>")
        parts.append(f"<plan>{escape(application.plan)}</plan>")
        limits = self.limits(service, application)
        if limits:
            parts.append("<usage_reports>")
            now = self.now()
            for limit in limits:
                current = self.current(service, application, limit.metric, limit.period)
                exceeded = ' exceeded="true"' if current > limit.value else ""
                parts.append(f"<usage_report metric={quoteattr(limit.metric)} "
                             f"period={quoteattr(limit.period)}{exceeded}>")
                bounds = period_bounds(limit.period, now)
                if bounds:
                    parts.append(f"<period_start>{_timestamp(bounds[0])}</period_start>"
                                 f"<period_end>{_timestamp(bounds[1])}</period_end>")
                parts.append(f"<max_value>{limit.value}</max_value><current_value>{current}</current_value>"
                             "</usage_report>")
            parts.append("</usage_reports>")
        if hierarchy:
            parts.append("<hierarchy>")
            for metric in service.metrics:
                parts.append(f"<metric name={quoteattr(metric.name)} children={quoteattr(' '.join(metric.children))}/>")
            parts.append("</hierarchy>")
        parts.append("</status>")
        return "".join(parts)

    def limit_headers(self, service: ThreescaleService, application: Application,
                      requested: dict[str, int]) -> list[tuple[str, str]]:
        """``3scale-limit-*``: the limit allowing the fewest more identical calls (ties: the longer period)."""
        best: tuple[int, int, Limit] | None = None
        for limit in self.limits(service, application):
            per_call = requested.get(limit.metric, 0)
            left = limit.value - self.current(service, application, limit.metric, limit.period)
            calls = max(left, 0) // per_call if per_call else max(left, 0)
            rank = (calls, -PERIODS.index(limit.period))
            if best is None or rank < best[:2]:
                best = (*rank, limit)
        if best is None:
            return [("3scale-limit-remaining", "-1"), ("3scale-limit-reset", "-1")]
        limit = best[2]
        bounds = period_bounds(limit.period, self.now())
        reset = int((bounds[1] - self.now()).total_seconds()) if bounds else -1
        return [("3scale-limit-remaining", str(best[0])), ("3scale-limit-reset", str(reset)),
                ("3scale-limit-max-value", str(limit.value))]

    def authorize(self, params: dict[str, str], options: dict[str, str],
                  report: bool) -> tuple[int, list[tuple[str, str]], str]:
        """(status, headers, body) of authorize.xml (``report`` False) or authrep.xml."""
        with self.lock:
            service = self.service(params)
            application = self.application(service, params.get("app_id", ""), params.get("user_key", ""))
            usage = {key[6:-1]: value for key, value in params.items()
                     if key.startswith("usage[") and key.endswith("]")}
            flat = options.get("flat_usage") == "1"
            requested = self.requested_usage(service, usage, flat)
            denied = None
            try:
                self.validate(service, application, params, requested)
            except Denied as refusal:
                denied = refusal
            if denied is None and report:
                self.record(service, application, requested)
            headers: list[tuple[str, str]] = []
            if denied is not None and options.get("rejection_reason_header") == "1":
                headers.append(("3scale-rejection-reason", denied.code))
            if options.get("limit_headers") == "1" and (denied is None or denied.code == "limits_exceeded"):
                headers += self.limit_headers(service, application, requested)
            body = self.status_xml(service, application, denied, options.get("hierarchy") == "1")
            return (200 if denied is None else 409), headers, body

    def report(self, form: dict[str, str], flat: bool = False) -> None:
        with self.lock:
            service = self.service(form)
            transactions: dict[str, dict[str, str]] = {}
            for key, value in form.items():
                match = re.fullmatch(r"transactions\[(\d+)\]\[(.+)", key)
                if match:
                    transactions.setdefault(match[1], {})["[" + match[2]] = value
            for index, transaction in sorted(transactions.items(), key=lambda item: int(item[0])):
                try:
                    application = self.application(service, transaction.get("[app_id]", ""),
                                                    transaction.get("[user_key]", ""))
                    usage = {key[8:-1]: value for key, value in transaction.items()
                             if key.startswith("[usage][") and key.endswith("]")}
                    requested = self.requested_usage(service, usage, flat)
                except ApiError as error:
                    print(f"3scale-backend: report transaction {index} dropped: {error.code}: {error.message}",
                          flush=True)
                    continue
                self.record(service, application, {metric: value for metric, value in requested.items() if value})
            self.reports.append(form)

    def totals(self) -> dict[str, dict[str, dict[str, int]]]:
        """service id -> application -> metric -> all-time usage."""
        with self.lock:
            result: dict[str, dict[str, dict[str, int]]] = {}
            for (service_id, application, metric, period, _start), value in self.usage.items():
                if period == "eternity":
                    result.setdefault(service_id, {}).setdefault(application, {})[metric] = value
            return result

    def proxy_config(self, service_id: str, environment: str, access_token: str) -> tuple[int, dict[str, object]]:
        if access_token not in self.config.access_tokens:
            return 403, {"error": "Your access token does not have the correct permissions"}
        for service in self.config.services:
            if service.id == service_id:
                rules = [{"id": index + 1, **rule.model_dump()} for index, rule in enumerate(service.mapping_rules)]
                content = {"id": int(service.id) if service.id.isdigit() else service.id,
                           "backend_version": service.backend_version,
                           "backend_authentication_type": "service_token",
                           "backend_authentication_value": service.token,
                           "proxy": {"proxy_rules": rules}}
                return 200, {"proxy_config": {"id": 1, "version": 1, "environment": environment, "content": content}}
        return 404, {"status": "Not found"}


# -- HTTP --------------------------------------------------------------------------------------------------------

PROXY_CONFIG = re.compile(r"/admin/api/services/([^/]+)/proxy/configs/([^/]+)/latest\.json")


class Handler(BaseHTTPRequestHandler):
    """One HTTP request to the simulator."""

    backend: Backend
    protocol_version = "HTTP/1.1"
    server_version = "meshext-3scale-backend"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: str, headers: Sequence[tuple[str, str]] = (),
              content_type: str = CONTENT_TYPE) -> None:
        data = body.encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _options(self) -> dict[str, str]:
        return dict(parse_qsl(self.headers.get("3scale-options", ""), keep_blank_values=True))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        self.backend.requests.append(("GET", self.path))
        if url.path in ("/transactions/authorize.xml", "/transactions/authrep.xml"):
            options = self._options()
            no_body = options.get("no_body") == "1" or params.get("no_body") == "true"
            try:
                status, headers, body = self.backend.authorize(params, options, url.path.endswith("authrep.xml"))
            except ApiError as error:
                self._send(error.status, "" if no_body else error.xml())
                return
            self._send(status, "" if no_body else body, headers)
        elif url.path in ("/status", "/check.txt"):
            health = '{"status":"ok","version":{"backend":"meshext-simulator"}}' if url.path == "/status" else ""
            self._send(200, health, content_type="application/json")
        elif url.path == "/_simulator/usage":
            self._send(200, json.dumps(self.backend.totals(), sort_keys=True), content_type="application/json")
        elif match := PROXY_CONFIG.fullmatch(url.path):
            status, document = self.backend.proxy_config(match[1], match[2], params.get("access_token", ""))
            self._send(status, json.dumps(document), content_type="application/json")
        else:
            self._send(404, "")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode(errors="replace"), keep_blank_values=True))
        self.backend.requests.append(("POST", self.path))
        if url.path != "/transactions.xml":
            self._send(404, "")
            return
        try:
            self.backend.report(form, self._options().get("flat_usage") == "1")
        except ApiError as error:
            self._send(error.status, "" if self._options().get("no_body") == "1" else error.xml())
            return
        self._send(202, "")


class BackendServer:
    """The simulator serving on ``host:port`` in a thread (``port`` 0: any free port); a context manager."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        self.backend = backend
        handler = type("BoundHandler", (Handler,), {"backend": backend})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.server.verbose = verbose  # type: ignore[attr-defined]
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackendServer:
        self.thread = threading.Thread(target=self.server.serve_forever, name="3scale-backend", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join()

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
