"""The example extensions `meshext up` builds and pushes to the local registry.

Builds run `meshext build` (a process: the control plane never imports the SDK)
and are cached under the cache root by the content of the filter project and of
the SDK, so a second `meshext up` builds nothing (and runs no `meshext build`
process).  Each module is pushed in the Maistra layout (phase and priority from its ``meshext.toml``) under two tags:
``<version>-<content key>``, which the resource `meshext up` applies names (a
changed filter gets a new tag, never a stale cached module), and ``latest``, which
the shipped example resources (``deploy/local/``) name: WasmPlugin pulls
``latest`` again at each change (Istio's default pull policy), so they follow
whatever `meshext up` built last.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import meshext
from meshext.errors import MeshextError
from meshext.paths import cache_root
from meshext.registry.client import RegistryClient
from meshext.registry.reference import ImageReference

# The checkout the examples and extensions come from (this file is control/local/images.py).
CHECKOUT = Path(__file__).resolve().parents[2]
SDK_DIR = (Path(meshext.__file__).parent / "sdk").resolve()
BUILD_CACHE = "local-mesh"  # under the cache root: <content key>/<name>.wasm
SKIPPED_PARTS = {"build", "tests", "__pycache__"}
BACKGROUND_NICENESS = 10  # `nice -n` of builds nothing waits on yet


@dataclass(frozen=True)
class Extension:
    """An extension the local mesh offers: its image name and filter project."""

    name: str  # image repository meshext/<name> in the local registry
    project: Path  # the `meshext build` project directory

    def version(self) -> str:
        """``[filter] version`` of the project's meshext.toml."""
        try:
            return str(tomllib.loads((self.project / "meshext.toml").read_text())["filter"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
            raise MeshextError(f"cannot read the filter version: {error}", where=str(self.project / "meshext.toml"),
                               fix="restore the example from git") from None

    def content_key(self) -> str:
        """sha256 of the project's and the SDK's files, and meshext's version: what a build depends on."""
        digest = hashlib.sha256(meshext.__version__.encode())
        for root in (self.project, SDK_DIR):
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = path.relative_to(root)
                if SKIPPED_PARTS.isdisjoint(relative.parts) and path.suffix not in (".pyc", ".wasm"):
                    digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def image(self, registry: str, tag: str) -> str:
        """``registry/meshext/<name>:<tag>``."""
        return f"{registry}/meshext/{self.name}:{tag}"


# What `meshext up` builds and pushes, in this order.  The first one is applied by `meshext up`
# itself (``up.APPLIED_EXTENSION``); the others are one `meshext apply -f deploy/local/<file>.yaml`
# away (ratelimit.yaml, ratelimit-global.yaml, 3scale.yaml).  The telemetry extension is not here:
# the control plane builds it and places it in every sidecar itself.
EXTENSIONS = (
    Extension("header-policy", CHECKOUT / "examples" / "header-policy"),
    Extension("ratelimit", CHECKOUT / "extensions" / "ratelimit" / "filter"),
    Extension("3scale", CHECKOUT / "extensions" / "3scale" / "filter"),
)


def build(extension: Extension, log: Path, *, background: bool = False) -> tuple[Path, bool]:
    """``extension``'s module, built with `meshext build` unless cached: (module file, whether it was cached).

    `meshext build` writes to ``log``; a failure names it.  ``background``: at a lower CPU priority
    (``nice``), for a build nothing waits on yet."""
    if not extension.project.is_dir():
        raise MeshextError(f"the filter project {extension.project} is missing", where="meshext up",
                           fix="run meshext up from a meshext checkout (scripts/install.sh installs it editable)")
    key = extension.content_key()
    module = cache_root() / BUILD_CACHE / key / f"{extension.name}.wasm"
    if module.is_file():
        return module, True
    module.parent.mkdir(parents=True, exist_ok=True)
    partial = module.with_suffix(".partial.wasm")
    command = [sys.executable, "-m", "meshext", "build", str(extension.project), "-o", str(partial)]
    _run(["nice", "-n", str(BACKGROUND_NICENESS), *command] if background else command, log,
         what=f"building {extension.name}")
    partial.replace(module)
    return module, False


def push(extension: Extension, module: Path, registry: str, log: Path) -> str:
    """Push ``module`` under both tags (see the module docstring); returns the exact one.

    The exact tag names the content, so when the registry has it already (a second `meshext up`
    keeps the registry's storage) nothing is pushed; otherwise one `meshext push` (Maistra layout,
    plain HTTP to loopback) publishes it.  ``latest`` is then the same manifest put under a
    second tag, in this process: no second upload, no second `meshext push` process."""
    tag = f"{extension.version()}-{module.parent.name[:12]}"
    exact = extension.image(registry, tag)
    client = RegistryClient(ImageReference.parse(exact), credentials=None, plain_http=True, ca_file=None,
                            where=exact)
    try:
        media_type, manifest, _ = client.fetch_manifest(tag)
        _log_line(log, f"--- {exact} is in the registry already: not pushed again")
    except MeshextError:  # not there yet
        _run([sys.executable, "-m", "meshext", "push", str(module), exact, "--format", "maistra",
              "--plain-http"], log, what=f"pushing {exact}")
        media_type, manifest, _ = client.fetch_manifest(tag)
    client.put_manifest(manifest, media_type, "latest")
    _log_line(log, f"--- {extension.image(registry, 'latest')} = {exact}")
    return exact


def _log_line(log: Path, line: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as output:
        output.write(line + "\n")


def _run(command: list[str], log: Path, *, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        output.write(f"--- {' '.join(command)}\n".encode())
        output.flush()
        finished = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise MeshextError(f"{what} failed (exit {finished.returncode}):\n{tail}", where=str(log),
                           fix=f"read the log (`meshext logs {log.stem}`)")
