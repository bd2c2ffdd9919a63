"""`meshext apply` / `delete` / `get` on the local mesh: its control plane's resources directory.

Each resource is kept in a file of its own, ``<kind>.<namespace>.<name>.yaml``, so
applying the same resource from another file replaces it rather than adding a
second copy, as ``kubectl apply`` does.  Every document of a file is validated
(the operator's own validation) before anything is written: a bad file changes
nothing and the running mesh keeps serving what it had.  The control plane
polls the directory and writes each resource's status next to its file.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshext.control.resources import POLICY_KINDS, WATCHED_KINDS, parse_policy, parse_resource
from meshext.control.sources import STATUS_SUFFIX
from meshext.errors import MeshextError

# `kubectl apply` prints <plural>.<group>/<name>; these are ours.
GROUPS = {kind: group for kind, (group, _) in WATCHED_KINDS.items()}
PLURALS = {"ServiceMeshExtension": "servicemeshextension", "WasmPlugin": "wasmplugin",
           "RequestAuthentication": "requestauthentication"}
# `meshext get`'s NAME column
SHORT_NAMES = {"ServiceMeshExtension": "sme", "WasmPlugin": "wasmplugin", "RequestAuthentication": "ra"}


@dataclass(frozen=True)
class Document:
    """One resource of an applied file, validated."""

    obj: dict[str, Any]
    key: str  # Kind/namespace/name

    @property
    def display_name(self) -> str:
        """``servicemeshextension.maistra.io/NAME``, as kubectl names what it applied."""
        kind, _, name = self.key.split("/")
        return f"{PLURALS[kind]}.{GROUPS[kind]}/{name}"

    def file_in(self, directory: Path) -> Path:
        """This resource's own file in the resources directory."""
        kind, namespace, name = self.key.split("/")
        return directory / f"{kind.lower()}.{namespace}.{name}.yaml"


def read_documents(source: str, text: str) -> list[Document]:
    """The resources of one file (``source`` names it in errors), each validated; MeshextError for the first bad one."""
    try:
        loaded = [d for d in yaml.safe_load_all(io.StringIO(text)) if d is not None]
    except yaml.YAMLError as error:
        raise MeshextError(f"not YAML: {error}", where=source, fix="correct the file") from None
    if not loaded:
        raise MeshextError("no resources in the file", where=source,
                           fix="give ServiceMeshExtension, WasmPlugin or RequestAuthentication documents, "
                               "separated by ---")
    documents: list[Document] = []
    for index, obj in enumerate(loaded):
        where = f"{source} (document {index + 1})"
        if not isinstance(obj, dict):
            raise MeshextError("a document is not a mapping", where=where, fix="write each resource as a YAML mapping")
        try:
            key = parse_policy(obj).key if obj.get("kind") in POLICY_KINDS else parse_resource(obj).key
        except MeshextError as error:
            raise MeshextError(error.message, where=f"{where}: {error.where}", fix=error.fix) from None
        documents.append(Document(obj, key))
    keys = [document.key for document in documents]
    for key in keys:
        if keys.count(key) > 1:
            raise MeshextError(f"{key} is in the file twice", where=source, fix="keep one of them")
    return documents


def applied_documents(directory: Path) -> list[Document]:
    """The resources applied so far: one per resource file of the directory (status files skipped)."""
    return [document for path in sorted(directory.glob("*.yaml")) if not path.name.endswith(STATUS_SUFFIX)
            for document in read_documents(str(path), path.read_text())]


def apply(directory: Path, documents: list[Document]) -> tuple[list[str], list[Document]]:
    """Write each resource to its file: kubectl's lines (created / configured / unchanged) and what changed."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, changed = [], []
    for document in documents:
        path = document.file_in(directory)
        text = yaml.safe_dump(document.obj, sort_keys=False)
        previous = path.read_text() if path.exists() else None
        if previous == text:
            lines.append(f"{document.display_name} unchanged")
            continue
        partial = path.with_name(path.name + ".partial")  # not *.yaml: the control plane skips it
        partial.write_text(text)
        partial.replace(path)
        lines.append(f"{document.display_name} {'created' if previous is None else 'configured'}")
        changed.append(document)
    return lines, changed


def delete(directory: Path, documents: list[Document]) -> list[str]:
    """Remove each resource's file (the control plane withdraws it); returns kubectl's lines."""
    lines = []
    for document in documents:
        path = document.file_in(directory)
        if path.exists():
            path.unlink()
            lines.append(f"{document.display_name} deleted")
        else:
            lines.append(f"{document.display_name} not found")
    return lines


def wait_applied(changed: dict[str, tuple[Document, int | None]],
                 status_of: Callable[[str], dict[str, Any] | None], timeout: float) -> list[str]:
    """Wait until the control plane has settled each changed resource's new generation: Ready or Error.

    ``changed``: key -> (document, the generation its status showed before the change, None if
    it had none); ``status_of(key)`` gives a resource's status from /status.  Returns one line per
    resource that ended in Error (reason and message); a MeshextError when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    pending = dict(changed)
    problems: list[str] = []
    while pending:
        for key, (document, before) in list(pending.items()):
            status = status_of(key) or {}
            observed = status.get("observedGeneration")
            if observed is None or (before is not None and observed <= before):
                continue
            if status.get("phase") in ("Ready", "Error"):
                del pending[key]
                if status["phase"] == "Error":
                    problems.append(f"{document.display_name}: {_condition_text(status)}")
        if pending and time.monotonic() > deadline:
            raise MeshextError(f"not settled after {timeout:.0f} s: {', '.join(sorted(pending))}", where="--wait",
                               fix="see `meshext get` and `meshext logs control-plane`")
        if pending:
            time.sleep(0.2)
    return problems


def _condition_text(status: dict[str, Any]) -> str:
    for condition in status.get("conditions", []):
        if condition.get("type") == "Ready" and condition.get("status") != "True":
            return f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
    return str(status.get("phase", "?"))


def resources_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resource of the status document, by key: the extensions and the RequestAuthentications."""
    return {**report.get("extensions", {}), **report.get("policies", {})}


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """``meshext get``'s rows from the status document: name, phase, priority, image, ready."""
    rows = []
    for key, extension in sorted(resources_of(report).items()):
        kind, namespace, name = key.split("/")
        status = extension.get("status", {})
        ready: dict[str, Any] = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
        label = f"{SHORT_NAMES.get(kind, kind.lower())}/{name}" + ("" if namespace == "default" else f" ({namespace})")
        rows.append((label,
                     str(status.get("effectivePhase", "")), str(status.get("effectivePriority", "")),
                     str(extension.get("image", "")),
                     "True" if ready.get("status") == "True" else (ready.get("reason") or status.get("phase", "?"))))
    return rows


def not_ready(report: dict[str, Any]) -> list[str]:
    """One line per resource that is not Ready: its name, reason and message (under `meshext get`'s table)."""
    lines = []
    for key, extension in sorted(resources_of(report).items()):
        status = extension.get("status", {})
        if status.get("phase") != "Ready":
            lines.append(f"{key}: {_condition_text(status)}")
    return lines
