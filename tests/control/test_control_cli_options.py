"""One meaning, one spelling: options that several commands share are spelled alike.

The registry's CA is ``--registry-ca-file`` and plain HTTP to a registry is
``--plain-http`` wherever a command talks to registries (`push`, `pull`,
`inspect`, `control serve`); ``--ca-file`` is only ever the mesh CA; where a
command writes somewhere, that is ``-o``/``--output``.
"""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from meshext.cli import cli

REGISTRY_COMMANDS = (("push",), ("pull",), ("inspect",), ("control", "serve"))
MESH_TLS_COMMANDS = (("control", "serve"), ("proxy",), ("status",))


def command(path: tuple[str, ...]) -> click.Command:
    found: click.Command | None = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.get_command(click.Context(found), name)
    assert found is not None, path
    return found


def option(path: tuple[str, ...], spelling: str) -> click.Option | None:
    return next((p for p in command(path).params if isinstance(p, click.Option) and spelling in p.opts), None)


@pytest.mark.parametrize("path", REGISTRY_COMMANDS, ids=" ".join)
def test_registry_options_are_spelled_alike(path: tuple[str, ...]) -> None:
    ca = option(path, "--registry-ca-file")
    assert ca is not None and "CA" in (ca.help or "")
    plain_http = option(path, "--plain-http")
    assert plain_http is not None and "HTTP instead of HTTPS" in (plain_http.help or "")


def test_ca_file_is_only_ever_the_mesh_ca() -> None:
    for path in MESH_TLS_COMMANDS:
        ca = option(path, "--ca-file")
        assert ca is not None and "mesh CA" in (ca.help or ""), path
    for path in (("push",), ("pull",), ("inspect",)):
        assert option(path, "--ca-file") is None, path


@pytest.mark.parametrize("path", [("pull",), ("build",), ("control", "certs")], ids=" ".join)
def test_output_is_dash_o(path: tuple[str, ...]) -> None:
    output = option(path, "-o")
    assert output is not None and "--output" in output.opts


def test_serve_refuses_plain_http_to_a_remote_registry(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "meshext", "control", "serve", "--config-dir", str(tmp_path),
                             "--insecure", "--plain-http", "registry.example.com:5000"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--plain-http: plain HTTP to registry.example.com:5000 refused" in result.stderr
