"""What `meshext build --cold-code` keeps compiled: what the filter's tests and a standard workload run.

The profile is taken on the module the build just wrote, before its cold
code moves (``meshext.function_profile``: an instrumented copy records which
functions ran), in two child processes per project, so that the build's
own process neither loads the test host nor compiles the module:

- the **standard workload** (``meshext.runtime.standard_workload``, run as
  a program, so that the builder imports nothing of the test host): what
  Envoy does to a plugin when it starts, GETs and POSTs with a JSON body
  through every stream callback, a TCP connection, and the plugin's
  shutdown, with an empty configuration;
- the project's **own tests**, when it has a ``tests`` folder, as
  ``meshext test --module`` runs them (with ``$MESHEXT_TEST_ROOT_ID`` naming
  its root in a module of several projects).

A function that neither ran stays correct, only slower: the interpreter runs
it.  A project whose tests fail is refused, since its profile would be of
a filter that does not work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from meshext.errors import MeshextError
from meshext.function_profile import PROFILE_ENV, ROOT_ID_ENV, executed
from meshext.sdk.builder.project import PROJECT_FILE, Project


def hot_functions(module: Path, projects: list[Project]) -> set[int]:
    """The indices of the functions of ``module`` the profile saw run."""
    several = len(projects) > 1
    with tempfile.TemporaryDirectory(prefix="meshext-profile-") as folder:
        for project in projects:
            environment = os.environ | {PROFILE_ENV: folder, ROOT_ID_ENV: project.filter.name if several else ""}
            _run([sys.executable, "-m", "meshext.runtime.standard_workload", str(module), environment[ROOT_ID_ENV]],
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
