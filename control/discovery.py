"""The mesh, discovered from Kubernetes: Services, EndpointSlices and Pods.

Three list + watch loops (sources.watch_collection) keep the objects; after
every burst of changes a new :class:`~meshext.control.mesh.Mesh` goes to the
operator (:meth:`Operator.update_mesh`).  How objects map onto the model:

* **Workload = Pod** that carries the annotation
  ``sidecar.meshext.io/inject: "true"`` (its spec runs ``meshext proxy``; no
  injector rewrites pods), has a ``status.podIP`` and has not finished
  (phase Succeeded/Failed).  Name and namespace are the pod's, so its node id
  is ``<pod>.<namespace>``, what ``meshext proxy --workload $(POD_NAME)
  --namespace $(POD_NAMESPACE)`` announces (Istio names proxies by pod name
  and namespace too).  Labels are the pod's labels.
* Its addresses: ``inbound`` (the endpoint peers reach) is
  ``podIP:<sidecar.meshext.io/inbound-port>``, default 15006 (Istio's inbound
  port); ``outbound`` is ``127.0.0.1:<sidecar.meshext.io/outbound-port>``,
  default 15001 (Istio's), reached only by the pod's own app; ``app`` is
  ``podIP:<port>`` (as Istio >= 1.10 forwards to the pod IP), the port being
  the annotation ``sidecar.meshext.io/app-port``, else the pod's first TCP
  ``containerPort``, else the port an EndpointSlice lists for the pod.  With
  no iptables redirection, the annotations let several pods share one host
  (the tests run pods on 127.0.0.1 with distinct ports).
* **Service**: its TCP ports whose protocol is HTTP, told by ``appProtocol``
  or else the port name's prefix, as Istio does: ``http2``, ``grpc``,
  ``grpc-web``, ``h2c`` (and ``kubernetes.io/h2c``) mean HTTP/2; ``tcp``,
  ``tls``, ``https``, ``mongo``, ``mysql``, ``redis`` are not HTTP and are
  left out (so is UDP/SCTP); anything else is HTTP/1.1.  ExternalName
  services and services with no HTTP port are left out.
* A Service's **endpoints** are the ready endpoints (``conditions.ready`` not
  false) of its EndpointSlices (label ``kubernetes.io/service-name``) whose
  ``targetRef`` is a workload pod: readiness is the API server's word, the
  selector is never evaluated here.  Endpoints without a sidecar are left
  out, since sidecars only talk to sidecars.
* **Bad objects** (a port out of range, a meshed pod without an IP...) are
  judged one by one: each is reported in the log and in the status report's
  ``mesh.problems``, naming the object and the field, and its last good
  version (if any) stays in the mesh.  A mesh that is invalid as a whole (two
  pods on one address) is reported and the last good mesh keeps serving.
* Nothing is published until all three collections have been listed once, so
  a restarted control plane never pushes half a mesh (empty endpoints).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from meshext.control.mesh import Address, Mesh, Service, ServicePort, Workload
from meshext.control.operator import Operator
from meshext.control.sources import kubernetes_api_client, watch_collection
from meshext.errors import first_validation_problem

log = logging.getLogger(__name__)

INJECT_ANNOTATION = "sidecar.meshext.io/inject"
INBOUND_PORT_ANNOTATION = "sidecar.meshext.io/inbound-port"
OUTBOUND_PORT_ANNOTATION = "sidecar.meshext.io/outbound-port"
APP_PORT_ANNOTATION = "sidecar.meshext.io/app-port"
DEFAULT_INBOUND_PORT = 15006
DEFAULT_OUTBOUND_PORT = 15001
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_HTTP2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"})
_NOT_HTTP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "udp", "kubernetes.io/wss"})

Kind = Literal["Service", "EndpointSlice", "Pod"]
ObjectKey = tuple[str, str]  # (namespace, name)


class _BadField(Exception):
    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem} (fix: {fix})")


@dataclass(frozen=True)
class _Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    ip: str
    inbound_port: int
    outbound_port: int
    app_port: int | None  # None: take it from an EndpointSlice


@dataclass(frozen=True)
class _Slice:
    service: ObjectKey
    ready_pods: frozenset[str]
    pod_ports: dict[str, int]  # pod name -> the slice's first port (for pods that declare none)


def _port(value: Any, field: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or not 1 <= number <= 65535:
        raise _BadField(field, f"{value!r} is not a port number", "use a number from 1 to 65535")
    return number


def _port_protocol(port: dict[str, Any]) -> Literal["HTTP", "HTTP2"] | None:
    if (port.get("protocol") or "TCP") != "TCP":
        return None
    declared = (port.get("appProtocol") or str(port.get("name") or "").split("-", 1)[0]).lower()
    if declared in _HTTP2_PROTOCOLS:
        return "HTTP2"
    return None if declared in _NOT_HTTP_PROTOCOLS else "HTTP"


def _service(obj: dict[str, Any]) -> Service | None:
    metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    ports = []
    for index, port in enumerate(spec.get("ports") or []):
        number = _port(port.get("port"), f"spec.ports[{index}].port")
        protocol = _port_protocol(port)
        if protocol is not None:
            ports.append(ServicePort(name=port.get("name") or "http", port=number, protocol=protocol))
    if not ports:
        return None
    return Service(name=metadata["name"], namespace=metadata.get("namespace") or "default",
                   selector=dict(spec.get("selector") or {}), ports=ports, endpoints=[])


def _pod(obj: dict[str, Any]) -> _Pod | None:
    metadata, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    annotations = metadata.get("annotations") or {}
    if str(annotations.get(INJECT_ANNOTATION, "")).lower() != "true":
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip = status.get("podIP") or ""
    if not ip:
        raise _BadField("status.podIP", f"is empty (phase {status.get('phase') or 'unknown'}): "
                        "the pod is not in the mesh yet", "wait for the kubelet to start the pod")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _BadField("status.podIP", f"{ip!r} is not an IP address", "check the cluster's network plugin") from None

    def annotated(name: str) -> int | None:
        return _port(annotations[name], f"metadata.annotations[{name!r}]") if name in annotations else None

    app_port = annotated(APP_PORT_ANNOTATION)
    if app_port is None:
        declared = [port for container in spec.get("containers") or [] for port in container.get("ports") or []
                    if (port.get("protocol") or "TCP") == "TCP"]
        if declared:
            app_port = _port(declared[0].get("containerPort"), "spec.containers[].ports[0].containerPort")
    return _Pod(name=metadata["name"], namespace=metadata.get("namespace") or "default",
                labels=dict(metadata.get("labels") or {}), ip=ip,
                inbound_port=annotated(INBOUND_PORT_ANNOTATION) or DEFAULT_INBOUND_PORT,
                outbound_port=annotated(OUTBOUND_PORT_ANNOTATION) or DEFAULT_OUTBOUND_PORT,
                app_port=app_port)


def _slice(obj: dict[str, Any]) -> _Slice | None:
    metadata = obj.get("metadata") or {}
    service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType") == "FQDN":
        return None
    ports = obj.get("ports") or []
    first_port = _port(ports[0].get("port"), "ports[0].port") if ports and ports[0].get("port") is not None else None
    ready, pod_ports = set(), {}
    for endpoint in obj.get("endpoints") or []:
        target = endpoint.get("targetRef") or {}
        if target.get("kind") != "Pod" or not target.get("name"):
            continue
        if (endpoint.get("conditions") or {}).get("ready") is not False:  # unset means ready (API docs)
            ready.add(target["name"])
        if first_port is not None:
            pod_ports[target["name"]] = first_port
    return _Slice(service=(metadata.get("namespace") or "default", service), ready_pods=frozenset(ready),
                  pod_ports=pod_ports)


_CONVERTERS: dict[Kind, Callable[[dict[str, Any]], Any]] = {"Service": _service, "EndpointSlice": _slice,
                                                            "Pod": _pod}


class KubernetesMeshDiscovery:
    """Watches Services, EndpointSlices and Pods; hands each new mesh to ``operator``."""

    def __init__(self, operator: Operator, *, control_plane_namespace: str = "meshext-system",
                 api_client: Any = None, timeout_seconds: int = 60, settle_seconds: float = 0.05) -> None:
        from kubernetes import client

        api_client = api_client or kubernetes_api_client()
        core, discovery = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
        self._list_calls: dict[Kind, Callable[..., Any]] = {
            "Service": core.list_service_for_all_namespaces,
            "EndpointSlice": discovery.list_endpoint_slice_for_all_namespaces,
            "Pod": core.list_pod_for_all_namespaces,
        }
        self.operator = operator
        self.control_plane_namespace = control_plane_namespace
        self.timeout_seconds = timeout_seconds
        self.settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._good: dict[Kind, dict[ObjectKey, Any]] = {kind: {} for kind in _CONVERTERS}  # last good, converted
        self._bad: dict[tuple[Kind, ObjectKey], str] = {}  # why an object's current version was refused
        self._listed: set[Kind] = set()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._published: tuple[Mesh, list[str]] | None = None
        self._threads = [threading.Thread(target=self._watch, args=(kind,), daemon=True, name=f"watch-{kind}")
                         for kind in _CONVERTERS]
        self._threads.append(threading.Thread(target=self._publish_forever, daemon=True, name="mesh-discovery"))

    def start(self) -> KubernetesMeshDiscovery:
        """Start the three watches and the publisher (one thread each)."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and publishing."""
        self._stop.set()
        self._changed.set()

    @property
    def mesh(self) -> Mesh | None:
        """The last mesh handed to the operator (None before the first full list)."""
        published = self._published
        return published[0] if published else None

    # -- watching ----------------------------------------------------------------
    def _watch(self, kind: Kind) -> None:
        def listed() -> None:
            with self._lock:
                self._listed.add(kind)
            self._changed.set()

        watch_collection(self._list_calls[kind], apply=lambda obj: self._apply(kind, obj),
                         delete=lambda obj: self._delete(kind, obj), stop=self._stop,
                         timeout_seconds=self.timeout_seconds, listed=listed)

    @staticmethod
    def _key(obj: dict[str, Any]) -> ObjectKey:
        metadata = obj.get("metadata") or {}
        return metadata.get("namespace") or "default", metadata.get("name") or ""

    def _apply(self, kind: Kind, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        try:
            converted = _CONVERTERS[kind](obj)
        except _BadField as error:
            # The last good version of this object (if any) stays in the mesh.
            message = f"{kind} {key[0]}/{key[1]}: {error}"
            with self._lock:
                if self._bad.get((kind, key)) != message:
                    log.error("%s; %s", message, "its last good version stays in the mesh"
                              if key in self._good[kind] else "left out of the mesh")
                self._bad[(kind, key)] = message
        else:
            with self._lock:
                self._bad.pop((kind, key), None)
                if converted is None:
                    self._good[kind].pop(key, None)
                else:
                    self._good[kind][key] = converted
        self._changed.set()

    def _delete(self, kind: Kind, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        with self._lock:
            self._good[kind].pop(key, None)
            self._bad.pop((kind, key), None)
        self._changed.set()

    # -- publishing ----------------------------------------------------------------
    def _publish_forever(self) -> None:
        while not self._stop.is_set():
            self._changed.wait()
            self._stop.wait(self.settle_seconds)  # let a burst of events (a list, a rollout) land first
            self._changed.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if len(self._listed) < len(_CONVERTERS):
                    continue  # half a mesh would drop endpoints the proxies still use
                pods = dict(self._good["Pod"])
                services = dict(self._good["Service"])
                slices = list(self._good["EndpointSlice"].values())
                problems = [self._bad[k] for k in sorted(self._bad)]
            try:
                self._publish(pods, services, slices, problems)
            except Exception:  # one bad build must not stop discovery
                log.exception("building the mesh failed")

    def _publish(self, pods: dict[ObjectKey, _Pod], services: dict[ObjectKey, Service], slices: list[_Slice],
                 problems: list[str]) -> None:
        slice_ports = {(s.service[0], pod): port for s in slices for pod, port in s.pod_ports.items()}
        workloads = []
        for key, pod in sorted(pods.items()):
            app_port = pod.app_port or slice_ports.get(key)
            if app_port is None:
                problems.append(f"Pod {key[0]}/{key[1]}: spec.containers[].ports: no app port: left out of the mesh "
                                f"(fix: declare a containerPort or annotate {APP_PORT_ANNOTATION})")
                continue
            workloads.append(Workload(
                name=pod.name, namespace=pod.namespace, labels=pod.labels,
                app=Address(address=pod.ip, port=app_port), inbound=Address(address=pod.ip, port=pod.inbound_port),
                outbound=Address(address="127.0.0.1", port=pod.outbound_port)))
        meshed = {(w.namespace, w.name) for w in workloads}
        ready: dict[ObjectKey, set[str]] = {}
        for endpoint_slice in slices:
            namespace = endpoint_slice.service[0]
            ready.setdefault(endpoint_slice.service, set()).update(
                pod for pod in endpoint_slice.ready_pods if (namespace, pod) in meshed)
        mesh_services = [service.model_copy(update={"endpoints": sorted(ready.get(key, ()))})
                         for key, service in sorted(services.items())]
        previous = self._published
        try:
            mesh = Mesh(controlPlaneNamespace=self.control_plane_namespace, services=mesh_services,
                        workloads=workloads)
        except ValidationError as error:
            field, problem = first_validation_problem(error, "(mesh)")
            message = f"the discovered mesh is invalid, the previous one keeps serving: {field}: {problem['msg']}"
            log.error(message)
            problems.append(message)
            if previous is None:
                return
            mesh = previous[0]
        if previous is not None and previous == (mesh, problems):
            return
        log.info("mesh: %d services, %d workloads, %d problems", len(mesh.services), len(mesh.workloads),
                 len(problems))
        self.operator.update_mesh(mesh, problems)
        self._published = (mesh, problems)  # after the hand-over: whoever sees it can wait for the operator
