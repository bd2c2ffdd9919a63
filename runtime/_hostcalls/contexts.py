"""Contexts: which one the host functions act on (proxy_set_effective_context), and proxy_done."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32
from meshext.runtime._hostcalls.registry import hostcall
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_set_effective_context", "i", "i")
def set_effective_context(vm: Vm, context_id: int) -> int:
    return Status.OK if vm.set_active(context_id & MASK32) else Status.BAD_ARGUMENT


@hostcall("proxy_done", "", "i")
def done(vm: Vm) -> int:
    """The active context, whose proxy_on_done answered false earlier, is ready to be deleted."""
    return Status.OK if vm.release_done() else Status.NOT_FOUND
