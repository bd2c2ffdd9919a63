"""Per-stream context objects as filter authors see them: every stream gets
an object that looks new (its own context_id, the root, no attributes left
from an earlier stream), whatever the shim does to make that cheap
(sdk/shim/shim.c reuses a finished object nothing can tell from a new one).
Runs the modules in meshext's Proxy-Wasm host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshext.sdk.builder import build_filter
from meshext.testing import Host

STATEFUL = '''
import json
import weakref
from meshext.sdk import Action, HttpContext, RootContext

ROOTS = []
KEPT = []
REFS = []


class Probe(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        facts = {
            "attributes": sorted(vars(self)),
            "has_marker": hasattr(self, "marker"),
            "root_is_root": self.root is ROOTS[0],
            "context_id": self.context_id,
            "is_kept_object": any(kept is self for kept in KEPT),
            "kept_state": [kept.note for kept in KEPT],
            "earlier_weakref_alive": [ref() is not None for ref in REFS],
        }
        if path == "/mark":
            self.marker = "from an earlier stream"
        elif path == "/keep":
            self.note = "kept"
            KEPT.append(self)
        elif path == "/weakref":
            REFS.append(weakref.ref(self))
        elif path == "/reroot":
            self.root = "not the root"
        elif path == "/unset":
            self.marker = "set then deleted"
            del self.marker
        self.request.headers.add("x-facts", json.dumps(facts))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Probe

    def on_configure(self, config):
        ROOTS.append(self)
        return True
'''

TCP = '''
import json
from meshext.sdk import Action, RootContext, StreamContext


class Probe(StreamContext):
    def on_downstream_data(self, data_size, end_of_stream):
        data = self.downstream_data.read()
        facts = {"attributes": sorted(vars(self)), "root": type(self.root).__name__, "context_id": self.context_id}
        if data == b"mark":
            self.marker = True
        self.downstream_data.replace(json.dumps(facts))
        return Action.CONTINUE


class Root(RootContext):
    stream_context = Probe
'''

FINALIZED = '''
from meshext.sdk import Action, HttpContext, RootContext

FINALIZED = []


class Probe(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-finalized", ",".join(map(str, FINALIZED)))
        self.request.headers.add("x-context-id", str(self.context_id))
        return Action.CONTINUE

    def __del__(self):
        FINALIZED.append(self.context_id)


class Root(RootContext):
    http_context = Probe
'''


def load(tmp_path: Path, source: str):
    folder = tmp_path / "filter"
    folder.mkdir()
    (folder / "meshext.toml").write_text('[filter]\nname = "contexts"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    return Host().load(build_filter(folder, tmp_path / "contexts.wasm").output)


@pytest.fixture(scope="module")
def stateful(tmp_path_factory: pytest.TempPathFactory):
    return load(tmp_path_factory.mktemp("stateful"), STATEFUL)


def facts(plugin, path: str) -> dict:
    return json.loads(plugin.exchange("GET", path).request.header("x-facts") or "null")


def test_each_stream_starts_with_a_fresh_looking_object(stateful) -> None:
    seen_ids = set()
    for path in ["/", "/mark", "/", "/reroot", "/", "/unset", "/"]:
        current = facts(stateful, path)
        assert current["attributes"] == []
        assert current["has_marker"] is False
        assert current["root_is_root"] is True
        assert current["context_id"] not in seen_ids
        seen_ids.add(current["context_id"])


def test_objects_the_filter_keeps_are_never_handed_to_another_stream(stateful) -> None:
    facts(stateful, "/keep")
    facts(stateful, "/weakref")
    for _ in range(3):
        current = facts(stateful, "/")
        assert current["is_kept_object"] is False
        assert current["kept_state"] == ["kept"]
        # A weak reference to a finished stream's object dies with that stream.
        assert current["earlier_weakref_alive"] == [False]


def test_a_context_class_with_del_is_finalized_after_each_stream(tmp_path: Path) -> None:
    plugin = load(tmp_path, FINALIZED)
    ids: list[str] = []
    for _ in range(3):
        stream = plugin.exchange("GET", "/")
        finalized = stream.request.header("x-finalized") or ""
        assert (finalized.split(",") if finalized else []) == ids
        ids.append(stream.request.header("x-context-id") or "")


def test_each_tcp_connection_starts_with_a_fresh_looking_object(tmp_path: Path) -> None:
    plugin = load(tmp_path, TCP)
    seen_ids = set()
    for data in [b"mark", b"plain", b"mark", b"plain"]:
        connection = plugin.tcp_stream()
        connection.send_downstream_data(data)
        current = json.loads(bytes(connection.to_upstream))
        connection.close()
        assert current["attributes"] == [] and current["root"] == "Root"
        assert current["context_id"] not in seen_ids
        seen_ids.add(current["context_id"])
