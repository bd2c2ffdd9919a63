"""The local mesh's detached parts: a stopped part has let go of its ports.

`meshext up` stops what a killed run left behind and then checks that the
mesh's ports are free; a part counted as stopped while it still listens makes
that check refuse the mesh's own port.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

from control_harness import free_port, wait_until

from meshext.control.local.processes import Part

# The leader thread exits first (it is a zombie from then on) while another thread keeps the listening
# socket for a while, SIGTERM or not: what a multi-threaded server such as the registry goes through while
# it drains its connections and stops.
LEADER_EXITS_FIRST = textwrap.dedent("""
    import ctypes, signal, socket, sys, threading, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))

    def hold() -> None:
        time.sleep(1.5)
        listener.close()

    threading.Thread(target=hold).start()
    time.sleep(0.2)
    ctypes.CDLL(None).pthread_exit(None)
""")


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:PORT now (as `meshext up`'s probe asks)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_part_whose_leader_thread_exited_is_stopped_only_when_its_threads_are_gone(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(LEADER_EXITS_FIRST)
    part = Part("server", tmp_path / "run", tmp_path / "logs")
    pid = part.start([sys.executable, str(script), str(port)])
    wait_until(lambda: not port_is_free(port), 10, "the server listening")
    wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z", 10,
               "the server's leader thread a zombie")
    assert part.pid() == pid  # exiting, not gone: its other thread still runs

    assert part.stop() == [pid]

    assert part.processes() == []
    assert port_is_free(port), part.log_tail()
