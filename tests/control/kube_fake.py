"""A fake Kubernetes API server, faithful to the parts of the protocol the
control plane uses: cluster-wide collections of custom resources
(``/apis/GROUP/VERSION/PLURAL``), of core/v1 (``/api/v1/services``,
``/api/v1/pods``) and of discovery.k8s.io/v1 (``/apis/discovery.k8s.io/v1/endpointslices``);
list with a resourceVersion, watch from a resourceVersion (newline-delimited
JSON events), "410 Gone" when that version is older than the kept history,
merge-patch of the status subresource, and 404 for secrets.  As the real
server does, items of a built-in type's list carry no kind/apiVersion (watch
events do), and a deleted object's event carries the deletion's
resourceVersion.  No API server can run on the build machine (see
test_control_kubernetes.py for the real one).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COLLECTION = re.compile(r"^/apis?/(?:([^/]+)/)?([^/]+)/([^/]+)$")  # /api/v1/pods, /apis/g/v/plural
# Built-in collections: plural -> (apiVersion, kind).
BUILT_IN = {"services": ("v1", "Service"), "pods": ("v1", "Pod"),
            "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice")}
_STATUS = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)/([^/]+)/status$")


class FakeKubernetes:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.version = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name)
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, plural, type, object)
        self.oldest_kept = 0  # watches from before this version get 410 Gone
        self.status_patches: list[dict[str, Any]] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what a kubectl user would do ------------------------------------------
    def apply(self, plural: str, obj: dict[str, Any]) -> None:
        with self._lock:
            metadata = obj.setdefault("metadata", {})
            key = (plural, metadata.get("namespace", "default"), metadata["name"])
            old = self.objects.get(key)
            if plural in BUILT_IN:
                obj["apiVersion"], obj["kind"] = BUILT_IN[plural]
            self.version += 1
            metadata["resourceVersion"] = str(self.version)
            spec_changed = old is None or old.get("spec") != obj.get("spec")
            metadata["generation"] = (old["metadata"]["generation"] if old else 0) + (1 if spec_changed else 0)
            if old and "status" in old and "status" not in obj:  # status is written separately
                obj["status"] = old["status"]
            self.objects[key] = obj
            self.events.append((self.version, plural, "MODIFIED" if old else "ADDED", copy.deepcopy(obj)))
            self._lock.notify_all()

    def delete(self, plural: str, namespace: str, name: str, *, record: bool = True) -> None:
        """``record=False``: the deletion falls out of the history a watch could replay."""
        with self._lock:
            obj = self.objects.pop((plural, namespace, name))
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            if record:
                self.events.append((self.version, plural, "DELETED", obj))
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the event history (etcd compaction): older watches get 410 Gone."""
        with self._lock:
            self.oldest_kept = self.version
            self.events.clear()
            self._lock.notify_all()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    # -- the HTTP side -----------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                url = urllib.parse.urlsplit(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                match = _COLLECTION.match(url.path)
                if match is None:
                    self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})
                    return
                plural = match.group(3)
                if query.get("watch") in ("true", "True", "1"):
                    self._watch(plural, int(query.get("resourceVersion") or 0), float(query.get("timeoutSeconds", 5)))
                    return
                with fake._lock:
                    items = [copy.deepcopy(o) for (p, _, _), o in fake.objects.items() if p == plural]
                    version = fake.version
                api_version, kind = BUILT_IN.get(plural, ("v1", ""))
                if plural in BUILT_IN:
                    for item in items:
                        del item["apiVersion"], item["kind"]
                self._json(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                 "metadata": {"resourceVersion": str(version)}, "items": items})

            def _send_event(self, event: dict[str, Any]) -> None:
                # One HTTP/1.1 chunk per event, as the API server streams a watch:
                # clients read chunk by chunk, never waiting for the end of the body.
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()

            def _watch(self, plural: str, since: int, timeout: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._stream_events(plural, since, timeout)
                    self.wfile.write(b"0\r\n\r\n")  # the end of the body: the client reconnects
                except OSError:
                    pass  # the client went away
                self.close_connection = True

            def _stream_events(self, plural: str, since: int, timeout: float) -> None:
                with fake._lock:
                    if since < fake.oldest_kept:
                        self._send_event({"type": "ERROR", "object": {
                            "kind": "Status", "code": 410, "reason": "Expired",
                            "message": f"too old resource version: {since}"}})
                        return
                    sent = since
                    deadline = time.monotonic() + timeout
                    while True:
                        for version, event_plural, kind, obj in fake.events:
                            if version > sent and event_plural == plural:
                                self._send_event({"type": kind, "object": obj})
                        sent = max([sent] + [v for v, *_ in fake.events])
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not fake._lock.wait(remaining) or fake.oldest_kept > since:
                            return  # timeoutSeconds reached, or history compacted: the client reconnects

            def do_PATCH(self) -> None:  # noqa: N802
                match = _STATUS.match(urllib.parse.urlsplit(self.path).path)
                length = int(self.headers.get("Content-Length", 0))
                patch = json.loads(self.rfile.read(length))
                if match is None or self.headers.get("Content-Type") != "application/merge-patch+json":
                    self._json(415, {"kind": "Status", "code": 415, "message": "want a merge patch of /status"})
                    return
                _, _, namespace, plural, name = match.groups()
                with fake._lock:
                    obj = fake.objects.get((plural, namespace, name))
                    if obj is None:
                        self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                        return
                    obj["status"] = patch["status"]
                    fake.version += 1
                    obj["metadata"]["resourceVersion"] = str(fake.version)
                    fake.events.append((fake.version, plural, "MODIFIED", copy.deepcopy(obj)))
                    fake.status_patches.append(copy.deepcopy(patch["status"]))
                    fake._lock.notify_all()
                    body = copy.deepcopy(obj)
                self._json(200, body)

        return Handler
