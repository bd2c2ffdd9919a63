"""ServiceMeshExtension and WasmPlugin resources: validation and normalisation.

Both kinds become one :class:`ExtensionRequest` (what to pull, where it goes,
which workloads it selects); the operator resolves its image and turns it into
a :class:`~meshext.control.placement.PlacedExtension`.  Validation errors name
the field (``spec.priority``) and the fix; they end up in the resource status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from meshext.errors import MeshextError, first_validation_problem
from meshext.phases import WASMPLUGIN_PHASES, MaistraPhase

SME_GROUP = "maistra.io"
SME_VERSIONS = ("v1", "v1alpha1")
WASMPLUGIN_GROUP = "extensions.istio.io"
WASMPLUGIN_VERSIONS = ("v1alpha1",)
KINDS = {"ServiceMeshExtension": (SME_GROUP, SME_VERSIONS), "WasmPlugin": (WASMPLUGIN_GROUP, WASMPLUGIN_VERSIONS)}


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


def parse_resource(obj: dict[str, Any]) -> ExtensionRequest:
    """Validate one ServiceMeshExtension / WasmPlugin object (raises MeshextError)."""
    key = resource_key(obj)
    kind = obj.get("kind")
    group, _, version = str(obj.get("apiVersion", "")).partition("/")
    if kind not in KINDS:
        raise MeshextError(f"unsupported kind {kind!r}", where=key,
                           fix="use kind ServiceMeshExtension (maistra.io) or WasmPlugin (extensions.istio.io)")
    expected_group, versions = KINDS[kind]
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
    common = {"key": key, "kind": kind, "namespace": namespace, "name": metadata["name"], "generation": generation}
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
