"""What `meshext build --cold-code` keeps compiled: what the filter's tests and a standard workload run.

The profile is taken on the module the build just wrote, before its cold
code moves (``meshext.function_profile``: an instrumented copy records which
functions ran), in two child processes per project, so that the build's
own process neither loads the test host nor compiles the module:

- the **standard workload** (:func:`standard_workload`, run as this
  module's ``__main__``): what Envoy does to a plugin when it starts, GETs
  and POSTs with a JSON body through every stream callback, a TCP
  connection, and the plugin's shutdown, with an empty configuration;
- the project's **own tests**, when it has a ``tests`` folder, as
  ``meshext test --module`` runs them (with ``$MESHEXT_TEST_ROOT_ID`` naming
  its root in a module of several projects).

A function that neither ran stays correct, only slower: the interpreter runs
it.  A project whose tests fail is refused, since its profile would be of
a filter that does not work.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from meshext.errors import MeshextError
from meshext.function_profile import PROFILE_ENV, ROOT_ID_ENV, executed
from meshext.sdk.builder.project import PROJECT_FILE, Project

# Enough requests for what only a long run does: CPython's cyclic garbage
# collector (after 700 net allocations), dict and free-list growth.
_STANDARD_ROUNDS = 500
_STANDARD_HEADERS = {":authority": "profile.example", "user-agent": "curl/8.5.0", "accept": "*/*",
                     "x-request-id": "2b7e151628aed2a6abf7158809cf4f3c", "x-forwarded-proto": "http"}


def hot_functions(module: Path, projects: list[Project]) -> set[int]:
    """The indices of the functions of ``module`` the profile saw run."""
    several = len(projects) > 1
    with tempfile.TemporaryDirectory(prefix="meshext-profile-") as folder:
        for project in projects:
            environment = os.environ | {PROFILE_ENV: folder, ROOT_ID_ENV: project.filter.name if several else ""}
            _run([sys.executable, "-m", "meshext.sdk.builder.profile", str(module), environment[ROOT_ID_ENV]],
                 environment, project, "the standard workload")
            if (project.root / "tests").is_dir():
                _run([sys.executable, "-m", "meshext", "test", str(project.root), "--module", str(module),
                      "-q", "-p", "no:cacheprovider"], environment, project, "its tests")
        return executed(Path(folder), module.read_bytes())


def _run(command: list[str], environment: dict[str, str], project: Project, what: str) -> None:
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise MeshextError(
            f"profiling {project.filter.name} for --cold-code: {what} failed:\n" + "\n".join(output[-20:]),
            where=str(project.root / PROJECT_FILE),
            fix=f"run `meshext test {project.root}` and fix what fails, or build without --cold-code")


def standard_workload(module: Path, root_id: str) -> None:
    """Drive ``module`` as Envoy does a typical plugin, in the test host.

    Coverage, not correctness, is the point: a filter that refuses the empty
    configuration, stops a stream (a local reply, a callout it waits for)
    or has no TCP context ends that part of the workload, and its tests
    profile the rest.
    """
    from meshext.testing import Host

    try:
        plugin = Host().load(module, root_id=root_id)
    except MeshextError:
        return
    requests = [("GET", b""), ("POST", b'{"user": {"id": 7, "tags": ["a", "b"]}, "ok": true}')] * _STANDARD_ROUNDS
    for method, body in requests:
        headers = {":method": method, ":path": "/profile/items?page=2", ":scheme": "http", **_STANDARD_HEADERS}
        if body:
            headers |= {"content-type": "application/json", "content-length": str(len(body))}
        with contextlib.suppress(MeshextError):
            stream = plugin.http_stream()
            stream.send_request_headers(headers, end_stream=not body)
            if body:
                stream.send_request_body(body, end_stream=True)
            stream.send_response_headers({":status": "200", "content-type": "application/json", "server": "envoy"})
            stream.send_response_body(b'{"items": []}', end_stream=True)
            stream.end()
    with contextlib.suppress(MeshextError):
        connection = plugin.tcp_stream()
        connection.send_downstream_data(b"ping\r\n")
        connection.send_upstream_data(b"pong\r\n")
        connection.close()
    with contextlib.suppress(MeshextError):
        plugin.shutdown()


if __name__ == "__main__":
    standard_workload(Path(sys.argv[1]), sys.argv[2])
