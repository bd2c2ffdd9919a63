"""`meshext telemetry stats-config`."""

from __future__ import annotations

import json

import click


@click.group("telemetry")
def telemetry_group() -> None:
    """Istio-style telemetry: the Envoy settings it needs."""


@telemetry_group.command("stats-config")
@click.option("--label", "labels", multiple=True, metavar="NAME",
              help="Another label name your own meshext.sdk metrics use (repeatable).")
@click.option("--format", "output_format", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def stats_config_command(labels: tuple[str, ...], output_format: str) -> None:
    """Print the Envoy bootstrap stats_config that turns meshext metric labels into Prometheus labels.

    \b
    Add it at the top level of the bootstrap of an Envoy that meshext does not
    run (meshext's sidecars have it).  It covers the labels of meshext's own
    extensions (Istio's standard metrics; the rate limit's domain, rule and
    outcome) and each --label.
    """
    from meshext.extensions.telemetry.stats_config import stats_config

    snippet = {"stats_config": stats_config(labels)}
    if output_format == "json":
        click.echo(json.dumps(snippet, indent=2))
    else:
        import yaml  # on use: `meshext telemetry --help` loads nothing it does not need

        click.echo(yaml.safe_dump(snippet, sort_keys=False), nl=False)
