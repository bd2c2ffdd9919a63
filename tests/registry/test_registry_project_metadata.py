"""`meshext push --format maistra` takes manifest.yaml's fields from the project `meshext build` recorded
in the module, unless options override them; a module without that record gets the documented defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from registry_helpers import Registry, make_module

from meshext.phases import DEFAULT_PHASE, DEFAULT_PRIORITY
from meshext.sdk.builder.metadata import SECTION_NAME
from meshext.wasm_binary import uleb

PROJECT = {"name": "metadata-probe", "version": "3.1.4", "description": "counts requests", "phase": "PreAuthZ",
           "priority": 42}


def meshext(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshext", *arguments], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def built_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scaffolded project with non-default version, description, phase and priority, built."""
    root = tmp_path_factory.mktemp("project")
    assert meshext("init", PROJECT["name"], cwd=root).returncode == 0
    toml = root / PROJECT["name"] / "meshext.toml"
    lines = []
    for line in toml.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {json.dumps(PROJECT[key])}" if key in ("version", "description", "phase", "priority")
                     else line)
    toml.write_text("\n".join(lines) + "\n")
    output = root / "probe.wasm"  # not named after the project: the manifest must not take the file name
    built = meshext("build", str(toml.parent), "-o", str(output))
    assert built.returncode == 0, built.stderr
    return output


def push_and_inspect(registry: Registry, module: Path, tag: str, *options: str) -> dict:
    reference = f"{registry.host}/filters/from-project:{tag}"
    pushed = meshext("push", str(module), reference, "--format", "maistra", "--plain-http", *options)
    assert pushed.returncode == 0, pushed.stderr
    inspected = meshext("inspect", reference, "--json", "--plain-http")
    assert inspected.returncode == 0, inspected.stderr
    return json.loads(inspected.stdout)["maistra"]


def test_manifest_fields_come_from_the_project(plain_registry: Registry, built_module: Path) -> None:
    assert push_and_inspect(plain_registry, built_module, "project") == {**PROJECT, "module": "metadata-probe.wasm"}


def test_options_override_the_project(plain_registry: Registry, built_module: Path) -> None:
    manifest = push_and_inspect(plain_registry, built_module, "override", "--priority", "7", "--phase", "PostStats",
                                "--description", "overridden")
    assert manifest == {**PROJECT, "priority": 7, "phase": "PostStats", "description": "overridden",
                        "module": "metadata-probe.wasm"}
    renamed = push_and_inspect(plain_registry, built_module, "renamed", "--name", "other", "--version", "9")
    assert renamed == {**PROJECT, "name": "other", "version": "9", "module": "other.wasm"}


def test_module_without_project_gets_the_documented_defaults(plain_registry: Registry, wasm_file: Path) -> None:
    manifest = push_and_inspect(plain_registry, wasm_file, "plain")
    assert manifest == {"name": "filter", "description": "", "version": "plain", "phase": DEFAULT_PHASE,
                        "priority": DEFAULT_PRIORITY, "module": "filter.wasm"}
    assert (DEFAULT_PHASE, DEFAULT_PRIORITY) == ("PostAuthZ", 100)


def test_unreadable_project_record_is_refused(tmp_path: Path) -> None:
    name = SECTION_NAME.encode()
    body = uleb(len(name)) + name + json.dumps({**PROJECT, "phase": "Whenever"}).encode()
    module = tmp_path / "broken.wasm"
    module.write_bytes(make_module("broken-record", kilobytes=1) + b"\x00" + uleb(len(body)) + body)
    pushed = meshext("push", str(module), "127.0.0.1:1/filters/broken:1", "--format", "maistra", "--plain-http")
    assert pushed.returncode == 1
    assert f"{module}: its {SECTION_NAME} section is unreadable: phase" in pushed.stderr
    assert "build the module again with `meshext build`" in pushed.stderr


@pytest.mark.parametrize(("options", "message"), [
    (["--priority", "5"], "--priority apply to --format maistra only"),
    (["--format", "maistra", "--manifest", "{manifest}", "--phase", "PreAuthN"],
     "--manifest gives every manifest.yaml field; drop --phase"),
])
def test_maistra_options_where_they_cannot_apply(tmp_path: Path, wasm_file: Path, options: list[str],
                                                 message: str) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("schemaVersion: 1\nname: f\nphase: PostAuthZ\nmodule: f.wasm\n")
    pushed = meshext("push", str(wasm_file), "127.0.0.1:1/filters/f:1", "--plain-http",
                     *[option.format(manifest=manifest) for option in options])
    assert pushed.returncode == 2 and message in pushed.stderr

