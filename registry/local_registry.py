"""Run Debian's ``docker-registry`` (CNCF distribution) on loopback: a real OCI
registry for tests, benchmarks and local demos.  Never binds beyond 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import yaml

from meshext.errors import InternalError, MeshextError

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT_SECONDS = 10


class LocalRegistry:
    """A registry process with its storage and config under ``workdir``.

    ``auth`` is distribution's ``auth:`` section, e.g. ``{"htpasswd": {"realm": ...,
    "path": ...}}`` for HTTP basic auth or ``{"token": {...}}`` for bearer tokens;
    ``tls`` = (certificate, key) PEM paths turns on HTTPS."""

    def __init__(self, workdir: Path, *, auth: dict | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.workdir = Path(workdir)
        self.storage = self.workdir / "storage"
        self.auth = auth
        self.tls = tls
        self.port = 0
        self._process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """host:port, as written in image references."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalRegistry:
        """Run docker-registry on a free loopback port; retries twice if the port was taken meanwhile."""
        binary = registry_binary()
        self.storage.mkdir(parents=True, exist_ok=True)
        # The free port is found by binding port 0; another process could take it
        # before the registry binds, so a failed start retries on a new port.
        for _attempt in range(3):
            self.port = _free_loopback_port()
            config = self.workdir / "config.yml"
            config.write_text(yaml.safe_dump(self._config()))
            with open(self.workdir / "registry.log", "ab") as log:  # the child keeps its own descriptor
                self._process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                                                 stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
        raise MeshextError(f"docker-registry did not start; see {self.workdir / 'registry.log'}",
                           where=REGISTRY_BINARY, fix="read the log")

    def stop(self) -> None:
        """Stop the registry process (killed if it does not end within 5 s)."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _config(self) -> dict:
        return registry_config(self.port, self.storage, auth=self.auth, tls=self.tls)

    def _wait_ready(self) -> bool:
        process = self._process
        if process is None:
            raise InternalError("waiting for a registry that was never started")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False


def registry_config(port: int, storage: Path, *, auth: dict | None = None,
                    tls: tuple[Path, Path] | None = None) -> dict:
    """docker-registry's configuration: 127.0.0.1:``port``, blobs under ``storage``, deletes allowed.

    ``auth`` and ``tls`` as for :class:`LocalRegistry`.  `meshext up` runs a detached
    registry from the same configuration."""
    http: dict = {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}}
    if tls:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": http,
    }
    if auth:
        config["auth"] = auth
    return config


def registry_binary() -> str:
    """The docker-registry executable; a MeshextError with the install command when it is missing."""
    binary = shutil.which(REGISTRY_BINARY) or shutil.which("docker-registry")
    if binary is None:
        raise MeshextError("docker-registry is not installed", where=REGISTRY_BINARY,
                           fix="run scripts/install.sh --test (apt-get install docker-registry)")
    return binary


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
