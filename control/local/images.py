"""The extension images `meshext up` builds and pushes to the local registry.

Two images: the example ``header-policy`` (a user's extension: its own module
and publisher, so its own VMs), and ``extensions``, the project's own
telemetry, rate limit and 3scale extensions as one module with a root each
(meshext.extensions.bundle).  The control plane runs telemetry from that very
module file and knows the repository it is published under (the mesh file's
``telemetry.publisher``), so the shipped rate limit and 3scale resources, which
name this image and their root (``deploy/local/``), share telemetry's VMs in
a sidecar: one CPython per thread for all three.

header-policy is built by `meshext build --cold-code` (a process), the bundle in-process
by the same function and cache as the control plane's (one build, whoever
starts it first; the other waits for it); both are cached by the content of
their projects and of the SDK, so a second `meshext up` builds nothing.  Each
module is pushed in the Maistra layout (phase and priority from its
``meshext.toml``) under two tags: ``<version>-<the module's sha256, 12 digits>``, which the
resource `meshext up` applies names (a changed filter gets a new tag, never a
stale cached module), and ``latest``, which the shipped example resources
(``deploy/local/``) name: WasmPlugin pulls ``latest`` again at each change
(Istio's default pull policy), so they follow whatever `meshext up` built last.
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
from meshext.extensions import bundle
from meshext.paths import cache_root, content_key
from meshext.registry.reference import ImageReference

# The checkout the examples and extensions come from (this file is control/local/images.py).
CHECKOUT = Path(__file__).resolve().parents[2]
BUILD_CACHE = "local-mesh"  # under the cache root: <content key>/<name>.wasm
BACKGROUND_NICENESS = 10  # `nice -n` of builds nothing waits on yet
# header-policy is built with it: productpage's sidecar compiles header-policy after telemetry, one after the
# other on Envoy's main thread, and was the tail of every warm `meshext up` by 3-4 s (12 CPU-s against the
# other sidecars' 6).  With it V8 compiles only what the example's tests and the standard workload ran
# (README "Cold code"); the rest runs interpreted, correct and slower.  The profile runs the example's tests
# once per content (its tests are not in the key: a stale profile changes what runs fast, not what runs).
# Not for the bundle: the control plane builds it before it serves, and profiling it runs 3scale's and
# rate limiting's 200 tests, which a cold `meshext up` would wait for.
COLD_CODE_OPTION = "--cold-code"


@dataclass(frozen=True)
class Extension:
    """An image the local mesh offers: its repository meshext/<name> and the filter projects of its module."""

    name: str  # image repository meshext/<name> in the local registry
    # One: a `meshext build` project; several: one module with a root per project (the bundle).
    projects: tuple[Path, ...]

    def version(self) -> str:
        """``[filter] version`` of a one-project module's meshext.toml; the bundle's is meshext's own."""
        if len(self.projects) > 1:
            return meshext.__version__
        manifest = self.projects[0] / "meshext.toml"
        try:
            return str(tomllib.loads(manifest.read_text())["filter"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
            raise MeshextError(f"cannot read the filter version: {error}", where=str(manifest),
                               fix="restore the example from git") from None

    def image(self, registry: str, tag: str) -> str:
        """``registry/meshext/<name>:<tag>``."""
        return f"{self.repository(registry)}:{tag}"

    def repository(self, registry: str) -> str:
        """``registry/meshext/<name>``: the publisher of its module, as the control plane names it."""
        return f"{registry}/meshext/{self.name}"


HEADER_POLICY = Extension("header-policy", (CHECKOUT / "examples" / "header-policy",))
"""The example extension `meshext up` applies itself (``up.APPLIED_EXTENSION``)."""

BUNDLE = Extension("extensions", bundle.PROJECTS)
"""The project's own extensions in one module; the rate limit and 3scale resources of ``deploy/local/``
(ratelimit.yaml, ratelimit-global.yaml, 3scale.yaml) name it, one `meshext apply -f` away."""

# What `meshext up` builds and pushes, in this order.
EXTENSIONS = (HEADER_POLICY, BUNDLE)


def build(extension: Extension, log: Path, *, background: bool = False) -> tuple[Path, bool]:
    """``extension``'s module, built unless cached: (module file, whether it was cached).

    The build writes to ``log``; a failure names it.  ``background``: a `meshext build` at a lower CPU
    priority (``nice``), for a build nothing waits on yet."""
    for project in extension.projects:
        if not project.is_dir():
            raise MeshextError(f"the filter project {project} is missing", where="meshext up",
                               fix="run meshext up from a meshext checkout (scripts/install.sh installs it editable)")
    if len(extension.projects) > 1:
        return _build_in_process(extension, log)
    # The option is part of the key: a module built without it must not be taken for one built with it.
    key = content_key([bundle.content_key(extension.projects).encode(), COLD_CODE_OPTION.encode()])
    module = cache_root() / BUILD_CACHE / key / f"{extension.name}.wasm"
    if module.is_file():
        return module, True
    module.parent.mkdir(parents=True, exist_ok=True)
    partial = module.with_suffix(".partial.wasm")
    command = [sys.executable, "-m", "meshext", "build", str(extension.projects[0]), "-o", str(partial),
               COLD_CODE_OPTION]
    _run(["nice", "-n", str(BACKGROUND_NICENESS), *command] if background else command, log,
         what=f"building {extension.name}")
    partial.replace(module)
    return module, False


def _build_in_process(extension: Extension, log: Path) -> tuple[Path, bool]:
    """A module of several projects, through meshext.extensions.bundle's cache: for the bundle, the very
    file the control plane runs telemetry from (the same bytes, so the same sha256 and VMs)."""
    cached = bundle.cached_module(extension.projects, bundle.CACHE_FOLDER)
    if cached is not None:
        return cached, True
    _log_line(log, f"--- building {extension.name} from " + " ".join(map(str, extension.projects)))
    try:
        module, _ = bundle.built_module(extension.projects, bundle.CACHE_FOLDER,
                                        progress=lambda message: _log_line(log, message))
    except MeshextError as error:
        _log_line(log, str(error))
        raise MeshextError(f"building {extension.name} failed: {error.message}", where=str(log),
                           fix=f"read the log (`meshext logs build-{extension.name}`)") from None
    return module, False


def push(extension: Extension, module: Path, registry: str, log: Path) -> str:
    """Push ``module`` under both tags (see the module docstring); returns the exact one.

    The exact tag names the content, so when the registry has it already (a second `meshext up`
    keeps the registry's storage) nothing is pushed; otherwise one `meshext push` (Maistra layout,
    plain HTTP to loopback) publishes it.  ``latest`` is then the same manifest put under a
    second tag, in this process: no second upload, no second `meshext push` process."""
    from meshext.registry.client import RegistryClient  # oras: loaded only when an image is pushed

    tag = f"{extension.version()}-{hashlib.sha256(module.read_bytes()).hexdigest()[:12]}"
    exact = extension.image(registry, tag)
    client = RegistryClient(ImageReference.parse(exact), credentials=None, plain_http=True, ca_file=None,
                            where=exact)
    try:
        media_type, manifest, _ = client.fetch_manifest(tag)
        _log_line(log, f"--- {exact} is in the registry already: not pushed again")
    except MeshextError:  # not there yet
        _run([sys.executable, "-m", "meshext", "push", str(module), exact, "--format", "maistra",
              "--name", extension.name, "--plain-http"], log, what=f"pushing {exact}")
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
