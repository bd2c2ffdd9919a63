"""The ratelimit filter's metric: its name, label names and outcomes (the one table of these facts).

One labelled counter family, in the style of Istio's ``istio_requests_total``
and named after the outcomes of Envoy's own rate limit filters
(``ratelimit.{ok,over_limit,error}``)::

    ratelimit_requests_total{domain="bookinfo", rule="per-client", outcome="over_limit"}

- ``domain``: the configuration's ``domain``;
- ``rule``: the rule's ``name``;
- ``outcome``: ``ok`` (admitted by the rule), ``over_limit`` (denied with 429),
  ``dry_run`` (over the limit, let through: a ``dry_run`` rule) or ``failure``
  (no decision: the rate limit service gave no usable answer, or a local
  bucket could not be read consistently; ``failure_mode`` says what the
  request got).

A request counts once for every rule that applied to it, until the first
rule that denies it.  The filter imports this module inside the VM; the host
side imports it as ``meshext.extensions.ratelimit.filter.ratelimit_metrics``
(Envoy's ``stats_tags`` for :data:`LABELS`), so it imports nothing.
"""

REQUESTS = "ratelimit_requests_total"
LABELS = ("domain", "rule", "outcome")
OK = "ok"
OVER_LIMIT = "over_limit"
DRY_RUN = "dry_run"
FAILURE = "failure"
OUTCOMES = (OK, OVER_LIMIT, DRY_RUN, FAILURE)
