"""Labelled metrics in the SDK (encoding, escaping, refusals), the stats_config they need, and bad input.

The encoding is checked against a real Envoy with the bootstrap that `meshext
telemetry stats-config` prints: a value containing the separators stays in its
own label and every other series keeps its labels.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshext.control.mesh import load_mesh
from meshext.errors import MeshextError
from meshext.extensions.telemetry.filter.istio_metrics import HTTP_LABELS
from meshext.extensions.telemetry.filter.struct_codec import decode_struct, encode_struct
from meshext.extensions.telemetry.stats_config import EXTENSION_LABELS, stats_config
from meshext.sdk import Counter, Gauge, Histogram, SdkError
from meshext.sdk.metrics import decode_label_value, encode_label_value, encoded_name, envoy_stats_tags

HOSTILE = ["a;.;b=.=c", "x;.;reporter=.=evil;.;", ";", "=", "%3B", "100%", "", "tail;.", ".;head", "ü", "a.", "%2E"]


def test_children_are_cached_per_value_tuple() -> None:
    family = Counter("shop_orders_total", "Orders", labelnames=("method", "code"))
    child = family.labels("GET", "200")
    assert family.labels("GET", "200") is child
    assert family.labels(method="GET", code="200") is child
    assert child.name == "method=.=GET;.;code=.=200;.;shop_orders_total"
    assert family.labels("GET", "500") is not child


@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_can_never_form_a_separator(value: str) -> None:
    encoded = encode_label_value(value)
    assert ";" not in encoded and "=" not in encoded and not encoded.endswith(".")
    assert decode_label_value(encoded) == value
    name = encoded_name("m", ("a", "b"), (value, "next"))
    # Envoy's extraction (non-greedy, first match) gives back exactly the encoded values.
    assert re.search(r"(a=\.=(.*?);\.;)", name).group(2) == encoded  # type: ignore[union-attr]
    assert re.search(r"(b=\.=(.*?);\.;)", name).group(2) == "next"  # type: ignore[union-attr]


def test_wrong_labels_are_refused_clearly() -> None:
    family = Histogram("latency_ms", labelnames=("route",))
    with pytest.raises(SdkError, match=r"got 2 values, expected 1 \(route\)"):
        family.labels("a", "b")
    with pytest.raises(SdkError, match=r"got labels \['path'\], expected \['route'\]"):
        family.labels(path="/")
    with pytest.raises(SdkError, match="by position or by name, not both"):
        family.labels("a", route="b")
    with pytest.raises(SdkError, match="is not a str"):
        family.labels(200)  # type: ignore[arg-type]
    with pytest.raises(SdkError, match=r"use latency_ms.labels\(...\)"):
        family.observe(1)
    with pytest.raises(SdkError, match="has no label names"):
        Gauge("plain").labels("x")
    with pytest.raises(SdkError, match="not a Prometheus label name"):
        Counter("c_total", labelnames=("bad-name",))
    with pytest.raises(SdkError, match="listed twice"):
        Counter("c_total", labelnames=("a", "a"))
    with pytest.raises(SdkError, match="not a Prometheus metric name"):
        Counter("bad name", labelnames=("a",))


def test_stats_tags_refuse_a_name_that_ends_another() -> None:
    with pytest.raises(SdkError, match="'app' ends label name 'source_app'"):
        envoy_stats_tags(["source_app", "app"])
    with pytest.raises(MeshextError, match="'code' ends label name 'response_code'"):
        stats_config(["code"])
    config = stats_config(["tenant"])
    assert config["use_all_default_tags"] is False
    assert [tag["tag_name"] for tag in config["stats_tags"]] == [*EXTENSION_LABELS, "tenant"]
    assert {*HTTP_LABELS, "domain", "rule", "outcome"} <= set(EXTENSION_LABELS)
    assert config["stats_tags"][0] == {"tag_name": "reporter", "regex": "(reporter=\\.=(.*?);\\.;)"}


def test_the_cli_prints_the_same_stats_config() -> None:
    result = subprocess.run([sys.executable, "-m", "meshext", "telemetry", "stats-config", "--label", "tenant"],
                            capture_output=True, text=True, check=True)
    assert yaml.safe_load(result.stdout) == {"stats_config": stats_config(["tenant"])}
    refused = subprocess.run([sys.executable, "-m", "meshext", "telemetry", "stats-config", "--label", "code"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "'code' ends label name 'response_code'" in refused.stderr


def test_a_mesh_file_with_unknown_telemetry_options_is_refused(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(yaml.safe_dump({"telemetry": {"enabled": True, "sampling": 0.5}}))
    with pytest.raises(MeshextError, match=r"telemetry\.sampling: Extra inputs are not permitted"):
        load_mesh(mesh_file)
    mesh_file.write_text(yaml.safe_dump({"telemetry": {"enabled": False}}))
    assert load_mesh(mesh_file).telemetry.enabled is False
    assert load_mesh().telemetry.enabled is True  # on by default


def test_struct_codec_is_deterministic_and_round_trips() -> None:
    from google.protobuf import struct_pb2

    fields = {"NAMESPACE": "default", "WORKLOAD_NAME": "b-v1", "LABELS": {"app": "b", "version": "v1"},
              "N": 1.5, "T": True, "L": ["x", None]}
    encoded = encode_struct(fields)
    # Keys in lexicographic order, as C++ protobuf's deterministic serialisation (Istio's proxy) writes them.
    assert encoded == encode_struct(dict(reversed(fields.items())))
    parsed = struct_pb2.Struct()
    parsed.ParseFromString(encoded)
    reference = struct_pb2.Struct()
    reference.update(fields)
    assert parsed == reference
    assert decode_struct(encoded) == fields
    assert decode_struct(reference.SerializeToString()) == fields


def test_envoy_shows_escaped_values_in_their_own_labels(tmp_path: Path) -> None:
    """A real Envoy with the stats_config, a module defining hostile label values."""
    from meshext.envoy import EnvoyProcess
    from meshext.sdk.builder import build_filter

    project = tmp_path / "labels"
    project.mkdir()
    (project / "meshext.toml").write_text('[filter]\nname = "labels"\nentry = "filter:Root"\n')
    (project / "filter.py").write_text(
        "from meshext.sdk import Counter, RootContext\n"
        f"VALUES = {HOSTILE!r}\n"
        "C = Counter('hostile_total', labelnames=('first', 'second'))\n"
        "class Root(RootContext):\n"
        "    def on_configure(self, config):\n"
        "        for index, value in enumerate(VALUES):\n"
        "            C.labels(value, str(index)).inc(index + 1)\n"
        "        return True\n")
    module = tmp_path / "labels.wasm"
    build_filter(project, module)
    bootstrap = {
        "stats_config": stats_config(["first", "second"]),
        "bootstrap_extensions": [{"name": "envoy.bootstrap.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": True,
            "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(module)}}}}}}],
    }
    with EnvoyProcess(bootstrap) as envoy:
        def samples() -> dict[str, tuple[str, float]]:
            text = envoy.admin_get("/stats/prometheus")
            return {s.labels["second"]: (s.labels["first"], s.value)
                    for family in text_string_to_metric_families(text) if family.name == "hostile"
                    for s in family.samples}

        from control_harness import wait_until

        got = wait_until(lambda: len(samples()) == len(HOSTILE) and samples(), 15, "the hostile series")
    # Each series has exactly its own values (the root configures once per VM: the counts scale alike).
    assert {second: first for second, (first, _) in got.items()} == {
        str(i): encode_label_value(v) for i, v in enumerate(HOSTILE)}
    per_increment = got["0"][1]
    assert per_increment >= 1 and all(value == per_increment * (int(i) + 1) for i, (_, value) in got.items())
