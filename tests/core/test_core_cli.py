"""The `meshext` command loads nothing it does not use.

`meshext --help` lists every command from the table in meshext.cli without
importing any subcommand module, and having meshext installed does not make
an unrelated pytest run import the test host (its plugin loads wasmtime only
when a test asks for a fixture).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshext.cli import COMMANDS, cli

HEAVY = ("wasmtime", "grpc", "kubernetes", "pytest", "meshext.runtime._host", "meshext.sdk.builder", "oras")
# What a subcommand may not load just to print its help: the libraries that do its work, loaded on first
# use.  Its own modules, click and rich (the progress display) are fine, and so is oras.container, the
# image-reference parser the option checks use; oras's client needs requests, which is here.
HEAVY_FOR_HELP = ("wasmtime", "grpc", "kubernetes", "pytest", "meshext.runtime._host", "pydantic", "yaml",
                  "requests", "jsonschema", "cryptography", "redis", "prometheus_client")


def loaded_after(code: str) -> set[str]:
    """The top-level and meshext modules a fresh interpreter has loaded after running CODE."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_help_lists_every_command_without_importing_them() -> None:
    result = subprocess.run([sys.executable, "-m", "meshext", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    modules = loaded_after("from meshext.cli import cli\ntry:\n    cli.main(['--help'], standalone_mode=False)\n"
                           "except SystemExit:\n    pass")
    assert not [name for name in modules if name.startswith(HEAVY)], "meshext --help imported heavy modules"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_commands_help_loads_none_of_the_libraries_it_works_with(name: str) -> None:
    modules = loaded_after("import contextlib, io\nfrom meshext.cli import cli\n"
                           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                           f"    cli.main([{name!r}, '--help'], standalone_mode=False)")
    assert sorted({module for module in modules if module.startswith(HEAVY_FOR_HELP)}) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_short_help_is_the_commands_own_first_line(name: str) -> None:
    command = cli.get_command(None, name)  # type: ignore[arg-type]
    assert command is not None and command.help is not None
    assert COMMANDS[name].short_help == inspect.cleandoc(command.help).splitlines()[0]


def test_importing_pytest_does_not_load_the_test_host() -> None:
    # The plugin is registered as a pytest11 entry point, so pytest loads it in
    # every run of this environment; it must stay light.
    modules = loaded_after("import pytest\nfrom _pytest.config import get_config\nconfig = get_config()\n"
                           "config.pluginmanager.load_setuptools_entrypoints('pytest11')")
    assert "meshext.runtime.pytest_plugin" in modules
    assert "wasmtime" not in modules
    assert "meshext.runtime._host" not in modules


def test_meshext_test_needs_no_extra() -> None:
    # `pip install meshext` (scripts/install.sh without --test) and then
    # `meshext test` on a new project: pytest must come with meshext itself,
    # not only with the test extra (it once failed with a raw ModuleNotFoundError).
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~\[ ;]", requirement)[0].lower() for requirement in project["dependencies"]}
    assert "pytest" in core


def test_an_unexpected_exception_is_reported_as_a_meshext_bug() -> None:
    # Not the user's input: no "fix", the traceback for the report, exit 70 (EX_SOFTWARE).
    code = ("import meshext.cli\n"
            "def broken(**options):\n    raise AssertionError('an invariant of meshext')\n"
            "meshext.cli.cli.main = broken\nmeshext.cli.main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 70
    assert "Traceback" in result.stderr
    assert "internal error (a meshext bug, please report it): AssertionError: an invariant of meshext" in result.stderr
    assert "fix:" not in result.stderr  # a MeshextError's "fix: ..." line
