"""The `meshext` command.

Each subsystem owns its commands (``meshext.<part>.cli``); this group only
loads them lazily, so `meshext --help` stays fast and a broken optional part
cannot break unrelated commands.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from meshext import __version__
from meshext.errors import InternalError, MeshextError


class LazyCommand:
    """Where a subcommand lives, and the one-line help `meshext --help` shows without importing it."""

    def __init__(self, target: str, short_help: str) -> None:
        self.module_name, self.attribute = target.split(":")
        self.short_help = short_help

    def load(self) -> click.Command:
        """Import the subcommand's module (on first use only) and return the command."""
        command: click.Command = getattr(importlib.import_module(self.module_name), self.attribute)
        return command


# The order is the order in `--help`.  A test checks each short help against
# the command's own docstring, so the two cannot drift apart.
COMMANDS: dict[str, LazyCommand] = {
    "up": LazyCommand("meshext.control.local.cli:up_command",
                     "Run a whole mesh with Python extensions on this machine, in the background."),
    "down": LazyCommand("meshext.control.local.cli:down_command",
                       "Stop every process of the local mesh that `meshext up` started."),
    "logs": LazyCommand("meshext.control.local.cli:logs_command",
                       "Show the local mesh's logs: the end of each part's, or PART's whole log."),
    "apply": LazyCommand("meshext.control.local.cli:apply_command",
                        "Create or update the local mesh's resources from FILE (as `kubectl apply -f`)."),
    "delete": LazyCommand("meshext.control.local.cli:delete_command",
                         "Remove the local mesh's resources named in FILE (as `kubectl delete -f`)."),
    "get": LazyCommand("meshext.control.local.cli:get_command",
                      "List the local mesh's extensions as `kubectl get` does: name, phase, priority, image, ready."),
    "init": LazyCommand("meshext.sdk.cli:init_command",
                       "Scaffold a filter project NAME: meshext.toml, filter.py and a test."),
    "build": LazyCommand("meshext.sdk.cli:build_command",
                        "Compile the filter project in each DIRECTORY into one Proxy-Wasm module."),
    "test": LazyCommand("meshext.runtime.cli:test_command",
                       "Build the filter in DIRECTORY and run its tests in the Proxy-Wasm test host."),
    "push": LazyCommand("meshext.registry.cli:push_command",
                       "Publish FILE.wasm to the registry as REF and print the manifest digest."),
    "pull": LazyCommand("meshext.registry.cli:pull_command",
                       "Fetch the module REF names (verified, through the cache) into a file."),
    "inspect": LazyCommand("meshext.registry.cli:inspect_command",
                          "Show an image's format, digests, module size and manifest fields."),
    "toolchain": LazyCommand("meshext.sdk.cli:toolchain_command",
                            "Download CPython for wasm32-wasi and wasm-opt into the cache; compile the shim."),
    "control": LazyCommand("meshext.control.cli:control_group",
                          "Run the meshext control plane (xDS server + extension operator)."),
    "proxy": LazyCommand("meshext.control.cli:proxy_command",
                        "Run the sidecar of WORKLOAD: Envoy configured by the control plane over ADS."),
    "status": LazyCommand("meshext.control.cli:status_command",
                         "List extensions, their state and the workloads running them, then JWT policies and proxies."),
    "graph": LazyCommand("meshext.control.cli:graph_command",
                        "Draw the live service graph from Istio's metrics: rates, errors, p95 and mTLS per edge."),
    "ratelimit": LazyCommand("meshext.extensions.ratelimit.cli:ratelimit_group",
                            "Rate limiting: the RLS v3 service on Redis and the Mixer quota converter."),
    "telemetry": LazyCommand("meshext.extensions.telemetry.cli:telemetry_group",
                            "Istio-style telemetry: the Envoy settings it needs."),
    "3scale-backend": LazyCommand("meshext.extensions.threescale.cli:backend_group",
                                  "Run a 3scale backend simulator (Service Management API) for tests and local use."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use.

    ``meshext --help`` lists the commands from :data:`COMMANDS` alone, so it
    imports no subcommand module (none of pytest, wasmtime, grpc, kubernetes).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        return entry.load() if entry is not None else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        # A bare click.Command shortens the text exactly as click does for a loaded command.
        rows = [(name, click.Command(name, help=entry.short_help).get_short_help_str(limit))
                for name, entry in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshext")
def cli() -> None:
    """Python-first WebAssembly extensions for Envoy service meshes.

    \b
    Typical flow:
      meshext up                      a whole local mesh, running in the background
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
    except Exception as error:  # InternalError, or any other exception: a meshext bug either way (an assert...)
        traceback.print_exc()
        internal = error if isinstance(error, InternalError) else InternalError(f"{type(error).__name__}: {error}")
        click.secho(f"error: {internal}", fg="red", err=True)
        sys.exit(internal.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
