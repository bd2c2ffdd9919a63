"""The ratelimit extension placed by the control plane: from the test registry onto the selected sidecars,
through a ServiceMeshExtension (the converted Bookinfo memquota sample) and through a WasmPlugin."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from control_harness import MeshUnderTest, Response, call, read_status, wait_until, wasmplugin, write_resources

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

DATA = Path(__file__).parent / "data"
# A Python filter's first VM takes seconds to compile on a busy machine, and the control plane pulls first.
PLACED_WITHIN = 180.0


@pytest.fixture
def resources(bookinfo_mesh: MeshUnderTest) -> Iterator[Path]:
    """The watched directory, emptied after the test (extensions removed from the proxies)."""
    yield bookinfo_mesh.config_dir
    bookinfo_mesh.remove_resources()


def _ready(path: Path, key: str) -> dict | None:
    status = read_status(path).get(key, {})
    return status if status.get("phase") == "Ready" else None


def _to_productpage(mesh: MeshUnderTest, client: str) -> Response:
    return call(mesh.mesh, "frontend-v1", "productpage", "/productpage", headers={"x-forwarded-for": client})


def _limited(response: Response) -> Response | None:
    """The response when the ratelimit filter answered for it (with response_headers it adds
    x-ratelimit-limit), else None."""
    return response if any(name.lower() == "x-ratelimit-limit" for name, _ in response.headers) else None


def _header(response: Response, name: str) -> str:
    return next(value for key, value in response.headers if key.lower() == name)


def test_the_converted_bookinfo_sample_allows_2_requests_per_5_seconds_per_client(bookinfo_mesh, resources,
                                                                                   ratelimit_image):
    converted = subprocess.run([sys.executable, "-m", "meshext", "ratelimit", "convert",
                                str(DATA / "bookinfo-memquota.yaml"), "--image", ratelimit_image],
                               capture_output=True, text=True, timeout=60, check=True).stdout
    (extension,) = yaml.safe_load_all(converted)
    resource = resources / "ratelimit.yaml"
    resource.write_text(converted)  # applied as `meshext ratelimit convert` printed it
    status = wait_until(lambda: _ready(resource, "ServiceMeshExtension/default/ratelimit-productpage"),
                        timeout=PLACED_WITHIN, what="the converted extension Ready")
    assert status["workloads"] == ["productpage-v1.default"]  # only productpage's sidecars
    # Mixer's memquota added no headers to allowed answers, nor does the converted rule: a client of
    # its own is limited once the filter runs.
    wait_until(lambda: _to_productpage(bookinfo_mesh, "probe").status == 429, timeout=PLACED_WITHIN,
               what="the filter limiting on productpage's sidecar")

    answers = [_to_productpage(bookinfo_mesh, "10.0.0.1") for _ in range(3)]
    assert [answer.status for answer in answers] == [200, 200, 429]
    assert answers[0].body["app"] == "productpage-v1"
    assert _header(answers[2], "x-ratelimit-limit") == "2" and _header(answers[2], "x-ratelimit-remaining") == "0"
    assert int(_header(answers[2], "retry-after")) >= 1
    assert _to_productpage(bookinfo_mesh, "10.0.0.2").status == 200  # per client (x-forwarded-for)
    assert [_to_productpage(bookinfo_mesh, "10.28.11.20").status for _ in range(6)] == [200] * 6  # 500/s override
    # Not on frontend's own sidecar: requests to frontend are not limited.
    assert [call(bookinfo_mesh.mesh, "productpage-v1", "frontend").status for _ in range(5)] == [200] * 5
    time.sleep(5)  # the documented window
    assert [_to_productpage(bookinfo_mesh, "10.0.0.1").status for _ in range(3)] == [200, 200, 429]
    assert extension["spec"]["workloadSelector"] == {"labels": {"app": "productpage"}}


def test_a_wasmplugin_places_the_filter_with_its_plugin_config(bookinfo_mesh, resources, ratelimit_image):
    config = {"domain": "wasmplugin", "response_headers": True, "rules": [{
        "name": "per-user", "descriptor": [{"key": "user", "header": "x-user"}],
        "limit": {"requests_per_unit": 3, "unit": "minute"}}]}
    resource = resources / "wasmplugin.yaml"
    write_resources(resource, wasmplugin("ratelimit", ratelimit_image, phase="AUTHZ", pluginConfig=config,
                                         selector={"matchLabels": {"app": "productpage"}}))
    status = wait_until(lambda: _ready(resource, "WasmPlugin/default/ratelimit"), timeout=PLACED_WITHIN,
                        what="the WasmPlugin Ready")
    assert status["workloads"] == ["productpage-v1.default"]

    def as_user(user: str) -> Response:
        return call(bookinfo_mesh.mesh, "frontend-v1", "productpage", headers={"x-user": user})

    wait_until(lambda: _limited(as_user("probe")), timeout=PLACED_WITHIN, what="the filter answering")
    answers = [as_user("kim") for _ in range(4)]
    assert [answer.status for answer in answers] == [200, 200, 200, 429]
    assert [_header(answer, "x-ratelimit-remaining") for answer in answers] == ["2", "1", "0", "0"]
    assert as_user("lee").status == 200
    # A request without x-user builds no descriptor: the rule does not apply.
    assert [call(bookinfo_mesh.mesh, "frontend-v1", "productpage").status for _ in range(5)] == [200] * 5
