"""`meshext up`, `down`, `logs`, `apply`, `delete` and `get`: the local mesh's commands."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from meshext.control.local.layout import PORT_RANGE, Ports, StateDir, default_state_dir
from meshext.errors import MeshextError


def _state_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="The local mesh's state: PID files, logs, resources, registry, certificates "
                             "(default: $MESHEXT_STATE_DIR or ~/.local/state/meshext/mesh).")(command)


def _state(state_dir: Path | None) -> StateDir:
    return StateDir((state_dir or default_state_dir()).absolute())


def _port_options(command: Callable[..., Any]) -> Callable[..., Any]:
    helps = {"productpage": "productpage's sidecar: the URL to try", "registry": "the OCI registry",
             "control": "the control plane's xDS server", "control_http": "the control plane's HTTP server",
             "prometheus": "Prometheus",
             "port_base": f"first of the {PORT_RANGE} ports of the apps, the backing services and their sidecars"}
    for field in reversed(fields(Ports)):
        command = click.option(Ports.option(field.name), field.name, type=int, default=field.default,
                               show_default=True, help=helps[field.name].capitalize() + ".")(command)
    return command


@click.command("up")
@_port_options
@_state_option
def up_command(state_dir: Path | None, **ports: int) -> None:
    """Run a whole mesh with Python extensions on this machine, in the background.

    Starts, on 127.0.0.1: an OCI registry (Debian's docker-registry), the
    control plane, three demo services (productpage -> reviews -> ratings,
    the last over gRPC) each behind its sidecar, and Prometheus scraping the
    sidecars; builds the example header-policy and the project's extensions
    bundle (telemetry, rate limiting, 3scale in one module), pushes them, and
    applies a ServiceMeshExtension (header-policy on productpage).  Returns once a
    request has gone through all three services; `meshext down` stops it all.

    \b
    Examples:
      meshext up
      meshext up --registry-port 15051 --port-base 16100
    """
    from rich.console import Console

    from meshext.control.local.up import up

    state = _state(state_dir)
    console = Console(stderr=True)
    result = up(state, Ports(**ports), console)
    if result.already_running:
        click.echo(f"the local mesh is already running (state in {state.root})")
    else:
        click.echo(f"the local mesh is up after {result.seconds:.1f} s (state in {state.root})")
    click.echo(_try_these(result.ports))


def _try_these(ports: Ports) -> str:
    entry = f"http://127.0.0.1:{ports.productpage}"
    lines = [
        ("curl -i " + entry + "/productpage", "productpage -> reviews -> ratings (gRPC); x-meshext-policy: v1"),
        ("curl -i " + entry + "/admin", "header-policy answers 403 (rule admin)"),
        ("meshext get", "the extensions and their status"),
        ("meshext apply -f deploy/local/ratelimit.yaml", "rate limiting: 5 requests per 10 s, then 429"),
        ("meshext apply -f deploy/local/ratelimit-global.yaml", "the same from the rate limit service (Redis)"),
        ("meshext apply -f deploy/local/3scale.yaml", "3scale: ?user_key=demo-user-key, else 403"),
        (f"meshext graph --prometheus http://127.0.0.1:{ports.prometheus}", "the service graph"),
        (f"http://127.0.0.1:{ports.prometheus}", "Prometheus"),
        ("meshext logs [PART]", "each part's log"),
        ("meshext down", "stop it all"),
    ]
    width = max(len(command) for command, _ in lines)
    return "try:\n" + "\n".join(f"  {command.ljust(width)}  {what}" for command, what in lines)


@click.command("down")
@_state_option
def down_command(state_dir: Path | None) -> None:
    """Stop every process of the local mesh that `meshext up` started.

    Images, applied resources and certificates stay in the state directory
    for the next `meshext up`."""
    from meshext.control.local.up import down

    state = _state(state_dir)
    if not down(state, lambda line: click.echo(line, err=True)):
        click.echo(f"no local mesh was running (state in {state.root})")
    else:
        click.echo("the local mesh is down")


@click.command("logs")
@click.argument("part", required=False)
@click.option("-n", "--tail", "lines", default=20, show_default=True,
              help="Lines of each part's log (without PART); with PART the whole log unless given.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what PART's log gets (Ctrl-C ends).")
@_state_option
def logs_command(part: str | None, lines: int, follow: bool, state_dir: Path | None) -> None:
    """Show the local mesh's logs: the end of each part's, or PART's whole log.

    \b
    Parts: registry, control-plane, ratings, reviews, productpage, their
    sidecars (ratings-sidecar, ...), prometheus, build-<extension>; once a
    resource needed them, redis, ratelimit, threescale and their sidecars.
    """
    from meshext.control.local.up import log_path, part_names

    state = _state(state_dir)
    if part is None:
        if follow:
            raise click.UsageError("--follow needs a PART")
        for name in part_names():
            path = log_path(state, name)
            text = path.read_text(errors="replace") if path.exists() else ""
            click.secho(f"==> {name} ({path})", bold=True)
            click.echo("\n".join(text.splitlines()[-lines:]) or "(empty)")
        return
    path = log_path(state, part)
    if not path.exists():
        raise MeshextError(f"{path} does not exist", where=part, fix="run `meshext up` first")
    text = path.read_text(errors="replace")
    given = click.get_current_context().get_parameter_source("lines") != click.core.ParameterSource.DEFAULT
    click.echo("\n".join(text.splitlines()[-lines:]) if given else text, nl=not given or not text.endswith("\n"))
    if follow:
        with path.open("rb") as log:
            log.seek(0, 2)
            while True:
                chunk = log.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)


def _file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-f", "--filename", "files", multiple=True, required=True,
                        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
                        help="YAML file of resources, several documents allowed ('-': standard input; "
                             "repeatable).")(command)


def _read(files: tuple[Path, ...]) -> list[Any]:
    from meshext.control.local.resources import read_documents

    documents = []
    for path in files:
        if str(path) == "-":
            documents += read_documents("<stdin>", sys.stdin.read())
            continue
        try:
            text = path.read_text()
        except OSError as error:
            raise MeshextError(f"cannot read: {error.strerror}", where=str(path), fix="check the path") from None
        documents += read_documents(str(path), text)
    return documents


@click.command("apply")
@_file_option
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait until each changed resource runs (Ready) or is refused (Error); exit 1 on Error.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds --wait waits.")
@_state_option
def apply_command(files: tuple[Path, ...], wait: bool, timeout: float, state_dir: Path | None) -> None:
    """Create or update the local mesh's resources from FILE (as `kubectl apply -f`).

    ServiceMeshExtension and WasmPlugin documents, validated before anything
    is written: a bad file changes nothing and the mesh keeps serving.  The
    control plane picks the change up at once; `meshext get` shows it.  A
    resource whose configuration names the local rate limit service's or 3scale
    backend's cluster starts that service first (it runs until `meshext down`).

    \b
    Examples:
      meshext apply -f deploy/local/ratelimit.yaml
      meshext apply -f deploy/local/3scale.yaml --wait
      meshext apply -f my-extension.yaml --wait
    """
    from rich.console import Console

    from meshext.control.local.resources import apply, wait_applied
    from meshext.control.local.up import LocalMesh, start_needed_services

    mesh = LocalMesh(_state(state_dir))
    documents = _read(files)
    mesh.ports()  # refuses when no mesh runs, before anything is written
    # The rate limit service or the 3scale backend a resource calls is started first (progress on stderr).
    start_needed_services(mesh, documents, Console(stderr=True))
    before = {d.key: (mesh.extension_status(d.key) or {}).get("observedGeneration") for d in documents} \
        if wait else {}
    lines, changed = apply(mesh.state.resources_dir, documents)
    for line in lines:
        click.echo(line)
    if wait:
        problems = wait_applied({d.key: (d, before[d.key]) for d in changed}, mesh.extension_status, timeout)
        for problem in problems:
            click.secho(f"error: {problem}", fg="red", err=True)
        if problems:
            sys.exit(1)


@click.command("delete")
@_file_option
@_state_option
def delete_command(files: tuple[Path, ...], state_dir: Path | None) -> None:
    """Remove the local mesh's resources named in FILE (as `kubectl delete -f`)."""
    from meshext.control.local.resources import delete
    from meshext.control.local.up import LocalMesh

    mesh = LocalMesh(_state(state_dir))
    documents = _read(files)
    mesh.ports()
    for line in delete(mesh.state.resources_dir, documents):
        click.echo(line)


@click.command("get")
@_state_option
def get_command(state_dir: Path | None) -> None:
    """List the local mesh's extensions as `kubectl get` does: name, phase, priority, image, ready.

    Resources that are not Ready are named below the table with the reason."""
    from rich.console import Console

    from meshext.control.local.resources import not_ready, table_rows
    from meshext.control.local.up import LocalMesh

    report = LocalMesh(_state(state_dir)).status()
    rows = table_rows(report)
    if not rows:
        click.echo("no resources (meshext apply -f FILE adds some)")
        return
    console = Console(width=min(Console().width, 100))
    console.print(resource_table(rows))
    for line in not_ready(report):
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)


def resource_table(rows: list[tuple[str, str, str, str, str]]) -> Any:
    """`meshext get`'s table (a rich Table) of ``rows``: name, phase, priority, image, ready.

    Phase, priority and ready stay whole (as wide as their longest value); the name and the image fold
    when the terminal is narrow, so that a long name or a digest-pinned image never squeezes another
    column out of an 80-column terminal."""
    from rich.table import Table, box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for index, column in enumerate(("NAME", "PHASE", "PRIORITY", "IMAGE", "READY")):
        whole = column in ("PHASE", "PRIORITY", "READY")
        table.add_column(column, overflow="fold", no_wrap=whole,
                         min_width=max(len(column), *(len(row[index]) for row in rows)) if whole else None)
    for row in rows:
        table.add_row(*row)
    return table
