"""``meshext ratelimit convert``: Istio Mixer quota configuration to this extension's configuration.

Input: the documents Mixer's rate limiting used (``config.istio.io/v1alpha2``):
a ``handler`` (memquota or redisquota) with its quotas and overrides, the
``instance`` (template quota) whose dimensions name each request's counter,
the ``QuotaSpec`` that charges requests to it, the ``QuotaSpecBinding`` that
names the services, and the ``rule`` that connects instance and handler.
Output: one ServiceMeshExtension per bound service (the filter placed on that
service's sidecars, inbound, as Mixer checked requests to the destination)
with a local-mode configuration, checked against the filter's own schema,
and the list of what could not be carried over.  On those sidecars the
destination is the bound service, so a dimension naming the destination's
``app`` label or service name becomes that fixed value.

Mapping: each quota becomes a rule named after its instance; dimensions
become descriptor entries (``request.headers["x"]`` a header,
``destination.labels["app"]`` this proxy's workload label, ``source.ip`` the
peer address, ... and a trailing ``| "literal"`` the default); ``maxAmount``
and ``validDuration`` the limit; overrides keep their order (first match
wins in both).  memquota counted a rolling window and redisquota's
ROLLING_WINDOW too: both become a token bucket; FIXED_WINDOW stays a fixed
window.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshext.errors import MeshextError
from meshext.extensions.ratelimit.filter.ratelimit_config import UNIT_SECONDS, Config, check
from meshext.sdk.config import ConfigError, validate_config

# Mixer attribute expressions a descriptor entry can read, as (entry field, value).
ATTRIBUTES = {
    "request.path": ("attribute", "path"),
    "request.method": ("attribute", "method"),
    "request.host": ("attribute", "authority"),
    "source.ip": ("attribute", "source.address"),
    "source.address": ("attribute", "source.address"),
    "source.principal": ("attribute", "source.principal"),
    "source.user": ("attribute", "source.principal"),
    "source.workload.name": ("attribute", "source.workload"),
    "destination.workload.name": ("attribute", "destination.workload"),
    "destination.service.name": ("attribute", "destination.labels.app"),
}
DESTINATION_APP = "destination.labels.app"
HEADER = re.compile(r'request\.headers\[\s*"([^"]+)"\s*\]')
DESTINATION_LABEL = re.compile(r'destination\.labels\[\s*"([^"]+)"\s*\]')
LITERAL = re.compile(r'"([^"]*)"')
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@dataclass
class Conversion:
    """What ``convert`` produced."""

    config: dict[str, Any]
    extensions: list[dict[str, Any]]
    not_carried: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        """The ServiceMeshExtensions as YAML documents."""
        return yaml.safe_dump_all(self.extensions, sort_keys=False)


def convert(text: str, *, image: str, where: str = "input") -> Conversion:
    """Convert Mixer quota documents (YAML text) to the filter configuration and ServiceMeshExtensions."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as error:
        raise MeshextError(f"not YAML: {error}", where=where, fix="give the Mixer configuration as YAML") from None
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        if not isinstance(document, dict) or "kind" not in document:
            raise MeshextError("a document without 'kind'", where=where, fix="give Kubernetes-style resources")
        by_kind.setdefault(document["kind"], []).append(document)
    notes: list[str] = []
    handlers = [handler for handler in by_kind.get("handler", [])
                if _adapter(handler) in ("memquota", "redisquota")]
    if not handlers:
        raise MeshextError("no memquota or redisquota handler", where=where,
                           fix="include the handler (spec.compiledAdapter: memquota or redisquota)")
    instances = {doc["metadata"]["name"]: doc for doc in by_kind.get("instance", [])}
    charged = _charged_instances(by_kind.get("QuotaSpec", []), notes)
    ruled = {instance.split(".")[0] for rule in by_kind.get("rule", []) for action in rule["spec"].get("actions", [])
             for instance in action.get("instances", [])}
    for rule in by_kind.get("rule", []):
        if rule["spec"].get("match"):
            notes.append(f"rule {rule['metadata']['name']}: match {rule['spec']['match']!r} not carried over: "
                         "the limits apply to every request; add a rule 'match' by hand")
    rules = []
    for handler in handlers:
        adapter = _adapter(handler)
        params = handler["spec"].get("params", {})
        if adapter == "redisquota":
            notes.append(f"handler {handler['metadata']['name']}: redisquota shared its counts in Redis "
                         f"({params.get('redisServerUrl', '?')}); converted to local mode (per proxy); for one "
                         "limit across proxies use global mode with `meshext ratelimit serve`")
        for quota in params.get("quotas", []):
            instance_name = quota["name"].split(".")[0]
            instance = instances.get(instance_name)
            if instance is None:
                notes.append(f"quota {quota['name']}: no instance {instance_name!r} in the input; skipped")
                continue
            if instance_name not in ruled:
                notes.append(f"quota {quota['name']}: no rule sends instance {instance_name!r} to a handler; "
                             "converted anyway")
            if charged and instance_name not in charged:
                notes.append(f"quota {quota['name']}: no QuotaSpec charges it; converted anyway")
            # memquota's window rolled; redisquota's is per quota, FIXED_WINDOW by default.
            algorithm = "token_bucket" if adapter == "memquota" or quota.get("rateLimitAlgorithm") == "ROLLING_WINDOW" \
                else "fixed_window"
            if quota.get("bucketDuration"):
                notes.append(f"quota {quota['name']}: bucketDuration {quota['bucketDuration']} not carried over: "
                             "a token bucket refills continuously")
            rules.append(_rule(instance_name, instance, quota, algorithm, notes))
    if not rules:
        raise MeshextError("no quota could be converted", where=where, fix="see the notes: " + "; ".join(notes))
    config = {"mode": "local", "domain": "mixer", "rules": rules}
    _validate(config)
    extensions = _extensions(by_kind.get("QuotaSpecBinding", []), config, image, notes)
    return Conversion(config, extensions, notes)


def _adapter(handler: dict[str, Any]) -> str:
    spec = handler.get("spec", {})
    return str(spec.get("compiledAdapter") or spec.get("adapter") or "")


def _charged_instances(specs: list[dict[str, Any]], notes: list[str]) -> set[str]:
    charged = set()
    for spec in specs:
        for rule in spec["spec"].get("rules", []):
            if rule.get("match"):
                notes.append(f"QuotaSpec {spec['metadata']['name']}: match clauses not carried over: "
                             "add a rule 'match' by hand")
            for quota in rule.get("quotas", []):
                charged.add(quota["quota"].split(".")[0])
                if int(quota.get("charge", 1)) != 1:
                    notes.append(f"QuotaSpec {spec['metadata']['name']}: charge {quota['charge']} for "
                                 f"{quota['quota']} not carried over: each request counts 1")
    return charged


def _rule(name: str, instance: dict[str, Any], quota: dict[str, Any], algorithm: str,
          notes: list[str]) -> dict[str, Any]:
    descriptor = []
    for key, expression in instance["spec"].get("params", {}).get("dimensions", {}).items():
        entry = _entry(key, str(expression), notes, f"instance {name}: dimension {key}")
        if entry is not None:
            descriptor.append(entry)
    keys = {entry["key"] for entry in descriptor}
    limit = _limit(quota["maxAmount"], quota.get("validDuration", "1s"), notes, f"quota {quota['name']}")
    overrides = []
    for number, override in enumerate(quota.get("overrides", [])):
        dimensions = {str(key): str(value) for key, value in override.get("dimensions", {}).items()}
        dropped = sorted(set(dimensions) - keys)
        if dropped:
            notes.append(f"quota {quota['name']}: override {number} uses dimension {dropped[0]!r} that could not "
                         "be converted; override skipped")
            continue
        overrides.append({"dimensions": dimensions, "limit": _limit(
            override["maxAmount"], override.get("validDuration", quota.get("validDuration", "1s")), notes,
            f"quota {quota['name']} override {number}")})
    rule: dict[str, Any] = {"name": name, "descriptor": descriptor or [{"key": "all", "value": "all"}],
                            "algorithm": algorithm, "limit": limit}
    if overrides:
        rule["overrides"] = overrides
    return rule


def _entry(key: str, expression: str, notes: list[str], where: str) -> dict[str, Any] | None:
    alternatives = [part.strip() for part in expression.split("|")]
    default = None
    if len(alternatives) > 1 and LITERAL.fullmatch(alternatives[-1]):
        default = LITERAL.fullmatch(alternatives.pop())[1]  # type: ignore[index]
    if LITERAL.fullmatch(alternatives[0]):
        return {"key": key, "value": LITERAL.fullmatch(alternatives[0])[1]}  # type: ignore[index]
    entry: dict[str, Any] = {"key": key}
    first = alternatives[0]
    if header := HEADER.fullmatch(first):
        entry["header"] = header[1].lower()
    elif label := DESTINATION_LABEL.fullmatch(first):
        entry["attribute"] = f"destination.labels.{label[1]}"  # the bound service's app label: see _for_service
    elif first in ATTRIBUTES:
        source, value = ATTRIBUTES[first]
        entry[source] = value
    else:
        notes.append(f"{where}: {first!r} has no equivalent; dimension dropped")
        return None
    if len(alternatives) > 1:
        notes.append(f"{where}: fallbacks {' | '.join(alternatives[1:])} not carried over, only {first}"
                     + (f' | "{default}"' if default is not None else ""))
    if default is not None:
        entry["default"] = default
    return entry


def _limit(amount: Any, duration: str, notes: list[str], where: str) -> dict[str, Any]:
    seconds = _seconds(str(duration), where)
    whole = max(1, math.ceil(seconds))  # as memquota, which rounded windows up to whole seconds
    if whole != seconds:
        notes.append(f"{where}: validDuration {duration} rounded to {whole}s: windows are whole seconds")
    unit = next(name for name in ("day", "hour", "minute", "second") if whole % UNIT_SECONDS[name] == 0)
    limit: dict[str, Any] = {"requests_per_unit": int(amount), "unit": unit}
    if whole // UNIT_SECONDS[unit] != 1:
        limit["units"] = whole // UNIT_SECONDS[unit]
    return limit


def _seconds(duration: str, where: str) -> float:
    parts = DURATION.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise MeshextError(f"validDuration {duration!r} is not a duration", where=where,
                           fix="write it as Mixer did, e.g. 1s, 500ms, 1m")
    return sum(float(number) * DURATION_SECONDS[unit] for number, unit in parts)


def _validate(config: dict[str, Any]) -> None:
    try:
        check(validate_config(Config, config))
    except ConfigError as error:
        raise MeshextError(f"the converted configuration is refused by the filter's schema: {error}",
                           where="convert", fix="see the notes; fix the input or edit the result") from None


def _for_service(config: dict[str, Any], service: str) -> dict[str, Any]:
    """``config`` on the sidecars of ``service``: there the destination is that service, a fixed value."""
    if not service:
        return config
    rules = []
    for rule in config["rules"]:
        descriptor = [{"key": entry["key"], "value": service} if entry.get("attribute") == DESTINATION_APP else entry
                      for entry in rule["descriptor"]]
        rules.append({**rule, "descriptor": descriptor})
    return {**config, "rules": rules}


def _extensions(bindings: list[dict[str, Any]], config: dict[str, Any], image: str,
                notes: list[str]) -> list[dict[str, Any]]:
    services = [service for binding in bindings for service in binding["spec"].get("services", [])]
    if not services:
        notes.append("no QuotaSpecBinding: the extension applies to every workload of its namespace (default)")
        services = [{"name": "", "namespace": "default"}]
    extensions = []
    for service in services:
        spec: dict[str, Any] = {"image": image, "phase": "PreAuthZ", "priority": 100,
                                "config": _for_service(config, service.get("name", ""))}
        if service.get("name"):
            # meshext selects workloads by labels; Bookinfo's services select app=<name>.
            spec["workloadSelector"] = {"labels": {"app": service["name"]}}
        extensions.append({"apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension",
                           "metadata": {"name": f"ratelimit-{service.get('name') or 'all'}",
                                        "namespace": service.get("namespace", "default")},
                           "spec": spec})
    return extensions

