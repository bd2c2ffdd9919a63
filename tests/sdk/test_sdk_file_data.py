"""Where a module's data live after `meshext build`: the files a filter
reads at run time (lazy imports, codecs, source lines) come from one
passive data segment, which V8 keeps once per module, not from each VM's
linear memory; the project's own files stay in memory, so an edit leaves
that segment as it was; the snapshot's active segments leave out runs of
zeros, within the number of segments Wasm engines accept.  Runs the
modules in meshext's Proxy-Wasm host."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import wasmtime

from meshext import packed_segment, wasm_binary
from meshext.sdk.builder import build_filter
from meshext.sdk.builder.pipeline import SDK_DIR
from meshext.testing import Host

FILTER = '''
import hashlib
from meshext.sdk import Action, HttpContext, RootContext

class Reader(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/lazy":
            import lazy_helper  # nothing imported it at build time
            self.request.headers.add("x-lazy", lazy_helper.answer())
        elif path == "/codec":
            self.request.headers.add("x-codec", b"caf\\xe9".decode("cp1252"))  # encodings.cp1252, imported now
        elif path == "/source":
            with open("/app/meshext/sdk/__init__.py", "rb") as file:  # read only for traceback lines
                self.request.headers.add("x-sha256", hashlib.sha256(file.read()).hexdigest())
        elif path == "/raise":
            raise KeyError("VERSION")
        return Action.CONTINUE

class Root(RootContext):
    http_context = Reader
'''


def project(tmp_path: Path, source: str = FILTER) -> Path:
    folder = tmp_path / "reader"
    folder.mkdir(exist_ok=True)
    (folder / "meshext.toml").write_text('[filter]\nname = "reader"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    (folder / "lazy_helper.py").write_text("def answer():\n    return 'read at run time'\n")
    return folder


def data(module: Path) -> tuple[list[bytes], bytes]:
    """(the passive segments the code reads, segment 0 unpacked; every VM's initial memory as its snapshot
    writes it)."""
    sections = wasm_binary.parse_sections(module.read_bytes())
    segments = wasm_binary.read_data_segments(sections)
    runs = wasm_binary.initial_memory(sections)
    assert segments is not None and runs is not None
    snapshot = wasm_binary.deferred_snapshot(sections)
    assert snapshot is not None
    passive = [packed_segment.unpack(content) if index == 0 else content
               for index, (offset, content) in enumerate(segments) if offset is None and index != snapshot.segment]
    memory = bytearray(max(offset + len(content) for offset, content in runs))
    for offset, content in runs:
        memory[offset:offset + len(content)] = content
    return passive, bytes(memory)


def test_files_read_at_run_time_come_from_a_passive_segment_not_from_each_vms_memory(tmp_path: Path) -> None:
    built = build_filter(project(tmp_path), tmp_path / "out.wasm")
    passive, memory = data(built.output)
    sdk_source = (SDK_DIR / "__init__.py").read_bytes()
    assert len(passive) == 1 and sdk_source in passive[0]
    assert sdk_source[:200] not in memory
    assert b"MXFS" in memory  # the entry table stays in memory: a lookup touches no segment
    assert b"def answer():" in memory  # the project's files too (below)

    plugin = Host().load(built.output)
    assert plugin.exchange("GET", "/lazy").request.header("x-lazy") == "read at run time"
    assert plugin.exchange("GET", "/codec").request.header("x-codec") == "café"
    assert plugin.exchange("GET", "/source").request.header("x-sha256") == hashlib.sha256(sdk_source).hexdigest()
    plugin.exchange("GET", "/raise")
    log = "\n".join(plugin.log_messages())
    assert 'File "reader/filter.py", line 17, in on_request_headers' in log
    assert 'raise KeyError("VERSION")' in log  # the line's text, read at run time
    assert plugin.exchange("GET", "/lazy").request.header("x-lazy") == "read at run time"  # read again


SLICES = '''
import hashlib, os
from meshext.sdk import Action, HttpContext, RootContext

SDK = "/app/meshext/sdk/"

class Slicer(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/list":
            self.request.headers.add("x-files", " ".join(sorted(n for n in os.listdir(SDK) if n.endswith(".py"))))
        else:
            _, name, offset, size = path.split("/")
            with open(SDK + name, "rb") as file:
                file.seek(int(offset))
                self.request.headers.add("x-sha256", hashlib.sha256(file.read(int(size))).hexdigest())
        return Action.CONTINUE

class Root(RootContext):
    http_context = Slicer
'''


def test_random_slices_of_files_in_the_packed_segment_read_as_the_files_are(tmp_path: Path) -> None:
    # Segment 0 is carried in compressed blocks (src/meshext/packed_segment.py): slices that start and end
    # anywhere, across block boundaries too, against the SDK's files the module carries.
    built = build_filter(project(tmp_path, SLICES), tmp_path / "out.wasm")
    packed = wasm_binary.read_data_segments(wasm_binary.parse_sections(built.output.read_bytes()))[0][1]
    assert len(packed) < len(packed_segment.unpack(packed)) / 2  # what the packing is for
    plugin = Host().load(built.output)
    names = plugin.exchange("GET", "/list").request.header("x-files").split()
    assert "contexts.py" in names and "_dispatch.py" in names  # each over a block (16 KiB)
    chooser = random.Random(16)
    for _ in range(150):
        name = chooser.choice(names)
        content = (SDK_DIR / name).read_bytes()
        offset = chooser.randrange(len(content) + 1)
        size = chooser.choice([1, 7, 4096, packed_segment.BLOCK_SIZE + 3, len(content)])
        answer = plugin.exchange("GET", f"/{name}/{offset}/{size}").request.header("x-sha256")
        assert answer == hashlib.sha256(content[offset:offset + size]).hexdigest(), (name, offset, size)


def test_an_edit_of_the_filter_keeps_the_passive_segment(tmp_path: Path) -> None:
    # The segment is part of the code the test host compiles: equal segments, cached native code.
    first, _ = data(build_filter(project(tmp_path), tmp_path / "out.wasm").output)
    edited = FILTER.replace('raise KeyError("VERSION")', 'raise KeyError("EDITED")')
    folder = project(tmp_path, edited)
    (folder / "lazy_helper.py").write_text("def answer():\n    return 'edited'\n")  # imported at run time only
    built = build_filter(folder, tmp_path / "out.wasm")
    assert built.rebuilt
    assert data(built.output)[0] == first
    plugin = Host().load(built.output)
    plugin.exchange("GET", "/raise")
    assert 'raise KeyError("EDITED")' in "\n".join(plugin.log_messages())
    assert plugin.exchange("GET", "/lazy").request.header("x-lazy") == "edited"


def test_a_snapshot_needing_more_segments_than_engines_accept_still_loads() -> None:
    module = wasmtime.wat2wasm('(module (memory (export "memory") 1))')
    memory = (b"\x01" + bytes(wasm_binary.ZERO_GAP)) * (wasm_binary.MAX_DATA_SEGMENTS + 1000)
    memory += bytes(-len(memory) % 65536)
    snapshot = wasm_binary.snapshot(module, memory, [], drop_exports=(), passive=[b"file data"])
    segments = wasm_binary.read_data_segments(wasm_binary.parse_sections(snapshot))
    assert segments is not None and len(segments) <= wasm_binary.MAX_DATA_SEGMENTS
    assert segments[0] == (None, b"file data")
    store = wasmtime.Store()
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, snapshot), [])
    restored = instance.exports(store)["memory"]
    assert isinstance(restored, wasmtime.Memory)
    assert bytes(restored.read(store, 0, len(memory))) == memory
