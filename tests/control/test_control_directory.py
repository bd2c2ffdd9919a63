"""Directory mode: resources in YAML files, status in `<file>.status.yaml` next to them (no Envoy)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from control_harness import read_status, sme, start_control_plane, wait_until, write_resources

from meshext.control.mesh import load_mesh
from meshext.control.resources import resource_key
from meshext.control.sources import DirectorySource


@pytest.fixture
def directory_mode(tmp_path: Path):
    running = start_control_plane(load_mesh(), tmp_path / "cache",
                                  source=DirectorySource(tmp_path / "extensions", interval=0.05))
    yield tmp_path / "extensions", running.operator
    running.stop()


def _generation(path: Path, key: str) -> int | None:
    return read_status(path).get(key, {}).get("observedGeneration")


def test_status_files_follow_resources_and_generations(directory_mode, modules):
    directory, _ = directory_mode
    module, sha = modules["chain"]
    resource = directory / "two.yaml"
    first, second = "ServiceMeshExtension/default/first", "ServiceMeshExtension/team-a/second"
    write_resources(resource, sme("first", f"file://{module}", config={"tag": 1}),
                    sme("second", f"file://{module}", namespace="team-a", labels={"app": "none"}))
    wait_until(lambda: _generation(resource, first) == 1 and _generation(resource, second) == 1,
               what="both statuses")
    status = read_status(resource)
    # No sidecar is connected in this test: the default mesh's workloads are pending.
    assert status[first]["phase"] == "Pending" and status[first]["moduleSha256"] == sha
    assert status[second]["conditions"][0]["reason"] == "NoMatchingWorkloads"

    # Same spec, other metadata: same generation.  Changed spec: the next one.
    touched = sme("first", f"file://{module}", config={"tag": 1})
    touched["metadata"]["labels"] = {"owner": "me"}
    write_resources(resource, touched, sme("second", f"file://{module}", namespace="team-a",
                                           labels={"app": "none"}))
    wait_until(lambda: read_status(resource)[first].get("observedGeneration") == 1, what="still generation 1")
    write_resources(resource, sme("first", f"file://{module}", config={"tag": 1}))  # "second" left the file
    wait_until(lambda: second not in read_status(resource), what="second's status removed")
    assert _generation(resource, first) == 1
    write_resources(resource, sme("first", f"file://{module}", config={"tag": 2}))
    wait_until(lambda: _generation(resource, first) == 2, what="generation 2")

    resource.unlink()
    wait_until(lambda: not resource.with_name(resource.name + ".status.yaml").exists(),
               what="status file removed with its resource file")


def test_unparsable_file_keeps_its_previous_resources(directory_mode, modules):
    directory, operator = directory_mode
    module, _ = modules["chain"]
    resource = directory / "keep.yaml"
    key = "ServiceMeshExtension/default/keep"
    write_resources(resource, sme("keep", f"file://{module}", config={"tag": "k"}))
    wait_until(lambda: _generation(resource, key) == 1, what="status")
    resource.write_text("spec: [unclosed\n")
    # The file is broken: what it held before keeps being served and reported.
    time.sleep(0.5)  # ten scans
    operator.wait_idle()
    assert key in operator.status_report()["extensions"]
    assert read_status(resource)[key]["observedGeneration"] == 1
    write_resources(resource, sme("keep", f"file://{module}", config={"tag": "k2"}))
    wait_until(lambda: _generation(resource, key) == 2, what="generation 2 after the fix")
    assert yaml.safe_load(resource.read_text())["spec"]["config"] == {"tag": "k2"}


class _RecordingSink:
    """A sink that keeps what a source applied and deleted, keyed as the operator keys resources."""

    def __init__(self) -> None:
        self.held: dict[str, dict] = {}

    def apply(self, obj: dict) -> None:
        self.held[resource_key(obj)] = obj

    def delete(self, key: str) -> None:
        self.held.pop(key, None)


def test_a_file_caught_half_written_is_not_read_as_empty(tmp_path: Path):
    # `>` and many editors truncate a file before writing it: a scan in between sees it empty.
    resource = tmp_path / "edit.yaml"
    write_resources(resource, sme("edited", "file:///m.wasm"))
    sink = _RecordingSink()
    source = DirectorySource(tmp_path, interval=3600).start(sink)  # scans driven by hand from here on
    assert list(sink.held) == ["ServiceMeshExtension/default/edited"]
    resource.write_text("")
    source.scan()
    assert list(sink.held) == ["ServiceMeshExtension/default/edited"], "the truncation was taken for an empty file"
    write_resources(resource, sme("edited", "file:///m.wasm", config={"tag": 2}))
    source.scan()
    source.scan()
    assert sink.held["ServiceMeshExtension/default/edited"]["spec"]["config"] == {"tag": 2}
    # A file that stays empty did mean it: its resources go.
    resource.write_text("")
    source.scan()
    source.scan()
    assert sink.held == {}
    source.stop()
