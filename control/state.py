"""What the operator publishes and the control plane's servers serve.

Built first and handed to both (go-control-plane's ``NewServer(ctx, cache,
callbacks)`` takes the cache the application publishes to), so neither has
to reach into the other:

* ``cache``: one xDS snapshot per proxy, and the ACKs and NACKs it drew;
* ``modules``: the verified module files the sidecars download;
* ``demand``: which modules each proxy needs, and which its syncer holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshext.control.cache import SnapshotCache
from meshext.control.modules import ModuleDemand, ModuleStore


@dataclass(frozen=True)
class ControlPlaneState:
    """The state the operator writes and the xDS and HTTP servers read."""

    cache: SnapshotCache = field(default_factory=SnapshotCache)
    modules: ModuleStore = field(default_factory=ModuleStore)
    demand: ModuleDemand = field(default_factory=ModuleDemand)

    def close(self) -> None:
        """Delete the module store's files; call it once the servers and the operator stopped."""
        self.modules.close()
