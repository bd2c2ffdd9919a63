"""The function profile `meshext build --cold-code` keeps compiled: what ran, in which phase, VM by VM."""

from __future__ import annotations

import gc
import subprocess
from pathlib import Path

import pytest
import wasmtime

from meshext import function_profile
from meshext.compiled_modules import compile_module, engine, instantiate
from meshext.sdk.builder import toolchain

# Functions 0-2: $entry calls $callee; $never is exported but not called.
WAT = """
(module
  (memory (export "memory") 1)
  (global $counter (mut i32) (i32.const 0))
  (func $entry (export "entry") (result i32) (call $callee (i32.const 20)))
  (func $callee (param i32) (result i32)
    (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
    (i32.add (local.get 0) (i32.const 22)))
  (func $never (export "never") (result i32) (i32.const 7)))
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("profile")
    (folder / "m.wat").write_text(WAT)
    subprocess.run([toolchain.wasm_tools(), "parse", str(folder / "m.wat"), "-o", str(folder / "m.wasm")], check=True)
    return (folder / "m.wasm").read_bytes()


def test_a_profile_names_the_functions_that_ran_and_the_module_still_computes(
        module: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(function_profile.PROFILE_ENV, str(tmp_path))
    compiled = compile_module(module, where="profile test")

    class Owner:
        """Stands for the test host's instance, whose end records the profile."""

    def run_once(callback: str, arguments: tuple[int, ...]) -> None:
        owner = Owner()
        store = wasmtime.Store(engine())
        instance = instantiate(wasmtime.Linker(engine()), store, compiled)
        enter = function_profile.watch(owner, compiled, store, instance)
        assert enter is not None
        enter(callback, arguments)
        entry = instance.exports(store)["entry"]
        assert isinstance(entry, wasmtime.Func)
        assert entry(store) == 42  # instrumenting changed nothing the code computes
        del owner, instance
        gc.collect()

    assert function_profile.executed(tmp_path, module) == []  # recorded when the owner goes
    run_once("proxy_on_configure", (1, 0))
    run_once("proxy_on_request_headers", (2, 3, 1))
    starting, serving = function_profile.STARTING, function_profile.SERVING
    assert function_profile.executed(tmp_path, module) == [{0: starting, 1: starting}, {0: serving, 1: serving}]


@pytest.mark.parametrize(("callback", "arguments", "phase"), [
    ("_initialize", (), function_profile.STARTING),
    ("proxy_on_vm_start", (1, 0), function_profile.STARTING),
    ("proxy_on_configure", (1, 12), function_profile.STARTING),
    ("proxy_on_context_create", (1, 0), function_profile.STARTING),  # the root context
    ("proxy_on_context_create", (2, 1), function_profile.SERVING),  # a stream's
    ("proxy_on_request_headers", (2, 3, 1), function_profile.SERVING),
    ("proxy_on_tick", (1,), function_profile.SERVING),
    ("proxy_on_http_call_response", (1, 4, 2, 0, 0), function_profile.SERVING),
])
def test_the_phase_of_a_call_is_start_only_for_what_envoy_calls_while_a_vm_starts(
        callback: str, arguments: tuple[int, ...], phase: int) -> None:
    assert function_profile.phase_of(callback, arguments) == phase


def test_without_the_setting_nothing_is_instrumented(module: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(function_profile.PROFILE_ENV, raising=False)
    assert function_profile.profile_dir() is None
    instrumented = function_profile.instrument(module)
    assert instrumented != module
    plain = compile_module(module, where="plain")
    assert not any(export.name.startswith(function_profile.PROFILE_EXPORT_PREFIX) for export in plain.exports)
