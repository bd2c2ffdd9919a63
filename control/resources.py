"""ServiceMeshExtension, WasmPlugin and RequestAuthentication resources: validation and normalisation.

Both extension kinds become one :class:`ExtensionRequest` (what to pull, where
it goes, which workloads it selects); the operator resolves its image and
turns it into a :class:`~meshext.control.placement.PlacedExtension`.  Istio's
RequestAuthentication becomes a :class:`JwtPolicy`: the JWT issuers whose
tokens the selected workloads' sidecars verify with Envoy's ``jwt_authn``
filter (envoy_config.py) before the Wasm filters that read the verified
payload, as the 3scale filter's ``filter`` credential source does.
Validation errors name the field (``spec.priority``) and the fix; they end up
in the resource status.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from meshext.errors import InternalError, MeshextError, first_validation_problem
from meshext.phases import WASMPLUGIN_PHASES, MaistraPhase

SME_GROUP = "maistra.io"
SME_VERSIONS = ("v1", "v1alpha1")
WASMPLUGIN_GROUP = "extensions.istio.io"
WASMPLUGIN_VERSIONS = ("v1alpha1",)
KINDS = {"ServiceMeshExtension": (SME_GROUP, SME_VERSIONS), "WasmPlugin": (WASMPLUGIN_GROUP, WASMPLUGIN_VERSIONS)}
"""The extension kinds: kind -> (API group, served versions, the storage version first)."""
SECURITY_GROUP = "security.istio.io"
POLICY_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {"RequestAuthentication": (SECURITY_GROUP, ("v1", "v1beta1"))}
"""The Istio security policies the control plane applies, as :data:`KINDS`."""
WATCHED_KINDS = {**KINDS, **POLICY_KINDS}
"""Every kind a source hands to the operator."""


class _Spec(BaseModel):
    # Unknown fields are errors: a typo (`priorty`) must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class WorkloadSelector(_Spec):
    """ServiceMeshExtension ``spec.workloadSelector``."""

    labels: dict[str, str] = Field(default_factory=dict)


class ServiceMeshExtensionSpec(_Spec):
    """ServiceMeshExtension ``spec`` (maistra.io v1 and v1alpha1)."""

    image: str = Field(min_length=1)
    # v1: structured (handed to the filter as JSON); v1alpha1: a string.
    config: dict[str, Any] | str | None = None
    phase: MaistraPhase | None = None
    priority: StrictInt | None = None
    workloadSelector: WorkloadSelector | None = None


class LabelSelector(_Spec):
    """WasmPlugin ``spec.selector``."""

    matchLabels: dict[str, str] = Field(default_factory=dict)


class PortSelector(_Spec):
    """One port of a WasmPlugin ``spec.match[].ports``."""

    number: int = Field(ge=1, le=65535)


class TrafficSelector(_Spec):
    """One entry of WasmPlugin ``spec.match``: traffic direction and ports."""

    mode: Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"] = "UNDEFINED"
    ports: list[PortSelector] = Field(default_factory=list)


class EnvVar(_Spec):
    """One WasmPlugin ``spec.vmConfig.env`` entry: inline value or from the host."""

    name: str = Field(min_length=1)
    valueFrom: Literal["INLINE", "HOST"] = "INLINE"
    value: str = ""


class VmConfig(_Spec):
    """WasmPlugin ``spec.vmConfig``."""

    env: list[EnvVar] = Field(default_factory=list)


class WasmPluginSpec(_Spec):
    """WasmPlugin ``spec`` (extensions.istio.io v1alpha1)."""

    url: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    imagePullPolicy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = "UNSPECIFIED_POLICY"
    imagePullSecret: str | None = None
    pluginConfig: dict[str, Any] | None = None
    pluginName: str | None = None
    phase: Literal[tuple(WASMPLUGIN_PHASES)] = "UNSPECIFIED_PHASE"  # type: ignore[valid-type]
    priority: StrictInt | None = None
    selector: LabelSelector | None = None
    failStrategy: Literal["FAIL_CLOSE", "FAIL_OPEN"] = "FAIL_CLOSE"
    vmConfig: VmConfig | None = None
    type: Literal["UNSPECIFIED_PLUGIN_TYPE", "HTTP"] = "UNSPECIFIED_PLUGIN_TYPE"
    match: list[TrafficSelector] = Field(default_factory=list)


@dataclass(frozen=True)
class ExtensionRequest:
    """A validated resource, before its image is resolved."""

    key: str  # Kind/namespace/name
    kind: str
    namespace: str
    name: str
    generation: int
    image: str
    pull_policy: str
    pull_secret: str | None
    expected_sha256: str | None
    configuration: str
    phase: str | None  # None: take it from the Maistra manifest
    priority: int | None
    selector: dict[str, str]
    fail_open: bool
    root_id: str
    inbound: bool = True
    outbound: bool = False
    ports: frozenset[int] = field(default_factory=frozenset)
    vm_environment: tuple[tuple[str, str], ...] = ()
    vm_host_environment: tuple[str, ...] = ()

    @property
    def filter_name(self) -> str:
        """The name of the extension's ECDS resource and HTTP filter."""
        return f"meshext.{self.kind.lower()}.{self.namespace}.{self.name}"


def resource_key(obj: dict[str, Any]) -> str:
    """``Kind/namespace/name`` of a resource object (namespace ``default`` when unset)."""
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{metadata.get('namespace') or 'default'}/{metadata.get('name')}"


def _field_error(error: ValidationError, key: str) -> MeshextError:
    field, problem = first_validation_problem(error, "")
    location = f"spec.{field}"
    hint = problem["msg"]
    if problem["type"] == "extra_forbidden":
        hint = "unknown field"
        fix = f"remove {location} or correct its spelling"
    elif problem["type"] == "missing":
        fix = f"set {location}"
    else:
        fix = f"correct {location}"
    return MeshextError(f"{location}: {hint}", where=key, fix=fix)


def _envelope(obj: dict[str, Any], kinds: dict[str, tuple[str, tuple[str, ...]]],
              fix_kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked kind, apiVersion, metadata and spec of ``obj``: (its common fields, its spec)."""
    key = resource_key(obj)
    kind = obj.get("kind")
    group, _, version = str(obj.get("apiVersion", "")).partition("/")
    if kind not in kinds:
        raise MeshextError(f"unsupported kind {kind!r}", where=key, fix=fix_kind)
    expected_group, versions = kinds[kind]
    if group != expected_group or version not in versions:
        raise MeshextError(
            f"apiVersion {obj.get('apiVersion')!r} is not served for {kind}", where=key,
            fix=f"use apiVersion {expected_group}/{versions[0]}",
        )
    metadata = obj.get("metadata") or {}
    if not metadata.get("name"):
        raise MeshextError("metadata.name is missing", where=key, fix="give the resource a metadata.name")
    namespace = metadata.get("namespace") or "default"
    generation = int(metadata.get("generation") or 1)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise MeshextError("spec is missing or not a mapping", where=key, fix="add a spec: mapping")
    return {"key": key, "kind": kind, "namespace": namespace, "name": metadata["name"], "generation": generation}, spec


def parse_resource(obj: dict[str, Any]) -> ExtensionRequest:
    """Validate one ServiceMeshExtension / WasmPlugin object (raises MeshextError)."""
    common, spec = _envelope(obj, KINDS, "use kind ServiceMeshExtension (maistra.io) or WasmPlugin "
                                         "(extensions.istio.io)")
    kind, key = common["kind"], common["key"]
    try:
        if kind == "ServiceMeshExtension":
            return _from_sme(ServiceMeshExtensionSpec.model_validate(spec), common)
        return _from_wasmplugin(WasmPluginSpec.model_validate(spec), common)
    except ValidationError as error:
        raise _field_error(error, key) from None


def _configuration_json(config: dict[str, Any] | str | None) -> str:
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    # Compact and key-sorted: the same config always gives the same bytes (and xDS version).
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def _from_sme(spec: ServiceMeshExtensionSpec, common: dict[str, Any]) -> ExtensionRequest:
    return ExtensionRequest(
        **common,
        image=spec.image,
        pull_policy="IfNotPresent",
        pull_secret=None,
        expected_sha256=None,
        configuration=_configuration_json(spec.config),
        phase=spec.phase,
        priority=spec.priority,
        selector=dict(spec.workloadSelector.labels) if spec.workloadSelector else {},
        fail_open=False,
        root_id="",
    )


def _from_wasmplugin(spec: WasmPluginSpec, common: dict[str, Any]) -> ExtensionRequest:
    if spec.match:
        modes = {selector.mode for selector in spec.match}
        inbound = bool(modes & {"SERVER", "CLIENT_AND_SERVER", "UNDEFINED"})
        outbound = bool(modes & {"CLIENT", "CLIENT_AND_SERVER", "UNDEFINED"})
        ports = frozenset(port.number for selector in spec.match for port in selector.ports)
    else:
        # No match: inbound traffic only, like a ServiceMeshExtension.
        inbound, outbound, ports = True, False, frozenset()
    env = spec.vmConfig.env if spec.vmConfig else []
    return ExtensionRequest(
        **common,
        image=spec.url,
        pull_policy=spec.imagePullPolicy,
        pull_secret=spec.imagePullSecret,
        expected_sha256=spec.sha256.removeprefix("sha256:").lower() if spec.sha256 else None,
        configuration=_configuration_json(spec.pluginConfig),
        phase=WASMPLUGIN_PHASES[spec.phase],
        priority=spec.priority if spec.priority is not None else 0,
        selector=dict(spec.selector.matchLabels) if spec.selector else {},
        fail_open=spec.failStrategy == "FAIL_OPEN",
        root_id=spec.pluginName or "",
        inbound=inbound,
        outbound=outbound,
        ports=ports,
        vm_environment=tuple((e.name, e.value) for e in env if e.valueFrom == "INLINE"),
        vm_host_environment=tuple(e.name for e in env if e.valueFrom == "HOST"),
    )


# -- RequestAuthentication (security.istio.io v1 / v1beta1) ---------------------------------------------------

class JwtHeaderSpec(_Spec):
    """One ``jwtRules[].fromHeaders`` entry: the header carrying the token, and the prefix before it."""

    name: str = Field(min_length=1)
    prefix: str = ""


class ClaimToHeaderSpec(_Spec):
    """One ``jwtRules[].outputClaimToHeaders`` entry: copy a claim of a verified token into a header."""

    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)


class JwtRuleSpec(_Spec):
    """One ``spec.jwtRules`` entry: an issuer, where its keys are, where its tokens are."""

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    jwksUri: str | None = None
    jwks: str | None = None
    fromHeaders: list[JwtHeaderSpec] = Field(default_factory=list)
    fromParams: list[str] = Field(default_factory=list)
    fromCookies: list[str] = Field(default_factory=list)
    outputPayloadToHeader: str | None = None
    outputClaimToHeaders: list[ClaimToHeaderSpec] = Field(default_factory=list)
    forwardOriginalToken: bool = False
    timeout: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?(ms|s|m)$")


class RequestAuthenticationSpec(_Spec):
    """RequestAuthentication ``spec``: which workloads, which issuers."""

    selector: LabelSelector | None = None
    jwtRules: list[JwtRuleSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class JwtRule:
    """A validated JWT rule (see :class:`JwtRuleSpec` for what each field is)."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline key set (JSON); exactly one of jwks and jwks_uri is set
    jwks_uri: str | None = None
    from_headers: tuple[tuple[str, str], ...] = ()  # (header, prefix)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (header, claim)
    forward_original_token: bool = False
    jwks_timeout_seconds: float = 5.0  # Istio's default for fetching jwksUri


@dataclass(frozen=True)
class JwtPolicy:
    """A validated RequestAuthentication: the workloads it selects verify tokens of its issuers."""

    key: str  # Kind/namespace/name
    namespace: str
    name: str
    generation: int
    selector: tuple[tuple[str, str], ...]  # matchLabels, sorted (hashable: snapshots are cached by policy)
    rules: tuple[JwtRule, ...]

    @property
    def labels(self) -> dict[str, str]:
        """The selector's matchLabels (empty: every workload of the namespace)."""
        return dict(self.selector)


def _seconds(duration: str) -> float:
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if duration.endswith(unit):
            return float(duration.removesuffix(unit)) * scale
    raise InternalError(f"duration {duration!r} passed the pattern check")


def _checked_jwks(text: str, where: str, key: str) -> str:
    """``text`` when it is a JSON Web Key Set (Envoy would serve every token 401 with an unreadable one)."""
    try:
        keys = json.loads(text).get("keys")
    except (ValueError, AttributeError):
        keys = None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        raise MeshextError(f"{where}: not a JSON Web Key Set", where=key,
                           fix=f'set {where} to the issuer\'s key set as JSON, {{"keys": [{{"kty": ...}}]}}')
    return text


def _checked_jwks_uri(uri: str, where: str, key: str) -> str:
    parsed = urllib.parse.urlsplit(uri)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise MeshextError(f"{where}: {uri!r} is not an http(s) URL with a host", where=key,
                           fix=f"set {where} to the issuer's JWKS URL, e.g. https://issuer.example/certs")
    return uri


def _jwt_rule(spec: JwtRuleSpec, index: int, key: str) -> JwtRule:
    where = f"spec.jwtRules[{index}]"
    if spec.jwks is not None and spec.jwksUri is not None:
        raise MeshextError(f"{where}: both jwks and jwksUri are set", where=key,
                           fix=f"keep one of {where}.jwks and {where}.jwksUri")
    if spec.jwks is None and spec.jwksUri is None:
        # Istiod would look the keys up in the issuer's OpenID discovery document; meshext does not fetch it.
        raise MeshextError(f"{where}: no key set: neither jwks nor jwksUri is set", where=key,
                           fix=f"set {where}.jwksUri to the issuer's JWKS URL or {where}.jwks to the key set")
    return JwtRule(
        issuer=spec.issuer,
        audiences=tuple(spec.audiences),
        jwks=_checked_jwks(spec.jwks, f"{where}.jwks", key) if spec.jwks is not None else None,
        jwks_uri=_checked_jwks_uri(spec.jwksUri, f"{where}.jwksUri", key) if spec.jwksUri is not None else None,
        from_headers=tuple((header.name, header.prefix) for header in spec.fromHeaders),
        from_params=tuple(spec.fromParams),
        from_cookies=tuple(spec.fromCookies),
        output_payload_to_header=spec.outputPayloadToHeader,
        output_claim_to_headers=tuple((c.header, c.claim) for c in spec.outputClaimToHeaders),
        forward_original_token=spec.forwardOriginalToken,
        jwks_timeout_seconds=_seconds(spec.timeout) if spec.timeout else 5.0,
    )


def parse_policy(obj: dict[str, Any]) -> JwtPolicy:
    """Validate one RequestAuthentication object (raises MeshextError naming the field and the fix)."""
    common, spec = _envelope(obj, POLICY_KINDS, "use kind RequestAuthentication (security.istio.io)")
    key = common["key"]
    try:
        parsed = RequestAuthenticationSpec.model_validate(spec)
    except ValidationError as error:
        raise _field_error(error, key) from None
    issuers = [rule.issuer for rule in parsed.jwtRules]
    for index, issuer in enumerate(issuers):
        if issuers.index(issuer) != index:
            raise MeshextError(f"spec.jwtRules[{index}].issuer: {issuer!r} is also jwtRules[{issuers.index(issuer)}]'s",
                               where=key, fix="give each issuer one rule")
    return JwtPolicy(
        key=key, namespace=common["namespace"], name=common["name"], generation=common["generation"],
        selector=tuple(sorted(parsed.selector.matchLabels.items())) if parsed.selector else (),
        rules=tuple(_jwt_rule(rule, index, key) for index, rule in enumerate(parsed.jwtRules)),
    )
