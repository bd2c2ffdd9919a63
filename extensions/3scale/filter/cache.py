"""Authorization cache with batched reports (``backend.cache``; off unless configured).

Not in the 3scale module, which makes one authrep per request.  With
``backend: {upstream: …, cache: {flush_period: 1000, ttl: 60000}}`` (ms):

- **Authorizations** are cached per service + credentials (app_key
  included) in Envoy's shared data, so all workers share them: the
  backend's answer to ``authorize.xml`` (``hierarchy=1``): authorized or
  the rejection reason, and each usage limit (metric, max, current value,
  end of period), kept ``ttl`` ms at most and never past a limit's period.
  The first request of an application (a miss) waits for that authorize
  call; the backend checks its usage there, as authrep would.
- **Usage** the cache admits is counted in the worker's VM (``local``)
  and sent every ``flush_period`` with one ``POST /transactions.xml`` per
  service; once the backend accepted it (202), each reported application
  is authorized again, which refreshes the shared entry.
- **Hits** decide locally: the request is admitted when, for every limit,
  ``current + this worker's unreported usage + the request's usage <= max``
  (a child metric's usage counts for its parent, from the hierarchy);
  otherwise 429 ``Usage limit exceeded``.  A cached denial answers as the
  module would (429 for ``limits_exceeded``, else 403).

**How far limits can overshoot.**  A worker sees the backend's value as of
the last refresh plus its own usage, not the other workers' unreported
usage.  So per application, limit and period: with one worker (or one
Envoy with ``--concurrency 1``) the cache admits exactly what the backend
would; with ``W`` workers, each admits at most the quota left at the last
refresh, ``Q = max - current``, so the backend records at most
``max + (W - 1) * Q`` -- and after every worker's next flush (one
``flush_period`` plus a report and an authorize round trip) every worker
sees the real total and denies.  In request-rate terms: the excess is also
at most what the other ``W - 1`` workers admit for that application within
one flush period, ``(W - 1) * rate_per_worker * flush_period``.  The
backend's recorded totals always equal the usage served: reports are not
refused for exceeding a limit, and a report that fails with no answer or a
5xx is sent again with the next flush (a 4xx is logged and dropped).
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

import json
import time

import authrep
import statusxml

from meshext.sdk import CalloutError, HttpCallResponse, SharedData, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from config import Backend, Service
    from credentials import Credential
    from filter import Authorize, Root

CACHE_OPTIONS = "rejection_reason_header=1&hierarchy=1"
KEY_PREFIX = "meshext.3scale.auth|"
NOTHING: dict[str, int] = {}  # no usage reported (never written)
_MONTH_DAYS = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _epoch(timestamp: str | None) -> float | None:
    """Seconds since 1970 of Apisonator's ``2024-01-01 00:00:00 +0000`` (None when absent or unreadable)."""
    if not timestamp:
        return None
    try:
        date, clock, zone = timestamp.split(" ")
        year, month, day = (int(part) for part in date.split("-"))
        hour, minute, second = (int(part) for part in clock.split(":"))
        offset = (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60) * (-1 if zone[0] == "-" else 1)
    except (ValueError, IndexError):
        return None
    leap = month > 2 and (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0))
    previous = year - 1
    days = previous * 365 + previous // 4 - previous // 100 + previous // 400 - 719162
    days += _MONTH_DAYS[month - 1] + leap + day - 1
    return days * 86400 + hour * 3600 + minute * 60 + second - offset


def _add(into: dict[str, int], usages: dict[str, int], times: int = 1) -> None:
    for name, delta in usages.items():
        into[name] = into.get(name, 0) + delta * times


def _subtract(table: dict[str, dict[str, int]], key: str, usages: dict[str, int]) -> None:
    """Take ``usages`` off ``table[key]``, dropping what reaches zero (and the key, once empty)."""
    remaining = table.get(key, {})
    for name, delta in usages.items():
        remaining[name] = remaining.get(name, 0) - delta
        if remaining[name] == 0:
            del remaining[name]
    if not remaining:
        table.pop(key, None)


class Entry:
    """A cached authorization: ``authorized``, ``reason``, ``limits``, ``children`` (metric hierarchy).

    ``limits``: ``[metric, max, current, period end (epoch seconds or None)]`` each.  ``version``: the
    shared-data version it was read at (-1: not read from shared data).
    """

    __slots__ = ("authorized", "reason", "limits", "children", "expires", "version", "valid_until", "rooms",
                 "parent_rooms")

    def __init__(self, authorized: bool, reason: str | None,
                 limits: list[list[Any]],
                 children: dict[str, list[str]], expires: float, version: int = -1) -> None:
        self.authorized, self.reason, self.limits = authorized, reason, limits
        self.children, self.expires, self.version = children, expires, version
        # What every hit checks, worked out once per entry: until when it may be used (its ttl, and no
        # limit's period past its end) and, per limit, the room left: ``rooms`` for a metric without
        # children, ``parent_rooms`` with the metrics whose usage counts against a parent's limit.
        self.valid_until = min([expires, *(end for _, _, _, end in limits if end is not None)])
        self.rooms = [(maximum - current, metric) for metric, maximum, current, _ in limits
                      if not children.get(metric)]
        self.parent_rooms = [(maximum - current, (metric, *children[metric])) for metric, maximum, current, _ in limits
                             if children.get(metric)]

    def to_json(self) -> str:
        return json.dumps([self.authorized, self.reason, self.limits, self.children, self.expires])

    @classmethod
    def from_json(cls, data: bytes, version: int) -> Entry:
        authorized, reason, limits, children, expires = json.loads(data)
        return cls(authorized, reason, limits, children, expires, version)


class Run:
    """A streak of hits of one application with the same usages on the same entry, admitted by counting.

    Started by a hit that :meth:`AuthorizationCache._decide` admitted: ``limit`` more requests with ``usages``
    fit in the entry's rooms after it, so the next ones need only count themselves (``admitted``) instead of
    checking every limit and adding their usage one metric at a time.  The count joins the VM's ``local``
    usage when the streak ends (another entry version, other usages, the limit reached) or at the next
    tick or report answer (:meth:`AuthorizationCache._settle`): the same decisions, in fewer steps.
    """

    __slots__ = ("version", "valid_until", "usages", "limit", "admitted")

    def __init__(self, entry: Entry, usages: dict[str, int], limit: int) -> None:
        self.version, self.valid_until = entry.version, entry.valid_until  # the entry's, read on every hit
        self.usages, self.limit, self.admitted = usages, limit, 0


UNLIMITED = 1 << 62  # a run's limit when no limit of the entry counts the request's usages


def _run_limit(entry: Entry, local: dict[str, int], usages: dict[str, int]) -> int:
    """How many more requests with ``usages`` the entry admits on top of ``local`` (which fits every room)."""
    if min(usages.values()) < 0:  # a negative delta makes room: such requests are decided one by one
        return 0
    limit = UNLIMITED
    for room, metric in entry.rooms:
        delta = usages.get(metric, 0)
        if delta:
            limit = min(limit, (room - local.get(metric, 0)) // delta)
    for room, metrics in entry.parent_rooms:
        delta = sum(usages.get(metric, 0) for metric in metrics)
        if delta:
            limit = min(limit, (room - sum(local.get(metric, 0) for metric in metrics)) // delta)
    return limit


class AuthorizationCache:
    """One VM's side of the cache: the shared entries, this worker's unreported usage, the flush."""

    def __init__(self, root: Root, backend: Backend) -> None:
        self.root = root
        self.upstream = backend.upstream
        assert backend.cache is not None
        self.settings = backend.cache
        # key -> usage this VM admitted that no refreshed entry includes yet: what a hit adds to the entry's
        # values.  Its part not reported yet is what the next flush sends (local - in_flight).
        self.local: dict[str, dict[str, int]] = {}
        self.in_flight: dict[str, dict[str, int]] = {}    # key -> usage reported, entry not refreshed yet
        self.runs: dict[str, Run] = {}  # key -> the hits counted but not in ``local`` yet
        self.owners: dict[str, tuple[Service, Credential]] = {}  # key -> who the usage is for
        self.parsed: dict[str, Entry] = {}  # key -> its shared entry as last parsed
        self.admitted = 0  # hits admitted since the last tick, for threescale_authorized_total

    def key_for(self, service: Service, credential: Credential) -> str:
        """The application's shared-data key (also its key in this VM's tables)."""
        kind, value, app_key = credential
        # length-prefixed parts: no credential, whatever it holds, can spell another one's key
        parts = (service.id, kind, value, "" if app_key is None else "=" + app_key)
        return KEY_PREFIX + "".join(f"{len(part)}:{part}" for part in parts)

    def _store(self, key: str, entry: Entry) -> None:
        SharedData.set(key, entry.to_json())

    def admit(self, context: Authorize, key: str, service: Service, credential: Credential,
              usages: dict[str, int]) -> str | None:
        """``""`` admitted, a reply outcome, or None: a miss, the authorize call made (the request waits).

        ``key``: the application's, from :meth:`key_for`.  A hit runs on every request of a hot application.
        """
        found = SharedData.get(key)
        run = self.runs.get(key)
        if (run is not None and found is not None and found[1] == run.version and run.usages is usages
                and run.admitted < run.limit and time.time() < run.valid_until):
            run.admitted += 1  # the common hit: the same application, usages and entry version as the last one
            return ""
        if found is not None and found[0]:  # empty: cleared by a failed refresh, ask the backend again
            entry = self.parsed.get(key)
            if entry is None or entry.version != found[1]:  # parsed once per version of the entry
                entry = self.parsed[key] = Entry.from_json(*found)
            if time.time() < entry.valid_until:
                verdict = self._decide(key, service, credential, entry, usages)
                if verdict == "":
                    self.admitted += 1
                return verdict
        assert service.token is not None
        query = authrep.query(service.id, service.token, credential, usages)
        try:
            context.http_call(
                self.upstream.name, self._authorize_headers(query), timeout_ms=self.upstream.timeout_ms,
                callback=lambda answer: self._on_miss_answer(context, key, service, credential, usages, answer))
        except CalloutError as error:
            log.error(f"3scale: {error}")
            return "authentication_failed"
        return None

    def _authorize_headers(self, query: str) -> list[tuple[str, str]]:
        return authrep.call_headers(self.upstream, "GET", self.upstream.target("transactions/authorize.xml", query),
                                    CACHE_OPTIONS)

    def _decide(self, key: str, service: Service, credential: Credential, entry: Entry,
                usages: dict[str, int]) -> str:
        if not entry.authorized:
            return "limits_exceeded" if entry.reason == "limits_exceeded" else "authentication_failed"
        local = self.local.get(key)
        if local is None:
            local = self.local[key] = {}
            self.owners[key] = (service, credential)
        self._settle(key)
        for room, metric in entry.rooms:
            if local.get(metric, 0) + usages.get(metric, 0) > room:
                return "limits_exceeded"
        for room, metrics in entry.parent_rooms:
            if sum(local.get(metric, 0) + usages.get(metric, 0) for metric in metrics) > room:
                return "limits_exceeded"
        _add(local, usages)
        self.runs[key] = Run(entry, usages, _run_limit(entry, local, usages))
        return ""

    def _settle(self, key: str) -> None:
        """End ``key``'s run: its hits join ``local`` and ``admitted``."""
        run = self.runs.pop(key, None)
        if run is not None and run.admitted:
            _add(self.local[key], run.usages, run.admitted)
            self.admitted += run.admitted

    def _entry_from(self, answer: HttpCallResponse) -> Entry | None:
        """The entry an authorize answer gives, or None when it is not an authorization result."""
        status = answer.header(":status")
        if status not in ("200", "409"):
            return None
        try:
            result = statusxml.parse_status(answer.body)
            root = statusxml.parse(answer.body)
        except ValueError as error:
            log.warn(f"3scale: unusable authorize answer ({error})")
            return None
        reason = answer.header("3scale-rejection-reason") or (None if result.authorized else result.reason)
        children: dict[str, list[str]] = {}
        hierarchy = root.find("hierarchy")
        for metric in hierarchy.children if hierarchy is not None else ():
            children[metric.attributes.get("name", "")] = metric.attributes.get("children", "").split()
        limits = [[report.metric, report.max_value, report.current_value, _epoch(report.period_end)]
                  for report in result.usage_reports]
        return Entry(result.authorized, reason, limits, children, time.time() + self.settings.ttl_ms / 1000)

    def _on_miss_answer(self, context: Authorize, key: str, service: Service, credential: Credential,
                        usages: dict[str, int], answer: HttpCallResponse) -> None:
        entry = self._entry_from(answer)
        if entry is None:
            context.decide(authrep.outcome_of(answer) or "authentication_failed")
            return
        self._store(key, entry)
        context.decide(self._decide(key, service, credential, entry, usages) or None)

    # -- flushing --------------------------------------------------------------------------------------------

    def on_tick(self) -> None:
        """Report the usage admitted since the last flush (``flush_period``)."""
        for key in list(self.runs):
            self._settle(key)
        batch: dict[str, dict[str, int]] = {}
        for key, usage in self.local.items():
            reported = self.in_flight.get(key, NOTHING)
            unreported = {name: delta - reported.get(name, 0) for name, delta in usage.items()
                          if delta != reported.get(name, 0)}
            if unreported:
                batch[key] = unreported
        by_service: dict[str, list[str]] = {}
        for key in batch:
            by_service.setdefault(self.owners[key][0].id, []).append(key)
        for keys in by_service.values():
            self._report(keys, {key: batch[key] for key in keys})

    def _report(self, keys: list[str], batch: dict[str, dict[str, int]]) -> None:
        service = self.owners[keys[0]][0]
        assert service.token is not None
        params = [("service_id", service.id), ("service_token", service.token)]
        for index, key in enumerate(keys):
            for name, value in authrep.credential_params(self.owners[key][1]):
                params.append((f"transactions[{index}][{name}]", value))
            for metric, delta in batch[key].items():
                params.append((f"transactions[{index}][usage][{metric}]", str(delta)))
        body = "&".join(f"{authrep.encode(name)}={authrep.encode(value)}" for name, value in params)
        for key in keys:
            _add(self.in_flight.setdefault(key, {}), batch[key])
        headers = authrep.call_headers(self.upstream, "POST", self.upstream.target("transactions.xml"), None)
        headers.append(("content-type", "application/x-www-form-urlencoded"))
        try:
            self.root.http_call(self.upstream.name, headers, body, timeout_ms=self.upstream.timeout_ms,
                                callback=lambda answer: self._on_report_answer(keys, batch, answer))
        except CalloutError as error:
            log.error(f"3scale: report: {error}")
            self._retry(keys, batch)

    def _retry(self, keys: list[str], batch: dict[str, dict[str, int]]) -> None:
        """Not reported after all: the next flush sends it again (it is still in ``local``)."""
        for key in keys:
            _subtract(self.in_flight, key, batch[key])

    def _forget_in_flight(self, key: str, usages: dict[str, int]) -> None:
        """The backend counted ``usages`` (or refused them for good): no longer this VM's to add."""
        self._settle(key)
        _subtract(self.in_flight, key, usages)
        _subtract(self.local, key, usages)

    def _on_report_answer(self, keys: list[str], batch: dict[str, dict[str, int]], answer: HttpCallResponse) -> None:
        status = answer.status
        if status in (200, 202):
            for key in keys:
                self._refresh(key, batch[key])
            return
        if status is None or status >= 500:
            log.warn(f"3scale: report got {'no answer' if status is None else status}; sending it again with the "
                     "next flush")
            self._retry(keys, batch)
            return
        log.error(f"3scale: report refused with {status} ({answer.body[:200]!r}); its usage is dropped")
        for key in keys:
            self._forget_in_flight(key, batch[key])

    def _refresh(self, key: str, reported: dict[str, int]) -> None:
        service, credential = self.owners[key]
        assert service.token is not None
        query = authrep.query(service.id, service.token, credential, None)

        def on_answer(answer: HttpCallResponse) -> None:
            entry = self._entry_from(answer)
            self._forget_in_flight(key, reported)  # the backend counted it: the entry (if any) includes it now
            if entry is not None:
                self._store(key, entry)
            else:
                SharedData.set(key, "")  # unknown state: the next request asks again

        try:
            self.root.http_call(self.upstream.name, self._authorize_headers(query), callback=on_answer,
                                timeout_ms=self.upstream.timeout_ms)
        except CalloutError as error:
            log.error(f"3scale: refresh: {error}")
            self._forget_in_flight(key, reported)
            SharedData.set(key, "")
