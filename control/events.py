"""What the operator's worker thread is told, one class per kind of event.

Everything that happens to the operator (a resource applied or deleted, a
proxy connecting or replying, a module syncer's report, a new mesh) is put on
its queue as one of these, and the worker handles them in order.  Typed
events make a misspelt kind or a missing field a type error, not an event
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshext.control.cache import TypeStatus
from meshext.control.mesh import Mesh


@dataclass(frozen=True)
class Resync:
    """Reconcile everything (sent once when the operator starts)."""


@dataclass(frozen=True)
class Stop:
    """End the worker thread."""


@dataclass(frozen=True)
class ResourceApplied:
    """A ServiceMeshExtension, WasmPlugin or RequestAuthentication was created or changed (``obj``: all of it)."""

    obj: dict[str, Any]


@dataclass(frozen=True)
class ResourceDeleted:
    """The resource ``key`` (``Kind/namespace/name``) is gone."""

    key: str


@dataclass(frozen=True)
class ProxyConnected:
    """An ADS stream of ``node_id`` opened; it may be waiting for its first snapshot."""

    node_id: str


@dataclass(frozen=True)
class ProxyReplied:
    """``node_id`` ACKed or NACKed (``status.error_detail``) its listeners or extension configs."""

    node_id: str
    type_url: str
    status: TypeStatus
    nacked_names: tuple[str, ...]


@dataclass(frozen=True)
class ModulesReported:
    """``node_id``'s module syncer holds a different set of modules than it last said."""

    node_id: str


@dataclass(frozen=True)
class MeshReplaced:
    """Serve ``mesh`` from now on; ``problems``: what its source had to leave out, and why."""

    mesh: Mesh
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RetirementDue:
    """A removed filter's draining time ran out (made by the worker itself when its wait times out)."""


OperatorEvent = (Resync | Stop | ResourceApplied | ResourceDeleted | ProxyConnected | ProxyReplied | ModulesReported
                 | MeshReplaced | RetirementDue)
"""Any event on the operator's queue."""
