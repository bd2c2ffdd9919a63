"""The standard workload `meshext build --cold-code` profiles a module with, as a program.

    python -m meshext.runtime.standard_workload MODULE ROOT_ID

``sdk/builder/profile.py`` runs it in a child process with
``$MESHEXT_PROFILE_DIR`` set, so the instrumented module records what ran
(``meshext.function_profile``); the builder itself never imports the test
host.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from meshext.errors import MeshextError

# Enough requests for what only a long run does: CPython's cyclic garbage
# collector (after 700 net allocations), dict and free-list growth.
_STANDARD_ROUNDS = 500
_STANDARD_HEADERS = {":authority": "profile.example", "user-agent": "curl/8.5.0", "accept": "*/*",
                     "x-request-id": "2b7e151628aed2a6abf7158809cf4f3c", "x-forwarded-proto": "http"}


def standard_workload(module: Path, root_id: str) -> None:
    """Drive ``module`` as Envoy does a typical plugin, in the test host.

    Coverage, not correctness, is the point: a filter that refuses the empty
    configuration, stops a stream (a local reply, a callout it waits for)
    or has no TCP context ends that part of the workload, and its tests
    profile the rest.
    """
    from meshext.runtime._host import Host  # wasmtime: on use

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
