"""Contexts as the module sees them: the base the host functions act on, and the plugin's root.

A context is what a ``proxy_on_*`` callback runs in: the root context of a
plugin, or one HTTP stream / TCP connection (``_streams``).  The host
functions act on the *active* context (``Vm.active``) through its
underscored methods (those below; streams add ``_continue_stream``,
``_close_stream`` and, for HTTP, ``_local_response_requested``): they are
the host's side of a context, called from ``meshext.runtime._vm`` and
``meshext.runtime._hostcalls``, and not part of the test API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshext.runtime._records import EnvoyHeaderMap

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


class HostContext:
    """The host's record of one context: its id, and what the module may read and set in it.

    ``properties`` are the attributes the test gave the context,
    ``filter_state`` what the module stored with ``proxy_set_property``
    (None for the root context, whose values go to the plugin).
    """

    def __init__(self, vm: Vm, context_id: int) -> None:
        self._vm = vm
        self.id = context_id
        self.done = False
        self.properties: dict[str, Any] = {}
        self.filter_state: dict[str, Any] | None = None

    def _module_header_map(self, map_type: int) -> EnvoyHeaderMap | None:
        """The header map of ``map_type`` the module may use now, or None (not available here)."""
        return None

    def _module_buffer(self, buffer_type: int) -> bytearray | None:
        """The buffer of ``buffer_type`` the module may use now, or None (not available here)."""
        return None

    def _module_property(self, path: tuple[str, ...]) -> Any:
        """An Envoy attribute this context has (``request.path``, ``source.address``, ...), or None."""
        return None


class HostRootContext(HostContext):
    """The host's record of a plugin's root context: its tick timer as well."""

    def __init__(self, vm: Vm, context_id: int) -> None:
        super().__init__(vm, context_id)
        self.tick_period_ns = 0
        self.next_tick_ns = 0
