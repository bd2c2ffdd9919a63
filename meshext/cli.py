"""The `meshext` command.

Each subsystem owns its commands (``meshext.<part>.cli``); this group only
loads them lazily, so `meshext --help` stays fast and a broken optional part
cannot break unrelated commands.
"""

from __future__ import annotations

import importlib
import sys

import click

from meshext import __version__
from meshext.errors import MeshextError

# command name -> "module:attribute"; the order is the order in `--help`.
COMMANDS: dict[str, str] = {
    "init": "meshext.sdk.cli:init_command",
    "build": "meshext.sdk.cli:build_command",
    "test": "meshext.runtime.cli:test_command",
    "push": "meshext.registry.cli:push_command",
    "pull": "meshext.registry.cli:pull_command",
    "inspect": "meshext.registry.cli:inspect_command",
    "toolchain": "meshext.sdk.cli:toolchain_command",
    "control": "meshext.control.cli:control_group",
    "proxy": "meshext.control.cli:proxy_command",
    "status": "meshext.control.cli:status_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshext")
def cli() -> None:
    """Python-first WebAssembly extensions for Envoy service meshes.

    \b
    Typical flow:
      meshext init my-filter          scaffold a filter project
      meshext build my-filter -o f.wasm
                                      compile it to a Proxy-Wasm module
    """


def main() -> None:
    """Console entry point: user errors print cleanly with a meaningful exit code."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except MeshextError as error:
        click.secho(f"error: {error}", fg="red", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
