"""The mesh model: services and the workloads (sidecar + local app) behind them.

Read from a YAML mesh file (``default-mesh.yaml`` next to this module is the
embedded default) or discovered from Kubernetes (discovery.py).  Like
Kubernetes, a service selects its workloads by labels, unless it lists its
ready endpoints explicitly (discovered services: their EndpointSlices); a
workload's endpoint is its sidecar's inbound listener, so service-to-service
traffic always goes sidecar to sidecar.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meshext.control.images import publisher_of
from meshext.errors import MeshextError, first_validation_problem

DEFAULT_MESH_FILE = Path(__file__).with_name("default-mesh.yaml")


def node_id(workload: str, namespace: str) -> str:
    """The node id a sidecar announces to the control plane: ``WORKLOAD.NAMESPACE``."""
    return f"{workload}.{namespace}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Strict):
    """An address and port one listener or app binds."""

    address: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class ServicePort(_Strict):
    """One port of a service, and the protocol its app speaks there."""

    name: str = "http"
    port: int = Field(ge=1, le=65535)
    # How the app behind the port speaks; sidecars talk HTTP/2 to each other on HTTP
    # ports, and pass TCP ports' bytes through (mutual TLS between sidecars either way).
    protocol: Literal["HTTP", "HTTP2", "TCP"] = "HTTP"


class Service(_Strict):
    """A service: the workloads it selects (or names as ``endpoints``) and its ports."""

    name: str
    namespace: str = "default"
    selector: dict[str, str]
    ports: list[ServicePort] = Field(min_length=1)
    # Names of the workloads (same namespace) that serve it; None: whatever the selector matches.
    endpoints: list[str] | None = None

    @property
    def host(self) -> str:
        """The service's cluster-local DNS name (``NAME.NAMESPACE.svc.cluster.local``)."""
        return f"{self.name}.{self.namespace}.svc.cluster.local"


class TcpOutbound(_Strict):
    """Where a workload's sidecar accepts the app's connections to one TCP service port.

    HTTP picks its destination by the Host header on the one outbound
    listener; a TCP connection carries no name, so each TCP destination gets
    its own listener (Istio tells them apart by the original destination
    address, which needs iptables)."""

    service: str  # a service name in the workload's namespace, or NAME.NAMESPACE
    port: int = Field(ge=1, le=65535)  # the service's TCP port
    listen: Address


class Workload(_Strict):
    """One workload (a pod, or a process in a mesh file) with its sidecar's listeners."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    app: Address  # the local application the inbound listener forwards to
    inbound: Address  # the sidecar's inbound listener: this workload's endpoint
    outbound: Address  # the sidecar's outbound listener the local app sends through
    tcpOutbound: list[TcpOutbound] = Field(default_factory=list)
    # Where the sidecar's Envoy admin listens (Prometheus scrapes /stats/prometheus there);
    # None: a free loopback port, which no scrape configuration can name.
    admin: Address | None = None

    @property
    def node_id(self) -> str:
        """The Envoy node id this workload's sidecar announces (see :func:`node_id`)."""
        return node_id(self.name, self.namespace)

    @property
    def network_namespace(self) -> str:
        """Where this workload's addresses live: its own (pod) network namespace,
        named by its routable inbound address, or the host's when that is a
        loopback/wildcard address (mesh files: every workload on one host)."""
        inbound = self.inbound.address
        return "host" if _loopback(inbound) or _wildcard(inbound) else inbound


class MutualTLS(_Strict):
    """How sidecars accept inbound connections when the mesh runs with certificates.

    Sidecars always call each other over mutual TLS; ``PERMISSIVE`` inbound
    listeners also accept plain text (clients without a sidecar), ``STRICT``
    ones refuse it (as Istio's PeerAuthentication modes)."""

    mode: Literal["PERMISSIVE", "STRICT"] = "PERMISSIVE"


class Telemetry(_Strict):
    """The mesh's telemetry extension (Istio's standard metrics in every sidecar).

    ``publisher``: the image repository (``host[:port]/repository``) where the module the control
    plane runs telemetry from, the project's extensions bundle (meshext.extensions.bundle), is
    published, as `meshext up` publishes it (``127.0.0.1:15050/meshext/extensions``).  An
    extension pulled from that repository whose module is this very one then shares telemetry's
    VMs (envoy_config.vm_id_for: one publisher, one module).  Empty: telemetry's VMs are its own."""

    enabled: bool = True
    publisher: str = ""

    @field_validator("publisher")
    @classmethod
    def _repository(cls, value: str) -> str:
        """The repository of any reference to it (``oci://``, a tag or digest): what vm_id_for compares."""
        if not value:
            return value
        try:
            return publisher_of(value)
        except MeshextError as error:
            raise ValueError(f"{error.message}: {error.fix}") from None


class Mesh(_Strict):
    """Services and workloads, as the mesh file or Kubernetes discovery describes them."""

    controlPlaneNamespace: str = "meshext-system"
    mtls: MutualTLS = Field(default_factory=MutualTLS)
    telemetry: Telemetry = Field(default_factory=Telemetry)
    services: list[Service] = Field(default_factory=list)
    workloads: list[Workload] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Mesh:
        for kind, items in (("service", self.services), ("workload", self.workloads)):
            seen: set[tuple[str, str]] = set()
            for item in items:
                key = (item.namespace, item.name)
                if key in seen:
                    raise ValueError(f"{kind} {item.namespace}/{item.name} is defined twice")
                seen.add(key)
        # Two listeners clash when they share a network namespace and a port, and
        # their addresses are equal or one is a wildcard.
        bound: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (netns, port) -> [(address, owner)]
        for workload in self.workloads:
            netns = workload.network_namespace
            roles = [(role, getattr(workload, role)) for role in ("app", "inbound", "outbound")]
            roles += [(f"tcpOutbound[{index}]", tcp.listen) for index, tcp in enumerate(workload.tcpOutbound)]
            roles += [("admin", workload.admin)] if workload.admin is not None else []
            for role, address in roles:
                owner = f"{workload.namespace}/{workload.name} {role}"
                users = bound.setdefault((netns, address.port), [])
                for other_address, other in users:
                    if address.address == other_address:
                        raise ValueError(f"{owner} and {other} both use {address.address}:{address.port}")
                    if _wildcard(address.address) or _wildcard(other_address):
                        raise ValueError(f"{owner} and {other} both use port {address.port} "
                                         f"({address.address} includes {other_address} or the reverse)")
                users.append((address.address, owner))
        return self

    @model_validator(mode="after")
    def _tcp_outbound_targets(self) -> Mesh:
        for workload in self.workloads:
            for index, tcp in enumerate(workload.tcpOutbound):
                if self.tcp_target(workload, tcp) is None:
                    raise ValueError(f"workload {workload.namespace}/{workload.name} tcpOutbound[{index}]: "
                                     f"no service {tcp.service} with TCP port {tcp.port}")
        return self

    def tcp_target(self, workload: Workload, tcp: TcpOutbound) -> Service | None:
        """The service a workload's ``tcpOutbound`` entry names, if it has that TCP port."""
        name, _, namespace = tcp.service.partition(".")
        for service in self.services:
            if service.name == name and service.namespace == (namespace or workload.namespace) and any(
                    port.port == tcp.port and port.protocol == "TCP" for port in service.ports):
                return service
        return None

    def workload(self, name: str, namespace: str) -> Workload:
        """The workload ``namespace/name``; a MeshextError naming the mesh's workloads if there is none."""
        for workload in self.workloads:
            if workload.name == name and workload.namespace == namespace:
                return workload
        known = ", ".join(f"{w.namespace}/{w.name}" for w in self.workloads) or "none"
        raise MeshextError(
            f"no workload {namespace}/{name} in the mesh",
            where="--workload/--namespace",
            fix=f"use one of the mesh's workloads ({known})",
        )

    def endpoints(self, service: Service) -> list[Workload]:
        """The workloads serving ``service``: those it names, else those its selector matches."""
        if service.endpoints is not None:
            named = set(service.endpoints)
            return [w for w in self.workloads if w.namespace == service.namespace and w.name in named]
        return [
            workload for workload in self.workloads
            if workload.namespace == service.namespace
            and all(workload.labels.get(key) == value for key, value in service.selector.items())
        ]

    def services_of(self, workload: Workload) -> list[Service]:
        """The services ``workload`` is an endpoint of."""
        return [service for service in self.services if workload in self.endpoints(service)]


def _wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: not ours to interpret
        return False


def load_mesh(path: Path | None = None) -> Mesh:
    """Parse a mesh file (the embedded default when ``path`` is None)."""
    path = path or DEFAULT_MESH_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MeshextError(f"cannot read the mesh file: {error}", where=str(path),
                           fix="pass a readable YAML file with --mesh") from None
    try:
        return Mesh.model_validate(data or {})
    except ValidationError as error:
        field, problem = first_validation_problem(error, "(top level)")
        raise MeshextError(
            f"invalid mesh file: {field}: {problem['msg']}",
            where=str(path),
            fix="see control/default-mesh.yaml for the expected shape",
        ) from None
