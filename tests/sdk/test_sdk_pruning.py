"""What `meshext build` removes after pre-initialisation, as a filter author
notices it: the callbacks a filter does not override are not exported, and
code the module no longer carries fails with a Python exception that names
the fix, not with a crash; wasm-opt then shrinks the code and leaves the
snapshot as it was.  Runs the modules in meshext's Proxy-Wasm host."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from meshext import wasm_binary
from meshext.sdk.builder import build_filter, optimize
from meshext.testing import Host

HEADER_ONLY = '''
from meshext.sdk import Action, HttpContext, RootContext

class AddHeader(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-seen", "1")
        return Action.CONTINUE

class Root(RootContext):
    http_context = AddHeader
'''

CODEC_AT_RUN_TIME = '''
from meshext.sdk import Action, HttpContext, RootContext

class Decode(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-codec", b"caf\\xe9".decode("cp1252"))  # encodings.cp1252, imported now
        return Action.CONTINUE

class Root(RootContext):
    http_context = Decode
'''

AT_RUN_TIME = '''
import importlib
from meshext.sdk import Action, HttpContext, RootContext

def tenant_query():
    import urllib.parse  # defines namedtuples at import: the build imports it ahead
    return urllib.parse.urlsplit("http://mesh/a?tenant=7").query

class Probe(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        outcome = "ok"
        try:
            if path == "/eval":
                outcome = str(eval("6 * 7"))
            elif path == "/lazy-import":
                import lazy_helper  # a project module nothing imported at build time
                outcome = lazy_helper.answer()
            elif path == "/stdlib-lazy":
                outcome = tenant_query()
            elif path == "/frozen-stdlib":
                import stat  # served from CPython's frozen modules: the module ships no file for it
                outcome = stat.filemode(0o40755)
            elif path == "/c-module":
                outcome = str(importlib.import_module("_pickle"))
            elif path == "/raise":
                raise ValueError("boom in the filter")
        except Exception as error:  # what the filter author sees
            outcome = f"{type(error).__name__}: {error}"
        self.request.headers.add("x-outcome", outcome.replace("\\n", " ")[:300])
        return Action.CONTINUE

class Root(RootContext):
    http_context = Probe
'''


def project(tmp_path: Path, source: str, **extra_files: str) -> Path:
    folder = tmp_path / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "pruned"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    for name, text in extra_files.items():
        (folder / f"{name}.py").write_text(text)
    return folder


def test_only_overridden_stream_callbacks_are_exported(tmp_path: Path) -> None:
    built = build_filter(project(tmp_path, HEADER_ONLY), tmp_path / "out.wasm")
    exports = {item.name for item in wasmtime.Module.from_file(wasmtime.Engine(), str(built.output)).exports}
    assert "proxy_on_request_headers" in exports
    assert "proxy_on_context_create" in exports and "proxy_on_delete" in exports
    assert not exports & {"proxy_on_response_headers", "proxy_on_request_body", "proxy_on_log", "proxy_on_done",
                          "proxy_on_new_connection", "meshext_preinit", "_initialize"}
    plugin = Host().load(built.output)
    assert plugin.exchange("GET", "/").request.header("x-seen") == "1"


def test_removed_code_raises_python_exceptions_that_name_the_fix(tmp_path: Path) -> None:
    folder = project(tmp_path, AT_RUN_TIME, lazy_helper="def answer():\n    return 'lazy module works'\n")
    plugin = Host().load(build_filter(folder, tmp_path / "out.wasm").output)

    def outcome(path: str) -> str:
        return plugin.exchange("GET", path).request.header("x-outcome") or ""

    assert outcome("/eval").startswith("SyntaxError: meshext modules carry no Python compiler at run time")
    assert "fix: do that at import time" in outcome("/eval")
    assert outcome("/lazy-import") == "lazy module works"
    assert outcome("/stdlib-lazy") == "tenant=7"
    assert outcome("/frozen-stdlib") == "drwxr-xr-x"
    assert outcome("/c-module").startswith("ImportError: meshext build left this C module out")
    assert outcome("/raise") == "ValueError: boom in the filter"
    # The VM survived all of it and still serves requests.
    assert outcome("/") == "ok"


def test_uncaught_exception_traceback_is_logged_without_a_compiler(tmp_path: Path) -> None:
    # Formatting a traceback parses the failing line for its caret marks;
    # without a compiler that parse fails with SyntaxError, which traceback
    # tolerates: the author still gets file, line and source text.
    source = HEADER_ONLY.replace('self.request.headers.add("x-seen", "1")', 'raise KeyError("missing-tenant")')
    plugin = Host().load(build_filter(project(tmp_path, source), tmp_path / "out.wasm").output)
    plugin.exchange("GET", "/")
    log = "\n".join(plugin.log_messages())
    assert "KeyError: 'missing-tenant'" in log
    assert 'File "filter/filter.py", line 6, in on_request_headers' in log  # the project's own path
    assert 'raise KeyError("missing-tenant")' in log



def test_wasm_opt_shrinks_the_code_and_keeps_the_snapshot_byte_for_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optimised: list[tuple[bytes, bytes]] = []
    real_optimize = optimize.optimize

    def recording(module: bytes) -> bytes:
        result = real_optimize(module)
        optimised.append((module, result))
        return result

    monkeypatch.setattr(optimize, "optimize", recording)
    folder = project(tmp_path, HEADER_ONLY)
    build_filter(folder, tmp_path / "out.wasm")
    assert optimised == []  # only asked for: the first build of a set of callbacks takes ~30 s more
    built = build_filter(folder, tmp_path / "out.wasm", optimize_code=True)
    assert built.rebuilt  # the module without wasm-opt is not the build asked for
    [(pruned, result)] = optimised
    before, after = wasm_binary.parse_sections(pruned), wasm_binary.parse_sections(result)

    def payload(sections: list[wasm_binary.Section], section_id: int) -> bytes | None:
        found = wasm_binary.find_section(sections, section_id)
        return None if found is None else found.payload

    assert payload(after, wasm_binary.DATA) == payload(before, wasm_binary.DATA)  # the snapshot, as taken
    assert wasm_binary.memory_limits(after) == wasm_binary.memory_limits(before)
    assert {(e.name, e.kind) for e in wasm_binary.read_exports(after)} == {
        (e.name, e.kind) for e in wasm_binary.read_exports(before)}
    code_before, code_after = payload(before, wasm_binary.CODE), payload(after, wasm_binary.CODE)
    assert code_before is not None and code_after is not None
    assert len(code_after) < 0.9 * len(code_before)
    plugin = Host().load(built.output)
    assert plugin.exchange("GET", "/").request.header("x-seen") == "1"
    # wasm-opt saw a stand-in for the passive segment of file data: a file read at run time is still there.
    (tmp_path / "codec").mkdir()
    codec = build_filter(project(tmp_path / "codec", CODEC_AT_RUN_TIME), tmp_path / "codec.wasm", optimize_code=True)
    assert Host().load(codec.output).exchange("GET", "/").request.header("x-codec") == "café"
