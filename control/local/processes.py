"""Detached processes with PID files: what `meshext up` leaves running and `meshext down` stops.

Each part runs in its own session (``start_new_session``), so it outlives the
`meshext up` that started it and a terminal's Ctrl-C does not reach it.  Its PID
file records the process's start time as well as its PID: a PID file left by a
killed run, whose PID the system has since given to some other process, is then
recognised as stale.  Stopping a part stops its whole session, which includes
the children it started (a sidecar's Envoy) even when the part itself was killed
and they were left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from meshext.errors import InternalError

STOP_TIMEOUT_SECONDS = 10.0


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 onwards), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()


def _exited(stat: list[str]) -> bool:
    """Whether every thread of the process has exited: a zombie with no thread left but its leader.

    A multi-threaded process's leader can be a zombie while its other threads are still exiting, and
    they hold the process's files until the last one is gone: its listening sockets too (a registry
    stopped by `meshext up` looked gone while its port was still taken)."""
    return stat[0] in ("Z", "X") and int(stat[17]) <= 1  # fields 3 (state) and 20 (num_threads)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None when it is gone or has exited."""
    stat = _stat_fields(pid)
    if stat is None or _exited(stat):
        return None
    return int(stat[19])  # field 22 of /proc/PID/stat


def cpu_seconds(pid: int) -> float:
    """CPU time the process and its waited-for children used (user + system), 0 when it is gone."""
    stat = _stat_fields(pid)
    if stat is None:
        return 0.0
    return sum(int(field) for field in stat[11:15]) / os.sysconf("SC_CLK_TCK")  # fields 14-17


def session_members(session: int, started_after: int) -> list[int]:
    """Live processes of ``session`` that started no earlier than its leader did."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat_fields(int(entry.name))
        if stat is not None and not _exited(stat) and int(stat[3]) == session \
                and int(stat[19]) >= started_after:
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class Part:
    """One detached process of the local mesh: its name, PID file and log."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        """``run/<name>.pid``: JSON with pid, start time and command."""
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """``logs/<name>.log``: the process's standard output and error."""
        return self.log_dir / f"{self.name}.log"

    def start(self, command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
        """Start ``command`` detached, appending to the log; returns its PID (the PID file is written)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=cwd, env=env, start_new_session=True)
        started = start_time(process.pid)
        if started is None:  # died at once (e.g. exec failed): record nothing, the caller reads the log
            process.wait()
            return process.pid
        partial = self.pid_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"pid": process.pid, "start_time": started, "command": command}) + "\n")
        partial.replace(self.pid_file)
        return process.pid

    def recorded(self) -> tuple[int, int] | None:
        """(pid, start time) from the PID file, or None when there is none (or it is unreadable)."""
        try:
            record = json.loads(self.pid_file.read_text())
            return int(record["pid"]), int(record["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pid(self) -> int | None:
        """The PID of the running part, None when it is not running (no PID file, or a stale one)."""
        record = self.recorded()
        if record is None or start_time(record[0]) != record[1]:
            return None
        return record[0]

    def processes(self) -> list[int]:
        """Every live process of the part's session: the part and what it started (e.g. Envoy)."""
        record = self.recorded()
        return [] if record is None else session_members(record[0], record[1])

    def cpu_seconds(self) -> float:
        """CPU time the part's live processes used so far (Envoy's included for a sidecar)."""
        return sum(cpu_seconds(pid) for pid in self.processes())

    def stop(self) -> list[int]:
        """SIGTERM the part's session, SIGKILL what is left after 10 s; remove the PID file.

        Returns the PIDs that were running."""
        pids = self.processes()
        left = _signal_and_wait(pids, signal.SIGTERM)
        still = _signal_and_wait(left, signal.SIGKILL)
        if still:
            raise InternalError(f"{self.name}: processes {still} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return pids

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the part's log ('' when there is none)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, sig)


def _signal_and_wait(pids: list[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to ``pids``; the ones still alive after STOP_TIMEOUT_SECONDS (none: at once)."""
    for pid in pids:
        _signal(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and any(start_time(pid) is not None for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if start_time(pid) is not None]
