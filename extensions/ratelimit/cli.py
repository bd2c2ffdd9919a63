"""The ``meshext ratelimit`` commands: the rate limit service and the Mixer converter."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import TextIO

import click

from meshext.errors import MeshextError


@click.group("ratelimit")
def ratelimit_group() -> None:
    """Rate limiting: the RLS v3 service on Redis and the Mixer quota converter."""


@ratelimit_group.command("serve")
@click.option("--config", "configs", type=click.Path(exists=True, path_type=Path), multiple=True, required=True,
              help="envoyproxy/ratelimit YAML file, or a directory of them (repeatable)")
@click.option("--address", default="127.0.0.1:8081", show_default=True, help="gRPC HOST:PORT (port 0: any)")
@click.option("--redis", "redis_address", default="127.0.0.1:6379", show_default=True, help="Redis HOST:PORT")
@click.option("--redis-timeout", default=10.0, show_default=True, help="seconds to wait for Redis")
@click.option("--key-prefix", default="", help="prefix of every Redis key (CACHE_KEY_PREFIX)")
@click.option("--expiration-jitter", default=300, show_default=True,
              help="up to this many seconds added to each key's expiry (EXPIRATION_JITTER_MAX_SECONDS)")
@click.option("--metrics-address", default=None, metavar="HOST:PORT",
              help="serve the service's statistics as Prometheus text on http://HOST:PORT/metrics (default: off)")
def serve_command(configs: tuple[Path, ...], address: str, redis_address: str, redis_timeout: float,
                  key_prefix: str, expiration_jitter: int, metrics_address: str | None) -> None:
    """Serve Envoy's rate limit protocol (RLS v3) with limits from YAML, counted in Redis."""
    from meshext.extensions.ratelimit.service import RateLimitServer, RedisSettings
    from meshext.extensions.ratelimit.service_config import load_service_config

    host, _, port = redis_address.rpartition(":")
    if not host or not port.isdigit():
        raise MeshextError(f"{redis_address!r} is not HOST:PORT", where="--redis", fix="e.g. 127.0.0.1:6379")
    config = load_service_config(configs)
    settings = RedisSettings(host=host, port=int(port), timeout_seconds=redis_timeout, key_prefix=key_prefix,
                             expiration_jitter_seconds=expiration_jitter)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RateLimitServer(config, settings, address, metrics_address=metrics_address) as server:
        click.echo(f"rate limit service on {server.host}:{server.port} (domains: "
                   f"{', '.join(sorted(config.domains)) or 'none'}; redis {redis_address})", err=True)
        if server.metrics_url is not None:
            click.echo(f"statistics on {server.metrics_url}", err=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the service like SIGTERM
            stop.wait()


@ratelimit_group.command("convert")
@click.argument("file", type=click.File("r"))
@click.option("--image", default="oci://registry.example/meshext/ratelimit:0.1.0", show_default=True,
              help="the ratelimit filter image the ServiceMeshExtensions name")
def convert_command(file: TextIO, image: str) -> None:
    """Convert Mixer quota resources (memquota/redisquota) in FILE to ratelimit ServiceMeshExtensions."""
    from meshext.extensions.ratelimit.mixer import convert

    conversion = convert(file.read(), image=image, where=file.name)
    click.echo(conversion.yaml(), nl=False)
    for note in conversion.not_carried:
        click.echo(f"not carried over: {note}", err=True)
