"""Time: the root context's tick period and the wall clock, both from the host's clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.sdk.abi import Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_set_tick_period_milliseconds", "i", "i")
def set_tick_period_milliseconds(vm: Vm, period: int) -> int:
    root = vm.root
    root.tick_period_ns = (period & MASK32) * 1_000_000
    root.next_tick_ns = vm.host.monotonic_ns + root.tick_period_ns
    return Status.OK


@hostcall("proxy_get_current_time_nanoseconds", "i", "i")
def get_current_time_nanoseconds(vm: Vm, return_time: int) -> int:
    return guarded(lambda: vm.memory.write_u64(return_time, vm.host.realtime_ns))
