"""`meshext init` and `meshext build` as a user runs them, good input and bad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshext.sdk.builder import toolchain


def meshext(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", *args], cwd=cwd, capture_output=True, text=True)


def test_scaffold_builds_into_a_valid_module(tmp_path: Path) -> None:
    created = meshext("init", "hello-filter", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    built = meshext("build", "hello-filter", "-o", "hello.wasm", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "size" in built.stdout and "imports" in built.stdout and "build time" in built.stdout
    module = tmp_path / "hello.wasm"
    subprocess.run([toolchain.wasm_tools(), "validate", str(module)], check=True)
    assert module.read_bytes()[:4] == b"\0asm"


def scaffold(tmp_path: Path, filter_source: str, toml_extra: str = "") -> Path:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "meshext.toml").write_text(f'[filter]\nname = "broken"\nentry = "filter:Root"\n{toml_extra}')
    (project / "filter.py").write_text(filter_source)
    return project


GOOD_ROOT = "from meshext.sdk import RootContext\nclass Root(RootContext):\n    pass\n"


@pytest.mark.parametrize(
    ("source", "expected_where", "expected_message"),
    [
        ("from meshext.sdk import RootContext\nclass Root(RootContext)\n    pass\n", "filter.py:2", "syntax error"),
        ("from meshext.sdk import RootContext\nclass Other(RootContext):\n    pass\n", "filter.py:1",
         "no class 'Root'"),
        ("import socket\n" + GOOD_ROOT, "filter.py:1", "not available inside a proxy"),
        ("import unicodedata\n" + GOOD_ROOT, "filter.py:1", "C module that meshext does not link"),
        ("import yaml\n" + GOOD_ROOT, "filter.py:1", "no such module"),
        ("def handler():\n    import sqlite3\n" + GOOD_ROOT, "filter.py:2", "not available inside a proxy"),
        ("from meshext.sdk import RootContext\nclass Root(RootContext):\n    pass\nraise RuntimeError('at import')\n",
         "filter.py:4", "RuntimeError: at import"),
        ("Root = 42\n", "", "not a RootContext subclass"),
    ],
    ids=["syntax", "missing-class", "socket", "unlinked-c-module", "unknown-module", "nested-import",
         "raises-at-import", "not-a-root-context"],
)
def test_bad_filter_code_names_the_file_and_line(tmp_path: Path, source: str, expected_where: str,
                                                 expected_message: str) -> None:
    project = scaffold(tmp_path, source)
    result = meshext("build", str(project), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path)
    assert result.returncode == 1
    assert expected_message in result.stderr
    assert expected_where in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback (most recent call last):\n  File \"/work" not in result.stderr  # no meshext internals
    assert not (tmp_path / "out.wasm").exists()


@pytest.mark.parametrize(
    ("toml_extra", "field"),
    [('phase = "Sometime"\n', "phase"), ('fail_policy = "maybe"\n', "fail_policy"), ("priority = 'high'\n", "priority")],
)
def test_bad_project_settings_name_the_field(tmp_path: Path, toml_extra: str, field: str) -> None:
    project = scaffold(tmp_path, GOOD_ROOT, toml_extra)
    result = meshext("build", str(project), cwd=tmp_path)
    assert result.returncode == 1
    assert f"[filter] {field}" in result.stderr and "fix:" in result.stderr


def test_missing_project_file_explains_how_to_start(tmp_path: Path) -> None:
    result = meshext("build", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "meshext init" in result.stderr
