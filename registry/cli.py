"""`meshext push`, `meshext pull` and `meshext inspect`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meshext.errors import MeshextError
from meshext.phases import MAISTRA_PHASES
from meshext.registry.credentials import Credentials
from meshext.registry.formats import FORMATS, MaistraManifest
from meshext.registry.reference import ImageReference


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Login and transport options shared by the three commands (spelled as the oras CLI spells them)."""
    options = [
        click.option("-u", "--username", help="Registry user name; read the password with --password-stdin."),
        click.option("--password-stdin", is_flag=True, help="Read the password (or a registry token) from standard input."),
        click.option("--registry-config", type=click.Path(dir_okay=False),
                     help="Docker config.json holding credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]."),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                     help="PEM file of the CA that signed the registry's TLS certificate."),
        click.option("--plain-http", is_flag=True,
                     help="Talk HTTP instead of HTTPS. Allowed only to a registry on this machine (127.0.0.1, ::1, localhost)."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(*args: Any, username: str | None, password_stdin: bool, registry_config: str | None, **kwargs: Any) -> Any:
        kwargs["credentials"] = _credentials(kwargs["reference"], username, password_stdin, registry_config)
        return command(*args, **kwargs)

    return wrapper


def _credentials(reference: str, username: str | None, password_stdin: bool, registry_config: str | None) -> Credentials | None:
    if password_stdin and not username:
        raise click.UsageError("--password-stdin needs --username")
    if username:
        if not password_stdin:
            raise click.UsageError("give the password on standard input with --password-stdin (never on the command line)")
        password = sys.stdin.readline().rstrip("\r\n")
        return Credentials(username=username, password=password)
    if registry_config and not reference.startswith(("file://", "https://", "http://")):
        return Credentials.from_docker_config(registry_config, ImageReference.parse(reference).registry)
    return None


@click.command("push")
@click.argument("module", metavar="FILE.wasm", type=click.Path(exists=True, dir_okay=False))
@click.argument("reference", metavar="REF")
@click.option("--format", "image_format", type=click.Choice(FORMATS), default="wasm-oci", show_default=True,
              help="wasm-oci: Istio's Wasm OCI artifact. docker: an image with /plugin.wasm. "
                   "maistra: an image with manifest.yaml + the module (OpenShift Service Mesh 2.x).")
@click.option("--manifest", "manifest_file", type=click.Path(exists=True, dir_okay=False),
              help="maistra: a manifest.yaml to use instead of the flags below.")
@click.option("--name", help="maistra: extension name [default: the file name without .wasm].")
@click.option("--description", default="", help="maistra: one-line description.")
@click.option("--version", "module_version", help="maistra: extension version [default: the tag of REF].")
@click.option("--phase", type=click.Choice(MAISTRA_PHASES), help="maistra: where in the filter chain it runs.")
@click.option("--priority", type=int, default=0, show_default=True, help="maistra: higher runs first within a phase.")
@registry_options
def push_command(module: str, reference: str, image_format: str, manifest_file: str | None, name: str | None,
                 description: str, module_version: str | None, phase: str | None, priority: int, **transport: Any) -> None:
    """Publish FILE.wasm to the registry as REF and print the manifest digest.

    \b
    Examples:
      meshext push filter.wasm registry.example.com/filters/hello:1.0
      meshext push filter.wasm 127.0.0.1:5000/filters/hello:1.0 --plain-http
      meshext push filter.wasm quay.io/me/hello:1.0 --format maistra --phase PostAuthZ --priority 10
      echo "$TOKEN" | meshext push f.wasm quay.io/me/f:1 -u me --password-stdin
    """
    from meshext.registry.push import push

    maistra = None
    if image_format == "maistra":
        maistra = _maistra_manifest(Path(module), reference, manifest_file, name, description, module_version, phase, priority)
    elif manifest_file or phase:
        raise click.UsageError("--manifest and --phase apply to --format maistra only")
    digest = push(module, reference, format=image_format, maistra_manifest=maistra, progress=True, **transport)
    click.echo(digest)


def _maistra_manifest(module: Path, reference: str, manifest_file: str | None, name: str | None, description: str,
                      version: str | None, phase: str | None, priority: int) -> MaistraManifest:
    if manifest_file:
        # The module is stored under the name manifest.yaml gives it, whatever the local file is called.
        return MaistraManifest.parse(Path(manifest_file).read_bytes(), manifest_file)
    if phase is None:
        raise MeshextError("--format maistra needs --phase", where="--phase",
                           fix=f"choose where the filter runs: one of {', '.join(MAISTRA_PHASES)}")
    return MaistraManifest(name=name or module.stem, description=description,
                           version=version or ImageReference.parse(reference).tag or "latest",
                           phase=phase, priority=priority, module=f"{name or module.stem}.wasm")


@click.command("pull")
@click.argument("reference", metavar="REF")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write the module.")
@click.option("--policy", type=click.Choice(["IfNotPresent", "Always"]), default="IfNotPresent", show_default=True,
              help="IfNotPresent: reuse the cached module when REF was pulled before. Always: ask the registry again.")
@click.option("--sha256", "expected_sha256", help="Refuse the module unless its sha256 is this (hex).")
@registry_options
def pull_command(reference: str, output: str, policy: str, expected_sha256: str | None, **transport: Any) -> None:
    """Fetch the module REF names (verified, through the cache) into a file.

    \b
    REF is REGISTRY/REPOSITORY:TAG or ...@sha256:DIGEST (optionally oci://...),
    https://HOST/PATH.wasm or file:///PATH.wasm. Istio Wasm artifacts, images
    with /plugin.wasm and Maistra extension images are all understood.
    Prints the digest-pinned reference.
    \b
    Example:
      meshext pull 127.0.0.1:5000/filters/hello:1.0 --plain-http -o hello.wasm
    """
    from meshext.registry.pull import pull

    module = pull(reference, policy=policy, sha256=expected_sha256, progress=True, **transport)
    _copy_atomically(module.path, Path(output))
    click.echo(module.reference)
    click.echo(f"{module.format} module, sha256 {module.module_sha256} -> {output}", err=True)


def _copy_atomically(source: Path, target: Path) -> None:
    """A reader of ``target`` sees the old file or the whole new one, never a partial copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        shutil.copyfile(source, staging)
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)


@click.command("inspect")
@click.argument("reference", metavar="REF")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@registry_options
def inspect_command(reference: str, as_json: bool, **transport: Any) -> None:
    """Show an image's format, digests, module size and manifest fields.

    \b
    Example:
      meshext inspect 127.0.0.1:5000/filters/hello:1.0 --plain-http
    """
    from meshext.registry.pull import inspect

    info = inspect(reference, progress=not as_json, **transport)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(info), indent=2))
        return
    rows = [("reference", info.reference), ("format", info.format), ("digest", info.manifest_digest),
            ("media type", info.media_type), ("module size", f"{info.size} bytes"),
            ("module sha256", info.module_sha256), ("config media type", info.config_media_type)]
    if info.image_digest != info.manifest_digest:
        rows.append(("image digest", info.image_digest))
    rows += [(f"layer {index}", f"{layer.media_type} {layer.digest} ({layer.size} bytes)")
             for index, layer in enumerate(info.layers)]
    if info.maistra:
        rows += [(f"manifest.yaml {key}", str(value)) for key, value in dataclasses.asdict(info.maistra).items()]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:  # one unwrapped line per field: digests stay whole and copyable
        click.echo(f"{key:<{width}}  {value}")
