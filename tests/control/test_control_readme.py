"""The README's `meshext up` commands, run as written, from a fresh copy of the checkout.

The commands are read from the README (the indented blocks after its
``test_control_readme.py runs`` marks), not copied here, so a command that
drifts from the code fails this test.  Each line runs in bash, in the copy, and
the environment it leaves (``source .venv/bin/activate``) carries over to the
next line, as in a terminal.  What differs from a user's machine, and only that:

- the install is done already (this test runs in an installed checkout): the
  copy's ``scripts/install.sh`` does nothing, and its ``.venv/bin`` holds a
  ``meshext`` that runs this interpreter on the copy's ``src/``;
- the ports: every default loopback port in a line (``Ports()``) becomes a free
  one, and the line that starts the mesh gets the options that move them; the
  copy's ``deploy/local/`` files name that registry.  The state directory is
  ``$MESHEXT_STATE_DIR``, a temporary one.

Checked on the way: the extension's effect on traffic through the three
services, the changed code in the `curl` after a live re-apply during a
bounded load with no failed request, `meshext graph`'s three edges, and
`meshext down` leaving no process (by PID).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from control_harness import Load, Response, wait_until
from local_mesh_checks import all_pids, assert_demo_edges, free_mesh_ports, prometheus_edges

from meshext.control.local.layout import STATE_ENV, Ports, StateDir
from meshext.control.local.processes import start_time
from meshext.control.local.up import LocalMesh, get_productpage

CHECKOUT = Path(__file__).resolve().parents[2]
MARK = "<!-- tests/control/test_control_readme.py runs the commands of the blocks after these marks, as written -->"


def readme_commands(readme: str) -> list[str]:
    """The lines of the indented block after each mark, in order."""
    commands: list[str] = []
    for block in readme.split(MARK)[1:]:
        for line in block.splitlines()[1:]:  # [0]: the rest of the mark's line
            if not line.startswith("    "):
                break
            commands.append(line.strip())
    return commands


def with_ports(command: str, ports: Ports) -> str:
    """``command`` on the test's ports: each default loopback port replaced, the mesh's start moved."""
    for field in fields(Ports):
        command = command.replace(f"127.0.0.1:{field.default}", f"127.0.0.1:{getattr(ports, field.name)}")
    return re.sub(r"^(bash scripts/demo\.sh|meshext up)\b", lambda start: f"{start[0]} {ports.as_options()}", command)


def fresh_copy(target: Path) -> None:
    """The files git tracks, as they are in the working tree (links kept as links), in ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=CHECKOUT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, copy = CHECKOUT / name, target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        elif source.is_file():
            copy.write_bytes(source.read_bytes())
            copy.chmod(source.stat().st_mode)


def installed(copy: Path, ports: Ports) -> None:
    """What `scripts/install.sh` would leave, in the copy (see the module docstring)."""
    (copy / "scripts" / "install.sh").write_text("# installed already: the test runs in an installed checkout\n")
    venv_bin = copy / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "meshext").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m meshext \"$@\"\n")
    (venv_bin / "meshext").chmod(0o755)
    (venv_bin / "activate").write_text(f"export VIRTUAL_ENV={shlex.quote(str(venv_bin.parent))}\n"
                                       f"export PATH={shlex.quote(str(venv_bin))}:\"$PATH\"\n")
    for resource in (copy / "deploy" / "local").glob("*.yaml"):
        resource.write_text(resource.read_text().replace("127.0.0.1:15050", f"127.0.0.1:{ports.registry}"))


class Terminal:
    """Lines run one after the other in bash in ``cwd``, each in the environment the last one left."""

    def __init__(self, cwd: Path, environment: dict[str, str]) -> None:
        self.cwd = cwd
        self.environment = environment
        self._saved = cwd.parent / "environment"

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        """Run ``line``; its exit status and output, the environment it leaves kept."""
        script = f"{line}\nstatus=$?\nenv -0 > {shlex.quote(str(self._saved))}\nexit $status\n"
        done = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.environment, capture_output=True,
                              text=True, timeout=900)
        self.environment = dict(entry.split("=", 1) for entry in self._saved.read_text().split("\0") if "=" in entry)
        return done


def test_the_readme_commands_run_as_written(tmp_path):
    commands = readme_commands(CHECKOUT.joinpath("README.md").read_text())
    assert commands[0] == "bash scripts/demo.sh" and commands[-1] == "meshext down", commands
    copy, state = tmp_path / "meshext", tmp_path / "state"
    fresh_copy(copy)
    ports = free_mesh_ports()
    installed(copy, ports)
    environment = {**os.environ, STATE_ENV: str(state), "PYTHONPATH": str(copy / "src"), "COLUMNS": "120"}
    terminal = Terminal(copy, environment)
    mesh = LocalMesh(StateDir(state))
    outputs: list[tuple[str, str]] = []  # (README line, what it printed)
    pids: set[int] = set()

    def send() -> Response:
        status, headers, body = get_productpage(ports)
        return Response(status, list(headers.items()), body)

    try:
        for command in commands:
            line = with_ports(command, ports)
            if command.startswith("meshext apply -f deploy/local/header-policy.yaml"):
                # The re-apply, live: a bounded load runs across it and no request fails.
                with Load(send, count=400, seconds=120, pause=0.02) as load:
                    wait_until(lambda: load.sent >= 20, 60, "load running")
                    done = terminal.run(line)
                    wait_until(lambda sent=load.sent: load.sent >= sent + 20, 60, "load after the re-apply")
                assert load.failures == []
            else:
                if command.startswith("meshext graph"):
                    # A rate needs two scrapes of traffic: the three edges in Prometheus first.
                    wait_until(lambda: prometheus_edges(f"http://127.0.0.1:{ports.prometheus}") >= {
                        ("unknown", "productpage-v1"), ("productpage-v1", "reviews-v1"),
                        ("reviews-v1", "ratings-v1")}, 90, "the three edges in Prometheus")
                if command == "meshext down":
                    pids = all_pids(mesh)
                done = terminal.run(line)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            outputs.append((command, done.stdout))
    finally:
        mesh.stop(lambda _: None)  # whatever a failed line left

    def printed(start: str) -> list[str]:
        return [stdout for command, stdout in outputs if command.startswith(start)]

    (productpage,) = printed("curl -i http://127.0.0.1:9080/productpage")
    head, _, body = productpage.partition("\n\n")  # text mode: curl's CRLFs read as newlines
    assert head.startswith("HTTP/1.1 200") and "x-meshext-policy: v1" in head.lower(), productpage
    assert [review["stars"] for review in json.loads(body)["reviews"]] == [5, 4]  # ratings, over gRPC
    before, after = printed("curl -s http://127.0.0.1:9080/admin")
    assert json.loads(before)["error"] == "forbidden"
    assert json.loads(after)["error"] == "denied"  # the rebuilt module, live
    (listing,) = printed("meshext get")
    lines = listing.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PRIORITY", "IMAGE", "READY"]
    (row,) = [line for line in lines if line.startswith("sme/header-policy")]
    assert row.split()[-1] == "True" and "header-policy:2" in row, listing
    (graph,) = printed("meshext graph")
    assert_demo_edges(graph)
    (stopped,) = printed("meshext down")
    assert "the local mesh is down" in stopped
    assert pids and [pid for pid in pids if start_time(pid) is not None] == []
