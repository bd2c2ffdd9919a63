"""What `meshext build --cold-code` keeps compiled: what a standard workload runs, and what the tests serve with.

The profile is taken on the module the build just wrote, before its cold
code moves (``meshext.function_profile``: an instrumented copy records which
functions ran, in which phase, VM by VM), in two child processes per
project, so that the build's own process neither loads the test host nor
compiles the module:

- the **standard workload** (``meshext.runtime.standard_workload``, run as
  a program, so that the builder imports nothing of the test host): what
  Envoy does to a plugin when it starts, GETs and POSTs with a JSON body
  through every stream callback, a TCP connection, and the plugin's
  shutdown, with an empty configuration.  All it ran stays compiled;
- the project's **own tests**, when it has a ``tests`` folder, as
  ``meshext test --module`` runs them (with ``$MESHEXT_TEST_ROOT_ID`` naming
  its root in a module of several projects).  Of those, what ran while a VM
  served (``function_profile.SERVING``) in at least :data:`SERVED_SHARE` of
  the project's test VMs stays compiled (:func:`choose_hot`).

Why not all the tests ran: a suite starts a VM per test, with many
configurations and bad ones, and tests each edge case once.  Compiled code
costs every Envoy start about 2 µs per byte on two cores (V8 compiles it
all before the first request), while a cold function costs only when it
runs.  On the four extensions' module (2026-12-03, README "What the tests
run, compiled"), all the tests ran made 0.53 MB of hot code; what they ran
serving in one VM in ten or more, 0.41 MB, with the same added latency per
request.

A function that neither ran stays correct, only slower: the interpreter runs
it.  A project whose tests fail is refused, since its profile would be of
a filter that does not work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from meshext.errors import MeshextError
from meshext.function_profile import PROFILE_ENV, ROOT_ID_ENV, SERVING, executed
from meshext.sdk.builder.project import PROJECT_FILE, Project

SERVED_SHARE = 0.1
"""A function of a project's tests stays compiled when it ran while serving in at
least this share of the project's test VMs (one VM per test)."""


def hot_functions(module: Path, projects: list[Project]) -> set[int]:
    """The indices of the functions of ``module`` to keep compiled (:func:`choose_hot`)."""
    several = len(projects) > 1
    with tempfile.TemporaryDirectory(prefix="meshext-profile-") as folder:
        workload = Path(folder) / "workload"
        tests = [Path(folder) / f"tests-{number}" for number in range(len(projects))]
        for project, project_tests in zip(projects, tests, strict=True):
            root_id = project.filter.name if several else ""
            _run([sys.executable, "-m", "meshext.runtime.standard_workload", str(module), root_id],
                 os.environ | {PROFILE_ENV: str(workload), ROOT_ID_ENV: root_id}, project, "the standard workload")
            if (project.root / "tests").is_dir():
                _run([sys.executable, "-m", "meshext", "test", str(project.root), "--module", str(module),
                      "-q", "-p", "no:cacheprovider"],
                     os.environ | {PROFILE_ENV: str(project_tests), ROOT_ID_ENV: root_id}, project, "its tests")
        code = module.read_bytes()
        return choose_hot(executed(workload, code), [executed(project_tests, code) for project_tests in tests])


def choose_hot(workload: list[dict[int, int]], tests: list[list[dict[int, int]]]) -> set[int]:
    """What stays compiled, from the profiles of the standard workload's VMs and of each
    project's test VMs (function index -> phases, one dict per VM): all the workload ran,
    and each function that ran while serving (``function_profile.SERVING``) in at least
    :data:`SERVED_SHARE` of one project's test VMs."""
    hot = {index for ran in workload for index in ran}
    for project_tests in tests:
        served = Counter(index for ran in project_tests for index, phases in ran.items() if phases & SERVING)
        hot |= {index for index, vms in served.items() if vms >= SERVED_SHARE * len(project_tests)}
    return hot


def _run(command: list[str], environment: dict[str, str], project: Project, what: str) -> None:
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise MeshextError(
            f"profiling {project.filter.name} for --cold-code: {what} failed:\n" + "\n".join(output[-20:]),
            where=str(project.root / PROJECT_FILE),
            fix=f"run `meshext test {project.root}` and fix what fails, or build without --cold-code")
