"""Contexts as the module sees them: the plugin's root context, and the base of streams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshext.runtime._records import HeaderMap

if TYPE_CHECKING:
    from meshext.runtime._vm import PluginVM


class Context:
    def __init__(self, vm: PluginVM, context_id: int, parent: Context | None) -> None:
        self.vm = vm
        self.id = context_id
        self.parent = parent
        self.done = False

    def header_map(self, map_type: int) -> HeaderMap | None:
        return None

    def buffer(self, buffer_type: int) -> bytearray | None:
        return None

    def property(self, path: tuple[str, ...]) -> Any:
        return None


class RootContext(Context):
    def __init__(self, vm: PluginVM, context_id: int) -> None:
        super().__init__(vm, context_id, None)
        self.tick_period_ns = 0
        self.next_tick_ns = 0
