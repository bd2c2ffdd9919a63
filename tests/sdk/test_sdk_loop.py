"""The author's edit-test loop: what `meshext build` / `meshext test` skip, cache
and reuse, and that nothing they reuse is stale; the bytecode comes from the
module's own CPython, not the host's; the caches stay under their limit."""

from __future__ import annotations

import _imp
import builtins
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from meshext import compiled_modules as modules
from meshext import paths, wasm_binary
from meshext.errors import MeshextError
from meshext.sdk.builder import analysis, build_filter, bytecode, pipeline, toolchain
from meshext.sdk.builder.project import load_project
from meshext.sdk.builder.shim import build_shim
from meshext.testing import Host

CPYTHON_311_MAGIC = (3495).to_bytes(2, "little") + b"\r\n"  # importlib.util.MAGIC_NUMBER of CPython 3.11

FILTER = '''"""Adds a header computed from the request path."""

from meshext.sdk import Action, HttpContext, RootContext


class AddHeader(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-path-length", str(len(self.request.headers.get(":path", ""))))
        return Action.CONTINUE


class Root(RootContext):
    http_context = AddHeader
'''


def make_project(tmp_path: Path, source: str = FILTER) -> Path:
    project = tmp_path / "loop"
    (project / "tests").mkdir(parents=True)
    (project / "meshext.toml").write_text('[filter]\nname = "loop"\nentry = "filter:Root"\n')
    (project / "filter.py").write_text(source)
    (project / "tests" / "test_filter.py").write_text("def test_nothing():\n    pass\n")
    return project


def header(module: Path, name: str, path: str = "/hello") -> str | None:
    """What a fresh test host's VM of ``module`` sets as request header ``name``."""
    return Host().load(module).exchange("GET", path).request.header(name)


def edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))


# -- no rebuild of an unchanged project -------------------------------------------------------------


def test_an_unchanged_project_is_not_rebuilt(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    first = build_filter(project)
    module = project / "build" / "loop.wasm"
    written, content = module.stat().st_mtime_ns, module.read_bytes()
    again = build_filter(project)
    assert first.rebuilt and not again.rebuilt
    assert module.stat().st_mtime_ns == written and module.read_bytes() == content
    assert (again.size, again.imports, again.stdlib_modules) == (first.size, first.imports, first.stdlib_modules)
    # Tests are not part of the module: editing one does not rebuild it either.
    (project / "tests" / "test_filter.py").write_text("def test_other():\n    pass\n")
    assert not build_filter(project).rebuilt
    # The command says so, and where the caches are and what bounds them.
    result = subprocess.run([sys.executable, "-m", "meshext", "build", str(project)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout and "not rebuilt" in result.stdout
    assert paths.CACHE_LIMIT_ENV in result.stdout and str(paths.cache_root()) in result.stdout


@pytest.mark.parametrize("change", ["filter", "settings", "new-module", "output-tampered", "output-deleted"])
def test_every_input_of_a_build_is_in_its_key(tmp_path: Path, change: str) -> None:
    project = make_project(tmp_path)
    output = tmp_path / "out.wasm"
    before = pipeline.input_key([load_project(project)], output)
    if change == "filter":
        edit(project / "filter.py", '"x-path-length"', '"x-length"')
    elif change == "settings":
        edit(project / "meshext.toml", 'entry = "filter:Root"', 'entry = "filter:Root"\nfail_policy = "closed"')
    elif change == "new-module":
        (project / "helpers.py").write_text("VALUE = 1\n")
    if change.startswith("output"):
        build_filter(project, output)
        if change == "output-tampered":
            output.write_bytes(output.read_bytes() + b"\0")
        else:
            output.unlink()
        assert build_filter(project, output).rebuilt  # the key is the same, the module is not the one it built
    else:
        assert pipeline.input_key([load_project(project)], output) != before


def test_the_sdk_and_builder_sources_are_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = load_project(make_project(tmp_path))
    sdk_copy = tmp_path / "sdk"
    shutil.copytree(pipeline.SDK_DIR, sdk_copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(pipeline, "SDK_DIR", sdk_copy)
    before = pipeline.input_key([project], tmp_path / "out.wasm")
    for changed in (sdk_copy / "contexts.py", sdk_copy / "builder" / "prune.py", sdk_copy / "shim" / "memfs.c"):
        changed.write_bytes(changed.read_bytes() + b"\n")
        after = pipeline.input_key([project], tmp_path / "out.wasm")
        assert after != before, changed
        before = after


# -- what is cached is never stale -----------------------------------------------------------------


def test_edits_show_their_new_behaviour(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    module = build_filter(project).output
    assert header(module, "x-path-length") == "6"

    # A one-line change: only the snapshot differs, the native code is reused.
    edit(project / "filter.py", 'str(len(self.request.headers.get(":path", "")))', '"seven"')
    assert build_filter(project).bytecode_compiled <= 1  # filter.py, unless an earlier run compiled this text
    compiled: list[str] = []
    store = modules._DISK.store

    def store_and_record(name: str, data: bytes) -> Path:
        compiled.append(name)
        return store(name, data)

    with pytest.MonkeyPatch.context() as spy:
        spy.setattr(modules._DISK, "store", store_and_record)
        assert header(module, "x-path-length") == "seven"
    assert compiled == []  # nothing compiled: the code came from the cache

    # A new stdlib import (the stdlib closure is cached by imports) and a new
    # callback (the pruned code is cached by callbacks and C modules).
    edit(project / "filter.py", "class Root(RootContext):", '''    def on_response_headers(self, end_of_stream):
        import colorsys
        self.response.headers.add("x-hue", str(colorsys.rgb_to_hsv(0.0, 0.0, 1.0)[0]))
        return Action.CONTINUE


class Root(RootContext):''')
    build_filter(project)
    exports = {export.name for export in wasm_binary.read_exports(wasm_binary.parse_sections(module.read_bytes()))}
    assert "proxy_on_response_headers" in exports
    stream = Host().load(module).exchange("GET", "/")
    assert stream.request.header("x-path-length") == "seven"
    assert stream.response.header("x-hue") == str(2 / 3)

    # A module the filter imports lazily, from the project.
    (project / "helpers.py").write_text("ANSWER = 'from helpers'\n")
    edit(project / "filter.py", '"seven"', '__import__("helpers").ANSWER')
    build_filter(project)
    assert header(module, "x-path-length") == "from helpers"


def test_an_import_check_that_passed_is_skipped_and_a_changed_guard_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = "try:\n    import socket\nexcept ImportError:\n    socket = None\n"
    project = make_project(tmp_path, FILTER + "\n" + guard)
    build_filter(project)
    checked: list[list[analysis.SourceImport]] = []
    check_imports = analysis.check_imports

    def check_and_record(imports: list[analysis.SourceImport], *args: object) -> None:
        checked.append(imports)
        check_imports(imports, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis, "check_imports", check_and_record)
    edit(project / "filter.py", '"x-path-length"', '"x-length"')
    assert build_filter(project).rebuilt and checked == []  # the same imports passed before

    # The same import statement, no longer guarded: checked again, and refused.
    edit(project / "filter.py", guard, "import socket\n")
    with pytest.raises(MeshextError) as refused:
        build_filter(project)
    assert checked and "import of 'socket'" in str(refused.value) and "not available inside a proxy" in str(
        refused.value)
    assert refused.value.where == f"{project / 'filter.py'}:{len(FILTER.splitlines()) + 2}"


def test_a_module_compiled_without_its_data_starts_with_it() -> None:
    # Data segments are written at instantiation; a start function would run
    # before that, so a module with one is compiled whole.
    data_reader = bytes(wasmtime.wat2wasm('''(module
      (memory (export "memory") 2)
      (data (i32.const 70000) "late") (data (i32.const 16) "early") (data (i32.const 18) "RL")
      (func (export "at") (param i32) (result i32) (i32.load8_u (local.get 0))))'''))
    with_start = bytes(wasmtime.wat2wasm('''(module
      (memory (export "memory") 1) (data (i32.const 8) "\\2a") (global $seen (export "seen") (mut i32) (i32.const 0))
      (func $start (global.set $seen (i32.load8_u (i32.const 8)))) (start $start))'''))
    for code in (data_reader, with_start):
        module = modules.compile_module(code)
        store = wasmtime.Store(modules.engine())
        instance = modules.instantiate(wasmtime.Linker(modules.engine()), store, module)
        exports = instance.exports(store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        if code is data_reader:
            assert isinstance(module, modules.CodeOnlyModule)
            assert memory.size(store) == 2
            assert bytes(memory.read(store, 16, 21)) == b"eaRLy" and bytes(memory.read(store, 70000, 70004)) == b"late"
        else:
            assert not isinstance(module, modules.CodeOnlyModule)
            seen = exports["seen"]
            assert isinstance(seen, wasmtime.Global) and seen.value(store) == 42


def test_code_that_names_an_active_segment_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shim reads file data with memory.init before a build gives it the
    # passive segment: without its data it does not validate, and wasmtime
    # says so only after compiling nearly all of it (3 s of every edit-test
    # loop).  Such a module is compiled whole, at the first try.
    names_active = bytes(wasmtime.wat2wasm('''(module
      (memory (export "memory") 1) (data (i32.const 16) "abc")
      (func (export "init") (memory.init 0 (i32.const 0) (i32.const 0) (i32.const 0)))
      (func (export "at") (param i32) (result i32) (i32.load8_u (local.get 0))))'''))
    shim = wasm_binary.export_globals(build_shim()[0].read_bytes())
    compiled: list[type] = []
    load = modules._load

    def recording_load(code: bytes, kind: type[wasmtime.Module]) -> wasmtime.Module:
        compiled.append(kind)
        return load(code, kind)

    monkeypatch.setattr(modules, "_load", recording_load)
    monkeypatch.setattr(modules, "_MODULES", {})  # compiled earlier in this process: from the disk cache
    for code in (names_active, shim):
        compiled.clear()
        modules.compile_module(code)
        assert compiled == [wasmtime.Module]
    store = wasmtime.Store(modules.engine())
    exports = modules.instantiate(wasmtime.Linker(modules.engine()), store, modules.compile_module(names_active)
                                  ).exports(store)
    init, at = exports["init"], exports["at"]
    assert isinstance(init, wasmtime.Func) and isinstance(at, wasmtime.Func)
    init(store)
    assert at(store, 17) == ord("b")


# -- bytecode from the module's CPython --------------------------------------------------------------


@pytest.fixture
def host_cannot_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's compiler refuses the module's files and its marshal refuses all
    code, and the bytecode cache is empty: every .pyc must come from the VM."""
    host_compile = builtins.compile

    def refuse(source: object, filename: object, *args: object, **kwargs: object) -> object:
        if str(filename).startswith(("/app/", "/lib/", "loop/")):  # loop/: the project's traceback names
            raise AssertionError(f"the host compiled {filename} for the module")
        return host_compile(source, filename, *args, **kwargs)  # type: ignore[call-overload]

    def no_marshal(*_args: object) -> bytes:
        raise AssertionError("the host marshalled code for the module")

    monkeypatch.setattr(builtins, "compile", refuse)
    monkeypatch.setattr(marshal, "dumps", no_marshal)
    monkeypatch.setattr(marshal, "dump", no_marshal)
    monkeypatch.setattr(bytecode._CACHE, "read", lambda _name: None)


@pytest.mark.usefixtures("host_cannot_compile")
def test_bytecode_is_the_modules_cpythons(tmp_path: Path) -> None:
    project = load_project(make_project(tmp_path))
    files = pipeline.collect_files([project], toolchain.wasi_python().stdlib_dir, build_shim()[0].read_bytes()).files
    compiled = {name: data for name, data in files.items() if name.endswith(".pyc")}
    assert any(name.startswith("lib/") for name in compiled) and "app/filter.pyc" in compiled
    assert any(name.startswith("app/meshext/sdk/__pycache__/") for name in compiled)
    for name, pyc in compiled.items():
        assert pyc[:4] == CPYTHON_311_MAGIC, name
        if "__pycache__/" not in name:  # in the source's place, never checked against it
            assert pyc[4:16] == bytes(12), name
        else:  # unchecked hash-based, next to its source
            source = files[name.replace("__pycache__/", "").replace(".cpython-311.pyc", ".py")]
            assert pyc[4:8] == (1).to_bytes(4, "little"), name
            assert pyc[8:16] == _imp.source_hash(int.from_bytes(CPYTHON_311_MAGIC, "little"), source), name
    # The project's code carries the name its tracebacks show, where its source is kept.
    assert b"loop/filter.py" in compiled["app/filter.pyc"] and "loop/filter.py" in files
    assert "app/filter.py" not in files
    # The stdlib is compiled without docstrings (optimize=2), the filter with them.
    stdlib_json = (toolchain.wasi_python().stdlib_dir / "json" / "__init__.py").read_bytes()
    assert b"JSON (JavaScript Object Notation)" in stdlib_json
    assert b"JSON (JavaScript Object Notation)" not in compiled["lib/python3.11/json/__init__.pyc"]
    assert b"Adds a header computed from the request path." in compiled["app/filter.pyc"]


@pytest.mark.usefixtures("host_cannot_compile")
def test_a_build_needs_no_host_compiler(tmp_path: Path) -> None:
    built = build_filter(make_project(tmp_path))
    assert built.bytecode_compiled > 50  # the filter, the SDK and the stdlib it needs
    assert header(built.output, "x-path-length") == "6"


def test_bytecode_does_not_depend_on_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Equal inputs, equal file system, whether each .pyc was found in the
    # cache or compiled now, alone or with others: marshal's output depends on
    # which strings the compiling interpreter had interned before.
    project = load_project(make_project(tmp_path))
    stdlib, shim = toolchain.wasi_python().stdlib_dir, build_shim()[0].read_bytes()
    warm = pipeline.collect_files([project], stdlib, shim).files
    compiled: list[bytecode.PythonFile] = []
    compile_files = bytecode.compile_files

    def compile_and_record(files: list[bytecode.PythonFile], shim: bytes) -> bytecode.Compiled:
        compiled.extend(files)
        return compile_files(files, shim)

    with monkeypatch.context() as patched:
        patched.setattr(bytecode._CACHE, "read", lambda _name: None)
        patched.setattr(bytecode, "compile_files", compile_and_record)
        cold = pipeline.collect_files([project], stdlib, shim).files
    assert cold == warm
    token = next(file for file in compiled if file.path.endswith("/token.py"))  # once compiled differently
    alone = bytecode._compile_in_vm(compiled, [token], {}, shim)
    assert alone[token.pyc_path] == warm[token.pyc_path]


def test_the_frozen_module_table_is_the_modules_cpythons(tmp_path: Path) -> None:
    report = "\nimport _imp\nprint('frozen', sorted(_imp._frozen_module_names()))\n"
    built = build_filter(make_project(tmp_path, FILTER + report))
    (frozen,) = [message for _, message in built.build_log if message.startswith("frozen ")]
    assert frozen == f"frozen {sorted(analysis.FROZEN_MODULES)}"


def test_code_the_modules_cpython_refuses_names_the_line(tmp_path: Path) -> None:
    # The parser takes this (the host's check passes, as a newer host's would
    # for newer syntax); the module's CPython refuses it when it compiles.
    project = make_project(tmp_path, FILTER + "\nreturn 5\n")
    with pytest.raises(MeshextError) as refused:
        build_filter(project)
    assert refused.value.where == f"{project / 'filter.py'}:{len(FILTER.splitlines()) + 2}"
    assert "'return' outside function" in str(refused.value) and "CPython 3.11" in str(refused.value)


# -- the caches stay bounded -------------------------------------------------------------------------


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(paths.CACHE_ENV, str(root))
    return root


def test_least_recently_used_files_are_evicted_past_the_limit(empty_cache: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_LIMIT_ENV, "1")  # 1 MB
    compiled, bytecode_cache = paths.EvictableCache("wasmtime"), paths.EvictableCache("bytecode")
    oldest = compiled.store("oldest.cwasm", bytes(400_000))
    used = bytecode_cache.store("used.pyc", bytes(400_000))
    os.utime(oldest, (1_000, 1_000))
    os.utime(used, (2_000, 2_000))
    assert bytecode_cache.read("used.pyc") == bytes(400_000)  # now the most recently used
    newest = compiled.store("newest.cwasm", bytes(400_000))
    assert not oldest.exists() and used.exists() and newest.exists()
    assert compiled.lookup("oldest.cwasm") is None
    # A file over the limit by itself is kept: it was just made to be used.
    huge = compiled.store("huge.cwasm", bytes(1_500_000))
    assert huge.exists() and not used.exists() and not newest.exists()


def test_the_compiled_module_cache_is_bounded(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_LIMIT_ENV, "0")
    for value in (1, 2):
        code = wasmtime.wat2wasm(f'(module (func (export "f") (result i32) (i32.const {value})))')
        modules.compile_module(bytes(code))
    assert len(list((empty_cache / "wasmtime").iterdir())) == 1


def test_a_bad_cache_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_LIMIT_ENV, "lots")
    with pytest.raises(MeshextError) as refused:
        paths.cache_limit_bytes()
    assert refused.value.where == paths.CACHE_LIMIT_ENV and "2048" in (refused.value.fix or "")
    monkeypatch.delenv(paths.CACHE_LIMIT_ENV)
    assert paths.cache_limit_bytes() == paths.DEFAULT_CACHE_LIMIT_MB * 1_000_000
