"""`meshext test`: build a filter project and run its tests through the harness."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import click

from meshext.errors import MeshextError


def build_with_sdk(project: Path) -> Path:
    """Build the project's filter with the SDK pipeline (`meshext build`) and return the module."""
    from rich.console import Console

    from meshext.paths import describe_cache
    from meshext.sdk.builder import build_filter

    click.echo(f"building {project} (meshext build)", err=True)
    with Console(stderr=True).status("building") as status:
        result = build_filter(project, progress=lambda message: status.update(message))
    if result.rebuilt:
        click.echo(f"built {result.output} in {result.seconds:.1f} s "
                   f"({result.bytecode_compiled} .pyc compiled, the rest from the cache)", err=True)
    else:
        click.echo(f"{result.output} is up to date: nothing it is built from changed, not rebuilt", err=True)
    click.echo(f"cache: {describe_cache()}", err=True)
    return result.output


@click.command("test", context_settings={"ignore_unknown_options": True})
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--module", "module", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use this already-built .wasm instead of building DIRECTORY.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def test_command(directory: Path, module: Path | None, pytest_args: tuple[str, ...]) -> None:
    """Build the filter in DIRECTORY and run its tests in the Proxy-Wasm test host.

    \b
    The tests (DIRECTORY/tests, or DIRECTORY itself) use the pytest fixtures
    `filter_module` (load the built module with a config), `proxy_host` and
    `filter_module_path`, or `meshext.testing` directly; the built module is
    handed to them through $MESHEXT_TEST_MODULE.
    An unchanged project is not rebuilt, and the native code of the module
    is cached (see `meshext build --help` for the cache).
    Extra arguments go to pytest:
      meshext test my-filter -k headers -x
      meshext test my-filter --module build/filter.wasm
    Exit code: pytest's (0 all passed, 1 some failed, 5 no tests found).
    """
    if not directory.is_dir():
        raise MeshextError(f"no such directory: {directory}", where="meshext test",
                           fix="give the filter project directory (the one `meshext init` created)")
    wasm = (module if module is not None else build_with_sdk(directory)).resolve()
    tests = (directory / "tests" if (directory / "tests").is_dir() else directory).resolve()
    arguments = [str(tests), *pytest_args]
    click.echo(f"testing {wasm} with pytest {' '.join(arguments)}", err=True)
    # pytest runs in this process: it already holds wasmtime, the SDK and the
    # engine, which a second Python would import again.  That meshext was
    # imported before pytest could mark its plugin for assertion rewriting
    # is expected here (the plugin has no assertions to rewrite).
    import pytest

    from meshext.runtime.pytest_plugin import MODULE_ENV  # imports pytest too: not for `meshext test --help`

    os.environ[MODULE_ENV] = str(wasm)
    os.chdir(directory)
    # What the build left on the heap stays there until exit; freezing it keeps
    # pytest's garbage collections (it runs several at the end) from scanning it.
    gc.freeze()
    sys.exit(int(pytest.main([*_QUIET_PLUGIN_REWRITE, *arguments])))


_QUIET_PLUGIN_REWRITE = [
    "-W", "ignore:Module already imported so cannot be rewritten; meshext:pytest.PytestAssertRewriteWarning",
]
