"""Metrics: counters, gauges and histograms, shared by every VM of the host (like Envoy's stats)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshext.runtime._abi import MASK32, MASK64
from meshext.runtime._hostcalls.registry import guarded, hostcall
from meshext.runtime._records import MemoryFault
from meshext.sdk.abi import MetricType, Status

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm


@hostcall("proxy_define_metric", "iiii", "i")
def define_metric(vm: Vm, metric_type: int, name_ptr: int, name_size: int, return_id: int) -> int:
    if metric_type not in MetricType._value2member_map_:
        return Status.BAD_ARGUMENT
    try:
        name = vm.memory.read(name_ptr, name_size).decode()
    except MemoryFault:
        return Status.INVALID_MEMORY_ACCESS
    metric_id = vm.host.define_metric(name, MetricType(metric_type))
    return guarded(lambda: vm.memory.write_u32(return_id, metric_id))


@hostcall("proxy_increment_metric", "iI", "i")
def increment_metric(vm: Vm, metric_id: int, delta: int) -> int:
    metric = vm.host.metrics.get(metric_id & MASK32)
    if metric is None:
        return Status.NOT_FOUND
    if metric.type == MetricType.HISTOGRAM or (metric.type == MetricType.COUNTER and delta < 0):
        return Status.BAD_ARGUMENT
    metric.value += delta
    return Status.OK


@hostcall("proxy_record_metric", "iI", "i")
def record_metric(vm: Vm, metric_id: int, value: int) -> int:
    metric = vm.host.metrics.get(metric_id & MASK32)
    if metric is None:
        return Status.NOT_FOUND
    value &= MASK64
    if metric.type == MetricType.HISTOGRAM:
        metric.samples.append(value)
    elif metric.type == MetricType.COUNTER:
        metric.value = max(metric.value, value)  # a counter never goes down
    else:
        metric.value = value
    return Status.OK


@hostcall("proxy_get_metric", "ii", "i")
def get_metric(vm: Vm, metric_id: int, return_value: int) -> int:
    metric = vm.host.metrics.get(metric_id & MASK32)
    if metric is None:
        return Status.NOT_FOUND
    if metric.type == MetricType.HISTOGRAM:
        return Status.BAD_ARGUMENT
    return guarded(lambda: vm.memory.write_u64(return_value, metric.value))
