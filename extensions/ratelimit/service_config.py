"""envoyproxy/ratelimit's YAML configuration, parsed, validated and matched against request descriptors.

The format (https://github.com/envoyproxy/ratelimit#configuration)::

    domain: shop
    descriptors:
      - key: user                     # no value: one counter per value the request carries
        rate_limit: {unit: minute, requests_per_unit: 10, name: per-user}
        descriptors:                  # nested: a request descriptor with more entries
          - key: path
            value: /checkout
            rate_limit: {unit: second, requests_per_unit: 1}
            shadow_mode: true         # counted, reported OK
      - key: internal
        rate_limit: {unlimited: true}

Unknown keys are refused, as that service refuses them.  Matching follows it:
a request descriptor's entries walk the tree one level each, an entry with
the same key and value before one with the key alone (a value ending in
``*`` matches by prefix), and the limit is the rate_limit of the node the
last entry reaches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshext.errors import MeshextError, first_validation_problem

# Seconds per unit, as the service's window dividers (src/utils/utilities.go); RLS v3 unit numbers.
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000,
                "year": 31536000}
UNIT_NUMBERS = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7}
UNIT_NAMES = {number: name for name, number in UNIT_NUMBERS.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Replaces(_Strict):
    """The name of a rate limit this one replaces when both apply."""

    name: str


class RateLimitPolicy(_Strict):
    """A limit: requests per unit, or unlimited."""

    unit: str | None = None
    requests_per_unit: int = Field(default=0, ge=0)
    unlimited: bool = False
    name: str = ""
    replaces: list[Replaces] = []

    @model_validator(mode="after")
    def _unit_or_unlimited(self) -> RateLimitPolicy:
        if self.unlimited:
            if self.unit is not None:
                raise ValueError("unlimited with a unit: give one of them")
        elif self.unit is None or self.unit.lower() not in UNIT_SECONDS:
            raise ValueError(f"unit {self.unit!r} is not one of {', '.join(UNIT_SECONDS)}")
        return self

    @property
    def unit_name(self) -> str:
        return (self.unit or "").lower()


class DescriptorConfig(_Strict):
    """One level of the descriptor tree."""

    key: str = Field(min_length=1)
    value: str | None = None
    rate_limit: RateLimitPolicy | None = None
    shadow_mode: bool = False
    detailed_metric: bool = False
    descriptors: list[DescriptorConfig] = []


class DomainConfig(_Strict):
    """One configuration file: a domain and its descriptor tree."""

    domain: str = Field(min_length=1)
    descriptors: list[DescriptorConfig] = []


class Match:
    """The limit a request descriptor gets, and the name its statistics are kept under (``service_stats``)."""

    __slots__ = ("policy", "shadow_mode", "stat_key")

    def __init__(self, policy: RateLimitPolicy, shadow_mode: bool, stat_key: str) -> None:
        self.policy = policy
        self.shadow_mode = shadow_mode
        self.stat_key = stat_key


class ServiceConfig:
    """All domains the service knows, from one or more files."""

    def __init__(self, domains: Iterable[DomainConfig]) -> None:
        self.domains: dict[str, DomainConfig] = {}
        for domain in domains:
            if domain.domain in self.domains:
                raise MeshextError(f"domain {domain.domain!r} is configured twice", where="rate limit config",
                                   fix="give each domain one file")
            self.domains[domain.domain] = domain

    def match(self, domain: str, entries: list[tuple[str, str]]) -> Match | None:
        """The limit for a descriptor of ``domain`` with ``entries``, or None (no limit applies)."""
        config = self.domains.get(domain)
        if config is None or not entries:
            return None
        level = config.descriptors
        node: DescriptorConfig | None = None
        path = []
        for key, value in entries:
            node = _find(level, key, value)
            if node is None:
                return None
            path.append(node.key if node.value is None else f"{node.key}_{node.value}")
            level = node.descriptors
        if node is None or node.rate_limit is None:
            return None
        # As the reference: the configuration's path, or with detailed_metric the request's own values.
        stat_key = request_stat_key(entries) if node.detailed_metric else ".".join(path)
        return Match(node.rate_limit, node.shadow_mode, stat_key)


def request_stat_key(entries: list[tuple[str, str]]) -> str:
    """The statistics name of a descriptor from its own entries: ``key_value`` per entry, joined by '.'."""
    return ".".join(f"{key}_{value}" for key, value in entries)


def _find(level: list[DescriptorConfig], key: str, value: str) -> DescriptorConfig | None:
    wildcard = None
    key_only = None
    for node in level:
        if node.key != key:
            continue
        if node.value == value:
            return node
        if node.value and node.value.endswith("*") and value.startswith(node.value[:-1]) and wildcard is None:
            wildcard = node
        if node.value is None and key_only is None:
            key_only = node
    return wildcard or key_only


def load_service_config(paths: Iterable[Path]) -> ServiceConfig:
    """Parse and validate the YAML files (a directory: its *.yaml and *.yml files)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path])
    domains = []
    for file in files:
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise MeshextError(f"cannot read the rate limit configuration: {error}", where=str(file),
                               fix="give a readable YAML file in envoyproxy/ratelimit's format") from None
        try:
            domains.append(DomainConfig.model_validate(data))
        except ValidationError as error:
            location, problem = first_validation_problem(error, "(top level)")
            raise MeshextError(f"{location}: {problem['msg']}", where=str(file),
                               fix="see envoyproxy/ratelimit's configuration format: domain, descriptors[] of "
                                   "key, value, rate_limit {unit, requests_per_unit, unlimited, name, replaces}, "
                                   "shadow_mode, descriptors") from None
    return ServiceConfig(domains)
