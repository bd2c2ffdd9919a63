"""``meshext 3scale-backend``: run the 3scale backend simulator."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import click


@click.group("3scale-backend")
def backend_group() -> None:
    """Run a 3scale backend simulator (Service Management API) for tests and local use."""


@backend_group.command("serve")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True,
              help="YAML file: services, their metrics, plans with limits, applications, mapping rules.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=3001, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve_command(config_file: Path, host: str, port: int, verbose: bool) -> None:
    """Serve authorize, authrep and report (and System's proxy config) from CONFIG until interrupted.

    The file lists services (id, token), their metrics, plans with limits per period and applications
    (a user_key, or an id with keys); its format, with an example: extensions/3scale/README.md, "The
    simulator".  Then, e.g. with the local mesh's example account:

    \b
      meshext 3scale-backend serve --config deploy/local/services/3scale-backend.yaml
      curl -gi 'http://127.0.0.1:3001/transactions/authrep.xml?service_id=2555417834780&service_token=local-service-token&user_key=demo-user-key&usage[hits]=1'
      curl http://127.0.0.1:3001/_simulator/usage

    Point the filter's backend.upstream (an Envoy cluster) at it.
    """
    from meshext.extensions.threescale.backend import Backend, BackendServer, load_config  # pydantic, on use

    backend = Backend(load_config(config_file))
    server = BackendServer(backend, host, port, verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        click.echo(f"3scale backend simulator listening on http://{host}:{server.port}", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
