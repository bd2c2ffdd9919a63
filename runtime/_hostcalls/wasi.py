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

from meshext.runtime import _abi as abi

# name -> (parameter types, returns a result?, errno Envoy answers when the call is a stub)
# "i" = i32, "I" = i64.  Functions with real behaviour are implemented by the VM
# (see ProxyWasmVM._wasi_*); the rest answer with the fixed errno below.
WASI_FUNCTIONS: dict[str, tuple[str, bool, int]] = {
    "fd_write": ("iiii", True, 0),
    "fd_read": ("iiii", True, abi.WASI_NOSYS),
    "fd_seek": ("iIii", True, abi.WASI_SUCCESS),
    "fd_close": ("i", True, abi.WASI_SUCCESS),
    "fd_fdstat_get": ("ii", True, 0),
    "fd_fdstat_set_flags": ("ii", True, abi.WASI_NOSYS),
    "fd_fdstat_set_rights": ("iII", True, 0),
    "environ_get": ("ii", True, 0),
    "environ_sizes_get": ("ii", True, 0),
    "args_get": ("ii", True, abi.WASI_SUCCESS),
    "args_sizes_get": ("ii", True, 0),
    "clock_time_get": ("iIi", True, 0),
    "clock_res_get": ("ii", True, 0),
    "fd_advise": ("iIIi", True, abi.WASI_SUCCESS),
    "fd_allocate": ("iII", True, 0),
    "fd_datasync": ("i", True, 0),
    "fd_filestat_set_size": ("iI", True, 0),
    "fd_filestat_set_times": ("iIIi", True, 0),
    "fd_pread": ("iiiIi", True, abi.WASI_NOSYS),
    "fd_pwrite": ("iiiIi", True, abi.WASI_NOSYS),
    "fd_readdir": ("iiiIi", True, abi.WASI_NOSYS),
    "fd_renumber": ("ii", True, abi.WASI_NOSYS),
    "fd_sync": ("i", True, 0),
    "fd_tell": ("ii", True, abi.WASI_NOSYS),
    "path_create_directory": ("iii", True, abi.WASI_NOSYS),
    "path_filestat_set_times": ("iiiiIIi", True, abi.WASI_NOSYS),
    "path_readlink": ("iiiiii", True, abi.WASI_NOSYS),
    "path_remove_directory": ("iii", True, abi.WASI_NOSYS),
    "path_rename": ("iiiiii", True, abi.WASI_NOSYS),
    "path_unlink_file": ("iii", True, abi.WASI_NOSYS),
    "sock_accept": ("iii", True, abi.WASI_NOSYS),
    "sock_recv": ("iiiiii", True, abi.WASI_NOSYS),
    "sock_send": ("iiiii", True, abi.WASI_NOSYS),
    "sock_shutdown": ("ii", True, abi.WASI_NOSYS),
    "random_get": ("ii", True, 0),
    "sched_yield": ("", True, abi.WASI_SUCCESS),
    "poll_oneoff": ("iiii", True, abi.WASI_NOSYS),
    "proc_exit": ("i", False, 0),
    "path_open": ("iiiiiIIii", True, abi.WASI_NOENT),
    "fd_prestat_get": ("ii", True, abi.WASI_BADF),
    "fd_prestat_dir_name": ("iii", True, abi.WASI_NOSYS),
    "path_filestat_get": ("iiiii", True, abi.WASI_NOTSUP),
    "fd_filestat_get": ("ii", True, abi.WASI_BADF),
}

# Functions that act on a descriptor: Envoy answers BADF for anything but stdout/stderr.
STDIO_ONLY = {
    "fd_fdstat_set_rights", "fd_allocate", "fd_datasync", "fd_filestat_set_size",
    "fd_filestat_set_times", "fd_sync",
}

# Imports Envoy 1.40 declares with the wrong signature, so it refuses modules importing them.
REFUSED_BY_ENVOY = {"path_link", "path_symlink"}

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
