"""Where a Wasm extension goes in the HTTP filter chain.

Maistra's order of phases around the mesh's own authentication, authorization
and stats filters; within one phase a higher priority runs first.  Istio's
WasmPlugin phases name the same slots: AUTHN/AUTHZ/STATS insert *before* the
filter they name, UNSPECIFIED_PHASE goes last, just before the router.  This
mesh has no built-in authn/authz/stats filters, so the bracketed slots are
empty, but the order between extensions is exactly the documented one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = (
    "PreAuthN", "[authn]", "PostAuthN", "PreAuthZ", "[authz]", "PostAuthZ",
    "PreStats", "[stats]", "PostStats", "Unspecified",
)


@dataclass(frozen=True)
class PlacedExtension:
    """A resolved extension, ready to become one ECDS resource and one HTTP filter."""

    key: str  # "Kind/namespace/name": stable identity, also the tie-breaker
    filter_name: str  # the ECDS resource name
    phase: str  # one of PHASES
    priority: int
    module_sha256: str
    root_id: str
    configuration: str  # JSON handed to proxy_on_configure
    fail_open: bool
    inbound: bool = True
    outbound: bool = False
    ports: frozenset[int] = field(default_factory=frozenset)  # empty: every port
    vm_environment: tuple[tuple[str, str], ...] = ()
    vm_host_environment: tuple[str, ...] = ()
    # Who published the module (images.publisher_of), for a meshext-built module:
    # extensions of one publisher with the same module share Wasm VMs
    # (envoy_config.vm_id_for).  "": never shared.
    publisher: str = ""
    # The module's roots when it was built from several projects (images.ResolvedModule.roots).
    module_roots: tuple[str, ...] = ()

    def sort_key(self) -> tuple[int, int, str]:
        """Chain order: phase, then higher priority first, then the resource key."""
        return (PHASES.index(self.phase), -self.priority, self.key)


def order(extensions: list[PlacedExtension]) -> list[PlacedExtension]:
    """``extensions`` in filter-chain order (see :meth:`PlacedExtension.sort_key`)."""
    return sorted(extensions, key=PlacedExtension.sort_key)
