"""The snapshot restored by a module's first call, not at instantiation (issue 16).

``meshext build`` carries the snapshot in a passive segment that the first
call of any export writes into memory (``wasm_binary.defer_snapshot``), so
the VM Envoy keeps only to clone the others from holds none of it.  Here:
the restore on a small module, a real filter restored by itself in
wasmtime against the test host's usual path, and Envoy's VMs' memories.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
import requests
import wasmtime
from sdk_helpers import EchoServer, cluster, http_listener

from meshext import wasm_binary as wb
from meshext.envoy import EnvoyProcess
from meshext.sdk.builder import build_filter
from meshext.testing import Host

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "header-policy"
POLICY = '{"required_headers": ["x-request-id"], "request": {"set": {"x-policy": "checked"}}}'
SMALL = '''(module
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "calls") (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1))) (global.get $calls)))'''


def small_snapshot() -> tuple[bytes, bytes]:
    """(the small module with a snapshot deferred, the memory it snapshots)."""
    memory = bytearray(65536)
    memory[16:20] = b"\x01\x02\x03\x04"
    memory[1024:1030] = b"python"
    memory[-4:] = b"last"
    snapshot = wb.snapshot(bytes(wasmtime.wat2wasm(SMALL)), bytes(memory), [40], drop_exports=())
    return wb.defer_snapshot(snapshot), bytes(memory)


@pytest.mark.parametrize(("first", "arguments"), [("load", (2048,)), ("store", (2048, 7)), ("calls", ())])
def test_the_first_call_of_any_export_restores_the_snapshot_once(first: str, arguments: tuple[int, ...]) -> None:
    module, memory = small_snapshot()
    store = wasmtime.Store()
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, module), []).exports(store)
    linear = exports["memory"]
    assert isinstance(linear, wasmtime.Memory)
    assert bytes(linear.read(store, 0, len(memory))) == bytes(len(memory))  # nothing before a call
    exports[first](store, *arguments)  # type: ignore[operator]
    restored = bytearray(linear.read(store, 0, len(memory)))
    if first == "store":  # the store ran after the restore, not under it
        assert restored[2048:2052] == b"\x07\0\0\0"
        restored[2048:2052] = bytes(4)
    assert bytes(restored) == memory
    exports["store"](store, 1024, 0x21212121)  # type: ignore[operator]
    assert exports["load"](store, 1024) == 0x21212121  # type: ignore[operator]  # not restored again
    assert exports["load"](store, 16) == 0x04030201  # type: ignore[operator]
    assert exports["calls"](store) == (42 if first == "calls" else 41)  # type: ignore[operator]


def test_a_module_the_restore_cannot_serve_is_refused() -> None:
    memory = bytearray(65536)
    memory[4] = 1  # where the restore reads each run's header
    with pytest.raises(ValueError, match="below address 8"):
        wb.defer_snapshot(wb.snapshot(bytes(wasmtime.wat2wasm(SMALL)), bytes(memory), [0], drop_exports=()))
    started = bytes(wasmtime.wat2wasm('(module (memory 1) (func $f) (start $f) (data (i32.const 64) "x"))'))
    with pytest.raises(ValueError, match="start function"):
        wb.defer_snapshot(started)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_filter(EXAMPLE, tmp_path_factory.mktemp("deferred") / "policy.wasm").output


def test_a_filter_restoring_its_own_snapshot_behaves_as_in_the_test_host(built: Path) -> None:
    # The test host writes the snapshot's runs at instantiation (compiled_modules); without the
    # section that marks them, the module is compiled whole and its own restore writes them.
    module = built.read_bytes()
    sections = wb.parse_sections(module)
    assert wb.deferred_snapshot(sections) == wb.DeferredSnapshot(segment=1, packed=True)
    segments = wb.read_data_segments(sections)
    assert segments is not None and all(offset is None for offset, _ in segments)  # no active segment
    unmarked = wb.encode_sections([s for s in sections if s.id != wb.CUSTOM
                                   or wb.Reader(s.payload).name() != wb.DEFERRED_SNAPSHOT_SECTION])
    answers = []
    for variant in (module, unmarked):
        plugin = Host().load(variant, config=POLICY)
        answers.append([(stream.request.header("x-policy"), stream.response.header(":status"))
                        for stream in (plugin.exchange("GET", "/a", headers={"x-request-id": "1"}),
                                       plugin.exchange("GET", "/b"))])
    assert answers[0] == answers[1] == [("checked", "200"), (None, "403")], answers


def _linear_memories(pid: int) -> list[int]:
    """RSS (KiB) of each of V8's Wasm memories: an anonymous read-write mapping followed by the rest of its
    reservation (a 32-bit memory reserves 8 GiB and more, inaccessible beyond the memory's size)."""
    mappings: list[tuple[int, int, str, int]] = []  # start, end, permissions of anonymous mappings; RSS KiB
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        mapping = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(\S*)$", line)
        if mapping:
            mappings.append((int(mapping[1], 16), int(mapping[2], 16), mapping[3] if not mapping[4] else "", 0))
        elif line.startswith("Rss:") and mappings:
            mappings[-1] = (*mappings[-1][:3], int(line.split()[1]))
    return [rss for (start, end, permissions, rss), (after_start, after_end, after_permissions, _)
            in pairwise(mappings)
            if permissions == "rw-p" and after_permissions == "---p" and after_start == end
            and after_end - start >= 4 << 30]


def test_envoys_base_vm_holds_none_of_the_snapshot(built: Path, echo_server: EchoServer) -> None:
    bootstrap = {"static_resources": {"listeners": [http_listener("policy", built, POLICY)],
                                      "clusters": [cluster("upstream", echo_server.port)]}}
    runs = wb.initial_memory(wb.parse_sections(built.read_bytes()))
    assert runs is not None
    snapshot_kib = sum(len(data) for _, data in runs) // 1024
    envoy = EnvoyProcess(bootstrap, concurrency=1).start(timeout=120)
    try:
        host, port = envoy.listener_address("policy")
        answer = requests.get(f"http://{host}:{port}/orders", timeout=10)
        assert answer.status_code == 200 and answer.json()["headers"].get("x-policy") == "checked"
        assert envoy.process is not None
        memories = sorted(_linear_memories(envoy.process.pid))
    finally:
        envoy.cleanup()
    # Three VMs with one worker (base, main thread, worker): Envoy calls into two of them.
    assert len(memories) == 3, memories
    assert memories[0] < snapshot_kib / 10 and memories[1] > snapshot_kib / 2, (memories, snapshot_kib)
