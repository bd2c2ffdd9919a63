"""meshext ratelimit convert: Istio's Bookinfo quota samples to ServiceMeshExtensions that behave as documented."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import bootstrap, wasm_filter

from meshext.envoy import EnvoyProcess
from meshext.errors import MeshextError
from meshext.extensions.ratelimit.mixer import convert

DATA = Path(__file__).parent / "data"


def test_the_memquota_sample_becomes_one_extension_on_productpage() -> None:
    conversion = convert((DATA / "bookinfo-memquota.yaml").read_text(), image="oci://r/ratelimit:1")
    (extension,) = conversion.extensions
    assert extension["kind"] == "ServiceMeshExtension"
    assert extension["metadata"] == {"name": "ratelimit-productpage", "namespace": "default"}
    assert extension["spec"]["workloadSelector"] == {"labels": {"app": "productpage"}}
    (rule,) = extension["spec"]["config"]["rules"]
    assert rule["descriptor"][1] == {"key": "destination", "value": "productpage"}  # on productpage's sidecars
    assert rule["algorithm"] == "token_bucket"  # memquota counted a rolling window
    assert rule["descriptor"][0] == {"key": "source", "header": "x-forwarded-for", "default": "unknown"}
    assert rule["limit"] == {"requests_per_unit": 500, "unit": "second"}
    assert [override["dimensions"] for override in rule["overrides"]] == [
        {"destination": "reviews"}, {"destination": "productpage", "source": "10.28.11.20"},
        {"destination": "productpage"}]
    assert rule["overrides"][2]["limit"] == {"requests_per_unit": 2, "unit": "second", "units": 5}
    assert any("destination.service.name not carried over" in note for note in conversion.not_carried)


def test_the_redisquota_sample_keeps_its_algorithm_and_says_what_changes() -> None:
    conversion = convert((DATA / "bookinfo-redisquota.yaml").read_text(), image="oci://r/ratelimit:1")
    (rule,) = conversion.config["rules"]
    assert rule["algorithm"] == "token_bucket"  # ROLLING_WINDOW
    assert rule["overrides"][2]["limit"] == {"requests_per_unit": 2, "unit": "second"}  # the quota's 1s
    notes = " ".join(conversion.not_carried)
    assert "converted to local mode" in notes and "bucketDuration 500ms not carried over" in notes


def test_input_without_a_quota_handler_is_refused() -> None:
    with pytest.raises(MeshextError, match="no memquota or redisquota handler"):
        convert("kind: rule\nmetadata: {name: r}\nspec: {}\n", image="x")


def test_the_command_prints_the_extension_and_the_notes(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "meshext", "ratelimit", "convert",
                             str(DATA / "bookinfo-memquota.yaml"), "--image", "oci://r/ratelimit:1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (extension,) = yaml.safe_load_all(result.stdout)
    assert extension["spec"]["image"] == "oci://r/ratelimit:1"
    assert "not carried over: instance requestcountquota: dimension destination" in result.stderr


def get(address: tuple[str, int], client: str) -> int:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", "/productpage", headers={"x-forwarded-for": client})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.envoy
def test_the_converted_sample_allows_2_requests_per_5_seconds_per_client_on_productpage(ratelimit_module: Path):
    config = convert((DATA / "bookinfo-memquota.yaml").read_text(), image="x").extensions[0]["spec"]["config"]
    envoy_config = bootstrap([wasm_filter(ratelimit_module, config)])
    # The proxy of productpage-v1, as meshext's sidecars describe themselves (control/proxy.py).
    envoy_config["node"] = {"id": "productpage-v1.default", "metadata": {
        "WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default", "LABELS": {"app": "productpage", "version": "v1"}}}
    with EnvoyProcess(envoy_config) as envoy:
        address = envoy.listener_address("main")
        assert [get(address, "10.0.0.1") for _ in range(3)] == [200, 200, 429]
        assert get(address, "10.0.0.2") == 200  # per client (x-forwarded-for)
        assert [get(address, "10.28.11.20") for _ in range(10)] == [200] * 10  # its own override: 500/s
        time.sleep(5)
        assert [get(address, "10.0.0.1") for _ in range(3)] == [200, 200, 429]  # 2 more after 5 s
