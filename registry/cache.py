"""The local module cache shared by the CLI, the control plane and the sidecar side.

Layout under ``<root>/modules``::

    sha256/<hex>.wasm          module bytes, named by their own sha256
    manifests/<hex>.json       what a manifest digest resolved to (format, module, maistra fields)
    references/<hex>.json      which manifest digest a tag (or URL) resolved to last time
    tmp/                       transfers in progress

Every file is written to ``tmp/`` first and renamed into place only once
complete and verified, so an interrupted pull leaves nothing usable
half-written.  Every cache hit re-hashes the module before it is handed out; a
file that no longer matches its name is deleted and fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from meshext.errors import MeshextError
from meshext.paths import cache_root

HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_expected_sha256(actual: str, expected: str | None, where: str) -> None:
    """Refuse a module whose sha256 is not the one the user pinned (WasmPlugin ``sha256``)."""
    if expected is not None and actual != expected:
        raise MeshextError(f"module sha256 is {actual}, expected {expected}", where=f"{where} sha256",
                           fix="the module changed since the sha256 was recorded; update sha256 or pin the old "
                               "image digest. Nothing was cached")


class ModuleCache:
    """Content-addressed, verified store of Wasm modules."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root if root is not None else cache_root()).absolute() / "modules"

    def module_path(self, module_sha256: str) -> Path:
        """Where the module with this sha256 is (or would be) kept."""
        return self.root / "sha256" / f"{module_sha256}.wasm"

    def verified_module(self, module_sha256: str) -> Path | None:
        """The cached module with this sha256, re-hashed now; None if absent or corrupt."""
        path = self.module_path(module_sha256)
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            return None
        if actual != module_sha256:
            path.unlink(missing_ok=True)  # corrupted on disk: forget it, the caller re-fetches
            return None
        return path

    @contextlib.contextmanager
    def module_writer(self) -> Iterator[IO[bytes]]:
        """A temporary file for one module; commit it with :meth:`commit_module`.
        It is removed if the ``with`` block raises or the commit is never made."""
        temporary = self._temporary_file(".wasm.part")
        try:
            with open(temporary, "wb") as file:
                yield file
        finally:
            temporary.unlink(missing_ok=True)

    def commit_module(self, file: IO[bytes], expected_sha256: str | None = None,
                      where: str = "module") -> tuple[Path, str]:
        """Verify a file from :meth:`module_writer` and move it into place.
        Returns (path, sha256)."""
        file.flush()
        os.fsync(file.fileno())
        temporary = Path(file.name)
        actual = sha256_file(temporary)
        check_expected_sha256(actual, expected_sha256, where)
        final = self.module_path(actual)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, final)
        return final, actual

    def store_module(self, content: bytes, where: str = "module") -> tuple[Path, str]:
        """Store module bytes already held in memory. Returns (path, sha256)."""
        with self.module_writer() as file:
            file.write(content)
            return self.commit_module(file, where=where)

    def manifest_record(self, manifest_digest: str) -> dict[str, Any] | None:
        """What ``manifest_digest`` resolved to when it was pulled (format, module sha256, Maistra fields), or None."""
        return self._read_json(self.root / "manifests" / f"{_hex(manifest_digest)}.json")

    def reference_record(self, reference: str) -> dict[str, Any] | None:
        """The manifest digest a tag or URL resolved to last time, or None."""
        return self._read_json(self._reference_path(reference))

    def record(self, manifest_digest: str, references: list[str], fields: dict[str, Any]) -> None:
        """Remember what ``manifest_digest`` resolved to and that ``references`` point at it.
        Call only after the module itself is committed."""
        self._write_json(self.root / "manifests" / f"{_hex(manifest_digest)}.json", fields)
        for reference in references:
            self._write_json(self._reference_path(reference),
                             {"reference": reference, "manifest_digest": manifest_digest})

    def _reference_path(self, reference: str) -> Path:
        return self.root / "references" / f"{hashlib.sha256(reference.encode()).hexdigest()}.json"

    def _temporary_file(self, suffix: str) -> Path:
        directory = self.root / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=directory, suffix=suffix)
        os.close(handle)
        return Path(name)

    def _write_json(self, path: Path, content: dict[str, Any]) -> None:
        temporary = self._temporary_file(".json.part")
        try:
            temporary.write_text(json.dumps(content, sort_keys=True))
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]

