"""The WASI preview1 subset Envoy 1.40 links, with Envoy's answers.

Envoy (through proxy-wasm-cpp-host) links every preview1 function a plain
wasi-libc program imports, but only a handful do anything: stdout/stderr go
to the proxy log, clocks and randomness work, environment variables come
from the VM configuration, and every file or socket call fails with the
errno Envoy returns.  ``path_link`` and ``path_symlink`` are refused at load
time because Envoy declares them with signatures that do not match WASI
("import type mismatch"); the loader reports that by name.

wasmtime's own WASI (``WasiConfig``) would give the module a file system and
real stdio, which Envoy does not, so the subset is written out here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshext.runtime import _abi as abi
from meshext.runtime._abi import MASK32
from meshext.runtime._hostcalls.registry import WASI, hostcall
from meshext.runtime._records import MemoryFault, ModuleExit
from meshext.sdk.abi import LogLevel

if TYPE_CHECKING:
    from meshext.runtime._vm import Vm

STDOUT, STDERR = 1, 2
CLOCKS = (0, 1)  # realtime, monotonic
MAX_RANDOM_BYTES = 64 * 1024  # Envoy answers EINVAL to larger random_get requests

# Imports Envoy 1.40 declares with the wrong signature, so it refuses modules importing them.
REFUSED_BY_ENVOY = {"path_link", "path_symlink"}

# Functions that only answer: name -> (parameter types, the errno Envoy returns).
STUBS: dict[str, tuple[str, int]] = {
    "fd_read": ("iiii", abi.WASI_NOSYS),
    "fd_seek": ("iIii", abi.WASI_SUCCESS),
    "fd_close": ("i", abi.WASI_SUCCESS),
    "fd_fdstat_set_flags": ("ii", abi.WASI_NOSYS),
    "args_get": ("ii", abi.WASI_SUCCESS),
    "fd_advise": ("iIIi", abi.WASI_SUCCESS),
    "fd_pread": ("iiiIi", abi.WASI_NOSYS),
    "fd_pwrite": ("iiiIi", abi.WASI_NOSYS),
    "fd_readdir": ("iiiIi", abi.WASI_NOSYS),
    "fd_renumber": ("ii", abi.WASI_NOSYS),
    "fd_tell": ("ii", abi.WASI_NOSYS),
    "path_create_directory": ("iii", abi.WASI_NOSYS),
    "path_filestat_set_times": ("iiiiIIi", abi.WASI_NOSYS),
    "path_readlink": ("iiiiii", abi.WASI_NOSYS),
    "path_remove_directory": ("iii", abi.WASI_NOSYS),
    "path_rename": ("iiiiii", abi.WASI_NOSYS),
    "path_unlink_file": ("iii", abi.WASI_NOSYS),
    "sock_accept": ("iii", abi.WASI_NOSYS),
    "sock_recv": ("iiiiii", abi.WASI_NOSYS),
    "sock_send": ("iiiii", abi.WASI_NOSYS),
    "sock_shutdown": ("ii", abi.WASI_NOSYS),
    "sched_yield": ("", abi.WASI_SUCCESS),
    "poll_oneoff": ("iiii", abi.WASI_NOSYS),
    "path_open": ("iiiiiIIii", abi.WASI_NOENT),
    "fd_prestat_get": ("ii", abi.WASI_BADF),
    "fd_prestat_dir_name": ("iii", abi.WASI_NOSYS),
    "path_filestat_get": ("iiiii", abi.WASI_NOTSUP),
    "fd_filestat_get": ("ii", abi.WASI_BADF),
}

# Functions that act on a descriptor: Envoy answers success for stdout/stderr, BADF for anything else.
STDIO_ONLY: dict[str, str] = {
    "fd_fdstat_set_rights": "iII",
    "fd_allocate": "iII",
    "fd_datasync": "i",
    "fd_filestat_set_size": "iI",
    "fd_filestat_set_times": "iIIi",
    "fd_sync": "i",
}


def _answer(errno: int) -> Callable[..., int]:
    def stub(vm: Vm, *_: int) -> int:
        return errno

    return stub


def _stdio_only(vm: Vm, fd: int, *_: int) -> int:
    return abi.WASI_SUCCESS if fd in (STDOUT, STDERR) else abi.WASI_BADF


for _name, (_params, _errno) in STUBS.items():
    hostcall(_name, _params, "i", namespace=WASI)(_answer(_errno))
for _name, _params in STDIO_ONLY.items():
    hostcall(_name, _params, "i", namespace=WASI)(_stdio_only)


def _guarded(action: Callable[[], object]) -> int:
    """Run ``action`` (writes into the module's memory): success, or EFAULT on a bad pointer."""
    try:
        action()
    except MemoryFault:
        return abi.WASI_FAULT
    return abi.WASI_SUCCESS


@hostcall("fd_write", "iiii", "i", namespace=WASI)
def fd_write(vm: Vm, fd: int, iovs: int, iovs_len: int, return_written: int) -> int:
    """stdout goes to the log at info, stderr at error (a trailing newline dropped)."""
    if fd not in (STDOUT, STDERR):
        return abi.WASI_BADF
    try:
        chunks = []
        for index in range(iovs_len & MASK32):
            buf, size = struct.unpack("<II", vm.memory.read(iovs + 8 * index, 8))
            chunks.append(vm.memory.read(buf, size))
        data = b"".join(chunks)
        if data:
            text = data.decode("utf-8", "replace")
            vm.log(LogLevel.INFO if fd == STDOUT else LogLevel.ERROR, text[:-1] if text.endswith("\n") else text)
        vm.memory.write_u32(return_written, len(data))
    except MemoryFault:
        return abi.WASI_FAULT
    return abi.WASI_SUCCESS


@hostcall("fd_fdstat_get", "ii", "i", namespace=WASI)
def fd_fdstat_get(vm: Vm, fd: int, return_stat: int) -> int:
    if fd not in (STDOUT, STDERR):
        return abi.WASI_BADF
    return _guarded(lambda: vm.memory.write(return_stat, struct.pack("<QQQ", 0, 64, 0)))  # FD_WRITE only


def _environment(vm: Vm) -> list[bytes]:
    return [f"{key}={value}".encode() + b"\0" for key, value in vm.env.items()]


@hostcall("environ_sizes_get", "ii", "i", namespace=WASI)
def environ_sizes_get(vm: Vm, return_count: int, return_size: int) -> int:
    entries = _environment(vm)

    def write() -> None:
        vm.memory.write_u32(return_count, len(entries))
        vm.memory.write_u32(return_size, sum(len(entry) for entry in entries))

    return _guarded(write)


@hostcall("environ_get", "ii", "i", namespace=WASI)
def environ_get(vm: Vm, return_array: int, return_buffer: int) -> int:
    """The VM configuration's environment variables, as ``KEY=value`` strings."""

    def write() -> None:
        address = return_buffer
        for index, entry in enumerate(_environment(vm)):
            vm.memory.write_u32(return_array + 4 * index, address)
            vm.memory.write(address, entry)
            address += len(entry)

    return _guarded(write)


@hostcall("args_sizes_get", "ii", "i", namespace=WASI)
def args_sizes_get(vm: Vm, return_argc: int, return_size: int) -> int:
    def write() -> None:
        vm.memory.write_u32(return_argc, 0)
        vm.memory.write_u32(return_size, 0)

    return _guarded(write)


@hostcall("clock_time_get", "iIi", "i", namespace=WASI)
def clock_time_get(vm: Vm, clock_id: int, precision: int, return_time: int) -> int:
    clocks = {0: vm.host.realtime_ns, 1: vm.host.monotonic_ns}
    if clock_id not in clocks:
        return abi.WASI_NOTSUP
    return _guarded(lambda: vm.memory.write_u64(return_time, clocks[clock_id]))


@hostcall("clock_res_get", "ii", "i", namespace=WASI)
def clock_res_get(vm: Vm, clock_id: int, return_resolution: int) -> int:
    if clock_id not in CLOCKS:
        return abi.WASI_NOTSUP
    return _guarded(lambda: vm.memory.write_u64(return_resolution, 1))


@hostcall("random_get", "ii", "i", namespace=WASI)
def random_get(vm: Vm, pointer: int, size: int) -> int:
    size &= MASK32
    if size > MAX_RANDOM_BYTES:
        return abi.WASI_INVAL
    return _guarded(lambda: vm.memory.write(pointer, os.urandom(size)))


@hostcall("proc_exit", "i", "", namespace=WASI)
def proc_exit(vm: Vm, code: int) -> None:
    """The module ends itself: Envoy treats that as a crash of the VM."""
    raise ModuleExit(code)
