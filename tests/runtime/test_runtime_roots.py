"""The test host loads one root of a multi-root module by root_id, as Envoy's
plugin configuration names it (the module: tests/sdk/filters/multiroot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshext.errors import MeshextError
from meshext.testing import Host

PROJECTS = Path(__file__).parent.parent / "sdk" / "filters" / "multiroot"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meshext.sdk.builder import build_filters

    output = tmp_path_factory.mktemp("roots") / "bundle.wasm"
    return build_filters([PROJECTS / "greeter", PROJECTS / "guard"], output).output


def test_the_plugin_runs_the_root_its_root_id_names_and_logs_under_it(bundle: Path) -> None:
    host = Host()
    guard = host.load(bundle, root_id="guard", name="guard-plugin", vm_id="bundle")
    greeter = host.load(bundle, root_id="greeter", config={"name": "cy"}, vm_id="bundle")
    assert (guard.root_id, greeter.root_id) == ("guard", "greeter")
    assert guard.exchange(path="/admin").local_response.status == 403  # type: ignore[union-attr]
    assert greeter.exchange(path="/admin").request.header("x-greeting") == "hello cy"
    guard.exchange(path="/boom")
    failure = next(record for record in host.logs if "guard exploded" in record.message)
    assert (failure.plugin_name, failure.root_id, failure.vm_id) == ("guard-plugin", "guard", "bundle")


def test_a_root_id_the_module_lacks_fails_the_load_with_the_modules_reason(bundle: Path) -> None:
    with pytest.raises(MeshextError) as refused:
        Host().load(bundle, root_id="gard")
    assert "this module has no root 'gard'" in refused.value.message
    assert "set root_id to one of 'greeter', 'guard'" in refused.value.message
    assert "root_id ('gard')" in (refused.value.fix or "")

