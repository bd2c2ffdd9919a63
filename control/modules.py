"""Getting Wasm modules to the sidecars, sha256 verified.

Choice: option (b), a local file fetched next to the sidecar.  `meshext proxy`
runs a small module syncer beside Envoy; it asks the control plane which
modules its proxy needs, downloads each from the control plane's HTTP server,
checks its sha256, and only then puts it in place (``<dir>/<sha256>.wasm``,
written atomically).  The control plane puts an extension into a proxy's
snapshot only after that proxy's syncer reported the module present, and the
ECDS resource names the local file.

Why not option (a), Envoy fetching a ``remote`` data source itself: Envoy
1.40 logs "Wasm remote code fetch is unstable and may cause a crash"
(envoyproxy/envoy#25052), and we measured the failure mode that matters for
ECDS: when several filter configs reference a module whose fetch is still in
progress, Envoy creates them as *failed* plugins ("failed to load (in
progress)"), still ACKs the update, and a fail-closed filter then answers 500
to every request.  With a local file, loading is synchronous: a module that
cannot be loaded or configured is a NACK with Envoy's error text, and the
last good configuration keeps serving.  Istio's agent made the same choice
for the same reasons.  Pull secrets stay with the control plane; the syncer
only talks to the control plane.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from pathlib import Path

from meshext.errors import MeshextError


class ModuleStore:
    """sha256 -> module file, filled only with verified modules.

    Modules are copied into the store's own directory: the source (a user's
    file, a shared cache) may change after it was verified."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="meshext-modules-"))
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}

    def add(self, path: Path, sha256: str) -> None:
        """Copy the module at ``path``, whose sha256 the caller verified, into the store."""
        target = self.root / f"{sha256}.wasm"
        if not target.exists():
            partial = target.with_suffix(".partial")
            shutil.copyfile(path, partial)
            if hashlib.sha256(partial.read_bytes()).hexdigest() != sha256:
                partial.unlink()
                raise MeshextError(f"{path} changed while it was being copied",
                                   fix="retry; do not rewrite modules in place")
            partial.replace(target)
        with self._lock:
            self._paths[sha256] = target

    def close(self) -> None:
        """Delete the store's directory."""
        shutil.rmtree(self.root, ignore_errors=True)

    def read(self, sha256: str) -> bytes | None:
        """The module's bytes, checked again; None if unknown or no longer matching its sha256."""
        with self._lock:
            path = self._paths.get(sha256)
        if path is None:
            return None
        data = path.read_bytes()
        # The file lives in a cache that others write to: check again on every serve.
        return data if hashlib.sha256(data).hexdigest() == sha256 else None


class ModuleDemand:
    """Which modules each proxy needs, and which its syncer reported present.

    The syncer long-polls :meth:`wait_wanted`; its poll also carries its
    report (directory and present modules), recorded with :meth:`report`.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._wanted: dict[str, tuple[int, frozenset[str]]] = {}
        self._reports: dict[str, tuple[str, frozenset[str]]] = {}

    def set_wanted(self, node_id: str, modules: set[str]) -> None:
        """The modules ``node_id``'s syncer must hold; a change wakes its long poll."""
        with self._changed:
            version, current = self._wanted.get(node_id, (0, frozenset()))
            if frozenset(modules) != current or node_id not in self._wanted:
                self._wanted[node_id] = (version + 1, frozenset(modules))
                self._changed.notify_all()

    def report(self, node_id: str, module_dir: str, present: set[str]) -> bool:
        """Record what ``node_id``'s syncer holds; True if that differs from its last report."""
        report = (module_dir, frozenset(present))
        with self._changed:
            changed = self._reports.get(node_id) != report
            self._reports[node_id] = report
        return changed

    def reported(self, node_id: str) -> tuple[str, frozenset[str]] | None:
        """(module directory, modules present) as the node's syncer last said."""
        with self._changed:
            return self._reports.get(node_id)

    def wants(self, node_id: str, sha256: str) -> bool:
        """Whether ``node_id``'s extensions use module ``sha256`` (what it may download)."""
        with self._changed:
            return sha256 in self._wanted.get(node_id, (0, frozenset()))[1]

    def wait_wanted(self, node_id: str, known_version: int, timeout: float) -> tuple[int, frozenset[str]]:
        """(version, modules) wanted for ``node_id``, once the version differs from ``known_version``
        or ``timeout`` seconds passed."""
        with self._changed:
            self._changed.wait_for(lambda: self._wanted.get(node_id, (0, frozenset()))[0] != known_version,
                                   timeout=timeout)
            return self._wanted.get(node_id, (0, frozenset()))
