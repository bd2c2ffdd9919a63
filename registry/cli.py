"""`meshext push`, `meshext pull` and `meshext inspect`.

The registry options are spelled as the oras CLI spells them (``--username``,
``--password-stdin``, ``--registry-config``, ``--plain-http``), except the
registry's CA: ``--registry-ca-file``, as in `meshext control serve`, because
across meshext's commands ``--ca-file`` is the mesh CA.
"""

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

from meshext.phases import DEFAULT_PHASE, DEFAULT_PRIORITY, MAISTRA_PHASES
from meshext.registry.credentials import Credentials
from meshext.registry.formats import FORMATS, MaistraManifest
from meshext.registry.reference import ImageReference


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Login and transport options shared by the three commands (see the module docstring for their spelling)."""
    options = [
        click.option("-u", "--username", help="Registry user name; read the password with --password-stdin."),
        click.option("--password-stdin", is_flag=True,
                     help="Read the password (or a registry token) from standard input."),
        click.option("--registry-config", type=click.Path(dir_okay=False),
                     help="Docker config.json holding credentials "
                          "[default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]."),
        click.option("--registry-ca-file", "ca_file", type=click.Path(exists=True, dir_okay=False),
                     help="PEM file of the CA that signed the registry's TLS certificate."),
        click.option("--plain-http", is_flag=True,
                     help="Talk HTTP instead of HTTPS. Allowed only to a registry on this machine "
                          "(127.0.0.1, ::1, localhost)."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(*args: Any, username: str | None, password_stdin: bool, registry_config: str | None,
                **kwargs: Any) -> Any:
        kwargs["credentials"] = _credentials(kwargs["reference"], username, password_stdin, registry_config)
        return command(*args, **kwargs)

    return wrapper


def _credentials(reference: str, username: str | None, password_stdin: bool,
                 registry_config: str | None) -> Credentials | None:
    if password_stdin and not username:
        raise click.UsageError("--password-stdin needs --username")
    if username:
        if not password_stdin:
            raise click.UsageError(
                "give the password on standard input with --password-stdin (never on the command line)")
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
              help="maistra: a manifest.yaml to use instead of the options below.")
@click.option("--name", help="maistra: extension name [default: the project's, else the file name without .wasm].")
@click.option("--description", help="maistra: one-line description [default: the project's, else empty].")
@click.option("--version", "module_version", help="maistra: extension version [default: the project's, "
                                                   "else the tag of REF].")
@click.option("--phase", type=click.Choice(MAISTRA_PHASES),
              help=f"maistra: where in the filter chain it runs [default: the project's, else {DEFAULT_PHASE}].")
@click.option("--priority", type=int,
              help=f"maistra: higher runs first within a phase [default: the project's, else {DEFAULT_PRIORITY}].")
@registry_options
def push_command(module: str, reference: str, image_format: str, manifest_file: str | None, name: str | None,
                 description: str | None, module_version: str | None, phase: str | None, priority: int | None,
                 **transport: Any) -> None:
    """Publish FILE.wasm to the registry as REF and print the manifest digest.

    \b
    With --format maistra, manifest.yaml's fields come from the options, else
    from the meshext.toml of the project `meshext build` made FILE.wasm from,
    else from the defaults shown.
    \b
    Examples:
      meshext push filter.wasm registry.example.com/filters/hello:1.0
      meshext push filter.wasm 127.0.0.1:5000/filters/hello:1.0 --plain-http
      meshext push filter.wasm quay.io/me/hello:1.0 --format maistra --priority 10
      echo "$TOKEN" | meshext push f.wasm quay.io/me/f:1 -u me --password-stdin
    """
    from meshext.registry import push

    fields = {"--name": name, "--description": description, "--version": module_version, "--phase": phase,
              "--priority": priority}
    given = [option for option, value in fields.items() if value is not None]
    maistra = None
    if image_format == "maistra":
        if manifest_file and given:
            raise click.UsageError(f"--manifest gives every manifest.yaml field; drop {', '.join(given)}")
        maistra = _maistra_manifest(Path(module), reference, manifest_file, name, description, module_version,
                                    phase, priority)
    elif manifest_file or given:
        raise click.UsageError(f"{', '.join(given or ['--manifest'])} apply to --format maistra only")
    digest = push(module, reference, format=image_format, maistra_manifest=maistra, progress=True, **transport)
    click.echo(digest)


def _maistra_manifest(module: Path, reference: str, manifest_file: str | None, name: str | None,
                      description: str | None, version: str | None, phase: str | None,
                      priority: int | None) -> MaistraManifest:
    """manifest.yaml: the file given, else each field from its option, else the module's project, else a default."""
    if manifest_file:
        # The module is stored under the name manifest.yaml gives it, whatever the local file is called.
        return MaistraManifest.parse(Path(manifest_file).read_bytes(), manifest_file)
    from meshext.sdk.builder.metadata import read_project_metadata

    try:
        project = read_project_metadata(module.read_bytes(), str(module))
    except OSError:
        project = None  # push itself reports the unreadable file
    name = name or (project.name if project else module.stem)
    return MaistraManifest(
        name=name,
        description=description if description is not None else (project.description if project else ""),
        version=version or (project.version if project else None) or ImageReference.parse(reference).tag or "latest",
        phase=phase or (project.phase if project else DEFAULT_PHASE),
        priority=priority if priority is not None else (project.priority if project else DEFAULT_PRIORITY),
        module=f"{name}.wasm",
    )


@click.command("pull")
@click.argument("reference", metavar="REF")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write the module.")
@click.option("--policy", type=click.Choice(["IfNotPresent", "Always"]), default="IfNotPresent", show_default=True,
              help="IfNotPresent: reuse the cached module when REF was pulled before. "
                   "Always: ask the registry again.")
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
    from meshext.registry import pull

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
    from meshext.registry import inspect

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
