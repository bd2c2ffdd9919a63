"""The extension operator: resources in, per-proxy snapshots and statuses out.

Where resources come from (a directory, Kubernetes) is the sources' business
(sources.py); they call :meth:`Operator.apply` / :meth:`Operator.delete`, and
the operator writes statuses and reads pull secrets through the
:class:`ResourceStore` it was built with.  It publishes into the
:class:`~meshext.control.state.ControlPlaneState` it was built with, and is
itself the :class:`~meshext.control.server.ControlPlaneCallbacks` of the
servers that serve that state.  Wiring, in that order::

    state = ControlPlaneState()
    source = DirectorySource(directory)                 # or KubernetesSource(...)
    operator = Operator(mesh, state, resources=source, registry=settings)
    control_plane = ControlPlane(state, operator, tls=...).start()
    operator.start()
    source.start(operator)

Every input becomes a typed event (events.py) on one queue, and one worker
thread does all the work, so no two reconciles ever race:

1. validate each changed resource and resolve its image (digest pinned,
   sha256 verified) into the control plane's module store;
2. choose, for every workload, the extensions that select it (a resource in
   the control-plane namespace applies mesh-wide, elsewhere only in its own
   namespace), and publish one snapshot per sidecar;
3. follow ACKs and NACKs: a configuration a proxy refused is marked rejected
   with Envoy's error text and withdrawn, so every proxy goes back to (and new
   proxies start with) the last configuration that was accepted; an update
   that is invalid or cannot be pulled leaves that configuration running too;
4. write each resource's status when it changes.

RequestAuthentication resources (Istio's JWT policies) are validated the same
way and select workloads the same way; they need no image: each selected
sidecar's inbound listener verifies their issuers' tokens (envoy_config.py).
An invalid update leaves the last valid policy applied.

The mesh itself may change at run time (:meth:`Operator.update_mesh`, fed by
Kubernetes discovery): every sidecar gets a snapshot of the new mesh, and
extension selection is evaluated again for the new set of workloads.
"""

from __future__ import annotations

import copy
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meshext.control.cache import TypeStatus
from meshext.control.envoy_config import SnapshotBuilder
from meshext.control.events import (
    MeshReplaced,
    ModulesReported,
    OperatorEvent,
    ProxyConnected,
    ProxyReplied,
    ResourceApplied,
    ResourceDeleted,
    Resync,
    RetirementDue,
    Stop,
)
from meshext.control.images import (
    ImageResolveError,
    RegistrySettings,
    ResolvedModule,
    credentials_from_secret,
    module_roots,
    publisher_of,
    resolve_image,
)
from meshext.control.mesh import Mesh, Workload
from meshext.control.placement import PlacedExtension
from meshext.control.proxy import SIDECAR_DRAIN_SECONDS
from meshext.control.resources import (
    POLICY_KINDS,
    ExtensionRequest,
    JwtPolicy,
    parse_policy,
    parse_resource,
    resource_key,
)
from meshext.control.snapshot import EXTENSION_CONFIG, LISTENER
from meshext.control.state import ControlPlaneState
from meshext.control.telemetry import telemetry_extension
from meshext.errors import InternalError, MeshextError

log = logging.getLogger(__name__)

# A removed filter's ECDS config outlives its last listener reference by this
# much: connections still on the old filter chain (draining) use it, and Envoy
# answers 500 on a filter chain whose ECDS config was withdrawn.
RETIRED_FILTER_SECONDS = 2 * SIDECAR_DRAIN_SECONDS + 2


class ResourceStore(Protocol):
    """Where the resources live, as the operator needs it: a source (sources.py)."""

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """Record ``status`` as the status of the resource ``obj``."""

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ``.dockerconfigjson`` payload of Secret ``namespace/name``, or None if there is none."""


@dataclass
class _Tracked:
    obj: dict[str, Any]
    request: ExtensionRequest | None = None  # the last valid spec (kept while a newer one is invalid)
    error: str = ""  # why it cannot run: validation or image resolution
    error_reason: str = ""
    resolved: ResolvedModule | None = None
    resolved_for: tuple[Any, ...] = ()
    placed: PlacedExtension | None = None
    accepted: list[PlacedExtension] = field(default_factory=list)  # ACKed configs, most recent first
    rejected: dict[PlacedExtension, str] = field(default_factory=dict)  # refused by Envoy
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class _TrackedPolicy:
    obj: dict[str, Any]
    policy: JwtPolicy | None = None  # the last valid spec (kept while a newer one is invalid)
    error: str = ""  # why the current spec is refused
    status: dict[str, Any] = field(default_factory=dict)


class Operator:
    """Turns extension resources into per-proxy snapshots and resource statuses.

    ``state``: where snapshots, modules and module demand are published;
    ``resources``: where statuses go and pull secrets come from (None: statuses
    are only in :meth:`status_report`, and no secret exists); ``registry``:
    how images are pulled; ``trust_domain``: the mesh CA's when the sidecars
    hold workload certificates (they then talk mutual TLS to each other);
    ``telemetry_module``: (path, sha256) of the module telemetry runs from, in
    every sidecar while the mesh enables it (the control plane's: the
    extensions bundle, meshext.extensions.bundle).
    Nothing happens before :meth:`start`."""

    def __init__(
        self,
        mesh: Mesh,
        state: ControlPlaneState,
        *,
        resources: ResourceStore | None = None,
        registry: RegistrySettings | None = None,
        trust_domain: str | None = None,
        telemetry_module: tuple[Path, str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.registry = registry or RegistrySettings()
        self._state = state
        self._resources = resources
        self._trust_domain = trust_domain  # sidecars hold workload certificates: mTLS between them
        self._builder = SnapshotBuilder(mesh, trust_domain)
        # The mesh's own telemetry extension, in every sidecar while the mesh enables it.
        # Its module: the telemetry filter alone, or the extensions bundle whose telemetry root it runs.
        self._telemetry: PlacedExtension | None = None
        self._telemetry_sha256 = telemetry_module[1] if telemetry_module is not None else None
        self._telemetry_roots = module_roots(telemetry_module[0]) if telemetry_module is not None else ()
        if telemetry_module is not None:
            state.modules.add(*telemetry_module)
            self._telemetry = telemetry_extension(telemetry_module[1], mesh, trust_domain,
                                                  module_roots=self._telemetry_roots)
        self._node_ids = {w.node_id for w in mesh.workloads}
        self._mesh_problems: list[str] = []  # why parts of the mesh (or a whole update) were left out
        self._tracked: dict[str, _Tracked] = {}
        self._policies: dict[str, _TrackedPolicy] = {}  # RequestAuthentications, by key
        self._published: dict[str, dict[str, PlacedExtension]] = {}  # node id -> ECDS name -> extension
        self._retired: dict[str, dict[str, tuple[PlacedExtension, float]]] = {}  # node -> name -> (ext, until)
        self._events: queue.Queue[OperatorEvent] = queue.Queue()
        self._lock = threading.Lock()  # guards _tracked/_published for status readers
        self._idle = threading.Event()
        self._rejections_changed = False
        self._worker = threading.Thread(target=self._run, name="operator", daemon=True)

    # -- inputs ----------------------------------------------------------------
    def start(self) -> Operator:
        """Start the worker thread; it reconciles once, then on every event."""
        self._events.put(Resync())
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop the worker thread after the events queued before this call."""
        self._events.put(Stop())
        self._worker.join(timeout=30)

    def apply(self, obj: dict[str, Any]) -> None:
        """Track the ServiceMeshExtension, WasmPlugin or RequestAuthentication ``obj`` (new or changed)."""
        self._idle.clear()
        self._events.put(ResourceApplied(copy.deepcopy(obj)))

    def delete(self, key: str) -> None:
        """Forget the resource ``key`` (``Kind/namespace/name``); its filters leave the proxies."""
        self._idle.clear()
        self._events.put(ResourceDeleted(key))

    def update_mesh(self, mesh: Mesh, problems: list[str] | tuple[str, ...] = ()) -> None:
        """Serve ``mesh`` from now on; ``problems``: what its source had to leave out, and why
        (shown in the status report).  If the new mesh cannot be translated, the
        current one keeps serving and the reason joins the problems."""
        self._idle.clear()
        self._events.put(MeshReplaced(mesh, tuple(problems)))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued event has been handled (tests, CLI)."""
        return self._idle.wait(timeout)

    # -- what the control plane's servers report (ControlPlaneCallbacks) ------------
    # These run on the xDS loop and the HTTP threads: hand over and return at once.
    def on_proxy_connected(self, node_id: str) -> None:
        """A proxy connected: it may be waiting for its first snapshot."""
        if node_id not in self._node_ids:
            log.warning("proxy %s is not a workload of the mesh: it gets no configuration", node_id)
        self._events.put(ProxyConnected(node_id))

    def on_proxy_reply(self, node_id: str, type_url: str, status: TypeStatus, nacked_names: tuple[str, ...]) -> None:
        """An ACK or NACK; only listeners and extension configs matter to the operator."""
        if type_url in (EXTENSION_CONFIG, LISTENER):
            self._events.put(ProxyReplied(node_id, type_url, status, nacked_names))

    def on_modules_reported(self, node_id: str) -> None:
        """A sidecar's module syncer holds other modules now: its snapshot may take them."""
        self._events.put(ModulesReported(node_id))

    # -- the worker ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            events: list[OperatorEvent]
            try:
                events = [self._events.get(timeout=self._next_expiry())]
            except queue.Empty:
                events = [RetirementDue()]
            while True:  # coalesce a burst of events into one reconcile
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            for event in events:
                if isinstance(event, Stop):
                    return
                try:
                    self._handle(event)
                except Exception:  # one bad event must not stop the operator
                    log.exception("operator event %s failed", type(event).__name__)
            try:
                if any(not isinstance(event, ProxyReplied) for event in events) or self._rejections_changed:
                    self._rejections_changed = False
                    self._reconcile()
                else:  # ACKs change only who runs what
                    self._write_statuses()
            except Exception:
                log.exception("reconcile failed")
            if self._events.empty():
                self._idle.set()

    def _next_expiry(self) -> float | None:
        until = [t for retired in self._retired.values() for _, t in retired.values()]
        return max(0.0, min(until) - time.monotonic()) + 0.05 if until else None

    def _handle(self, event: OperatorEvent) -> None:
        """What one event changes; every event but a reply is followed by a reconcile."""
        match event:
            case ResourceApplied(obj=obj) if obj.get("kind") in POLICY_KINDS:
                with self._lock:
                    policy = self._policies.setdefault(resource_key(obj), _TrackedPolicy(obj=obj))
                    policy.obj = obj
                self._prepare_policy(policy)
            case ResourceApplied(obj=obj):
                key = resource_key(obj)
                with self._lock:
                    tracked = self._tracked.setdefault(key, _Tracked(obj=obj))
                    tracked.obj = obj
                self._prepare(tracked)
            case ResourceDeleted(key=key):
                with self._lock:
                    self._tracked.pop(key, None)
                    self._policies.pop(key, None)
            case ProxyReplied(node_id=node_id, type_url=type_url, status=status, nacked_names=nacked_names):
                self._record_reply(node_id, type_url, status, nacked_names)
            case MeshReplaced(mesh=mesh, problems=problems):
                self._replace_mesh(mesh, list(problems))
            case Resync() | ProxyConnected() | ModulesReported() | RetirementDue():
                pass  # nothing to record: the reconcile that follows does the work

    def _replace_mesh(self, mesh: Mesh, problems: list[str]) -> None:
        builder = SnapshotBuilder(mesh, self._trust_domain)
        try:
            for workload in mesh.workloads:  # translate everything before anything is published
                builder.snapshot(workload, [])
        except Exception as error:
            log.exception("mesh update refused; the previous mesh keeps serving")
            self._mesh_problems = [*problems, f"mesh update refused, the previous mesh keeps serving: {error}"]
            return
        self.mesh, self._builder, self._mesh_problems = mesh, builder, problems
        if self._telemetry_sha256 is not None:  # its peer table names the mesh's workloads
            self._telemetry = telemetry_extension(self._telemetry_sha256, mesh, self._trust_domain,
                                                  module_roots=self._telemetry_roots)
        gone = self._node_ids - {w.node_id for w in mesh.workloads}
        self._node_ids = {w.node_id for w in mesh.workloads}
        for node_id in gone:
            self._retired.pop(node_id, None)  # its filters' draining no longer matters: the workload left
            self._state.cache.forget(node_id)

    def _prepare(self, tracked: _Tracked) -> None:
        """Validate and resolve one resource (only what changed is pulled again)."""
        key = resource_key(tracked.obj)
        try:
            request = parse_resource(tracked.obj)
        except MeshextError as error:
            # The last valid spec keeps selecting workloads, so what ran keeps running.
            tracked.placed = None
            tracked.error, tracked.error_reason = str(error), "InvalidSpec"
            return
        wanted = (request.image, request.pull_policy, request.expected_sha256, request.pull_secret)
        if tracked.resolved is None or tracked.resolved_for != wanted or request.pull_policy == "Always":
            try:
                credentials = self._credentials(request)
            except MeshextError as error:
                tracked.placed, tracked.error, tracked.error_reason = None, str(error), "ImagePullSecretInvalid"
                return
            try:
                resolved = resolve_image(request.image, policy=request.pull_policy,
                                         expected_sha256=request.expected_sha256, settings=self.registry,
                                         credentials=credentials, where=key,
                                         image_field="spec.url" if request.kind == "WasmPlugin" else "spec.image")
                self._state.modules.add(resolved.path, resolved.module_sha256)
            except ImageResolveError as error:
                tracked.placed, tracked.error, tracked.error_reason = None, str(error), error.reason
                return
            except MeshextError as error:  # the cached module changed under us
                tracked.placed, tracked.error, tracked.error_reason = None, str(error), "ImagePullFailed"
                return
            tracked.resolved, tracked.resolved_for = resolved, wanted
        # Only a spec that resolved replaces the one whose selector keeps the accepted config running.
        tracked.request = request
        if tracked.resolved is None:
            raise InternalError(f"{key}: a valid spec kept no resolved image")
        maistra = tracked.resolved.maistra
        phase = request.phase or (maistra.phase if maistra and maistra.phase else "Unspecified")
        priority = request.priority
        if priority is None:
            priority = maistra.priority if maistra and maistra.priority is not None else 0
        tracked.placed = PlacedExtension(
            key=key, filter_name=request.filter_name, phase=phase, priority=priority,
            module_sha256=tracked.resolved.module_sha256, root_id=request.root_id,
            configuration=request.configuration, fail_open=request.fail_open,
            inbound=request.inbound, outbound=request.outbound, ports=request.ports,
            vm_environment=request.vm_environment, vm_host_environment=request.vm_host_environment,
            # Only meshext-built modules keep each plugin's state apart in one VM;
            # any other may keep its configuration in a global.
            publisher=publisher_of(request.image) if tracked.resolved.meshext_built else "",
            module_roots=tracked.resolved.roots,
        )
        tracked.error = tracked.error_reason = ""

    @staticmethod
    def _prepare_policy(tracked: _TrackedPolicy) -> None:
        """Validate one RequestAuthentication; an invalid one keeps the last valid one applied."""
        try:
            tracked.policy, tracked.error = parse_policy(tracked.obj), ""
        except MeshextError as error:
            tracked.error = str(error)

    def _credentials(self, request: ExtensionRequest) -> Any:
        if not request.pull_secret:
            return None
        payload = self._resources.secret(request.namespace, request.pull_secret) if self._resources else None
        if payload is None:
            raise MeshextError(
                f"imagePullSecret {request.pull_secret!r} not found in namespace {request.namespace}",
                where=f"{request.key}: spec.imagePullSecret",
                fix="create a kubernetes.io/dockerconfigjson Secret with that name in the resource's namespace",
            )
        return credentials_from_secret(payload, request.image, self.registry,
                                       where=f"{request.key}: spec.imagePullSecret")

    # -- placement and publishing ----------------------------------------------
    def _selects(self, request: ExtensionRequest | JwtPolicy, workload: Workload) -> bool:
        """Whether ``request`` applies to ``workload``: in the control-plane namespace mesh-wide, else in its own
        namespace, to the workloads carrying its selector's labels."""
        if request.namespace != self.mesh.controlPlaneNamespace and request.namespace != workload.namespace:
            return False
        selector = request.labels if isinstance(request, JwtPolicy) else request.selector
        return all(workload.labels.get(k) == v for k, v in selector.items())

    def _effective(self, tracked: _Tracked) -> PlacedExtension | None:
        """What should run: the current config unless a proxy refused it."""
        candidates = self._candidates(tracked)
        return candidates[0] if candidates else None

    @staticmethod
    def _candidates(tracked: _Tracked) -> list[PlacedExtension]:
        """Preferred first: the current config (unless refused), then what proxies accepted before."""
        candidates = []
        if tracked.placed is not None and tracked.placed not in tracked.rejected:
            candidates.append(tracked.placed)
        candidates += [c for c in tracked.accepted if c not in candidates and c not in tracked.rejected]
        return candidates

    def _reconcile(self) -> None:
        with self._lock:
            tracked_items = list(self._tracked.values())
            policies = [t.policy for t in self._policies.values() if t.policy is not None]
        proxies = self._state.cache.proxies()
        demand = self._state.demand
        published: dict[str, dict[str, PlacedExtension]] = {}
        for workload in self.mesh.workloads:
            node_id = workload.node_id
            report = demand.reported(node_id)
            module_dir, present = report if report is not None else ("", frozenset())
            chosen: dict[str, PlacedExtension] = {}
            wanted: set[str] = set()
            for tracked in tracked_items:
                if tracked.request is None or not self._selects(tracked.request, workload):
                    continue
                candidates = self._candidates(tracked)
                wanted.update(c.module_sha256 for c in candidates)
                # Until the sidecar holds the new module, it keeps the previous one.
                usable = next((c for c in candidates if c.module_sha256 in present), None)
                if usable is not None:
                    chosen[usable.filter_name] = usable
            telemetry = self._telemetry if self.mesh.telemetry.enabled else None
            if telemetry is not None:
                wanted.add(telemetry.module_sha256)
                if telemetry.module_sha256 in present:
                    chosen[telemetry.filter_name] = telemetry
            draining = self._draining(node_id, chosen)
            wanted.update(e.module_sha256 for e in draining)
            demand.set_wanted(node_id, wanted)
            published[node_id] = chosen
            proxy = proxies.get(node_id)
            if report is None and (proxy is None or proxy.metadata.get("MESHEXT_MODULE_SYNC")):
                # Its syncer has not reported yet (e.g. right after a control-plane restart):
                # publishing now would strip the proxy's filters until it does.
                continue
            self._state.cache.set_snapshot(node_id, self._builder.snapshot(
                workload, list(chosen.values()), module_dir, draining=draining,
                policies=[policy for policy in policies if self._selects(policy, workload)],
                node_metadata=proxy.metadata if proxy is not None else None))
        with self._lock:
            self._published = published
        for node_id, proxy in proxies.items():
            ecds = proxy.types.get(EXTENSION_CONFIG)
            if ecds is not None:  # it may hold, ACKed already, what was just published
                self._note_accepted(node_id, ecds.acked_resources)
        self._write_statuses()

    def _draining(self, node_id: str, chosen: dict[str, PlacedExtension]) -> list[PlacedExtension]:
        """Filters that just left ``node_id``'s listeners, kept until their chains drained."""
        now = time.monotonic()
        retired = self._retired.setdefault(node_id, {})
        refused = {extension for tracked in self._tracked.values() for extension in tracked.rejected}
        for name, extension in self._published.get(node_id, {}).items():
            # A refused config never ran, so no connection can be using it.
            if name not in chosen and name not in retired and extension not in refused:
                retired[name] = (extension, now + RETIRED_FILTER_SECONDS)
        for name in list(retired):
            if name in chosen or retired[name][1] <= now:
                del retired[name]
        return [extension for extension, _ in retired.values()]

    def _note_accepted(self, node_id: str, acked: dict[str, str]) -> None:
        """Remember, as accepted, each extension published to ``node_id`` whose exact ECDS config
        it ACKed (``acked``: name -> version).

        Read from what the proxy holds rather than from the ACK of a push: a config
        identical to one Envoy already holds is not sent again, so never ACKed again
        (an extension deleted and created anew while its retired config still
        drains), yet it is the last good one should an update be refused."""
        with self._lock:
            by_filter = {t.request.filter_name: t for t in self._tracked.values() if t.request is not None}
        for name, extension in self._published.get(node_id, {}).items():
            tracked = by_filter.get(name)
            if tracked is None or extension in tracked.accepted[:1] or not self._holds(node_id, name, acked):
                continue
            # A short history: if another proxy refuses this one, the one before still serves.
            tracked.accepted = [extension, *(a for a in tracked.accepted if a != extension)][:3]

    def _holds(self, node_id: str, filter_name: str, acked: dict[str, str]) -> bool:
        """Whether ``acked`` (ECDS name -> version) has ``filter_name`` at the version of ``node_id``'s snapshot."""
        snapshot = self._state.cache.snapshot(node_id)
        resource = snapshot.of_type(EXTENSION_CONFIG).get(filter_name) if snapshot is not None else None
        return resource is not None and acked.get(filter_name) == resource.version

    def _record_reply(self, node_id: str, type_url: str, status: TypeStatus, nacked_names: tuple[str, ...]) -> None:
        if type_url != EXTENSION_CONFIG:
            return  # listener replies only matter for the "running on" view
        if not status.error_detail:
            self._note_accepted(node_id, status.acked_resources)
            return
        published = self._published.get(node_id, {})
        with self._lock:
            by_filter = {t.request.filter_name: t for t in self._tracked.values() if t.request is not None}
        suspects = [by_filter[name] for name in nacked_names if name in by_filter]
        # Envoy names the plugin it could not create: prefer that over "everything in the push".
        named = [t for t in suspects if t.placed and re.search(re.escape(t.placed.key), status.error_detail)]
        for tracked in named or suspects:
            refused = published.get(tracked.request.filter_name if tracked.request else "")
            if refused is not None:
                tracked.rejected = {refused: f"proxy {node_id} rejected it: {status.error_detail}"}
                self._rejections_changed = True
                log.warning("%s rejected by %s: %s", refused.key, node_id, status.error_detail)

    # -- status ----------------------------------------------------------------
    def _running_on(self, extension: PlacedExtension, proxies: dict[str, Any]) -> list[str]:
        """Proxies that accepted exactly this version of the extension."""
        running = []
        filter_name = extension.filter_name
        for node_id, chosen in self._published.items():
            proxy = proxies.get(node_id)
            snapshot = self._state.cache.snapshot(node_id)
            if chosen.get(filter_name) != extension or proxy is None or proxy.streams <= 0 or snapshot is None:
                continue
            ecds = proxy.types.get(EXTENSION_CONFIG)
            lds = proxy.types.get(LISTENER)
            if (ecds and lds and self._holds(node_id, filter_name, ecds.acked_resources)
                    and lds.acked_version == snapshot.type_versions[LISTENER]):
                running.append(node_id)
        return sorted(running)

    def _status_of(self, tracked: _Tracked, proxies: dict[str, Any]) -> dict[str, Any]:
        request = tracked.request
        generation = int((tracked.obj.get("metadata") or {}).get("generation") or 1)
        status: dict[str, Any] = {"observedGeneration": generation}
        reason, message, error = "", "", False
        effective = self._effective(tracked)
        if tracked.error:
            reason, message, error = tracked.error_reason, tracked.error, True
        elif tracked.placed is not None and tracked.placed in tracked.rejected:
            reason, message, error = "RejectedByProxy", tracked.rejected[tracked.placed], True
        if tracked.resolved is not None:
            status["resolvedImage"] = tracked.resolved.reference
            status["resolvedDigest"] = tracked.resolved.digest
            status["moduleSha256"] = tracked.resolved.module_sha256
        selected = ([w.node_id for w in self.mesh.workloads if self._selects(request, w)]
                    if request is not None else [])
        running = self._running_on(effective, proxies) if effective else []
        if effective is not None:
            status["effectivePhase"] = effective.phase
            status["effectivePriority"] = effective.priority
        status["workloads"] = running
        if error:
            if effective is not None:
                message += " (the last accepted configuration keeps running)"
            ready = False
        elif not selected:
            ready, reason, message = False, "NoMatchingWorkloads", "the selector matches no workload in the mesh"
        elif set(running) >= set(selected):
            ready, reason, message = True, "Running", f"running on {len(running)} workload(s)"
        else:
            waiting = sorted(set(selected) - set(running))
            ready, reason, message = False, "Pending", "waiting for the proxies of " + ", ".join(waiting)
        status["conditions"] = [
            {"type": "Ready", "status": str(ready), "reason": reason, "message": message},
            {"type": "Error", "status": str(error), "reason": reason if error else "NoError",
             "message": message if error else ""},
        ]
        status["phase"] = "Error" if error else ("Ready" if ready else "Pending")
        return status

    def _policy_status_of(self, tracked: _TrackedPolicy, proxies: dict[str, Any]) -> dict[str, Any]:
        """A RequestAuthentication's status: Error while its spec is invalid, Ready once every selected
        sidecar ACKed listeners that enforce it, else Pending."""
        generation = int((tracked.obj.get("metadata") or {}).get("generation") or 1)
        policy = tracked.policy
        selected = [w.node_id for w in self.mesh.workloads if policy is not None and self._selects(policy, w)]
        running = sorted(node_id for node_id in selected if self._listeners_acked(node_id, proxies))
        if tracked.error:
            ready, reason, message = False, "InvalidSpec", tracked.error
            if policy is not None:
                message += " (the last valid configuration keeps applying)"
        elif not selected:
            ready, reason, message = False, "NoMatchingWorkloads", "the selector matches no workload in the mesh"
        elif running == selected:
            ready, reason, message = True, "Applied", f"enforced on {len(running)} workload(s)"
        else:
            waiting = sorted(set(selected) - set(running))
            ready, reason, message = False, "Pending", "waiting for the proxies of " + ", ".join(waiting)
        error = bool(tracked.error)
        return {
            "observedGeneration": generation, "workloads": running,
            "conditions": [
                {"type": "Ready", "status": str(ready), "reason": reason, "message": message},
                {"type": "Error", "status": str(error), "reason": reason if error else "NoError",
                 "message": message if error else ""},
            ],
            "phase": "Error" if error else ("Ready" if ready else "Pending"),
        }

    def _listeners_acked(self, node_id: str, proxies: dict[str, Any]) -> bool:
        """Whether ``node_id``'s proxy is connected and ACKed the listeners of its current snapshot."""
        proxy = proxies.get(node_id)
        snapshot = self._state.cache.snapshot(node_id)
        lds = proxy.types.get(LISTENER) if proxy is not None and proxy.streams > 0 else None
        return lds is not None and snapshot is not None and lds.acked_version == snapshot.type_versions[LISTENER]

    def _write_statuses(self) -> None:
        proxies = self._state.cache.proxies()
        with self._lock:
            tracked_items: list[_Tracked | _TrackedPolicy] = [*self._tracked.values(), *self._policies.values()]
        for tracked in tracked_items:
            status = (self._status_of(tracked, proxies) if isinstance(tracked, _Tracked)
                      else self._policy_status_of(tracked, proxies))
            if status == _without_times(tracked.status):
                continue
            previous = {c["type"]: c for c in tracked.status.get("conditions", [])}
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for condition in status["conditions"]:
                old = previous.get(condition["type"])
                kept = old is not None and old["status"] == condition["status"]
                condition["lastTransitionTime"] = old["lastTransitionTime"] if old is not None and kept else now
            tracked.status = status
            if self._resources is None:
                continue
            try:
                self._resources.write_status(tracked.obj, status)
            except Exception:
                log.exception("cannot write the status of %s", resource_key(tracked.obj))

    def status_report(self) -> dict[str, Any]:
        """Extensions, proxies and the mesh, for GET /status and `meshext status`."""
        with self._lock:
            extensions = {key: {"status": copy.deepcopy(t.status), "image": _image_of(t.obj)}
                          for key, t in self._tracked.items()}
            policies = {key: {"status": copy.deepcopy(t.status)} for key, t in self._policies.items()}
        proxies = {}
        for node_id, proxy in self._state.cache.proxies().items():
            proxies[node_id] = {
                "connected": proxy.streams > 0,
                "inMesh": node_id in self._node_ids,
                "inSync": self._state.cache.converged(node_id),
                "types": {url.rsplit(".", 1)[-1]: {"acked": s.acked_version, "sent": s.sent_version,
                                                   "nacked": s.nacked_version, "error": s.error_detail}
                          for url, s in proxy.types.items()},
            }
        mesh = self.mesh
        return {"extensions": extensions, "policies": policies, "proxies": proxies, "mesh": {
            "services": sorted(f"{s.namespace}/{s.name}" for s in mesh.services),
            "workloads": sorted(w.node_id for w in mesh.workloads),
            "problems": list(self._mesh_problems),
        }}


def _image_of(obj: dict[str, Any]) -> str:
    spec = obj.get("spec")
    return str(spec.get("image") or spec.get("url") or "") if isinstance(spec, dict) else ""


def _without_times(status: dict[str, Any]) -> dict[str, Any]:
    if not status:
        return {}
    stripped = dict(status)
    stripped["conditions"] = [
        {k: v for k, v in condition.items() if k != "lastTransitionTime"} for condition in status["conditions"]
    ]
    return stripped
