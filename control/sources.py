"""Where extension resources come from: a watched directory, or Kubernetes.

Both feed the same :class:`~meshext.control.operator.Operator`; neither knows
anything about Envoy.  A source is built first, because the operator is built
with it (it is the operator's ``ResourceStore``: statuses go to it, pull
secrets come from it), and is then started with the :class:`ResourceSink`
it feeds (the operator).

Directory mode: every ``*.yaml`` / ``*.yml`` / ``*.json`` file (multi-document
YAML allowed) holds ServiceMeshExtension, WasmPlugin, RequestAuthentication or
``kubernetes.io/dockerconfigjson`` Secret objects.  The directory is polled
(a stat per file and tick; no inotify dependency, and it works on every file
system).  A changed file is read once it has kept the same size and mtime
for one interval, so a file caught half-written (an editor or ``>`` that
truncates first) is not taken for an empty one, which would delete what it
held.  Status goes to ``<file>.status.yaml`` next to each resource file,
one entry per resource, keyed ``Kind/namespace/name``.  Without
``metadata.generation`` a resource's generation starts at 1 and goes up each
time its spec changes, as the API server would do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from meshext.control.resources import WATCHED_KINDS, resource_key
from meshext.errors import InternalError

log = logging.getLogger(__name__)
STATUS_SUFFIX = ".status.yaml"
# The resource name of each kind in the Kubernetes API (…/<plural>/<name>).
PLURALS = {"ServiceMeshExtension": "servicemeshextensions", "WasmPlugin": "wasmplugins",
           "RequestAuthentication": "requestauthentications"}


class ResourceSink(Protocol):
    """What a source feeds: the operator."""

    def apply(self, obj: dict[str, Any]) -> None:
        """A resource was created or changed (``obj``: the whole object)."""

    def delete(self, key: str) -> None:
        """The resource ``key`` (``Kind/namespace/name``) is gone."""


def _dockerconfig(secret: dict[str, Any]) -> dict[str, Any] | None:
    data = secret.get("data") or {}
    if ".dockerconfigjson" in data:
        return json.loads(base64.b64decode(data[".dockerconfigjson"]))
    string_data = secret.get("stringData") or {}
    if ".dockerconfigjson" in string_data:
        return json.loads(string_data[".dockerconfigjson"])
    return None


class DirectorySource:
    """Resources from the files of a directory, polled every ``interval`` seconds (see the module docstring)."""

    def __init__(self, directory: Path, *, interval: float = 0.2) -> None:
        self.directory = directory
        self.interval = interval
        self._sink: ResourceSink | None = None
        self._stamps: dict[Path, tuple[int, int]] = {}  # file -> (mtime, size) last loaded
        self._settling: dict[Path, tuple[int, int]] = {}  # file -> (mtime, size) seen changed, not yet loaded
        self._objects: dict[Path, dict[str, dict[str, Any]]] = {}  # file -> key -> object
        self._generations: dict[str, tuple[str, int]] = {}  # key -> (spec hash, generation)
        self._secrets: dict[Path, dict[tuple[str, str], dict[str, Any]]] = {}  # file -> (ns, name) -> payload
        self._statuses: dict[Path, dict[str, Any]] = {}
        self._file_of: dict[str, Path] = {}
        self._lock = threading.Lock()
        # The polling thread and a caller (a test, a reload) may scan at once: one scan at a time,
        # or both see a deleted file and the second finds its objects gone.
        self._scanning = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="directory-source", daemon=True)

    def start(self, sink: ResourceSink) -> DirectorySource:
        """Apply what the directory holds to ``sink``, then keep polling it."""
        self._sink = sink
        self.directory.mkdir(parents=True, exist_ok=True)
        self.scan(settled=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:
                log.exception("scanning %s failed", self.directory)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ``.dockerconfigjson`` payload of a Secret some file holds, or None."""
        with self._lock:
            for secrets in self._secrets.values():
                if (namespace, name) in secrets:
                    return secrets[(namespace, name)]
        return None

    def scan(self, *, settled: bool = False) -> None:
        """Apply what changed since the last scan, delete what disappeared.

        A changed file is loaded when the previous scan saw it as it is now
        (or at once with ``settled``, as at start-up).  Safe to call while
        the polling thread runs.
        """
        with self._scanning:
            self._scan(settled)

    def _scan(self, settled: bool) -> None:
        sink = self._started_sink()
        present = {
            path for pattern in ("*.yaml", "*.yml", "*.json") for path in self.directory.glob(pattern)
            if not path.name.endswith(STATUS_SUFFIX)
        }
        for path in sorted(present):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._stamps.get(path) == stamp:
                self._settling.pop(path, None)
            elif settled or self._settling.get(path) == stamp:
                self._settling.pop(path, None)
                self._stamps[path] = stamp
                self._load(path)
            else:
                self._settling[path] = stamp
        for path in set(self._objects) - present:
            self._stamps.pop(path, None)
            self._settling.pop(path, None)
            with self._lock:
                self._secrets.pop(path, None)
            for key in self._objects.pop(path):
                sink.delete(key)
            path.with_name(path.name + STATUS_SUFFIX).unlink(missing_ok=True)

    def _started_sink(self) -> ResourceSink:
        if self._sink is None:
            raise InternalError("DirectorySource used before start(sink)")
        return self._sink

    def _load(self, path: Path) -> None:
        sink = self._started_sink()
        try:
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as error:
            # Keep what the file held before: the last good configuration keeps serving.
            log.error("%s: cannot parse (%s); keeping its previous resources", path, error)
            return
        objects: dict[str, dict[str, Any]] = {}
        secrets: dict[tuple[str, str], dict[str, Any]] = {}
        for document in documents:
            if not isinstance(document, dict):
                continue
            if document.get("kind") == "Secret":
                payload = _dockerconfig(document)
                metadata = document.get("metadata") or {}
                if payload is not None and metadata.get("name"):
                    secrets[(metadata.get("namespace") or "default", str(metadata["name"]))] = payload
                continue
            if document.get("kind") not in WATCHED_KINDS:
                continue
            key = resource_key(document)
            metadata = document.setdefault("metadata", {})
            if not metadata.get("generation"):
                spec_hash = hashlib.sha256(json.dumps(document.get("spec"), sort_keys=True).encode()).hexdigest()
                old_hash, generation = self._generations.get(key, ("", 0))
                if spec_hash != old_hash:
                    generation += 1
                self._generations[key] = (spec_hash, generation)
                metadata["generation"] = generation
            objects[key] = document
        with self._lock:
            self._secrets[path] = secrets
        removed = set(self._objects.get(path, {})) - set(objects)
        for key in removed:
            sink.delete(key)
        self._objects[path] = objects
        if removed:
            self._write_statuses(path)
        for key, obj in objects.items():
            self._file_of[key] = path
            sink.apply(obj)

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """Write ``status`` into the status file next to the file that holds ``obj``."""
        key = resource_key(obj)
        path = self._file_of.get(key)
        if path is None or path not in self._objects:
            return
        with self._lock:
            self._statuses.setdefault(path, {})[key] = status
        self._write_statuses(path)

    def _write_statuses(self, path: Path) -> None:
        """Rewrite ``path``'s status file: one entry per resource it still holds."""
        with self._lock:
            statuses = {k: v for k, v in self._statuses.get(path, {}).items() if k in self._objects.get(path, {})}
            self._statuses[path] = statuses
            target = path.with_name(path.name + STATUS_SUFFIX)
            partial = target.with_name(target.name + ".partial")
            partial.write_text(yaml.safe_dump(statuses, sort_keys=True))
            partial.replace(target)  # readers never see half a file


def kubernetes_api_client() -> Any:
    """An API client for the cluster this process runs in, else KUBECONFIG's."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def watch_collection(list_call: Callable[..., Any], *args: Any, apply: Callable[[dict[str, Any]], None],
                     delete: Callable[[dict[str, Any]], None], stop: threading.Event, timeout_seconds: int,
                     listed: Callable[[], None] = lambda: None) -> None:
    """List, then watch one collection until ``stop`` is set, as plain JSON objects.

    ``list_call`` is a `kubernetes` client list function (typed or custom
    objects).  Objects stay plain JSON rather than the client's models, which
    refuse some objects the API server sends (an EndpointSlice whose
    ``endpoints`` is null).  Each watch resumes from the last resourceVersion
    seen; a dropped connection reconnects; 410 Gone (history expired) lists
    again, applying what changed and deleting what disappeared.  ``listed`` is
    called after every complete list.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    known: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> object
    resource_version = ""
    what = getattr(list_call, "__name__", "collection") + "".join(f" {a}" for a in args)

    def key_of(obj: dict[str, Any]) -> tuple[str, str]:
        metadata = obj.get("metadata") or {}
        return metadata.get("namespace") or "", metadata.get("name") or ""

    while not stop.is_set():
        try:
            if not resource_version:
                response = list_call(*args, _preload_content=False)
                listing = json.loads(response.data)
                seen = {key_of(item): item for item in listing.get("items") or []}
                for key, item in seen.items():
                    old_version = (known.get(key) or {}).get("metadata", {}).get("resourceVersion")
                    if old_version != item["metadata"].get("resourceVersion"):
                        apply(item)
                for key in set(known) - set(seen):
                    delete(known[key])
                known = seen
                resource_version = listing["metadata"]["resourceVersion"]
                listed()
            # return_type "object": events stay plain JSON, as the list's items.
            stream = watch.Watch(return_type="object").stream(
                list_call, *args, resource_version=resource_version, timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True)
            for event in stream:
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        resource_version = ""  # history expired: relist
                    break
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] == "DELETED":
                    known.pop(key_of(obj), None)
                    delete(obj)
                else:
                    known[key_of(obj)] = obj
                    apply(obj)
                if stop.is_set():
                    return
        except ApiException as error:
            if error.status == 410:
                resource_version = ""
            else:
                log.warning("watch %s failed (%s); reconnecting", what, error.reason)
                stop.wait(1)
        except Exception as error:  # connection dropped: reconnect from the same version
            log.warning("watch %s interrupted (%s); reconnecting", what, error)
            stop.wait(1)


class KubernetesSource:
    """List + watch the CRDs of :data:`PLURALS` with the `kubernetes` client; status via the status subresource."""

    # (group, version, plural) of each CRD watched: its first (storage) version.
    RESOURCES = tuple((WATCHED_KINDS[kind][0], WATCHED_KINDS[kind][1][0], plural) for kind, plural in PLURALS.items())

    def __init__(self, *, api_client: Any = None, timeout_seconds: int = 60) -> None:
        from kubernetes import client

        api_client = api_client or kubernetes_api_client()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.timeout_seconds = timeout_seconds
        self._stop = threading.Event()

    def start(self, sink: ResourceSink) -> KubernetesSource:
        """Watch each CRD (one thread each), feeding ``sink``."""
        for group, version, plural in self.RESOURCES:
            threading.Thread(target=self._watch_forever, args=(sink, group, version, plural), daemon=True,
                             name=f"watch-{plural}").start()
        return self

    def stop(self) -> None:
        """Stop watching (each watch ends at its next event or timeout)."""
        self._stop.set()

    def _watch_forever(self, sink: ResourceSink, group: str, version: str, plural: str) -> None:
        watch_collection(self.custom.list_cluster_custom_object, group, version, plural,
                         apply=sink.apply, delete=lambda obj: sink.delete(resource_key(obj)),
                         stop=self._stop, timeout_seconds=self.timeout_seconds)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ``.dockerconfigjson`` payload of Secret ``namespace/name`` (read from the API), or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _dockerconfig({"data": secret.data or {}})

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch ``status`` into the resource's status subresource."""
        group, _, version = obj["apiVersion"].partition("/")
        plural = PLURALS.get(obj["kind"])
        if plural is None:  # the operator tracks only resources of the watched kinds
            raise InternalError(f"status for a resource of kind {obj['kind']!r}")
        metadata = obj["metadata"]
        self.custom.patch_namespaced_custom_object_status(
            group, version, metadata.get("namespace") or "default", plural, metadata["name"], {"status": status})
